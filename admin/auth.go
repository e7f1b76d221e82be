package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// SessionCookie is the name of the session cookie.
const SessionCookie = "gs_admin_session"

// Admin key rules (for PUT P/api/admin-key).
const (
	minAdminKeyLen = 16
	maxAdminKeyLen = 512
)

// auth is how a request was authenticated.
type auth struct {
	via       string   // "cookie" or "bearer"
	tokenHash [32]byte // of the session token, when via is "cookie"
	expires   time.Time
}

// throttle returns the Throttle the handler counts failures in.
func (h *Handler) throttle() *Throttle {
	if h.Throttle != nil {
		return h.Throttle
	}
	return &h.ownThrottle
}

// tryKey checks an admin key sent by the client, as one throttled attempt of its network
// (waiting, while the request lasts, for the network's tries in flight). If the network may
// not try now it answers 429 with Retry-After and returns answered true;
// otherwise it returns whether the key is right (a wrong one counts against the network).
func (h *Handler) tryKey(w http.ResponseWriter, r *http.Request, key string) (right, answered bool) {
	ip := h.clientIP(r)
	t := h.throttle()
	if d, ok := t.acquire(r.Context(), ip, h.now); !ok {
		secs := int(math.Ceil(d.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeError(w, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED",
			"Too many wrong admin keys from your address; try again in "+strconv.Itoa(secs)+" s.")
		return false, true
	}
	settled := false
	defer func() {
		if !settled { // the check panicked: give the reserved try back, never keep it for good
			t.cancel(ip)
		}
	}()
	var err error
	if key != "" {
		right, err = h.Backend.CheckAdminKey(key)
	}
	settled = true
	if err != nil {
		// The gateway could not check (database busy): the client's key is not to blame.
		t.cancel(ip)
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "The admin key could not be checked right now; try again.")
		return false, true
	}
	t.end(ip, h.now(), right)
	return right, false
}

// verifyKey checks an admin key asked for again (export, admin key change, guarded settings):
// a locked-out client gets 429, a wrong key the given error. It reports whether key is right.
func (h *Handler) verifyKey(w http.ResponseWriter, r *http.Request, key string, code int, status, msg string) bool {
	right, answered := h.tryKey(w, r, key)
	if !right && !answered {
		writeError(w, code, status, msg)
	}
	return right
}

// forwarded returns the scheme and host the client used, as a proxy the server trusts
// forwarded them ("" each when there is none, or the proxy is not trusted).
func (h *Handler) forwarded(r *http.Request) (proto, host string) {
	if h.Forwarded == nil {
		return "", ""
	}
	return h.Forwarded(r)
}

// isHTTPS reports whether the client reached the gateway over HTTPS: directly, or through a
// trusted proxy that terminated TLS.
func (h *Handler) isHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	proto, _ := h.forwarded(r)
	return strings.EqualFold(proto, "https")
}

// sameOrigin reports whether a browser request comes from the site itself: Sec-Fetch-Site is
// absent, same-origin or none (typed by the user), and Origin, if sent, names this host (the
// request's Host, or forwardedHost, the one a trusted proxy says the client used).
// Clients that are not browsers send neither header and pass.
func sameOrigin(r *http.Request, forwardedHost string) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default: // cross-site, same-site
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" and the like
	}
	return strings.EqualFold(u.Host, r.Host) || (forwardedHost != "" && strings.EqualFold(u.Host, forwardedHost))
}

// refuseForeign answers 403 and returns true for a request from another site.
func (h *Handler) refuseForeign(w http.ResponseWriter, r *http.Request) bool {
	_, host := h.forwarded(r)
	if sameOrigin(r, host) {
		return false
	}
	writeError(w, http.StatusForbidden, "PERMISSION_DENIED", "Cross-site requests to the admin API are refused.")
	return true
}

