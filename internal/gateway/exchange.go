package gateway

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// upstream paths the proxy serves; everything else goes to the next handler.
var apiPrefixes = [...]string{"/v1/", "/v1beta/", "/v1alpha/", "/upload/", livePrefix}

// apiPath returns the cleaned path and whether the proxy serves it. Cleaning resolves dot
// segments (also percent-encoded ones, which net/http has already decoded) and repeated
// slashes, so a crafted path cannot climb out of the API or name another host.
func apiPath(p string) (string, bool) {
	if !strings.HasPrefix(p, "/") {
		return "", false
	}
	clean := path.Clean(p)
	for _, pre := range apiPrefixes {
		if strings.HasPrefix(clean, pre) {
			return clean, true
		}
	}
	return "", false
}

// Serve answers a Gemini API request (`/v1/…`, `/v1beta/…`, `/v1alpha/…`, `/upload/…`, and the
// Live API's WebSocket at `/ws/google.ai.generativelanguage.…`) and reports true; any other
// path it leaves alone and reports false, for the next handler. It waits until the first
// configuration is applied.
func (c *Core) Serve(w http.ResponseWriter, r *http.Request) bool {
	p, ok := apiPath(r.URL.Path)
	if !ok {
		return false
	}
	// No answer of the API is meant to be sniffed into something a browser runs (guardAnswer
	// sees to upstream answers that say otherwise).
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r.Method == http.MethodOptions {
		writePreflight(w, r)
		return true
	}
	if r.Header.Get("Origin") != "" {
		hdr := w.Header()
		hdr.Set("Access-Control-Allow-Origin", "*")
		hdr.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	}
	select {
	case <-c.ready:
	case <-r.Context().Done():
		return true
	}
	x := exchange{core: c, w: w, r: r, path: p, start: time.Now()}
	if strings.HasPrefix(p, livePrefix) {
		x.serveLive() // live.go
		return true
	}
	x.serve()
	return true
}

const (
	corsAllowHeaders  = "authorization, content-type, x-goog-api-key, x-goog-api-client, x-goog-user-project, x-server-timeout, x-goog-upload-protocol, x-goog-upload-command, x-goog-upload-offset, x-goog-upload-header-content-length, x-goog-upload-header-content-type, x-goog-upload-file-name, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout, user-agent"
	corsExposeHeaders = "x-goog-upload-url, x-goog-upload-control-url, x-goog-upload-status, x-goog-upload-chunk-granularity, x-goog-upload-size-received, retry-after"
)

// writePreflight answers a CORS preflight without an access key, as Google does.
func writePreflight(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	origin := r.Header.Get("Origin")
	if origin == "" {
		origin = "*"
	}
	hdr.Set("Access-Control-Allow-Origin", origin)
	hdr.Add("Vary", "Origin")
	hdr.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		hdr.Set("Access-Control-Allow-Headers", req)
	} else {
		hdr.Set("Access-Control-Allow-Headers", corsAllowHeaders)
	}
	hdr.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	hdr.Set("Access-Control-Max-Age", "3600")
	w.WriteHeader(http.StatusNoContent)
}

// maxBodyPrealloc is the most a request body's buffer is sized ahead from its Content-Length.
const maxBodyPrealloc = 1 << 20

// statusClientClosed is the status logged for a request whose client went away before its
// answer (nginx's 499); it is never sent.
const statusClientClosed = 499

// exchange is one client request on its way through the proxy.
type exchange struct {
	core  *Core
	w     http.ResponseWriter
	r     *http.Request
	path  string
	start time.Time
	reqID string // the request id told to the client with a failure whose cause stays in the error log

	// rejected says why the request was refused before it was authenticated: such a request
	// writes no request-log row, it is counted (metrics.go)
	rejected rejectReason

	set      *settings
	access   int64
	key      *accessKey    // the access key, once authenticated
	ticket   tenant.Ticket // the request's place in its access key's limits, released by finish
	limitHit string        // the policy rule that refused the request (request log's limit_hit)
	model    string
	stream   bool
	openAI   bool
	body     []byte
	attempts int
	keyID    int64

	status  int
	ttfb    time.Duration
	usage   usage
	errText string
	metrics *modelMetrics // the model's metrics, resolved on first use (metrics.go)

	bound // key-bound resources (resources.go)
}

