package fakegemini

// The Live API: BidiGenerateContent over a WebSocket, as Google serves it at
// wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.{version}.GenerativeService.{method}
// (gemini-api.md §1.8). The first client message is {"setup":{"model":…}}; the server answers
// {"setupComplete":{}} and then echoes turns: a clientContent or realtimeInput text turn gets a
// serverContent modelTurn "echo: <text>", realtimeInput audio is echoed back as inline audio,
// and every finished turn ends with serverContent.turnComplete and a usageMetadata of that turn
// alone. A setup with tools gets a toolCall for a text turn, and the toolResponse is echoed. A
// setup with sessionResumption gets a sessionResumptionUpdate with a new handle after
// setupComplete and after every turn; a later setup carrying that handle resumes the session,
// on a key of the same project only. Server messages go out as binary frames holding JSON, as
// Google sends them (SetLiveTextFrames for text frames).
//
// Refusals: a key that fails (SetKey and the other states) is refused, by default, the way
// Google refuses a Live session: the upgrade succeeds, the setup is read, and the session is
// closed with Google's close code and reason (1007 for a key that is not valid, 1008 for a
// permission denied or an unknown model, 1011 for quota, overload and internal errors), cut to
// the 123 bytes a close frame holds. SetLiveRefuseAtHandshake refuses key-wide states at the
// handshake instead, with the HTTP error Google answers other calls with.
//
// Ephemeral tokens: POST /v1alpha/auth_tokens (with a key) answers {"name":"auth_tokens/…"};
// the token then opens BidiGenerateContentConstrained sessions (Authorization: Token … or
// ?access_token=…) in its key's project, as many times as its uses allow (1 by default, 0 for
// no limit) until its newSessionExpireTime (60 s by default). A setup locked by the token
// (bidiGenerateContentSetup) wins over the session's.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// livePrefix starts the path of every Live API method.
const livePrefix = "/ws/google.ai.generativelanguage."

// maxCloseReason is the longest reason a close frame carries (125 bytes less the code).
const maxCloseReason = 123

// LiveSession is one Live API session the fake accepted the upgrade of.
type LiveSession struct {
	Method  string // BidiGenerateContent, BidiGenerateContentConstrained, …
	Version string // v1beta or v1alpha
	// Key is the API key the session authenticated with; "" for an ephemeral token.
	Key string
	// Token is the ephemeral token ("auth_tokens/…") of a Constrained session, and Owner the
	// key that created it.
	Token, Owner string
	Model        string // the model of the setup (or the token's), without "models/"
	Setup        []byte // the setup message as received
	Handle       string // the resumption handle the setup carried, "" for a new session
	// Handles are the resumption handles the fake gave the session.
	Handles []string
	Turns   int
	// Usage the fake reported in the session's usageMetadata messages, summed.
	PromptTokens, ResponseTokens, TotalTokens int64
	// AudioBytes is the decoded audio the client sent in realtimeInput.
	AudioBytes int64
	// Refused is the close code the fake refused the session with after the setup, 0 if it
	// served it.
	Refused int
	// ClientClose is the code of the close frame the client sent (1005 for one without a
	// code), 0 when the connection ended without one.
	ClientClose int
	Closed      bool
	Started     time.Time
	Ended       time.Time
}

// liveConn is an open session.
type liveConn struct {
	conn   *websocket.Conn
	wmu    sync.Mutex // serialises data writes (the session's loop, GoAway)
	binary bool
	rec    *LiveSession // guarded by Server.mu
}

// authToken is an ephemeral token the fake made.
type authToken struct {
	key        string // the key that made it
	uses       int    // uses left; -1 for no limit
	newUntil   time.Time
	expireTime time.Time
	model      string // the model its setup locks, "" for none
}

// liveState is the fake's Live API state, part of Server.
type liveState struct {
	textFrames      bool
	refuseHandshake bool
	open            map[*liveConn]struct{}
	sessions        []*LiveSession
	handles         map[string]string // resumption handle -> project
	tokens          map[string]*authToken
}

