package gateway

// The Live API (gemini-api.md §1.8): BidiGenerateContent over a WebSocket, through the pool.
//
// A session's way: the access key is checked before the upgrade (401/403 in Google's JSON, as
// any request); the upgrade; the client's setup message, which names the model; the access
// key's policy for that model (a refusal is a close frame: 1008 for a model it may not use,
// 1011 for a limit reached, as Google closes a session over quota); a pool key for the model,
// the upstream handshake with that key in x-goog-api-key (never in the URL), the setup sent,
// and the upstream's first answer awaited (livedial.go). A handshake refused with an HTTP
// error, or a session the upstream closes before setupComplete with a quota or key error, is
// classified as the HTTP proxy classifies an answer (a key error confirmed by the probe
// first), reported to the pool, and retried on another key: the client has seen nothing yet.
// Once the upstream's setupComplete reaches the client the session is relayed both ways, frame
// by frame, until either side closes (livesession.go).
//
// A setup that resumes a session (sessionResumption.handle) goes to the key whose session gave
// out the handle, and to no other; handles are recorded as key-bound resources named
// "liveSessions/<handle>". Ephemeral tokens ("auth_tokens/…", made by POST /v1alpha/auth_tokens
// through the gateway and recorded with their key and access key) open
// BidiGenerateContentConstrained sessions without an access key: the token is the upstream
// credential, the session runs under its access key's policy, on its key's project.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// livePrefix starts the paths of the Live API's WebSocket methods
// ("/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent").
const livePrefix = "/ws/google.ai.generativelanguage."

const (
	// liveSetupTimeout bounds the wait for the client's setup, and for the upstream's answer to it.
	liveSetupTimeout = 30 * time.Second
	// liveResumeLifetime is how long a resumption handle is kept: Google honours one for 2 h
	// after its session ends.
	liveResumeLifetime = 2 * time.Hour
	// maxHandleLen is the longest resumption handle recorded; Google's are far shorter.
	maxHandleLen = 1024
	// maxTokenLen is the longest ephemeral token name looked up.
	maxTokenLen = 512
)

// Kinds of the key-bound resources of the Live API.
const (
	kindAuthTokens   = "auth_tokens"
	kindLiveSessions = "liveSessions"
)

// liveMethods are the Live API's methods; a path naming another gets 404.
var liveMethods = map[string]bool{
	"BidiGenerateContent": true, "BidiGenerateContentConstrained": true, "BidiGenerateMusic": true,
}

// liveMethod splits a Live API path into its version and method.
func liveMethod(p string) (version, method string, ok bool) {
	rest, found := strings.CutPrefix(p, livePrefix)
	if !found {
		return "", "", false
	}
	version, method, found = strings.Cut(rest, ".GenerativeService.")
	if !found || (version != "v1beta" && version != "v1alpha") || !liveMethods[method] {
		return "", "", false
	}
	return version, method, true
}

// liveUpgrader upgrades client connections. Origins are not checked: credentials are explicit
// (a key or a token in the URL or a header), never a cookie, so another site's page gains
// nothing from a visitor's browser. Write buffers are pooled (held only while writing); reads
// use the buffer the server already has for the connection.
var liveUpgrader = websocket.Upgrader{
	HandshakeTimeout: 10 * time.Second,
	CheckOrigin:      func(*http.Request) bool { return true },
	WriteBufferPool:  &liveWritePool,
}

// hijacker gives the upgrader the connection under caddy's response writer wrappers, which
// unwrap to a http.Hijacker without being one.
type hijacker struct{ http.ResponseWriter }

// Hijack implements http.Hijacker.
func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

// serveLive runs one Live API session: one request-log row for it all, whatever its end. Once
// the connection is upgraded the session runs on goroutines of its own and the handler
// returns: the server's goroutine of the connection, its deep stack and its buffers, are not
// kept for the session's life.
func (x *exchange) serveLive() {
	c := x.core
	// Destruct waits for open sessions (it closes them with 1001 first) before it closes the
	// store, so that their rows are written. The request is still an ordinary one here, which
	// a server's shutdown waits for, so this never races with Destruct's wait.
	c.bg.Add(1)
	handedOver := false
	defer func() {
		if !handedOver {
			x.finish()
			c.bg.Done()
		}
	}()
	x.set = c.settings.Load()
	x.stream = true
	_, method, known := liveMethod(x.path)
	if method == "BidiGenerateContentConstrained" {
		if !x.authenticateToken() {
			return
		}
	} else if !x.authenticate() {
		return
	}
	if !known {
		x.fail(http.StatusNotFound, "NOT_FOUND", "Method not found.")
		return
	}
	if !websocket.IsWebSocketUpgrade(x.r) {
		x.fail(http.StatusBadRequest, "INVALID_ARGUMENT", "The Live API speaks WebSocket: this request is not a WebSocket upgrade.")
		return
	}
	if c.ctx.Err() != nil {
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The gateway is shutting down.")
		return
	}
	conn, err := liveUpgrader.Upgrade(hijacker{x.w}, x.r, nil)
	if err != nil {
		// The upgrader has answered (400 for a malformed handshake).
		x.status = http.StatusBadRequest
		x.errText = "websocket upgrade failed: " + err.Error()
		return
	}
	// From here on the session needs neither the response writer nor the request's body, and
	// reads only fields of the request that nothing changes.
	handedOver = true
	s := &liveSession{x: x, client: conn}
	go func() {
		defer c.bg.Done()
		defer x.finish()
		defer s.recover()
		s.run()
	}()
}