// serve runs the whole exchange and writes exactly one request-log row at the end, unless the
// request was refused for want of a valid credential.
func (x *exchange) serve() {
	defer x.finish()
	x.set = x.core.settings.Load()
	if id := uploadSessionID(x.path, x.r.URL.RawQuery); id != "" {
		x.serveUploadChunk(id) // upload.go: streamed to the session's key, never retried
		return
	}
	if !x.authenticate() {
		return
	}
	x.openAI = strings.HasPrefix(x.path, "/v1beta/openai/") || strings.HasPrefix(x.path, "/v1/openai/")
	if !x.readBody() {
		return
	}
	x.model, x.stream = requestModel(x.path, x.r.URL.RawQuery, x.body, x.openAI)
	if !x.allowModel() || !x.admit() { // limits.go: the access key's policy
		return
	}
	if x.routeBound() { // resources.go: files listing, or a resource's owner key
		return
	}
	x.proxy()
}

// finish ends the exchange: a request refused for want of a valid credential is counted and
// sampled into a warning (anyone can send those, as many as they like: rows of them would
// crowd real ones out of the log queue and stay for the retention period); any other writes
// its request-log row. Both count in requests_total.
func (x *exchange) finish() {
	x.ticket.Done(x.chargedTokens(), time.Now())
	if x.rejected == rejectNone {
		x.logRequest()
		return
	}
	x.recordRequest()
	x.core.metrics.noteRejected(x.core, x.rejected, x.r, time.Now())
}

// reject refuses a request that has no valid credential.
func (x *exchange) reject(why rejectReason, code int, status, msg string) {
	x.rejected = why
	x.fail(code, status, msg)
}

// authenticate checks the access key. Keys are looked up by their SHA-256 digest, never
// compared as text: the time a lookup takes depends only on the digest, which tells an
// attacker nothing about the key that produced it.
func (x *exchange) authenticate() bool {
	cred := credential(x.r)
	if cred == "" {
		x.reject(rejectMissingKey, http.StatusUnauthorized, "UNAUTHENTICATED", "Missing access key: send it as the x-goog-api-key header, the key query parameter or Authorization: Bearer.")
		return false
	}
	sum := sha256.Sum256([]byte(cred))
	keys := *x.core.accessKeys.Load()
	k, found := keys[sum]
	if !found {
		x.reject(rejectWrongKey, http.StatusUnauthorized, "UNAUTHENTICATED", "Access key not valid. Please pass a valid access key for this gateway.")
		return false
	}
	if !k.enabled {
		x.reject(rejectDisabledKey, http.StatusForbidden, "PERMISSION_DENIED", "This access key is disabled.")
		return false
	}
	if k.broken {
		// Its stored policy does not parse (edited by hand): refused until fixed, never
		// let through unlimited.
		x.reject(rejectDisabledKey, http.StatusForbidden, "PERMISSION_DENIED", "This access key's policy is invalid; ask the gateway's operator.")
		return false
	}
	if k.expired(x.start) {
		x.reject(rejectExpiredKey, http.StatusUnauthorized, "UNAUTHENTICATED", "access key expired")
		return false
	}
	x.access, x.key = k.id, k
	return true
}

// requestID returns the exchange's request id, made on first use: 12 random hex digits, told
// to a client whose failure's cause stays in the error log, at the head of that row.
func (x *exchange) requestID() string {
	if x.reqID == "" {
		var b [6]byte
		rand.Read(b[:])
		x.reqID = hex.EncodeToString(b[:])
	}
	return x.reqID
}