var liveUpgrader = websocket.Upgrader{
	CheckOrigin: func(*http.Request) bool { return true },
}

// SetLiveTextFrames makes the fake send its Live messages as text frames (true) or, as Google
// does, as binary frames holding JSON (false, the default).
func (s *Server) SetLiveTextFrames(text bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live.textFrames = text
}

// SetLiveRefuseAtHandshake makes the fake refuse a Live session of a failing key at the
// WebSocket handshake, with the HTTP error (and status) Google answers other calls of that key
// with, instead of closing the session after its setup (the default).
func (s *Server) SetLiveRefuseAtHandshake(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live.refuseHandshake = on
}

// LiveSessions returns a copy of every Live session the fake accepted, oldest first.
func (s *Server) LiveSessions() []LiveSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]LiveSession, len(s.live.sessions))
	for i, r := range s.live.sessions {
		out[i] = *r
		out[i].Setup = append([]byte(nil), r.Setup...)
		out[i].Handles = append([]string(nil), r.Handles...)
	}
	return out
}

// OpenLiveSessions reports how many Live sessions are open.
func (s *Server) OpenLiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live.open)
}

// LiveGoAway sends {"goAway":{"timeLeft":timeLeft}} to every open Live session that finished
// its setup, as Google does before it ends a session, and returns how many it reached.
// timeLeft is a proto Duration such as "10s".
func (s *Server) LiveGoAway(timeLeft string) int {
	msg := map[string]any{"goAway": map[string]any{"timeLeft": timeLeft}}
	n := 0
	for _, lc := range s.openLive() {
		if lc.send(msg) == nil {
			n++
		}
	}
	return n
}

// CloseLive closes every open Live session with a close frame of code and reason and returns
// how many it closed.
func (s *Server) CloseLive(code int, reason string) int {
	n := 0
	for _, lc := range s.openLive() {
		if lc.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second)) == nil {
			n++
		}
	}
	return n
}

// AuthTokenOwner returns the key that created an ephemeral token ("auth_tokens/…"), "" if
// the fake made no such token.
func (s *Server) AuthTokenOwner(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.live.tokens[name]; ok {
		return t.key
	}
	return ""
}

func (s *Server) openLive() []*liveConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*liveConn, 0, len(s.live.open))
	for lc := range s.live.open {
		if lc.rec.Setup != nil && lc.rec.Refused == 0 {
			out = append(out, lc)
		}
	}
	return out
}

// send writes one server message.
func (lc *liveConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	mt := websocket.BinaryMessage
	if !lc.binary {
		mt = websocket.TextMessage
	}
	lc.wmu.Lock()
	defer lc.wmu.Unlock()
	lc.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return lc.conn.WriteMessage(mt, b)
}

// refuse ends the session with a close frame and records it.
func (s *Server) refuseLive(lc *liveConn, code int, reason string) {
	s.mu.Lock()
	lc.rec.Refused = code
	s.mu.Unlock()
	lc.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(reason)), time.Now().Add(time.Second))
	// Wait for the client's close (or its going away) before dropping the connection.
	lc.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := lc.conn.NextReader(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				s.mu.Lock()
				lc.rec.ClientClose = ce.Code
				s.mu.Unlock()
			}
			return
		}
	}
}