// authenticateToken checks the ephemeral token of a Constrained session: one the gateway made
// (POST /v1alpha/auth_tokens), still live, whose access key is in good standing. The session
// then belongs to that access key, on the token's key.
func (x *exchange) authenticateToken() bool {
	tok := liveToken(x.r)
	if tok == "" {
		x.reject(rejectMissingKey, http.StatusUnauthorized, "UNAUTHENTICATED",
			"Missing ephemeral token: send it as Authorization: Token auth_tokens/… or the access_token query parameter.")
		return false
	}
	const invalid = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
	if !strings.HasPrefix(tok, kindAuthTokens+"/") || len(tok) > maxTokenLen {
		x.reject(rejectWrongKey, http.StatusUnauthorized, "UNAUTHENTICATED", invalid)
		return false
	}
	now := time.Now()
	owners, err := x.core.store.ResourceOwners(x.r.Context(), []string{tok}, now)
	if err != nil {
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The ephemeral token could not be looked up; try again.")
		return false
	}
	x.core.pending.owners([]string{tok}, now, owners)
	o, found := owners[tok]
	k := (*x.core.accessKeyByID.Load())[o.AccessKeyID]
	switch {
	case !found || k == nil:
		x.reject(rejectWrongKey, http.StatusUnauthorized, "UNAUTHENTICATED", invalid)
		return false
	case !k.enabled || k.broken:
		x.reject(rejectDisabledKey, http.StatusForbidden, "PERMISSION_DENIED", "The access key that made this ephemeral token is disabled.")
		return false
	case k.expired(x.start):
		x.reject(rejectExpiredKey, http.StatusUnauthorized, "UNAUTHENTICATED", "The access key that made this ephemeral token has expired.")
		return false
	}
	x.access, x.key, x.owner, x.ownerOf = k.id, k, o.KeyID, kindAuthTokens
	return true
}

// liveToken returns the ephemeral token of a Constrained connection: Authorization: Token …,
// else the access_token query parameter.
func liveToken(r *http.Request) string {
	if v := r.Header.Get("Authorization"); len(v) > 6 && strings.EqualFold(v[:6], "token ") {
		return strings.TrimSpace(v[6:])
	}
	if strings.Contains(r.URL.RawQuery, "access_token") {
		return r.URL.Query().Get("access_token")
	}
	return ""
}

// liveSetup is what the gateway reads of a client's setup message.
type liveSetup struct {
	model  string // as sent ("models/…")
	handle string // sessionResumption.handle, "" for a new session
}

// parseLiveSetup reads {"setup":{"model":…,"sessionResumption":{"handle":…}}}, taking only the
// members of exactly those names: encoding/json would also take "MODEL", and the session could
// then be counted for another model than the one Google serves.
func parseLiveSetup(b []byte) (liveSetup, bool) {
	var top map[string]bodyMember
	if json.Unmarshal(b, &top) != nil {
		return liveSetup{}, false
	}
	var setup map[string]bodyMember
	if json.Unmarshal(top["setup"], &setup) != nil || setup == nil {
		return liveSetup{}, false
	}
	var ls liveSetup
	if json.Unmarshal(setup["model"], &ls.model) != nil || ls.model == "" {
		return liveSetup{}, false
	}
	var resume map[string]bodyMember
	if len(setup["sessionResumption"]) > 0 && json.Unmarshal(setup["sessionResumption"], &resume) == nil {
		_ = json.Unmarshal(resume["handle"], &ls.handle)
	}
	return ls, true
}

