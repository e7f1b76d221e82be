// Package fakegemini is an in-process test double of the Gemini API
// (generativelanguage.googleapis.com). It speaks the real wire formats: native
// REST paths with ':' methods under /v1, /v1beta and /v1alpha, SSE and
// JSON-array streams, the OpenAI-compatible endpoints under /v1beta/openai/,
// the resumable file upload protocol (chunks streamed, not kept), files,
// cached contents and batches that belong to the key that created them
// (another key gets 403 PERMISSION_DENIED), and Google's pretty-printed error
// envelopes. Each upstream key can be programmed to fail the way a real key
// fails (invalid, suspended, leaked, quota exhausted, ...), keys can be grouped
// into Cloud projects that share a state (a project's daily quota), and every
// request is recorded so tests can assert what a proxy forwarded. Request
// bodies with a top-level member Google does not know get Google's 400
// `Unknown name "…": Cannot find field.`, the name quoted back verbatim. The
// Live API (BidiGenerateContent over WebSocket under /ws/, with ephemeral
// tokens) is served too: see live.go.
package fakegemini

import (
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// KeyState programs how the fake answers for one upstream key (SetKey,
// SetDefault), for every key of one Cloud project (SetProjectState), or for
// every call on one model or on all of them (SetModelState, SetOutage).
//
// Invalid, Suspended, Leaked, ServiceDisabled, ServiceBlocked and Hang apply to
// every request made with the key. QuotaMinute, QuotaDay, Prepay, Internal,
// Overloaded and InvalidOnGenerate apply only to generation calls
// (generateContent, streamGenerateContent, embedContent, batchEmbedContents and
// the OpenAI-compatible chat completions and embeddings), as with Google, where
// listing models and counting tokens keep working on an exhausted key.
//
// When several states could apply to a call, the key's own state (SetKey) comes
// first, then its project's (SetProjectState), then the default (SetDefault,
// only for keys never passed to SetKey), then, for generation calls only, the
// model's (SetModelState) and the outage state (SetOutage). A key-wide state
// found anywhere in that order wins over every generation state; OK never
// hides a later state except the default.
type KeyState string

// The states a key or a model can be put in.
const (
	OK             KeyState = "ok"
	Invalid        KeyState = "invalid"         // 400 INVALID_ARGUMENT, ErrorInfo API_KEY_INVALID
	Suspended      KeyState = "suspended"       // 403 CONSUMER_SUSPENDED
	Leaked         KeyState = "leaked"          // 403 "Your API key was reported as leaked..." no details
	ServiceBlocked KeyState = "service_blocked" // 403 API_KEY_SERVICE_BLOCKED
	QuotaMinute    KeyState = "quota_minute"    // 429 QuotaFailure PerMinute + RetryInfo retryDelay (see SetRetryDelay)
	QuotaDay       KeyState = "quota_day"       // 429 QuotaFailure with PerDay and PerMinute violations
	Prepay         KeyState = "prepay"          // 402 prepay depleted
	Internal       KeyState = "internal"        // 500 INTERNAL
	Overloaded     KeyState = "overloaded"      // 503 UNAVAILABLE "The model is overloaded. Please try again later."
	Hang           KeyState = "hang"            // never answers until the request context ends

	// ServiceDisabled is a project that has the Generative Language API
	// disabled: 403 SERVICE_DISABLED "Generative Language API has not been used
	// in project N before or it is disabled…", naming the project.
	ServiceDisabled KeyState = "service_disabled"
	// InvalidOnGenerate answers generation calls exactly as Invalid does (400
	// INVALID_ARGUMENT, ErrorInfo API_KEY_INVALID) while every other call with
	// the key (models.get, models.list, countTokens, files, ...) succeeds: Google
	// refusing a key that is in fact fine, which a gateway should confirm with a
	// free probe before it disables the key.
	InvalidOnGenerate KeyState = "invalid_on_generate"
)

// Call is one request the fake received.
type Call struct {
	Time     time.Time
	Method   string
	Path     string // r.URL.Path as received
	RawQuery string
	// Key is the credential the request authenticated with: the
	// x-goog-api-key header, else the key query parameter, else (only under
	// /v1beta/openai/) the Authorization Bearer token. Empty when none.
	Key    string
	Header http.Header // clone of the request headers
	// Body is the request body, except for upload chunks (commands on an upload session),
	// whose bytes are streamed into the session and not kept.
	Body []byte
	// BodySize is the number of body bytes received; for an upload chunk it is known only
	// once the chunk has been read, so the recorded Call has it from then on.
	BodySize int64
}

// Server is the fake upstream. The zero value is not usable; call New.
// All methods are safe for concurrent use.
type Server struct {
	mu           sync.Mutex
	keys         map[string]KeyState
	defaultState KeyState
	retryDelay   string
	modelStates  map[string]KeyState
	streamEvents int
	streamDelay  time.Duration
	failAfter    int
	calls        []Call
	uploads      map[string]*uploadSession
	files        map[string]*storedFile
	caches       map[string]*storedCache
	batches      map[string]*storedBatch

	outage        KeyState            // generation state of every model without one of its own; "" for none
	projects      map[string]string   // key -> Cloud project number set by SetProject
	projectStates map[string]KeyState // project number -> state set by SetProjectState

	openStreams atomic.Int64

	live liveState // the Live API (live.go)
}

const (
	defaultRetryDelay   = "30s"
	defaultStreamEvents = 3
)

// New returns a fake where every key is OK, streams have 3 events with no
// delay, and QuotaMinute answers with retryDelay "30s".
func New() *Server {
	return &Server{
		keys:         make(map[string]KeyState),
		defaultState: OK,
		retryDelay:   defaultRetryDelay,
		modelStates:  make(map[string]KeyState),
		streamEvents: defaultStreamEvents,
		uploads:      make(map[string]*uploadSession),
		files:        make(map[string]*storedFile),
		caches:       make(map[string]*storedCache),
		batches:      make(map[string]*storedBatch),

		projects:      make(map[string]string),
		projectStates: make(map[string]KeyState),
	}
}

// SetKey sets the state of one upstream key.
func (s *Server) SetKey(key string, st KeyState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[key] = st
}

// SetDefault sets the state used for keys never passed to SetKey (OK at first).
func (s *Server) SetDefault(st KeyState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defaultState = st
}

// SetProject puts key in the Cloud project with the given number (digits, e.g.
// "111"): errors that name the consumer project (CONSUMER_SUSPENDED,
// SERVICE_DISABLED, API_KEY_SERVICE_BLOCKED) say "projects/<number>", and the
// key shares its project's state (SetProjectState). A key never put in a
// project, or put in project "", has a project of its own whose number is
// derived from the key (see ProjectOf).
func (s *Server) SetProject(key, number string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if number == "" {
		delete(s.projects, key)
		return
	}
	s.projects[key] = number
}

// ProjectOf returns the Cloud project number of key: the one given to
// SetProject, else a stable 12-digit number derived from the key.
func (s *Server) ProjectOf(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.projectOfLocked(key)
}

func (s *Server) projectOfLocked(key string) string {
	if p, ok := s.projects[key]; ok {
		return p
	}
	return projectNumber(key)
}

// SetProjectState gives every key of the Cloud project number (see SetProject
// and ProjectOf) the state st, as Google applies a project's quota, billing and
// suspension to all of its keys: SetProjectState("111", QuotaDay) makes every
// key of project 111 answer the daily 429 on generation calls while listing
// models and counting tokens keep working, and keys of other projects are not
// touched. A key's own state (SetKey) wins over its project's; st "" or OK
// clears the project's state.
func (s *Server) SetProjectState(number string, st KeyState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == "" || st == OK {
		delete(s.projectStates, number)
		return
	}
	s.projectStates[number] = st
}

// SetOutage makes every generation call on every model that has no state of
// its own (SetModelState) fail with st, for keys whose own, project and default
// states let the call through: SetOutage(Overloaded) is Google answering 503
// "The model is overloaded" to everybody, SetOutage(OK) (or "") the recovery.
// st is one of the states SetModelState takes.
func (s *Server) SetOutage(st KeyState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == OK {
		st = ""
	}
	s.outage = st
}

// SetRetryDelay sets the RetryInfo retryDelay text (a proto Duration such as
// "30s" or "2.5s") that quota errors carry. An empty string restores "30s".
func (s *Server) SetRetryDelay(d string) {
	if d == "" {
		d = defaultRetryDelay
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retryDelay = d
}

// SetModelState makes every generation call on model fail with st for keys
// whose own, project and default states let the call through. st is one of
// Internal, Overloaded, QuotaMinute, QuotaDay, Prepay, InvalidOnGenerate or
// Hang; key-only states (Invalid, Suspended, Leaked, ServiceDisabled,
// ServiceBlocked) have no effect here. The model may be given with or without
// its "models/" prefix. st "" or OK clears the model state.
func (s *Server) SetModelState(model string, st KeyState) {
	model = strings.TrimPrefix(model, "models/")
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == "" || st == OK {
		delete(s.modelStates, model)
		return
	}
	s.modelStates[model] = st
}

// SetStream sets the shape of streamed answers: the number of events (values
// below 1 restore the default 3) and the delay before every event after the
// first (and before a mid-stream error).
func (s *Server) SetStream(events int, delay time.Duration) {
	if events < 1 {
		events = defaultStreamEvents
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streamEvents = events
	s.streamDelay = max(delay, 0)
}

// SetFailAfterEvents makes native streams break after n events (n > 0): the
// SSE stream then carries a bare {"error":{"code":503,...}} JSON object with
// no "data:" prefix, the JSON-array stream an {"error":...} element, and the
// stream ends. If n is not below the configured number of events, every event
// is sent before the error. n <= 0 turns this off.
func (s *Server) SetFailAfterEvents(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAfter = max(n, 0)
}

// Calls returns a deep copy of the requests received so far, oldest first.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Call, len(s.calls))
	for i, c := range s.calls {
		c.Header = c.Header.Clone()
		c.Body = slices.Clone(c.Body)
		out[i] = c
	}
	return out
}

// Count reports how many of the recorded calls match (all of them when match
// is nil), e.g. fake.Count(Call.IsGeneration). match sees the recorded call
// itself: it must not modify or keep its Header or Body.
func (s *Server) Count(match func(Call) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if match == nil {
		return len(s.calls)
	}
	n := 0
	for _, c := range s.calls {
		if match(c) {
			n++
		}
	}
	return n
}

// IsGeneration reports whether c is a generation call, the calls that quota,
// overload and InvalidOnGenerate apply to: generateContent,
// streamGenerateContent, embedContent and batchEmbedContents on a model, and
// the OpenAI-compatible chat completions and embeddings.
func (c Call) IsGeneration() bool {
	if c.Method != http.MethodPost {
		return false
	}
	switch c.Path {
	case "/v1beta/openai/chat/completions", "/v1beta/openai/embeddings":
		return true
	}
	_, rest, ok := splitVersion(c.Path)
	if !ok || !strings.HasPrefix(rest, "models/") {
		return false
	}
	_, method, _ := strings.Cut(rest, ":")
	switch method {
	case "generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents":
		return true
	}
	return false
}

// Reset forgets the recorded calls and the records of Live sessions that have
// ended. Key, model and stream settings, upload sessions, files, open Live
// sessions, resumption handles and ephemeral tokens are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
	open := s.live.sessions[:0]
	for _, r := range s.live.sessions {
		if !r.Closed {
			open = append(open, r)
		}
	}
	clear(s.live.sessions[len(open):])
	s.live.sessions = open
}

// OpenStreams reports how many streamed answers are being written right now.
func (s *Server) OpenStreams() int {
	return int(s.openStreams.Load())
}

// keyStatesLocked returns the states that may govern a call made with key, in
// precedence order: the key's own, its project's, the default (only for a key
// never passed to SetKey). Unset ones are left out; OK may be in it.
func (s *Server) keyStatesLocked(key string) []KeyState {
	var out []KeyState
	own, set := s.keys[key]
	if set {
		out = append(out, own)
	}
	if st, ok := s.projectStates[s.projectOfLocked(key)]; ok {
		out = append(out, st)
	}
	if !set {
		out = append(out, s.defaultState)
	}
	return out
}

// authState returns the key-wide state that stops every call made with key
// (Invalid, Suspended, Leaked, ServiceDisabled, ServiceBlocked, Hang), OK when
// none does.
func (s *Server) authState(key string) KeyState {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.keyStatesLocked(key) {
		if isAuthState(st) {
			return st
		}
	}
	return OK
}

// generationState returns the state a generation call with key on model gets:
// the first generation state of the key's own, project and default states,
// else the model's, else the outage state; OK when none is set.
func (s *Server) generationState(key, model string) KeyState {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.keyStatesLocked(key) {
		if isGenerationState(st) {
			return st
		}
	}
	if st, ok := s.modelStates[model]; ok {
		return st
	}
	if s.outage != "" {
		return s.outage
	}
	return OK
}

func (s *Server) currentRetryDelay() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retryDelay
}