// closeReason cuts a reason to what a close frame holds, on a character boundary.
func closeReason(s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	cut := maxCloseReason
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// liveMethod splits a Live path into its version and method.
func liveMethod(path string) (version, method string, ok bool) {
	rest, found := strings.CutPrefix(path, livePrefix)
	if !found {
		return "", "", false
	}
	version, method, found = strings.Cut(rest, ".GenerativeService.")
	switch {
	case !found, version != "v1beta" && version != "v1alpha", strings.ContainsAny(method, "./"):
		return "", "", false
	}
	switch method {
	case "BidiGenerateContent", "BidiGenerateContentConstrained", "BidiGenerateMusic":
		return version, method, true
	}
	return "", "", false
}

// liveModels are the Live models the fake knows besides the generative ones of the catalog.
var liveModels = map[string]bool{
	"gemini-live-2.5-flash-preview":                 true,
	"gemini-2.0-flash-live-001":                     true,
	"gemini-2.5-flash-native-audio-preview-09-2025": true,
}

func liveModelKnown(id string) bool {
	if liveModels[id] {
		return true
	}
	m, ok := lookupModel(id)
	return ok && m.supports("generateContent")
}

// serveLive answers a request for a Live API path.
func (s *Server) serveLive(x *exchange) {
	version, method, ok := liveMethod(strings.Replace(x.r.URL.Path, "//ws/", "/ws/", 1))
	if !ok {
		x.fail(notFoundError())
		return
	}
	x.version = version
	rec := &LiveSession{Method: method, Version: version, Started: time.Now()}
	rpc := "GenerativeService." + method
	project := ""
	if method == "BidiGenerateContentConstrained" {
		token := liveToken(x.r)
		owner, model, ok := s.useToken(token)
		if !ok {
			x.fail(invalidCredentialsError())
			return
		}
		rec.Token, rec.Owner, rec.Model = token, owner, model
		x.key = owner // the key-wide states of the token's project apply
		project = s.ProjectOf(owner)
	} else {
		rec.Key = x.key
		project = s.ProjectOf(x.key)
	}
	s.mu.Lock()
	atHandshake := s.live.refuseHandshake
	s.mu.Unlock()
	if x.key == "" {
		x.fail(unregisteredCallerError())
		return
	}
	if atHandshake {
		// The key's own states, as any other call of the key gets them (the model is not
		// known before the setup).
		if !s.authenticate(x, rpc) || !s.admitGeneration(x, "") {
			return
		}
	}
	if !websocket.IsWebSocketUpgrade(x.r) {
		x.fail(badRequest("Request must be a WebSocket upgrade."))
		return
	}
	conn, err := liveUpgrader.Upgrade(x.w, x.r, nil)
	if err != nil {
		return // the upgrader answered
	}
	defer conn.Close()
	s.mu.Lock()
	lc := &liveConn{conn: conn, binary: !s.live.textFrames, rec: rec}
	if s.live.open == nil {
		s.live.open = make(map[*liveConn]struct{})
	}
	s.live.open[lc] = struct{}{}
	s.live.sessions = append(s.live.sessions, rec)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.live.open, lc)
		rec.Closed, rec.Ended = true, time.Now()
		s.mu.Unlock()
	}()
	s.runLive(lc, x, rpc, project)
}

// runLive reads the setup, refuses the session or serves it until the client leaves.
func (s *Server) runLive(lc *liveConn, x *exchange, rpc, project string) {
	conn, rec := lc.conn, lc.rec
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, first, err := conn.ReadMessage()
	if err != nil {
		s.noteClientClose(rec, err)
		return
	}
	conn.SetReadDeadline(time.Time{})
	var msg struct {
		Setup *liveSetup `json:"setup"`
	}
	if json.Unmarshal(first, &msg) != nil || msg.Setup == nil {
		s.refuseLive(lc, websocket.CloseInvalidFramePayloadData, "Request contains an invalid argument.")
		return
	}
	setup := msg.Setup
	model := strings.TrimPrefix(setup.Model, "models/")
	s.mu.Lock()
	rec.Setup = append([]byte(nil), first...)
	if rec.Model != "" {
		model = rec.Model // the token's lock wins
	}
	rec.Model = model
	if setup.SessionResumption != nil {
		rec.Handle = setup.SessionResumption.Handle
	}
	s.mu.Unlock()
	switch code, reason := s.liveRefusal(x, rpc, model, project); code {
	case 0:
	case liveHang:
		for { // no answer, until the client leaves
			if _, _, err := conn.NextReader(); err != nil {
				s.noteClientClose(rec, err)
				return
			}
		}
	default:
		s.refuseLive(lc, code, reason)
		return
	}
	if h := rec.Handle; h != "" {
		s.mu.Lock()
		owner, ok := s.live.handles[h]
		s.mu.Unlock()
		if !ok || owner != project {
			s.refuseLive(lc, websocket.ClosePolicyViolation, "The session resumption handle is not valid.")
			return
		}
	}
	if lc.send(map[string]any{"setupComplete": map[string]any{}}) != nil {
		return
	}
	resumable := setup.SessionResumption != nil
	if resumable {
		s.sendHandle(lc, project)
	}
	tool := ""
	for _, t := range setup.Tools {
		for _, f := range t.FunctionDeclarations {
			if tool == "" {
				tool = f.Name
			}
		}
	}
	turn := &liveTurn{}
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			s.noteClientClose(rec, err)
			return
		}
		var m liveClientMessage
		if json.Unmarshal(b, &m) != nil {
			s.refuseLive(lc, websocket.CloseInvalidFramePayloadData, "Request contains an invalid argument.")
			return
		}
		done, err := s.liveMessage(lc, &m, turn, tool)
		if err != nil {
			return
		}
		if done {
			if resumable && s.sendHandle(lc, project) != nil {
				return
			}
			turn = &liveTurn{}
		}
	}
}