// authTokenModel returns the model an ephemeral token's setup locks
// ({"bidiGenerateContentSetup":{"model":…}}, or its "setup" member), "" when it locks none: a
// token is then checked against the access key's models when it is made, as a session is.
func authTokenModel(body []byte) string {
	var top map[string]bodyMember
	if json.Unmarshal(body, &top) != nil {
		return ""
	}
	var setup map[string]bodyMember
	if json.Unmarshal(top["bidiGenerateContentSetup"], &setup) != nil {
		return ""
	}
	if inner, ok := setup["setup"]; ok {
		var s map[string]bodyMember
		if json.Unmarshal(inner, &s) == nil {
			setup = s
		}
	}
	var model string
	_ = json.Unmarshal(setup["model"], &model)
	return strings.TrimPrefix(model, "models/")
}

// Close codes (RFC 6455 §7.4.1) the gateway sends.
const (
	closeNormal        = websocket.CloseNormalClosure
	closeGoingAway     = websocket.CloseGoingAway
	closeNoStatus      = websocket.CloseNoStatusReceived
	closeInvalidData   = websocket.CloseInvalidFramePayloadData // Google's for an invalid argument or key
	closePolicy        = websocket.ClosePolicyViolation         // Google's for a permission denied or an unknown model
	closeInternalError = websocket.CloseInternalServerErr       // Google's for quota, overload and internal errors
)

// maxCloseReason is the longest reason a close frame holds (125 bytes less the code).
const maxCloseReason = 123

// closeReason cuts a reason to what a close frame holds, on a character boundary.
func closeReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= maxCloseReason {
		return s
	}
	cut := maxCloseReason
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut]
}

// closeCodeFor is the close code Google's Live API uses for what an HTTP status says.
func closeCodeFor(status int) int {
	switch {
	case status == http.StatusBadRequest:
		return closeInvalidData
	case status == http.StatusTooManyRequests, status >= 500:
		return closeInternalError
	default:
		return closePolicy
	}
}

// liveFailure is a failed attempt to open the upstream session, kept to be told to the client
// when no retry is left.
type liveFailure struct {
	status  int    // the handshake's HTTP status, or the one the failure stands for
	body    []byte // a refused handshake's answer, masked
	code    int    // the upstream's close code, when it closed the session before setupComplete
	text    string // its reason, masked
	reason  string // a network failure's cause: never told to the client
	outcome keypool.Outcome
	outage  bool
	logged  bool
}

// liveCloseOutcome tells what a close frame the upstream sent before setupComplete means for
// the key. A close frame has no structured fields, only a code and a reason: the reason is read
// as the message of the HTTP answer Google sends for the same error, and keypool.Classify
// decides from it as it does for HTTP, so only a whole fixed key message ("API key not valid.
// Please pass a valid API key.") condemns a key, and then only once a probe confirms it.
func liveCloseOutcome(code int, text string, now time.Time) (keypool.Outcome, int) {
	envelope := func(status int, rpc string) []byte {
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": status, "message": text, "status": rpc}})
		return b
	}
	switch code {
	case closeInvalidData, closePolicy:
		if o := keypool.Classify(http.StatusForbidden, envelope(http.StatusForbidden, "PERMISSION_DENIED"), now); o.Kind == keypool.KeyInvalid {
			return o, http.StatusForbidden
		}
		status := http.StatusBadRequest
		if code == closePolicy {
			status = http.StatusForbidden
		}
		return keypool.Outcome{Kind: keypool.ClientError, Reason: keypool.Classify(status, envelope(status, ""), now).Reason}, status
	case closeInternalError, websocket.CloseTryAgainLater:
		if strings.HasPrefix(text, "You exceeded your current quota") {
			return keypool.Classify(http.StatusTooManyRequests, envelope(http.StatusTooManyRequests, "RESOURCE_EXHAUSTED"), now), http.StatusTooManyRequests
		}
		o := keypool.Classify(http.StatusServiceUnavailable, envelope(http.StatusServiceUnavailable, "UNAVAILABLE"), now)
		return o, http.StatusServiceUnavailable
	}
	return keypool.Outcome{Kind: keypool.ClientError, Reason: keypool.Classify(http.StatusBadRequest, envelope(http.StatusBadRequest, ""), now).Reason}, http.StatusBadRequest
}

// errorMessage is the message of a Google error answer, or its status text.
func errorMessage(status int, body []byte) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(bytes.TrimSpace(body), &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	var list []struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(bytes.TrimSpace(body), &list) == nil && len(list) > 0 && list[0].Error.Message != "" {
		return list[0].Error.Message
	}
	return strconv.Itoa(status) + " " + http.StatusText(status)
}

// liveResource is the record of a resumption handle given out by the session's key.
func (x *exchange) liveResource(handle string, now time.Time) store.Resource {
	return store.Resource{Name: kindLiveSessions + "/" + handle, Kind: kindLiveSessions, KeyID: x.keyID,
		AccessKeyID: x.access, CreatedAt: now, ExpiresAt: now.Add(liveResumeLifetime)}
}