// streamShape returns the configured event count, delay and fail-after count.
func (s *Server) streamShape() (events int, delay time.Duration, failAfter int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streamEvents, s.streamDelay, s.failAfter
}

// exchange is one request being answered.
type exchange struct {
	w       http.ResponseWriter
	r       *http.Request
	body    []byte
	key     string // credential as recorded in Call.Key
	bearer  string // Authorization Bearer token, whatever the path
	version string // v1, v1beta or v1alpha
	pretty  bool   // prettyPrint system parameter (default true)
	sse     bool   // errors go out as text/event-stream
	openai  bool   // errors are wrapped in a JSON array
	call    int    // index of the recorded Call
}

// ServeHTTP answers one request the way generativelanguage.googleapis.com does.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	// Upload chunks are streamed into the session (files can be gigabytes): their bytes are
	// counted in Call.BodySize, never kept.
	chunk := strings.HasPrefix(path, "/upload/") && r.URL.Query().Get("upload_id") != ""
	var body []byte
	if !chunk {
		body, _ = io.ReadAll(r.Body)
	}
	x := &exchange{
		w:      w,
		r:      r,
		body:   body,
		bearer: bearerToken(r),
		pretty: r.URL.Query().Get("prettyPrint") != "false",
	}
	x.openai = strings.HasPrefix(path, "/v1beta/openai/")
	x.key = r.Header.Get("X-Goog-Api-Key")
	if x.key == "" {
		x.key = r.URL.Query().Get("key")
	}
	if x.key == "" && x.openai {
		x.key = x.bearer
	}
	x.call = s.record(r, x.key, body)
	setGoogleHeaders(w.Header())

	switch {
	case strings.HasPrefix(path, "/ws/") || strings.HasPrefix(path, "//ws/"):
		s.serveLive(x)
	case path == "/upload/v1beta/files":
		x.version = "v1beta"
		s.serveUpload(x)
	case x.openai:
		x.version = "v1beta"
		s.serveOpenAI(x, strings.TrimPrefix(path, "/v1beta/openai/"))
	default:
		version, rest, ok := splitVersion(path)
		if !ok {
			x.fail(notFoundError())
			return
		}
		x.version = version
		s.serveNative(x, rest)
	}
}