// liveTurn is what the fake has heard of the current turn.
type liveTurn struct {
	promptTokens int64
	audio        bool
	toolCalled   bool
}

// liveMessage answers one client message; done reports a finished turn.
func (s *Server) liveMessage(lc *liveConn, m *liveClientMessage, turn *liveTurn, tool string) (done bool, err error) {
	switch {
	case m.ClientContent != nil:
		text := ""
		for _, c := range m.ClientContent.Turns {
			for _, p := range c.Parts {
				text += p.Text
			}
		}
		turn.promptTokens += wordTokens(text)
		if m.ClientContent.TurnComplete != nil && !*m.ClientContent.TurnComplete {
			return false, nil
		}
		if tool != "" && !turn.toolCalled {
			turn.toolCalled = true
			return false, lc.send(map[string]any{"toolCall": map[string]any{"functionCalls": []any{
				map[string]any{"id": "fake-call-" + randomLowerID(8), "name": tool, "args": map[string]any{"query": text}},
			}}})
		}
		return true, s.finishTurn(lc, turn, textPart("echo: "+text))
	case m.RealtimeInput != nil:
		in := m.RealtimeInput
		chunks := in.MediaChunks
		if in.Audio != nil {
			chunks = append(chunks, *in.Audio)
		}
		for _, ch := range chunks {
			raw, err := base64.StdEncoding.DecodeString(ch.Data)
			if err != nil {
				s.refuseLive(lc, websocket.CloseInvalidFramePayloadData, "Request contains an invalid argument.")
				return false, err
			}
			s.mu.Lock()
			lc.rec.AudioBytes += int64(len(raw))
			s.mu.Unlock()
			turn.audio = true
			turn.promptTokens += max(int64(len(raw))/32, 1)
			// The model answers in audio: the fake sends the client's audio back.
			part := map[string]any{"inlineData": map[string]any{"mimeType": "audio/pcm;rate=24000", "data": ch.Data}}
			if err := lc.send(map[string]any{"serverContent": map[string]any{"modelTurn": map[string]any{"parts": []any{part}}}}); err != nil {
				return false, err
			}
		}
		if in.Text != "" {
			turn.promptTokens += wordTokens(in.Text)
			return true, s.finishTurn(lc, turn, textPart("echo: "+in.Text))
		}
		if in.AudioStreamEnd && turn.audio {
			return true, s.finishTurn(lc, turn, nil)
		}
		return false, nil
	case m.ToolResponse != nil:
		resp, _ := json.Marshal(m.ToolResponse.FunctionResponses)
		turn.promptTokens += wordTokens(string(resp))
		return true, s.finishTurn(lc, turn, textPart("tool said: "+string(resp)))
	}
	return false, nil
}

func textPart(text string) map[string]any {
	return map[string]any{"text": text}
}