// authenticate checks the Bearer admin key or the session cookie, and the CSRF rule for
// cookie-authenticated changes. On failure it answers and returns false.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (*auth, bool) {
	if v := r.Header.Get("Authorization"); v != "" {
		var key string
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			key = strings.TrimSpace(v[7:])
		}
		if !h.verifyKey(w, r, key, http.StatusUnauthorized, "UNAUTHENTICATED", "The admin key is wrong.") {
			return nil, false
		}
		return &auth{via: "bearer"}, true
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		writeError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "Sign in, or send the admin key as Authorization: Bearer <admin key>.")
		return nil, false
	}
	hash := sha256.Sum256([]byte(c.Value))
	expires, ok, err := h.Backend.SessionExpiry(r.Context(), hash, h.now())
	if err != nil {
		writeBackendError(w, err)
		return nil, false
	}
	if !ok {
		h.clearCookie(w, r)
		writeError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "The session has expired or was ended; sign in again.")
		return nil, false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && h.refuseForeign(w, r) {
		return nil, false
	}
	return &auth{via: "cookie", tokenHash: hash, expires: expires}, true
}

// sessionCookie builds the session cookie for value, expiring at expires (a past time deletes).
func (h *Handler) sessionCookie(r *http.Request, value string, expires time.Time) *http.Cookie {
	c := &http.Cookie{
		Name:     SessionCookie,
		Value:    value,
		Path:     h.Prefix,
		HttpOnly: true,
		Secure:   h.isHTTPS(r),
		SameSite: http.SameSiteStrictMode,
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if expires.IsZero() {
		c.MaxAge = -1
	} else {
		c.Expires = expires.UTC()
		c.MaxAge = max(int(time.Until(expires).Seconds()), 1)
	}
	return c
}

func (h *Handler) clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, h.sessionCookie(r, "", time.Time{}))
}

// login checks the admin key and opens a session.
func (h *Handler) login(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	if h.refuseForeign(w, r) {
		return
	}
	var body struct {
		AdminKey string `json:"admin_key"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if body.AdminKey == "" {
		badField(w, "admin_key", "is required")
		return
	}
	if !h.verifyKey(w, r, body.AdminKey, http.StatusUnauthorized, "UNAUTHENTICATED", "The admin key is wrong.") {
		return
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		writeBackendError(w, err)
		return
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	ttl := h.SessionTTL
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	expires := h.now().Add(ttl)
	if err := h.Backend.CreateSession(r.Context(), sha256.Sum256([]byte(token)), expires); err != nil {
		writeBackendError(w, err)
		return
	}
	http.SetCookie(w, h.sessionCookie(r, token, expires))
	writeJSON(w, http.StatusOK, map[string]any{"expires_at": Time(expires.In(h.Backend.Location()))})
}

// logout ends the caller's session, if any, and deletes the cookie.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	if h.refuseForeign(w, r) {
		return
	}
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
		if err := h.Backend.DeleteSession(r.Context(), sha256.Sum256([]byte(c.Value))); err != nil {
			writeBackendError(w, err)
			return
		}
	}
	h.clearCookie(w, r)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// session tells the caller whether it is signed in.
func (h *Handler) session(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	a, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	out := map[string]any{"authenticated": true, "via": a.via, "expires_at": nil}
	if a.via == "cookie" {
		out["expires_at"] = Time(a.expires.In(h.Backend.Location()))
	}
	writeJSON(w, http.StatusOK, out)
}

// changeAdminKey replaces the admin key after checking the current one, and ends every other
// session.
func (h *Handler) changeAdminKey(w http.ResponseWriter, r *http.Request, a *auth, _ int64) {
	var body struct {
		Current string `json:"current"`
		New     string `json:"new"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if !h.verifyKey(w, r, body.Current, http.StatusForbidden, "PERMISSION_DENIED", "current: the admin key is wrong.") {
		return
	}
	if why := checkNewAdminKey(body.New); why != "" {
		badField(w, "new", why)
		return
	}
	var keep [32]byte
	if a.via == "cookie" {
		keep = a.tokenHash
	}
	if err := h.Backend.SetAdminKey(r.Context(), body.New, keep); err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// AdminKeyProblem returns why key cannot be the admin key (too short, too long, spaces or
// control characters), or "". The panel's rules; the gateway applies them to the Caddyfile's
// admin_key too.
func AdminKeyProblem(key string) string { return checkNewAdminKey(key) }

// checkNewAdminKey returns why key cannot be the admin key, or "".
func checkNewAdminKey(key string) string {
	n := len(key)
	switch {
	case n < minAdminKeyLen:
		return "must be at least " + strconv.Itoa(minAdminKeyLen) + " characters long"
	case n > maxAdminKeyLen:
		return "must be at most " + strconv.Itoa(maxAdminKeyLen) + " characters long"
	case strings.IndexFunc(key, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "must not contain spaces or control characters"
	}
	return ""
}
