package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// upstream paths the proxy serves; everything else goes to the next handler.
var apiPrefixes = [...]string{"/v1/", "/v1beta/", "/v1alpha/", "/upload/"}

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

// Serve answers a Gemini API request (`/v1/…`, `/v1beta/…`, `/v1alpha/…`, `/upload/…`) and
// reports true; any other path it leaves alone and reports false, for the next handler. It waits
// until the first configuration is applied.
func (c *Core) Serve(w http.ResponseWriter, r *http.Request) bool {
	p, ok := apiPath(r.URL.Path)
	if !ok {
		return false
	}
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

// exchange is one client request on its way through the proxy.
type exchange struct {
	core  *Core
	w     http.ResponseWriter
	r     *http.Request
	path  string
	start time.Time

	set      *settings
	access   int64
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

// serve runs the whole exchange and writes exactly one request-log row at the end.
func (x *exchange) serve() {
	defer x.logRequest()
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
	if x.routeBound() { // resources.go: files listing, or a resource's owner key
		return
	}
	x.proxy()
}

// authenticate checks the access key. Keys are looked up by their SHA-256 digest, never
// compared as text: the time a lookup takes depends only on the digest, which tells an
// attacker nothing about the key that produced it.
func (x *exchange) authenticate() bool {
	cred := credential(x.r)
	if cred == "" {
		x.fail(http.StatusUnauthorized, "UNAUTHENTICATED", "Missing access key: send it as the x-goog-api-key header, the key query parameter or Authorization: Bearer.")
		return false
	}
	sum := sha256.Sum256([]byte(cred))
	keys := *x.core.accessKeys.Load()
	k, found := keys[sum]
	if !found {
		x.fail(http.StatusUnauthorized, "UNAUTHENTICATED", "Access key not valid. Please pass a valid access key for this gateway.")
		return false
	}
	x.access = k.id
	if !k.enabled {
		x.fail(http.StatusForbidden, "PERMISSION_DENIED", "This access key is disabled.")
		return false
	}
	return true
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
		buf.Grow(int(min(n, 1<<20)) + 1)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(x.w, x.r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			x.tooLarge(limit)
		} else if x.r.Context().Err() != nil {
			x.status = 499
			x.errText = "client closed the request while sending its body"
		} else {
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT", "The request body could not be read: "+err.Error())
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

// requestModel finds the model a request is for, and whether it streams.
func requestModel(p, rawQuery string, body []byte, openAI bool) (model string, stream bool) {
	if openAI {
		if len(body) > 0 {
			var b struct {
				Model  string `json:"model"`
				Stream bool   `json:"stream"`
			}
			if json.Unmarshal(body, &b) == nil {
				return strings.TrimPrefix(b.Model, "models/"), b.Stream
			}
		}
		return "", false
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

// proxy runs the attempt loop: pick a key, send, classify, and either answer the client or
// retry on another key while nothing has been written yet. Quota and key errors are retried up
// to max_retries times; a 5xx or network failure at most once (it is about the model or the
// service, not the key), and not at all while the model is in an outage.
func (x *exchange) proxy() {
	c := x.core
	if ok, retryAt := c.pool.Admit(x.model, time.Now()); !ok {
		c.metrics.refused.Inc()
		x.outage(retryAt)
		return
	}
	var skipBuf [8]int64
	skip := skipBuf[:0]
	var last *upstreamError // the newest failed answer, returned if no retry is left
	transientRetried := false
	for {
		now := time.Now()
		id, secret, err := c.pool.Next(x.model, now, skip)
		if err != nil {
			if last != nil {
				x.writeUpstreamError(last)
				return
			}
			var ce *keypool.CoolingError
			if errors.As(err, &ce) {
				x.retryAfter(ce.Until, now)
				x.fail(http.StatusTooManyRequests, "RESOURCE_EXHAUSTED",
					"Every upstream key is cooling down for model "+ce.Model+" (quota exhausted, or kept out after failures); retry after "+ce.Until.UTC().Format(time.RFC3339)+".")
				return
			}
			x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "No upstream key is available: add or enable keys in the admin panel.")
			return
		}
		x.attempts++
		x.keyID = id
		resp, fail, retryable := x.attempt(id, secret)
		if resp != nil {
			x.answer(resp, secret) // resources.go: records what the answer creates
			return
		}
		if fail == nil {
			return // the client is gone
		}
		last = fail
		if fail.outcome.Kind == keypool.Transient {
			if transientRetried || fail.outage {
				retryable = false
			}
			transientRetried = true
		}
		if retryable && x.attempts <= x.set.maxRetries {
			skip = append(skip, id)
			continue
		}
		x.writeUpstreamError(last)
		return
	}
}

// outage answers a request the model's open circuit holds back: Google's own status for an
// overloaded model, and when the next trial request may pass.
func (x *exchange) outage(retryAt time.Time) {
	now := time.Now()
	x.retryAfter(retryAt, now)
	what := "model " + x.model
	if x.model == "" {
		what = "this kind of call"
	}
	x.fail(http.StatusServiceUnavailable, "UNAVAILABLE",
		"The upstream is failing for "+what+" with every key (an outage or overload at Google); the gateway holds requests back and lets a trial through every second. Please retry later.")
}

// upstreamError is a failed upstream answer, kept to be returned when no retry is left.
type upstreamError struct {
	status  int
	header  http.Header
	body    []byte
	reason  string // network failures have no body
	outcome keypool.Outcome
	outage  bool // the model is in an outage: no other key will do better
}

// attempt sends the request once with key id and accounts for it: metrics, the pool's report
// and the failure's masking. It returns the answer when the upstream took the request (status
// below 400); else the failure to answer with, and whether another key may succeed where this
// one failed. Both are nil when the client is gone (the exchange is then marked 499).
func (x *exchange) attempt(id int64, secret string) (resp *http.Response, fail *upstreamError, retryable bool) {
	sent := time.Now()
	resp, err := x.send(secret)
	took := time.Since(sent)
	if err != nil {
		o := keypool.ClassifyError(err)
		if o.Kind == keypool.Canceled || x.r.Context().Err() != nil {
			x.attempted(keypool.Canceled, 0, took)
			x.clientGone()
			return nil, nil, false
		}
		x.attempted(o.Kind, 0, took)
		ch := x.report(id, o, 0)
		return nil, &upstreamError{status: http.StatusBadGateway, reason: o.Reason, outage: ch.Outage}, true
	}
	if resp.StatusCode < 400 {
		x.attempted(keypool.Success, resp.StatusCode, took)
		x.report(id, keypool.Outcome{Kind: keypool.Success}, resp.StatusCode)
		return resp, nil, false
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256<<10))
	resp.Body.Close()
	body = maskSecret(body, secret)
	o := keypool.Classify(resp.StatusCode, body, time.Now())
	if o.Kind != keypool.Canceled && x.r.Context().Err() == nil {
		o = x.confirm(id, secret, o)
	}
	if o.Kind == keypool.Canceled || x.r.Context().Err() != nil {
		x.attempted(keypool.Canceled, resp.StatusCode, took)
		x.clientGone()
		return nil, nil, false
	}
	x.attempted(o.Kind, resp.StatusCode, took)
	ch := x.report(id, o, resp.StatusCode)
	return nil, &upstreamError{status: resp.StatusCode, header: resp.Header, body: body, outcome: o, outage: ch.Outage}, o.Retryable()
}

// confirm checks an answer that condemns key id (o.Confirm) with one free probe of the key
// before anything is done to it: if the key answers the probe, the answer was about the
// request and goes back to the client as a client error; if the probe condemns it too, the
// key is dead. When the probe says nothing either way, the key is left alone and the request
// may go to another key. Other outcomes pass unchanged.
func (x *exchange) confirm(id int64, secret string, o keypool.Outcome) keypool.Outcome {
	if o.Kind != keypool.KeyInvalid || !o.Confirm {
		return o
	}
	v := x.core.confirmKey(id, secret)
	switch v.Kind {
	case keypool.KeyInvalid:
		o.Confirm = false // confirmed: report disables the key
		if o.Project == "" {
			o.Project = v.Project
		}
		return o
	case keypool.Success, keypool.Quota:
		return keypool.Outcome{Kind: keypool.ClientError, Reason: o.Reason, Project: o.Project}
	default:
		return keypool.Outcome{Kind: keypool.KeyInvalid, Confirm: true, Reason: o.Reason, Project: o.Project}
	}
}

// clientGone marks the exchange as ended by the client.
func (x *exchange) clientGone() {
	x.status = 499
	x.errText = "client closed the request"
}

// report tells the pool how an attempt went, persists what changed and logs failed attempts.
// A key error still waiting for confirmation (o.Confirm) changes nothing.
func (x *exchange) report(id int64, o keypool.Outcome, status int) keypool.Change {
	c := x.core
	var ch keypool.Change
	if o.Kind != keypool.KeyInvalid || !o.Confirm {
		ch = c.pool.Report(id, x.model, o, time.Now())
		c.persist(ch, o.Reason)
		x.reported(ch)
		if ch.Opened {
			c.logger.Warn("the upstream fails for this model with every key: holding requests back (one trial a second) until it recovers; no key is counted or ejected meanwhile",
				zap.String("model", x.model), zap.String("last_error", o.Reason))
		}
		if ch.Closed {
			c.logger.Info("the upstream serves this model again", zap.String("model", x.model))
		}
	}
	// The client's own mistakes are in the request log; the error log (and a key's failed
	// count) is for what went wrong upstream.
	if o.Kind == keypool.Success || o.Kind == keypool.Canceled || o.Kind == keypool.ClientError {
		return ch
	}
	if status == 0 {
		status = http.StatusBadGateway
	}
	msg := o.Kind.String() + ": " + o.Reason
	switch {
	case o.Kind == keypool.KeyInvalid && o.Confirm:
		msg = "key_invalid (not confirmed by a probe, key left in service): " + o.Reason
	case ch.Outage:
		msg = "transient (model outage, not counted against the key): " + o.Reason
	case ch.Ejected:
		msg = "transient: " + ch.Reason
	}
	c.store.LogError(store.ErrorLog{
		Time:        time.Now(),
		KeyID:       id,
		AccessKeyID: x.access,
		Model:       x.model,
		Path:        x.path,
		Status:      status,
		Message:     msg,
	})
	return ch
}

// writeUpstreamError returns the last upstream failure to the client with its real status and
// Gemini envelope (the pool key masked out).
func (x *exchange) writeUpstreamError(e *upstreamError) {
	if e.outcome.Kind == keypool.KeyInvalid {
		// Google's words ("API key not valid") would make the client think its own key is bad.
		// (A key error the probe did not confirm reaches here only when no retry is left.)
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE",
			"No upstream key could serve the request: the keys tried were rejected by the upstream ("+e.outcome.Reason+").")
		return
	}
	if e.body == nil {
		x.fail(e.status, "UNAVAILABLE", "The upstream could not be reached: "+e.reason)
		return
	}
	hdr := x.w.Header()
	ct := e.header.Get("Content-Type")
	if ct == "" {
		ct = "application/json; charset=UTF-8"
	}
	hdr.Set("Content-Type", ct)
	hdr.Set("Content-Length", strconv.Itoa(len(e.body)))
	if e.outcome.Kind == keypool.Quota && !e.outcome.Until.IsZero() {
		x.retryAfter(e.outcome.Until, time.Now())
	}
	x.status = e.status
	x.errText = e.outcome.Reason
	x.w.WriteHeader(e.status)
	x.w.Write(e.body)
}

func (x *exchange) retryAfter(until, now time.Time) {
	secs := int64((until.Sub(now) + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	x.w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
}

// fail answers with Google's error envelope.
func (x *exchange) fail(code int, status, msg string) {
	x.status = code
	x.errText = msg
	writeError(x.w, code, status, msg)
}

// writeError writes {"error":{"code","message","status"}} as Google does.
func writeError(w http.ResponseWriter, code int, status, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
	b = append(b, '\n')
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json; charset=UTF-8")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(b)
}

// logRequest queues the exchange's request-log row; it never waits on the database.
func (x *exchange) logRequest() {
	if x.status == 0 {
		x.status = 499
	}
	x.recordRequest()
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
	})
}