// finishTurn sends the model's turn (part, if any), its end and its usage.
func (s *Server) finishTurn(lc *liveConn, turn *liveTurn, part map[string]any) error {
	response := int64(1)
	if part != nil {
		if t, ok := part["text"].(string); ok {
			response = wordTokens(t)
		}
		if err := lc.send(map[string]any{"serverContent": map[string]any{"modelTurn": map[string]any{"parts": []any{part}}}}); err != nil {
			return err
		}
	}
	prompt := max(turn.promptTokens, 1)
	total := prompt + response
	s.mu.Lock()
	lc.rec.Turns++
	lc.rec.PromptTokens += prompt
	lc.rec.ResponseTokens += response
	lc.rec.TotalTokens += total
	s.mu.Unlock()
	return lc.send(map[string]any{
		"serverContent": map[string]any{"turnComplete": true},
		"usageMetadata": map[string]any{
			"promptTokenCount": prompt, "responseTokenCount": response, "totalTokenCount": total,
			"promptTokensDetails":   []any{map[string]any{"modality": modality(turn.audio), "tokenCount": prompt}},
			"responseTokensDetails": []any{map[string]any{"modality": modality(turn.audio), "tokenCount": response}},
		},
	})
}

func modality(audio bool) string {
	if audio {
		return "AUDIO"
	}
	return "TEXT"
}

// wordTokens is the fake's token count of a text: its words, at least 1.
func wordTokens(s string) int64 {
	return max(int64(len(strings.Fields(s))), 1)
}

// sendHandle gives the session a new resumption handle, valid on keys of project.
func (s *Server) sendHandle(lc *liveConn, project string) error {
	h := "fake-handle-" + randomID(24)
	s.mu.Lock()
	if s.live.handles == nil {
		s.live.handles = make(map[string]string)
	}
	s.live.handles[h] = project
	lc.rec.Handles = append(lc.rec.Handles, h)
	s.mu.Unlock()
	return lc.send(map[string]any{"sessionResumptionUpdate": map[string]any{"newHandle": h, "resumable": true}})
}

// noteClientClose records the close code of a read that ended the session.
func (s *Server) noteClientClose(rec *LiveSession, err error) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		s.mu.Lock()
		rec.ClientClose = ce.Code
		s.mu.Unlock()
	}
}

// liveRefusal is the close code and reason a session of the exchange's key gets for model
// after its setup, 0 when it is served.
func (s *Server) liveRefusal(x *exchange, rpc, model, project string) (int, string) {
	if !liveModelKnown(model) {
		return websocket.ClosePolicyViolation, "models/" + model + " is not found for API version " + x.version +
			", or is not supported for bidiGenerateContent. Call ListModels to see the list of available models and their supported methods."
	}
	st := s.authState(x.key)
	if st == OK {
		st = s.generationState(x.key, model)
	}
	method := "google.ai.generativelanguage." + x.version + "." + rpc
	switch st {
	case Invalid, InvalidOnGenerate:
		return websocket.CloseInvalidFramePayloadData, invalidKeyError().Message
	case Leaked:
		return websocket.CloseInvalidFramePayloadData, leakedError().Message
	case Suspended:
		return websocket.ClosePolicyViolation, suspendedError(x.key, project).Message
	case ServiceDisabled:
		return websocket.ClosePolicyViolation, serviceDisabledError(project).Message
	case ServiceBlocked:
		return websocket.ClosePolicyViolation, serviceBlockedError(project, method).Message
	case QuotaMinute:
		return websocket.CloseInternalServerErr, quotaMinuteError(model, s.currentRetryDelay()).Message
	case QuotaDay:
		return websocket.CloseInternalServerErr, quotaDayError(model, s.currentRetryDelay()).Message
	case Prepay:
		return websocket.CloseInternalServerErr, prepayError().Message
	case Internal:
		return websocket.CloseInternalServerErr, "Internal error encountered."
	case Overloaded:
		return websocket.CloseInternalServerErr, overloadedError().Message
	case Hang:
		return liveHang, ""
	}
	return 0, ""
}

// liveHang is liveRefusal's code for a session that gets no answer at all.
const liveHang = -1