// credential returns the client's access key from x-goog-api-key, ?key= or a Bearer token.
func credential(r *http.Request) string {
	if v := r.Header.Get("X-Goog-Api-Key"); v != "" {
		return strings.TrimSpace(v)
	}
	if hasKeyParam(r.URL.RawQuery) {
		if v := r.URL.Query().Get("key"); v != "" {
			return v
		}
	}
	if v := r.Header.Get("Authorization"); len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

// readBody buffers the request body, up to max_request_body, so that a retry can resend it.
// The buffer is not pooled: the transport may still read a request body after RoundTrip
// returns, so reusing it for another request could corrupt that one.
func (x *exchange) readBody() bool {
	if x.r.Body == nil || x.r.Body == http.NoBody {
		return true
	}
	limit := x.set.maxBody
	if x.r.ContentLength > limit {
		x.tooLarge(limit)
		return false
	}
	var buf bytes.Buffer
	if n := x.r.ContentLength; n > 0 {
		// +1: room for the EOF read. Capped: memory follows the bytes that actually arrive,
		// not a Content-Length a client may never send.
		buf.Grow(int(min(n, maxBodyPrealloc)) + 1)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(x.w, x.r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			x.tooLarge(limit)
		case errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
			// The server's read timeout cut a body that came too slowly: the client is still
			// there and gets an answer (the server cancels the request's context on such an
			// error, so this comes before the check for a client that went away).
			x.fail(http.StatusRequestTimeout, "DEADLINE_EXCEEDED", "The request body did not arrive in time.")
			x.errText = "request body too slow: " + err.Error()
		case x.r.Context().Err() != nil:
			x.status = statusClientClosed
			x.errText = "client closed the request while sending its body"
		default:
			// The cause can name local sockets: it goes to the log, not to the client.
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT", "The request body could not be read.")
			x.errText = "request body unreadable: " + err.Error()
		}
		return false
	}
	x.body = buf.Bytes()
	return true
}

func (x *exchange) tooLarge(limit int64) {
	x.fail(http.StatusRequestEntityTooLarge, "INVALID_ARGUMENT",
		"Request payload size exceeds the limit: "+strconv.FormatInt(limit, 10)+" bytes.")
}

// bodyMember is a top-level member of a request body, kept as a slice of the body itself: the
// body outlives every use, so the member's bytes (a whole conversation) are not copied.
type bodyMember []byte

// UnmarshalJSON keeps the slice encoding/json hands over, which is part of the input.
func (m *bodyMember) UnmarshalJSON(b []byte) error {
	*m = b
	return nil
}

// requestModel finds the model a request is for, and whether it streams.
func requestModel(p, rawQuery string, body []byte, openAI bool) (model string, stream bool) {
	if openAI {
		if i := strings.Index(p, "/openai/models/"); i >= 0 {
			return p[i+len("/openai/models/"):], false // models.get
		}
		if len(body) > 0 {
			// The members named exactly "model" and "stream": encoding/json would also take
			// "MODEL" or "Model", and a client could then have its call counted for another
			// model than the one Google serves.
			var b map[string]bodyMember
			if json.Unmarshal(body, &b) == nil {
				var model string
				var stream bool
				// A missing member, or one of another type, reads as its zero value.
				_ = json.Unmarshal([]byte(b["model"]), &model)
				_ = json.Unmarshal([]byte(b["stream"]), &stream)
				return strings.TrimPrefix(model, "models/"), stream
			}
		}
		return "", false
	}
	if strings.HasSuffix(p, "/"+kindAuthTokens) {
		return authTokenModel(body), false // live.go: the model an ephemeral token locks
	}
	var rest string
	if i := strings.Index(p, "/models/"); i >= 0 {
		rest = p[i+len("/models/"):]
	} else if i := strings.Index(p, "/tunedModels/"); i >= 0 {
		rest = p[i+len("/tunedModels/"):]
	} else {
		return "", false
	}
	end := strings.IndexAny(rest, ":/")
	method := ""
	if end >= 0 {
		if rest[end] == ':' {
			method = rest[end+1:]
		}
		rest = rest[:end]
	}
	return rest, method == "streamGenerateContent"
}

// logRequest queues the exchange's request-log row; it never waits on the database.
func (x *exchange) logRequest() {
	if x.status == 0 {
		x.status = statusClientClosed
	}
	x.recordRequest()
	x.core.metrics.tenants.observe(x.access, x.status, x.limitHit != "", x.chargedTokens())
	x.core.store.LogRequest(store.RequestLog{
		Time:             x.start,
		AccessKeyID:      x.access,
		KeyID:            x.keyID,
		Method:           x.r.Method,
		Path:             x.path,
		Model:            x.model,
		Stream:           x.stream,
		Status:           x.status,
		Attempts:         x.attempts,
		Latency:          time.Since(x.start),
		TTFB:             x.ttfb,
		PromptTokens:     x.usage.prompt,
		CandidatesTokens: x.usage.candidates,
		ThoughtsTokens:   x.usage.thoughts,
		TotalTokens:      x.usage.total,
		Error:            x.errText,
		LimitHit:         x.limitHit,
	})
}