// record appends one Call and returns its index.
func (s *Server) record(r *http.Request, key string, body []byte) int {
	c := Call{
		Time:     time.Now(),
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Key:      key,
		Header:   r.Header.Clone(),
		Body:     body,
		BodySize: int64(len(body)),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
	return len(s.calls) - 1
}

// splitVersion splits "/v1beta/models/x:generateContent" into "v1beta" and
// "models/x:generateContent".
func splitVersion(path string) (version, rest string, ok bool) {
	p := strings.TrimPrefix(path, "/")
	version, rest, _ = strings.Cut(p, "/")
	switch version {
	case "v1", "v1beta", "v1alpha":
		return version, rest, rest != ""
	}
	return "", "", false
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// setGoogleHeaders adds the headers Google's front end puts on every answer,
// including Alt-Svc, which a proxy is expected to drop.
func setGoogleHeaders(h http.Header) {
	h.Set("Vary", "Origin, X-Origin, Referer")
	h.Set("Server", "scaffolding on HTTPServer2")
	h.Set("X-Xss-Protection", "0")
	h.Set("X-Frame-Options", "SAMEORIGIN")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Alt-Svc", `h3=":443"; ma=2592000,h3-29=":443"; ma=2592000`)
}

// authenticate applies Google's credential rules and the key-wide states
// (Invalid, Suspended, Leaked, ServiceDisabled, ServiceBlocked, Hang). rpc names the method for
// error metadata, e.g. "GenerativeService.GenerateContent". It reports whether
// the request may go on; if not, the answer has been written.
func (s *Server) authenticate(x *exchange, rpc string) bool {
	method := "google.ai.generativelanguage." + x.version + "." + rpc
	if x.key == "" {
		if x.bearer != "" && !x.openai {
			x.fail(oauthRejectedError(method))
			return false
		}
		x.fail(unregisteredCallerError())
		return false
	}
	switch s.authState(x.key) {
	case Invalid:
		x.fail(invalidKeyError())
	case Suspended:
		x.fail(suspendedError(x.key, s.ProjectOf(x.key)))
	case Leaked:
		x.fail(leakedError())
	case ServiceDisabled:
		x.fail(serviceDisabledError(s.ProjectOf(x.key)))
	case ServiceBlocked:
		x.fail(serviceBlockedError(s.ProjectOf(x.key), method))
	case Hang:
		<-x.r.Context().Done()
	default:
		return true
	}
	return false
}

// admitGeneration applies the generation-only states: the key's own, its
// project's or the default, else the model-wide one, else the outage. It
// reports whether the request may go on; if not, the answer has been written.
func (s *Server) admitGeneration(x *exchange, model string) bool {
	switch s.generationState(x.key, model) {
	case InvalidOnGenerate:
		x.fail(invalidKeyError())
	case QuotaMinute:
		x.fail(quotaMinuteError(model, s.currentRetryDelay()))
	case QuotaDay:
		x.fail(quotaDayError(model, s.currentRetryDelay()))
	case Prepay:
		x.fail(prepayError())
	case Internal:
		x.fail(internalError())
	case Overloaded:
		x.fail(overloadedError())
	case Hang:
		<-x.r.Context().Done()
	default:
		return true
	}
	return false
}

// isGenerationState reports whether st applies to generation calls only.
func isGenerationState(st KeyState) bool {
	switch st {
	case QuotaMinute, QuotaDay, Prepay, Internal, Overloaded, InvalidOnGenerate:
		return true
	}
	return false
}

// isAuthState reports whether st stops every call made with the key.
func isAuthState(st KeyState) bool {
	switch st {
	case Invalid, Suspended, Leaked, ServiceDisabled, ServiceBlocked, Hang:
		return true
	}
	return false
}

// randomID returns n random characters of the URL-safe base64 alphabet.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// randomLowerID returns n random lowercase letters and digits, the alphabet
// of Google's file ids.
func randomLowerID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