// liveToken returns the ephemeral token of a Constrained connection: Authorization: Token …
// or ?access_token=….
func liveToken(r *http.Request) string {
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Token") {
		return strings.TrimSpace(tok)
	}
	return r.URL.Query().Get("access_token")
}

// useToken takes one use of an ephemeral token for a new session: its key and locked model.
func (s *Server) useToken(name string) (key, model string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, found := s.live.tokens[name]
	now := time.Now()
	if !found || now.After(t.newUntil) || now.After(t.expireTime) || t.uses == 0 {
		return "", "", false
	}
	if t.uses > 0 {
		t.uses--
	}
	return t.key, t.model, true
}

// createAuthToken answers POST /v1alpha/auth_tokens.
func (s *Server) createAuthToken(x *exchange) {
	if !s.authenticate(x, "AuthTokenService.CreateToken") {
		return
	}
	var req struct {
		Uses                 *int   `json:"uses"`
		ExpireTime           string `json:"expireTime"`
		NewSessionExpireTime string `json:"newSessionExpireTime"`
		Setup                *struct {
			Model string `json:"model"`
		} `json:"bidiGenerateContentSetup"`
	}
	if len(x.body) > 0 && json.Unmarshal(x.body, &req) != nil {
		x.fail(invalidJSONError())
		return
	}
	now := time.Now()
	t := &authToken{key: x.key, uses: 1, newUntil: now.Add(time.Minute), expireTime: now.Add(30 * time.Minute)}
	if req.Uses != nil {
		t.uses = *req.Uses
		if t.uses == 0 {
			t.uses = -1
		}
	}
	for _, f := range []struct {
		v   string
		dst *time.Time
	}{{req.ExpireTime, &t.expireTime}, {req.NewSessionExpireTime, &t.newUntil}} {
		if f.v == "" {
			continue
		}
		tm, err := time.Parse(time.RFC3339Nano, f.v)
		if err != nil {
			x.fail(badRequest("Invalid value at '" + strconv.Quote(f.v) + "' (google.protobuf.Timestamp)"))
			return
		}
		*f.dst = tm
	}
	if req.Setup != nil {
		t.model = strings.TrimPrefix(req.Setup.Model, "models/")
	}
	name := "auth_tokens/" + randomLowerID(40)
	s.mu.Lock()
	if s.live.tokens == nil {
		s.live.tokens = make(map[string]*authToken)
	}
	s.live.tokens[name] = t
	s.mu.Unlock()
	x.writeJSON(map[string]any{"name": name})
}

// invalidCredentialsError is Google's 401 for a credential it does not accept (an unknown or
// used-up ephemeral token).
func invalidCredentialsError() *apiError {
	return &apiError{
		Code: http.StatusUnauthorized,
		Message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie " +
			"or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
		Status: "UNAUTHENTICATED",
	}
}

// liveSetup is the part of a setup message the fake reads.
type liveSetup struct {
	Model             string `json:"model"`
	SessionResumption *struct {
		Handle string `json:"handle"`
	} `json:"sessionResumption"`
	Tools []struct {
		FunctionDeclarations []struct {
			Name string `json:"name"`
		} `json:"functionDeclarations"`
	} `json:"tools"`
}

// liveBlob is a realtimeInput media chunk.
type liveBlob struct {
	Data     string `json:"data"`
	MimeType string `json:"mimeType"`
}

// liveClientMessage is one message of the client after the setup.
type liveClientMessage struct {
	ClientContent *struct {
		Turns []struct {
			Parts []struct {
				Text string `json:"text"`
			} `json:"parts"`
		} `json:"turns"`
		TurnComplete *bool `json:"turnComplete"`
	} `json:"clientContent"`
	RealtimeInput *struct {
		Audio          *liveBlob  `json:"audio"`
		MediaChunks    []liveBlob `json:"mediaChunks"`
		Text           string     `json:"text"`
		AudioStreamEnd bool       `json:"audioStreamEnd"`
	} `json:"realtimeInput"`
	ToolResponse *struct {
		FunctionResponses []json.RawMessage `json:"functionResponses"`
	} `json:"toolResponse"`
}
