package admin

// The admin API's contract, over real HTTP on loopback against fakeBackend: every route of
// the package doc, its status codes and JSON shapes, authentication (session cookie or Bearer
// admin key), the CSRF rule, JSON-only bodies, Google's error envelope with field violations,
// and the throttle. What needs the real gateway behind the API (the pool, the store, the
// proxy) is tested in the gateway's package.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

const contractAdminKey = "contract-admin-key-0123456789"

// contractKeys returns n distinct keys shaped like Google's (AIza and 35 more characters).
func contractKeys(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("AIzaSyCONTRACT%02d%s", from+i, strings.Repeat(string(rune('a'+(from+i)%26)), 23))
	}
	return out
}

// contract is an admin.Handler under /admin served on loopback, with fakeBackend behind it
// and a clock the test moves. Every answer but the export is recorded and, at the end,
// scanned for the admin key and every upstream key.
type contract struct {
	t   *testing.T
	b   *fakeBackend
	h   *Handler
	url string

	mu      sync.Mutex
	now     time.Time
	secrets []string
	seen    []string
}

// newContract serves the API with n upstream keys, the handler adjusted by options. Requests pose as the client in the
// X-Test-Client header (the host of the connection when absent); a request with
// X-Test-Proxy: trusted comes through a proxy the server trusts, which forwards the scheme
// https and the host gw.example.
func newContract(t *testing.T, n int, options ...func(*Handler)) *contract {
	t.Helper()
	keys := contractKeys(0, n)
	c := &contract{t: t, b: newFakeBackend(contractAdminKey, keys...), now: time.Now().UTC().Truncate(time.Second),
		secrets: append([]string{contractAdminKey}, keys...)}
	c.h = &Handler{
		Prefix:   "/admin",
		Backend:  c.b,
		Now:      c.clock,
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Test-Client") },
		Forwarded: func(r *http.Request) (string, string) {
			if r.Header.Get("X-Test-Proxy") != "trusted" {
				return "", ""
			}
			return r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host")
		},
	}
	c.b.now = c.clock
	for _, o := range options {
		o(c.h)
	}
	srv := httptest.NewServer(c.h)
	t.Cleanup(srv.Close)
	c.url = srv.URL
	t.Cleanup(c.assertNoSecretShown)
	return c
}

func (c *contract) clock() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *contract) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// secret adds texts no answer may hold.
func (c *contract) secret(s ...string) {
	c.mu.Lock()
	c.secrets = append(c.secrets, s...)
	c.mu.Unlock()
}

func (c *contract) assertNoSecretShown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.seen {
		for _, s := range c.secrets {
			if strings.Contains(a, s) {
				c.t.Errorf("an answer shows the secret %s…: %.300s", s[:10], strings.ReplaceAll(a, s, "<SECRET>"))
			}
		}
	}
}

// apiClient is one browser or script: its own cookie jar and headers.
type apiClient struct {
	c      *contract
	hc     *http.Client
	header http.Header
}

// client returns a new client sending the given header pairs with every request.
func (c *contract) client(header ...string) *apiClient {
	jar, err := cookiejar.New(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Add(header[i], header[i+1])
	}
	return &apiClient{c: c, header: h, hc: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// bearer is a script sending the admin key on every request.
func (c *contract) bearer() *apiClient { return c.client("Authorization", "Bearer "+contractAdminKey) }

// login is a browser signed in with the admin key.
func (c *contract) login(header ...string) *apiClient {
	c.t.Helper()
	cl := c.client(header...)
	cl.ok(200, "POST", "/admin/api/login", `{"admin_key":"`+contractAdminKey+`"}`)
	return cl
}

// answer is what came back.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// cookie returns the session cookie the answer sets, or nil.
func (a answer) cookie() *http.Cookie {
	for _, ck := range (&http.Response{Header: a.header}).Cookies() {
		if ck.Name == SessionCookie {
			return ck
		}
	}
	return nil
}

// send sends a request with exactly the given body and header pairs, and records the answer.
func (cl *apiClient) send(method, path, body string, header ...string) answer {
	t := cl.c.t
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, cl.c.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := cl.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(path, "/keys/export") || resp.StatusCode != 200 {
		var hdr bytes.Buffer
		resp.Header.Write(&hdr)
		cl.c.mu.Lock()
		cl.c.seen = append(cl.c.seen, hdr.String()+string(b))
		cl.c.mu.Unlock()
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// do sends a request, a non-empty body as application/json.
func (cl *apiClient) do(method, path, body string, header ...string) answer {
	cl.c.t.Helper()
	if body != "" {
		header = append([]string{"Content-Type", "application/json"}, header...)
	}
	return cl.send(method, path, body, header...)
}

// ok sends a request and fails unless the answer has status code and is a JSON object, which
// it returns decoded.
func (cl *apiClient) ok(code int, method, path, body string, header ...string) map[string]any {
	t := cl.c.t
	t.Helper()
	a := cl.do(method, path, body, header...)
	if a.status != code {
		t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, a.status, code, a.body)
	}
	return jsonObject(t, a)
}

// jsonObject checks that an answer is a JSON object no cache keeps, and decodes it.
func jsonObject(t *testing.T, a answer) map[string]any {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/json; charset=UTF-8" {
		t.Errorf("Content-Type %q, want application/json; charset=UTF-8", ct)
	}
	if cc := a.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, a.body)
	}
	return m
}

// envelope is Google's error answer.
type envelope struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type       string       `json:"@type"`
			Violations []FieldError `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

// decodeEnvelope checks that a is Google's error envelope with code and status.
func decodeEnvelope(t *testing.T, a answer, code int, status string) envelope {
	t.Helper()
	jsonObject(t, a)
	var e envelope
	if err := json.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("not an error envelope: %v: %s", err, a.body)
	}
	if a.status != code || e.Error.Code != code || e.Error.Status != status || e.Error.Message == "" {
		t.Fatalf("status %d, envelope %+v; want %d %s with a message", a.status, e.Error, code, status)
	}
	return e
}

// fails sends a request and checks it is refused with code and status in Google's envelope.
func (cl *apiClient) fails(code int, status, method, path, body string, header ...string) envelope {
	cl.c.t.Helper()
	return decodeEnvelope(cl.c.t, cl.do(method, path, body, header...), code, status)
}

// bad sends a request and checks it is a 400 INVALID_ARGUMENT whose BadRequest details name
// exactly fields, each with a reason, and whose message names them too.
func (cl *apiClient) bad(fields []string, method, path, body string) {
	t := cl.c.t
	t.Helper()
	a := cl.do(method, path, body)
	if a.status != 400 {
		t.Fatalf("%s %s %s: status %d, want 400: %s", method, path, body, a.status, a.body)
	}
	e := decodeEnvelope(t, a, 400, "INVALID_ARGUMENT")
	if len(e.Error.Details) != 1 || e.Error.Details[0].Type != "type.googleapis.com/google.rpc.BadRequest" {
		t.Fatalf("%s %s %s: no BadRequest details: %s", method, path, body, a.body)
	}
	var got []string
	for _, v := range e.Error.Details[0].Violations {
		if v.Description == "" {
			t.Errorf("%s %s %s: field %s has no reason", method, path, body, v.Field)
		}
		if !strings.Contains(e.Error.Message, v.Field+": "+v.Description) {
			t.Errorf("%s %s %s: message %q does not say %s: %s", method, path, body, e.Error.Message, v.Field, v.Description)
		}
		got = append(got, v.Field)
	}
	slices.Sort(got)
	if !slices.Equal(got, fields) {
		t.Errorf("%s %s %s: fields %v, want %v", method, path, body, got, fields)
	}
}

// list returns m[name] as a list of objects.
func list(t *testing.T, m map[string]any, name string) []map[string]any {
	t.Helper()
	raw, ok := m[name].([]any)
	if !ok {
		t.Fatalf("%s is not a list: %v", name, m[name])
	}
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		out[i] = v.(map[string]any)
	}
	return out
}

// ids returns the "id" of each object.
func ids(objs []map[string]any) []int64 {
	out := []int64{}
	for _, o := range objs {
		out = append(out, int64(o["id"].(float64)))
	}
	return out
}

// hasFields fails unless obj has exactly the named fields.
func hasFields(t *testing.T, what string, obj map[string]any, names ...string) {
	t.Helper()
	var got []string
	for k := range obj {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Errorf("%s has the fields %v, want %v", what, got, names)
	}
}

// keyFields are the fields of a Key.
var keyFields = []string{"id", "masked", "project", "status", "disabled_reason", "manual_disabled",
	"failure_count", "last_error", "last_used_at", "requests", "failures", "cooldowns", "created_at", "resources"}

// protected are every route that needs authentication, with a harmless body.
var protected = [][3]string{
	{"GET", "/admin/api/status", ""},
	{"GET", "/admin/api/keys", ""},
	{"POST", "/admin/api/keys", `{"keys":[]}`},
	{"PATCH", "/admin/api/keys/1", `{"project":"p"}`},
	{"POST", "/admin/api/keys/project", `{"ids":[1],"project":"p"}`},
	{"DELETE", "/admin/api/keys/1", ""},
	{"POST", "/admin/api/keys/1/enable", ""},
	{"POST", "/admin/api/keys/1/disable", ""},
	{"POST", "/admin/api/keys/1/validate", ""},
	{"POST", "/admin/api/keys/validate", ""},
	{"GET", "/admin/api/keys/validate", ""},
	{"POST", "/admin/api/keys/export", `{"admin_key":"` + contractAdminKey + `"}`},
	{"GET", "/admin/api/access-keys", ""},
	{"POST", "/admin/api/access-keys", `{"label":"x"}`},
	{"PATCH", "/admin/api/access-keys/1", `{"rpm":5}`},
	{"GET", "/admin/api/access-keys/1/usage", ""},
	{"DELETE", "/admin/api/access-keys/1", ""},
	{"POST", "/admin/api/access-keys/1/enable", ""},
	{"POST", "/admin/api/access-keys/1/disable", ""},
	{"PUT", "/admin/api/admin-key", `{"current":"` + contractAdminKey + `","new":"another-admin-key-0123456789"}`},
	{"GET", "/admin/api/settings", ""},
	{"PUT", "/admin/api/settings", `{"max_retries":1}`},
	{"GET", "/admin/api/stats", ""},
	{"GET", "/admin/api/logs", ""},
	{"GET", "/admin/api/session", ""},
}

// TestContractRoutesNeedAuthentication: every route but login and logout answers 401 without
// a session or the Bearer admin key (or with a wrong one), and nothing changes.
func TestContractRoutesNeedAuthentication(t *testing.T) {
	c := newContract(t, 2)
	client := 0
	for _, cl := range []*apiClient{
		c.client(),
		c.client("Authorization", "Bearer not-the-admin-key"),
		c.client("Authorization", "Basic "+contractAdminKey),
		c.client("Cookie", SessionCookie+"=made-up-token"),
	} {
		for _, r := range protected {
			// A wrong admin key counts against the client: each request from an address of its own.
			client++
			cl.fails(401, "UNAUTHENTICATED", r[0], r[1], r[2], "X-Test-Client", fmt.Sprintf("192.0.2.%d", client))
		}
	}
	if n := c.b.changes(""); n != 0 {
		t.Errorf("unauthenticated requests made %d changes", n)
	}
	// A made-up session cookie is deleted.
	a := c.client("Cookie", SessionCookie+"=made-up-token").do("GET", "/admin/api/keys", "")
	if ck := a.cookie(); ck == nil || ck.MaxAge >= 0 {
		t.Errorf("an unknown session's cookie is not deleted: %+v", ck)
	}
	// Both ways in work.
	for _, cl := range []*apiClient{c.bearer(), c.login()} {
		for _, r := range [][3]string{{"GET", "/admin/api/status", ""}, {"GET", "/admin/api/keys", ""}, {"GET", "/admin/api/settings", ""}} {
			cl.ok(200, r[0], r[1], r[2])
		}
	}
}

// TestContractLoginAndLogout: login sets the session cookie (HttpOnly, SameSite=Strict,
// Path=prefix, random, stored only as its hash) and answers when it expires; logout ends it.
func TestContractLoginAndLogout(t *testing.T) {
	c := newContract(t, 1)
	anon := c.client()
	anon.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", `{"admin_key":"nope"}`)
	anon.bad([]string{"admin_key"}, "POST", "/admin/api/login", `{}`)
	anon.bad([]string{"admin_key"}, "POST", "/admin/api/login", `{"admin_key":42}`)
	anon.fails(400, "INVALID_ARGUMENT", "POST", "/admin/api/login", `not json`)
	if n := c.b.sessionCount(); n != 0 {
		t.Fatalf("%d sessions after failed logins", n)
	}

	a := anon.do("POST", "/admin/api/login", `{"admin_key":"`+contractAdminKey+`"}`)
	if a.status != 200 {
		t.Fatalf("login: %d %s", a.status, a.body)
	}
	m := jsonObject(t, a)
	hasFields(t, "login answer", m, "expires_at")
	if want := c.clock().Add(DefaultSessionTTL).Format(time.RFC3339); m["expires_at"] != want {
		t.Errorf("expires_at %v, want %s (now + the session TTL)", m["expires_at"], want)
	}
	ck := a.cookie()
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/admin" || ck.Secure || len(ck.Value) < 40 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/admin, not Secure over http, a long token", ck)
	}
	if ck.MaxAge <= 0 || ck.Expires.IsZero() {
		t.Errorf("session cookie has no lifetime: %+v", ck)
	}
	if bytes.Contains(a.body, []byte(ck.Value)) {
		t.Error("the session token is in the login answer's body")
	}
	if _, ok, _ := c.b.SessionExpiry(t.Context(), sha256.Sum256([]byte(ck.Value)), c.clock()); !ok {
		t.Error("the backend has no session under the token's SHA-256")
	}
	s := anon.ok(200, "GET", "/admin/api/session", "")
	hasFields(t, "session", s, "authenticated", "via", "expires_at")
	if s["authenticated"] != true || s["via"] != "cookie" || s["expires_at"] != m["expires_at"] {
		t.Errorf("session %v", s)
	}
	if s := c.bearer().ok(200, "GET", "/admin/api/session", ""); s["via"] != "bearer" || s["expires_at"] != nil || s["authenticated"] != true {
		t.Errorf("bearer session %v", s)
	}
	// Every login is a session of its own.
	other := c.login()
	if n := c.b.sessionCount(); n != 2 {
		t.Fatalf("%d sessions after two logins", n)
	}

	// Logout ends the session and deletes the cookie; the old token no longer works.
	a = anon.do("POST", "/admin/api/logout", "")
	if m := jsonObject(t, a); a.status != 200 || m["ok"] != true {
		t.Fatalf("logout: %d %s", a.status, a.body)
	}
	if ck := a.cookie(); ck == nil || ck.MaxAge >= 0 || ck.Path != "/admin" || ck.Value != "" {
		t.Errorf("logout does not delete the cookie: %+v", ck)
	}
	if n := c.b.sessionCount(); n != 1 {
		t.Errorf("%d sessions after a logout, want the other one", n)
	}
	c.client("Cookie", SessionCookie+"="+ck.Value).fails(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	anon.fails(401, "UNAUTHENTICATED", "GET", "/admin/api/session", "")
	other.ok(200, "GET", "/admin/api/keys", "")
	// Logout without a session is fine.
	c.client().ok(200, "POST", "/admin/api/logout", "")
}

// TestContractSessionExpiry: a session lasts DefaultSessionTTL by the handler's clock, or
// the handler's SessionTTL; the Bearer key does not expire.
func TestContractSessionExpiry(t *testing.T) {
	c := newContract(t, 1)
	browser := c.login()
	c.advance(DefaultSessionTTL - time.Second)
	browser.ok(200, "GET", "/admin/api/keys", "")
	c.advance(time.Second)
	browser.fails(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	c.bearer().ok(200, "GET", "/admin/api/keys", "")

	c = newContract(t, 1, func(h *Handler) { h.SessionTTL = time.Minute })
	short := c.login()
	if s := short.ok(200, "GET", "/admin/api/session", ""); s["expires_at"] != c.clock().Add(time.Minute).Format(time.RFC3339) {
		t.Errorf("a session with SessionTTL 1m expires at %v", s["expires_at"])
	}
	c.advance(time.Minute)
	short.fails(401, "UNAUTHENTICATED", "GET", "/admin/api/session", "")
}

// TestContractCookieBehindTrustedProxy: the cookie is Secure over TLS, and when a trusted
// proxy says the client used https; the forwarded host counts as this site for the Origin
// check. An untrusted client's forwarded headers change neither.
func TestContractCookieBehindTrustedProxy(t *testing.T) {
	c := newContract(t, 1)
	login := `{"admin_key":"` + contractAdminKey + `"}`
	fwd := []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "gw.example", "Origin", "https://gw.example"}
	a := c.client("X-Test-Proxy", "trusted").do("POST", "/admin/api/login", login, fwd...)
	if ck := a.cookie(); a.status != 200 || ck == nil || !ck.Secure {
		t.Errorf("login through a trusted TLS proxy: %d, cookie %+v; want a Secure cookie", a.status, ck)
	}
	decodeEnvelope(t, c.client().do("POST", "/admin/api/login", login, fwd...), 403, "PERMISSION_DENIED")
	a = c.client().do("POST", "/admin/api/login", login, "X-Forwarded-Proto", "https")
	if ck := a.cookie(); a.status != 200 || ck == nil || ck.Secure {
		t.Errorf("an untrusted client claiming https: %d, cookie %+v; want no Secure", a.status, ck)
	}
	// Over TLS itself.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "https://gw.example/admin/api/login", strings.NewReader(login))
	req.Header.Set("Content-Type", "application/json")
	c.h.ServeHTTP(rec, req)
	if cks := rec.Result().Cookies(); rec.Code != 200 || len(cks) != 1 || !cks[0].Secure {
		t.Errorf("login over TLS: %d, cookies %+v", rec.Code, cks)
	}
}

// TestContractAnyPrefix: the redirect, the API and the cookie's path follow the prefix.
func TestContractAnyPrefix(t *testing.T) {
	b := newFakeBackend(contractAdminKey, contractKeys(0, 1)...)
	h := &Handler{Prefix: "/ops/gs", Backend: b}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ops/gs?x=1", nil))
	if rec.Code != 301 || rec.Header().Get("Location") != "/ops/gs/?x=1" {
		t.Errorf("/ops/gs: %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/ops/gs/api/login", strings.NewReader(`{"admin_key":"`+contractAdminKey+`"}`))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	cks := rec.Result().Cookies()
	if rec.Code != 200 || len(cks) != 1 || cks[0].Path != "/ops/gs" {
		t.Fatalf("login under /ops/gs: %d, cookies %+v", rec.Code, cks)
	}
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/ops/gs/api/keys", nil)
	req.AddCookie(cks[0])
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"total":1`) {
		t.Errorf("keys under /ops/gs: %d %s", rec.Code, rec.Body)
	}
}

// TestContractCSRF: a cookie-authenticated change from another site (Origin or
// Sec-Fetch-Site) is 403 and changes nothing; reads, the site itself and Bearer requests pass;
// login and logout from another site are refused.
func TestContractCSRF(t *testing.T) {
	c := newContract(t, 2)
	u, _ := url.Parse(c.url)
	self := "http://" + u.Host
	browser := c.login()
	foreign := [][]string{
		{"Origin", "https://evil.example"},
		{"Origin", "null"},
		{"Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "same-site"},
		{"Origin", self, "Sec-Fetch-Site", "cross-site"},
	}
	for _, r := range protected {
		if r[0] == "GET" {
			continue
		}
		for _, h := range foreign {
			browser.fails(403, "PERMISSION_DENIED", r[0], r[1], r[2], h...)
		}
	}
	if n := c.b.changes(""); n != 0 {
		t.Fatalf("cross-site requests made %d changes", n)
	}
	if c.b.setting("max_retries") != "3" || c.b.sessionCount() != 1 {
		t.Fatal("a cross-site request changed something")
	}
	// Reading from anywhere is harmless: the browser does not let the other site read it.
	browser.ok(200, "GET", "/admin/api/keys", "", "Origin", "https://evil.example")
	if a := browser.do("HEAD", "/admin/api/keys", "", "Sec-Fetch-Site", "cross-site"); a.status != 200 {
		t.Errorf("HEAD from another site: %d", a.status)
	}
	// The site itself may change things, with or without the headers.
	browser.ok(200, "POST", "/admin/api/keys/1/disable", "", "Origin", self, "Sec-Fetch-Site", "same-origin")
	browser.ok(200, "POST", "/admin/api/keys/1/enable", "", "Sec-Fetch-Site", "none")
	browser.ok(200, "POST", "/admin/api/keys/1/disable", "")
	// A Bearer request carries no ambient credential: no CSRF check.
	c.bearer().ok(200, "POST", "/admin/api/keys/1/enable", "", "Origin", "https://evil.example")
	// Login and logout from another site are refused.
	c.client().fails(403, "PERMISSION_DENIED", "POST", "/admin/api/login", `{"admin_key":"`+contractAdminKey+`"}`, "Origin", "https://evil.example")
	browser.fails(403, "PERMISSION_DENIED", "POST", "/admin/api/logout", "", "Sec-Fetch-Site", "cross-site")
	browser.ok(200, "GET", "/admin/api/session", "")
	if n := c.b.sessionCount(); n != 1 {
		t.Errorf("%d sessions, want the browser's one", n)
	}
}

// TestContractBodiesMustBeJSON: a body a cross-site form could send (text/plain,
// form-encoded, multipart, no type) is 415 on every route that takes one, and changes
// nothing; a JSON type with parameters is JSON; routes without a body need no type.
func TestContractBodiesMustBeJSON(t *testing.T) {
	c := newContract(t, 2)
	b := c.bearer()
	for _, r := range protected {
		if r[1] == "/admin/api/keys/validate" && r[0] == "POST" {
			r[2] = `{"ids":[1]}`
		}
		if r[2] == "" { // the route reads no body
			continue
		}
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/json-seq", "json"} {
			a := b.send(r[0], r[1], r[2], "Content-Type", ct)
			decodeEnvelope(t, a, 415, "INVALID_ARGUMENT")
		}
	}
	for _, r := range [][3]string{{"POST", "/admin/api/login", `{"admin_key":"` + contractAdminKey + `"}`}} {
		decodeEnvelope(t, c.client().send(r[0], r[1], r[2], "Content-Type", "text/plain"), 415, "INVALID_ARGUMENT")
	}
	if n := c.b.changes(""); n != 0 || c.b.sessionCount() != 0 {
		t.Fatalf("bodies not declared as JSON made %d changes", n)
	}
	b.ok(200, "PUT", "/admin/api/settings", `{"max_retries":0}`, "Content-Type", "application/json; charset=utf-8")
	b.ok(200, "PUT", "/admin/api/settings", `{"max_retries":1}`, "Content-Type", "Application/JSON")
	if got := c.b.setting("max_retries"); got != "1" {
		t.Errorf("max_retries %q after JSON with parameters", got)
	}
	// Routes without a body need no Content-Type; nor does a blank body.
	if a := b.send("POST", "/admin/api/keys/1/disable", ""); a.status != 200 {
		t.Errorf("disable without a body: %d %s", a.status, a.body)
	}
	if a := b.send("POST", "/admin/api/keys/validate", "  \n", "Content-Type", "text/plain"); a.status != 202 {
		t.Errorf("validate all with a blank text body: %d %s", a.status, a.body)
	}
	if a := b.send("DELETE", "/admin/api/keys/2", ""); a.status != 200 {
		t.Errorf("delete without a body: %d %s", a.status, a.body)
	}
	// Bodies are bounded.
	big := `{"text":"` + strings.Repeat("x", maxBody+100) + `"}`
	decodeEnvelope(t, b.do("POST", "/admin/api/keys", big), 413, "INVALID_ARGUMENT")
}

// TestContractRoutingAndHeaders: unknown routes are a JSON 404, a known route with another
// method a 405 naming the allowed ones; every answer carries the security headers; HEAD is
// GET without the body.
func TestContractRoutingAndHeaders(t *testing.T) {
	c := newContract(t, 1)
	b := c.bearer()
	for _, p := range []string{"/admin/api", "/admin/api/", "/admin/api/nope", "/admin/api/keys/0", "/admin/api/keys/-1",
		"/admin/api/keys/abc/enable", "/admin/api/keys/1/nope", "/admin/api/access-keys/x"} {
		b.fails(404, "NOT_FOUND", "GET", p, "")
	}
	for _, m := range []struct{ method, path, allow string }{
		{"PATCH", "/admin/api/keys", "GET, POST"},
		{"GET", "/admin/api/keys/1", "DELETE, PATCH"},
		{"PUT", "/admin/api/keys/validate", "GET, POST"},
		{"GET", "/admin/api/login", "POST"},
		{"POST", "/admin/api/settings", "GET, PUT"},
		{"DELETE", "/admin/api/stats", "GET"},
	} {
		a := b.do(m.method, m.path, "")
		decodeEnvelope(t, a, 405, "METHOD_NOT_ALLOWED")
		if got := a.header.Get("Allow"); got != m.allow {
			t.Errorf("%s %s: Allow %q, want %q", m.method, m.path, got, m.allow)
		}
	}
	a := b.do("GET", "/admin/api/status", "")
	for name, want := range map[string]string{
		"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
		"Content-Security-Policy": contentSecurityPolicy,
	} {
		if got := a.header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if h := b.do("HEAD", "/admin/api/status", ""); h.status != 200 || len(h.body) != 0 || h.header.Get("Content-Length") != a.header.Get("Content-Length") {
		t.Errorf("HEAD status: %d, %d bytes, Content-Length %q", h.status, len(h.body), h.header.Get("Content-Length"))
	}
}

// TestContractBackendErrors: a backend failure is a 500 INTERNAL saying why; an unknown id
// (store.ErrNotFound) a 404; a database out of reach (store.ErrUnavailable) a 503 UNAVAILABLE.
func TestContractBackendErrors(t *testing.T) {
	c := newContract(t, 1)
	b := c.bearer()
	c.b.mu.Lock()
	c.b.fail = errStoreGone
	c.b.mu.Unlock()
	for _, p := range []string{"/admin/api/keys", "/admin/api/stats"} {
		if e := b.fails(500, "INTERNAL", "GET", p, ""); !strings.Contains(e.Error.Message, errStoreGone.Error()) {
			t.Errorf("GET %s: message %q does not say why", p, e.Error.Message)
		}
	}
	c.b.mu.Lock()
	c.b.fail = fmt.Errorf("postgres: keys: dial tcp: connection refused: %w", store.ErrUnavailable)
	c.b.mu.Unlock()
	for _, p := range []string{"/admin/api/keys", "/admin/api/stats"} {
		b.fails(503, "UNAVAILABLE", "GET", p, "")
	}
}

// TestContractStatus: GET status answers the backend's summary as it is.
func TestContractStatus(t *testing.T) {
	c := newContract(t, 3)
	c.bearer().ok(200, "POST", "/admin/api/keys/2/disable", "")
	m := c.bearer().ok(200, "GET", "/admin/api/status", "")
	hasFields(t, "status", m, "keys", "log_rows_dropped")
	if k := m["keys"].(map[string]any); k["active"] != 2.0 || k["disabled"] != 1.0 || k["cooling"] != 0.0 {
		t.Errorf("status keys %v", k)
	}
}

// TestContractListKeys: GET keys pages, filters by status, project and search text, and
// counts over all keys.
func TestContractListKeys(t *testing.T) {
	c := newContract(t, 6)
	b := c.bearer()
	m := b.ok(200, "GET", "/admin/api/keys", "")
	hasFields(t, "key list", m, "keys", "total", "page", "page_size", "counts", "projects", "unlabeled")
	keys := list(t, m, "keys")
	if !slices.Equal(ids(keys), []int64{1, 2, 3, 4, 5, 6}) || m["total"] != 6.0 || m["page"] != 1.0 || m["page_size"] != 50.0 {
		t.Fatalf("keys %v, total %v, page %v, size %v", ids(keys), m["total"], m["page"], m["page_size"])
	}
	hasFields(t, "a key", keys[0], keyFields...)
	if k := keys[0]; k["masked"] != "AIzaSy…aaaa" || k["status"] != "active" || k["last_used_at"] != nil {
		t.Errorf("first key %v", k)
	}
	if len(list(t, m, "projects")) != 0 || m["unlabeled"] != 6.0 {
		t.Errorf("projects %v, unlabeled %v", m["projects"], m["unlabeled"])
	}

	// State, as the backend reports it.
	c.b.mu.Lock()
	c.b.keys[1].Status, c.b.keys[1].DisabledReason = KeyDisabled, "API key not valid"
	c.b.keys[2].Status = KeyCooling
	c.b.keys[2].Cooldowns = []Cooldown{{Model: "gemini-2.5-pro", Until: Time(c.now.Add(time.Hour))}}
	c.b.keys[2].LastError = "429 quota exceeded"
	c.b.keys[3].Project, c.b.keys[4].Project, c.b.keys[5].Project = "proj-b", "proj-a", "proj-b"
	c.b.mu.Unlock()

	m = b.ok(200, "GET", "/admin/api/keys?status=cooling", "")
	cooling := list(t, m, "keys")
	if !slices.Equal(ids(cooling), []int64{3}) || m["total"] != 1.0 {
		t.Fatalf("cooling %v", ids(cooling))
	}
	cds := list(t, cooling[0], "cooldowns")
	if len(cds) != 1 || cds[0]["model"] != "gemini-2.5-pro" || cds[0]["until"] != c.clock().Add(time.Hour).Format(time.RFC3339) {
		t.Errorf("cooldowns %v", cds)
	}
	if counts := m["counts"].(map[string]any); counts["active"] != 4.0 || counts["cooling"] != 1.0 || counts["disabled"] != 1.0 {
		t.Errorf("counts %v: over all keys, not the filtered ones", counts)
	}
	for q, want := range map[string][]int64{
		"status=disabled":               {2},
		"status=active":                 {1, 4, 5, 6},
		"status=all":                    {1, 2, 3, 4, 5, 6},
		"project=proj-b":                {4, 6},
		"project=+proj-b+":              {4, 6},
		"project=":                      {1, 2, 3},
		"project=nobody":                {},
		"q=QUOTA":                       {3},
		"q=not+valid":                   {2},
		"q=5":                           {5},
		"q=proj-":                       {4, 5, 6},
		"q=" + url.QueryEscape("…bbbb"): {2},
		"status=active&project=proj-b&page_size=1":        {4},
		"status=active&project=proj-b&page=2&page_size=1": {6},
		"page=2&page_size=4":                              {5, 6},
		"page=3&page_size=4":                              {},
		"page_size=500":                                   {1, 2, 3, 4, 5, 6},
	} {
		m := b.ok(200, "GET", "/admin/api/keys?"+q, "")
		if got := ids(list(t, m, "keys")); !slices.Equal(got, want) {
			t.Errorf("?%s: %v, want %v", q, got, want)
		}
		projects := list(t, m, "projects")
		if len(projects) != 2 || projects[0]["project"] != "proj-a" || projects[0]["keys"] != 1.0 ||
			projects[1]["project"] != "proj-b" || projects[1]["keys"] != 2.0 || m["unlabeled"] != 3.0 {
			t.Errorf("?%s: projects %v, unlabeled %v; want proj-a 1, proj-b 2, 3 unlabelled (over all keys)", q, projects, m["unlabeled"])
		}
	}
	if m := b.ok(200, "GET", "/admin/api/keys?project=proj-b&page_size=1", ""); m["total"] != 2.0 || m["page_size"] != 1.0 {
		t.Errorf("total of a filtered page %v, size %v", m["total"], m["page_size"])
	}
	for _, q := range []string{"page=0", "page=-1", "page=x", "page=1000001", "page_size=0", "page_size=501", "page_size=x",
		"status=sleepy", "project=a%2Fb", "project=two+words", "project=" + strings.Repeat("x", 65)} {
		b.bad([]string{strings.Split(q, "=")[0]}, "GET", "/admin/api/keys?"+q, "")
	}
}

// TestContractAddKeys: POST keys takes a list or pasted text and counts what it did.
func TestContractAddKeys(t *testing.T) {
	c := newContract(t, 3)
	b := c.bearer()
	old := contractKeys(0, 3)
	fresh := contractKeys(10, 5)
	c.secret(fresh...)
	text := strings.Join([]string{
		"GEMINI_API_KEY=" + fresh[0],             // a key in free text
		fresh[1] + " proj-new",                   // a key and its label
		old[0] + "\tproj-old",                    // stored: labelled now
		old[1],                                   // stored: a duplicate
		fresh[0] + " again, " + fresh[2] + "XYZ", // a repeat, and a key too long
		fresh[3] + " bad/label",                  // a bad label: invalid, nothing added
		"broken AIzaSyTooShort",                  // not a key
	}, "\n")
	body, _ := json.Marshal(map[string]string{"text": text})
	m := b.ok(200, "POST", "/admin/api/keys", string(body))
	hasFields(t, "add answer", m, "added", "duplicates", "invalid", "relabeled")
	if m["added"] != 2.0 || m["duplicates"] != 3.0 || m["invalid"] != 3.0 || m["relabeled"] != 1.0 {
		t.Errorf("paste: %v; want 2 added, 3 duplicates (2 stored, 1 repeat), 3 invalid, 1 relabeled", m)
	}
	c.b.mu.Lock()
	got := c.b.adds[0]
	c.b.mu.Unlock()
	want := []store.NewKey{{Secret: fresh[0]}, {Secret: fresh[1], Project: "proj-new"}, {Secret: old[0], Project: "proj-old"}, {Secret: old[1]}}
	if !slices.Equal(got, want) {
		t.Errorf("the backend was given %d keys %v, want %d", len(got), got, len(want))
	}
	if keys := list(t, b.ok(200, "GET", "/admin/api/keys", ""), "keys"); len(keys) != 5 || keys[0]["project"] != "proj-old" || keys[4]["project"] != "proj-new" {
		t.Errorf("keys after the paste: %v", keys)
	}

	// The list form: each entry a key, or a key and a label.
	m = b.ok(200, "POST", "/admin/api/keys", fmt.Sprintf(`{"keys":[%q,%q,%q,"not-a-key",%q]}`, " "+fresh[4]+" ", fresh[0], fresh[4], old[2]+" proj-list"))
	if m["added"] != 1.0 || m["duplicates"] != 3.0 || m["invalid"] != 1.0 || m["relabeled"] != 1.0 {
		t.Errorf("list: %v; want 1 added, 3 duplicates (2 stored, 1 repeat), 1 invalid, 1 relabeled", m)
	}
	// Nothing that is a key: the backend is not asked.
	n := c.b.changes("AddLabeledKeys")
	for _, body := range []string{`{"keys":[]}`, `{"text":""}`, `{"keys":["nope"]}`} {
		m = b.ok(200, "POST", "/admin/api/keys", body)
		if m["added"] != 0.0 || m["duplicates"] != 0.0 || m["relabeled"] != 0.0 {
			t.Errorf("%s: %v", body, m)
		}
	}
	if c.b.changes("AddLabeledKeys") != n {
		t.Error("the backend was asked to add no keys")
	}
	for body, field := range map[string]string{
		`{}`:                        "keys",
		`{"keys":["x"],"text":"y"}`: "keys",
		`{"keys":"x"}`:              "keys",
		`{"keys":[1]}`:              "keys",
		`{"text":5}`:                "text",
	} {
		b.bad([]string{field}, "POST", "/admin/api/keys", body)
	}
	b.fails(400, "INVALID_ARGUMENT", "POST", "/admin/api/keys", `["x"]`)
	if c.b.changes("AddLabeledKeys") != n {
		t.Error("a refused add reached the backend")
	}
}

// TestContractKeyProjects: PATCH keys/{id} and POST keys/project label keys; a bad label,
// body or id names the field, and an unknown id is a 404 naming it; neither changes anything.
func TestContractKeyProjects(t *testing.T) {
	c := newContract(t, 4)
	b := c.bearer()
	k := b.ok(200, "PATCH", "/admin/api/keys/1", `{"project":" proj-a "}`)
	hasFields(t, "patched key", k, keyFields...)
	if k["id"] != 1.0 || k["project"] != "proj-a" {
		t.Errorf("PATCH answer %v", k)
	}
	m := b.ok(200, "POST", "/admin/api/keys/project", `{"ids":[2,3,1],"project":"proj-a"}`)
	hasFields(t, "project answer", m, "changed")
	if m["changed"] != 2.0 {
		t.Errorf("changed %v, want 2 (key 1 had the label)", m["changed"])
	}
	labels := func() []string {
		var out []string
		for _, k := range list(t, b.ok(200, "GET", "/admin/api/keys", ""), "keys") {
			out = append(out, k["project"].(string))
		}
		return out
	}
	if got := labels(); !slices.Equal(got, []string{"proj-a", "proj-a", "proj-a", ""}) {
		t.Fatalf("labels %q", got)
	}
	n := c.b.changes("SetKeysProject")
	for _, r := range []struct{ method, path, body, field string }{
		{"PATCH", "/admin/api/keys/1", `{"project":"two words"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"` + strings.Repeat("x", 65) + `"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"a/b"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":7}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":null}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{}`, "project"},
		{"PATCH", "/admin/api/keys/1", ``, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"ok","status":"disabled"}`, "status"},
		{"POST", "/admin/api/keys/project", `{"ids":[1,2],"project":"bad label"}`, "project"},
		{"POST", "/admin/api/keys/project", `{"ids":[1,2]}`, "project"},
		{"POST", "/admin/api/keys/project", `{"ids":[],"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":[0],"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":[-3],"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":"1","project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":[1],"project":"x","force":true}`, "force"},
	} {
		b.bad([]string{r.field}, r.method, r.path, r.body)
	}
	b.fails(400, "INVALID_ARGUMENT", "PATCH", "/admin/api/keys/1", `{"project":"x"`)
	if c.b.changes("SetKeysProject") != n {
		t.Error("a refused label reached the backend")
	}
	// Unknown ids: 404 naming them, and nothing changes, not even for the known ones.
	b.fails(404, "NOT_FOUND", "PATCH", "/admin/api/keys/999", `{"project":"x"}`)
	e := b.fails(404, "NOT_FOUND", "POST", "/admin/api/keys/project", `{"ids":[4,999,998,999],"project":"x"}`)
	if !strings.Contains(e.Error.Message, "998, 999") || !strings.Contains(e.Error.Message, "nothing was changed") {
		t.Errorf("404 message %q does not name the unknown ids", e.Error.Message)
	}
	// Clearing.
	if k := b.ok(200, "PATCH", "/admin/api/keys/2", `{"project":""}`); k["project"] != "" {
		t.Errorf("cleared key %v", k)
	}
	if m := b.ok(200, "POST", "/admin/api/keys/project", `{"ids":[3],"project":"  "}`); m["changed"] != 1.0 {
		t.Errorf("clearing with blanks: %v", m)
	}
	if got := labels(); !slices.Equal(got, []string{"proj-a", "", "", ""}) {
		t.Errorf("labels %q", got)
	}
}

// TestContractDeleteKey: DELETE keys/{id} answers the id; a key owning live resources only
// with force=true (409 saying how many and why otherwise); an unknown id is 404.
func TestContractDeleteKey(t *testing.T) {
	c := newContract(t, 4)
	b := c.bearer()
	c.b.mu.Lock()
	c.b.keys[0].Resources, c.b.keys[1].Resources = 2, 1
	c.b.mu.Unlock()
	if k := list(t, b.ok(200, "GET", "/admin/api/keys", ""), "keys")[0]; k["resources"] != 2.0 {
		t.Errorf("resources %v, want 2", k["resources"])
	}
	for _, q := range []string{"", "?force=false", "?force=0", "?force=FALSE"} {
		e := b.fails(409, "FAILED_PRECONDITION", "DELETE", "/admin/api/keys/1"+q, "")
		if msg := e.Error.Message; !strings.Contains(msg, "2 live files or other resources") ||
			!strings.Contains(msg, "no longer be reached through the gateway") || !strings.Contains(msg, "force=true") {
			t.Errorf("409 message %q does not say what is at stake", msg)
		}
	}
	if e := b.fails(409, "FAILED_PRECONDITION", "DELETE", "/admin/api/keys/2", ""); !strings.Contains(e.Error.Message, "1 live file or other resource") {
		t.Errorf("409 message for one resource: %q", e.Error.Message)
	}
	b.bad([]string{"force"}, "DELETE", "/admin/api/keys/1?force=maybe", "")
	if n := c.b.changes("DeleteKey"); n != 0 {
		t.Fatalf("refused deletes reached the backend %d times", n)
	}
	for _, r := range []struct {
		path string
		id   float64
	}{{"/admin/api/keys/3", 3}, {"/admin/api/keys/1?force=true", 1}, {"/admin/api/keys/2?force=1", 2}} {
		m := b.ok(200, "DELETE", r.path, "")
		hasFields(t, "delete answer", m, "deleted")
		if m["deleted"] != r.id {
			t.Errorf("DELETE %s answered %v", r.path, m)
		}
	}
	for _, p := range []string{"/admin/api/keys/3", "/admin/api/keys/1?force=true", "/admin/api/keys/999"} {
		b.fails(404, "NOT_FOUND", "DELETE", p, "")
	}
	if got := ids(list(t, b.ok(200, "GET", "/admin/api/keys", ""), "keys")); !slices.Equal(got, []int64{4}) {
		t.Errorf("keys after the deletes %v", got)
	}
}

// TestContractEnableDisableKey: enable and disable answer the key in its new state.
func TestContractEnableDisableKey(t *testing.T) {
	c := newContract(t, 2)
	b := c.login()
	k := b.ok(200, "POST", "/admin/api/keys/2/disable", "")
	hasFields(t, "disabled key", k, keyFields...)
	if k["id"] != 2.0 || k["status"] != "disabled" || k["manual_disabled"] != true || k["disabled_reason"] == "" {
		t.Errorf("disabled key %v", k)
	}
	if k := b.ok(200, "POST", "/admin/api/keys/2/enable", ""); k["status"] != "active" || k["manual_disabled"] != false || k["disabled_reason"] != "" {
		t.Errorf("enabled key %v", k)
	}
	b.fails(404, "NOT_FOUND", "POST", "/admin/api/keys/9/enable", "")
	b.fails(404, "NOT_FOUND", "POST", "/admin/api/keys/9/disable", "")
}

// TestContractValidateKey: validating one key answers the check and the key after it.
func TestContractValidateKey(t *testing.T) {
	c := newContract(t, 2)
	b := c.bearer()
	c.b.mu.Lock()
	c.b.verdicts[2] = KeyCheck{Result: "key_invalid", HTTPStatus: 400, Reason: "API key not valid", Action: "disabled"}
	c.b.mu.Unlock()
	m := b.ok(200, "POST", "/admin/api/keys/2/validate", "")
	hasFields(t, "validate answer", m, "check", "key")
	check := m["check"].(map[string]any)
	hasFields(t, "a check", check, "key_id", "result", "http_status", "reason", "action", "until")
	if check["key_id"] != 2.0 || check["result"] != "key_invalid" || check["action"] != "disabled" || check["http_status"] != 400.0 || check["until"] != nil {
		t.Errorf("check %v", check)
	}
	if k := m["key"].(map[string]any); k["id"] != 2.0 || k["status"] != "disabled" {
		t.Errorf("key after the check %v", k)
	}
	if m := b.ok(200, "POST", "/admin/api/keys/1/validate", ""); m["check"].(map[string]any)["action"] != "valid" {
		t.Errorf("check of a good key %v", m)
	}
	b.fails(404, "NOT_FOUND", "POST", "/admin/api/keys/9/validate", "")
}

// TestContractValidateAll: POST keys/validate starts a run (202), with {"ids"} a selection;
// a second one while it runs is 409; GET keys/validate follows it; a run that cannot start is
// 503.
func TestContractValidateAll(t *testing.T) {
	c := newContract(t, 4)
	b := c.bearer()
	m := b.ok(200, "GET", "/admin/api/keys/validate", "")
	hasFields(t, "no run", m, "running", "done", "total", "started_at", "finished_at", "summary", "results")
	if m["running"] != false || m["started_at"] != nil {
		t.Errorf("before any run: %v", m)
	}
	m = b.ok(202, "POST", "/admin/api/keys/validate", "")
	if m["running"] != true || m["total"] != 4.0 || m["started_at"] == nil {
		t.Fatalf("started run %v", m)
	}
	e := b.fails(409, "ABORTED", "POST", "/admin/api/keys/validate", `{"ids":[1]}`)
	if !strings.Contains(e.Error.Message, "0 of 4 keys") {
		t.Errorf("409 message %q", e.Error.Message)
	}
	if m := b.ok(200, "GET", "/admin/api/keys/validate", ""); m["running"] != true {
		t.Errorf("progress %v", m)
	}
	c.b.finishRun()
	m = b.ok(200, "GET", "/admin/api/keys/validate", "")
	if m["running"] != false || m["done"] != 4.0 || m["finished_at"] == nil || len(list(t, m, "results")) != 4 {
		t.Errorf("finished run %v", m)
	}
	if s := m["summary"].(map[string]any); s["valid"] != 4.0 {
		t.Errorf("summary %v", s)
	}
	// A selection; an unknown id is left out by the backend.
	if m := b.ok(202, "POST", "/admin/api/keys/validate", `{"ids":[2,99]}`); m["total"] != 1.0 {
		t.Errorf("selection run %v", m)
	}
	c.b.finishRun()
	c.b.mu.Lock()
	runIDs := c.b.runIDs
	c.b.mu.Unlock()
	if !slices.Equal(runIDs, []int64{2}) {
		t.Errorf("the selection run checks %v", runIDs)
	}
	n := c.b.changes("StartValidation")
	for _, bad := range []string{`{"ids":[]}`, `{"ids":"all"}`, `[1]`, `{"ids":[1]`} {
		b.bad([]string{"ids"}, "POST", "/admin/api/keys/validate", bad)
	}
	c.b.mu.Lock()
	c.b.noRun = "the gateway is shutting down"
	c.b.mu.Unlock()
	if e := b.fails(503, "UNAVAILABLE", "POST", "/admin/api/keys/validate", ""); !strings.Contains(e.Error.Message, "shutting down") {
		t.Errorf("503 message %q", e.Error.Message)
	}
	if c.b.changes("StartValidation") != n {
		t.Error("a refused run started")
	}
}

// TestContractExport: POST keys/export asks for the admin key again and answers the full keys
// as a text file, one per line.
func TestContractExport(t *testing.T) {
	c := newContract(t, 3)
	b := c.login()
	b.ok(200, "POST", "/admin/api/keys/2/disable", "")
	exp := "/admin/api/keys/export"
	b.fails(403, "PERMISSION_DENIED", "POST", exp, `{"admin_key":"wrong"}`)
	b.fails(403, "PERMISSION_DENIED", "POST", exp, `{}`)
	b.bad([]string{"status"}, "POST", exp, `{"admin_key":"`+contractAdminKey+`","status":"odd"}`)
	for status, want := range map[string][]string{
		"":         contractKeys(0, 3),
		"all":      contractKeys(0, 3),
		"active":   {contractKeys(0, 1)[0], contractKeys(2, 1)[0]},
		"disabled": {contractKeys(1, 1)[0]},
		"cooling":  nil,
	} {
		a := b.do("POST", exp, fmt.Sprintf(`{"admin_key":%q,"status":%q}`, contractAdminKey, status))
		if a.status != 200 || a.header.Get("Content-Type") != "text/plain; charset=utf-8" ||
			a.header.Get("Cache-Control") != "no-store" || a.header.Get("Content-Disposition") != `attachment; filename="gemini-keys.txt"` {
			t.Fatalf("export %q: %d %v", status, a.status, a.header)
		}
		if got := strings.Fields(string(a.body)); !slices.Equal(got, want) || (len(want) > 0 && !bytes.HasSuffix(a.body, []byte("\n"))) {
			t.Errorf("export %q has %d lines, want %d", status, len(got), len(want))
		}
	}
	// A Bearer client must send the key in the body too.
	c.bearer().fails(403, "PERMISSION_DENIED", "POST", exp, `{}`)
}

// TestContractAccessKeys: access keys are created with a random key shown once, listed
// without it, enabled, disabled and deleted; a bad label names the field.
func TestContractAccessKeys(t *testing.T) {
	c := newContract(t, 1)
	b := c.login()
	path := "/admin/api/access-keys"
	m := b.ok(200, "GET", path, "")
	hasFields(t, "access key list", m, "access_keys")
	all := list(t, m, "access_keys")
	if len(all) != 1 {
		t.Fatalf("access keys %v", all)
	}
	hasFields(t, "an access key", all[0], "id", "label", "enabled", "created_at", "last_used_at", "expired")
	if all[0]["label"] != "Caddyfile" || all[0]["created_at"] != "2026-01-02T03:04:05Z" || all[0]["last_used_at"] != nil {
		t.Errorf("access key %v", all[0])
	}

	a := b.do("POST", path, `{"label":"  CI runner  "}`)
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	m = jsonObject(t, a)
	hasFields(t, "created access key", m, "id", "label", "enabled", "created_at", "last_used_at", "key", "expired")
	key, _ := m["key"].(string)
	if !strings.HasPrefix(key, "gs-") || len(key) != 35 || m["label"] != "CI runner" || m["enabled"] != true || m["id"] != 2.0 {
		t.Fatalf("created access key %v", m)
	}
	c.b.mu.Lock()
	stored := c.b.access[1].hash == sha256.Sum256([]byte(key))
	c.b.mu.Unlock()
	if !stored {
		t.Error("the backend was not given the key that was shown")
	}
	if m := b.ok(201, "POST", path, `{}`); m["label"] != "" || m["key"] == key {
		t.Errorf("second access key %v: no label, a key of its own", m)
	}
	// The full key is shown once: no other answer has it.
	if a := b.do("GET", path, ""); bytes.Contains(a.body, []byte(key)) {
		t.Error("the access key list shows a full key")
	}
	all = list(t, b.ok(200, "GET", path, ""), "access_keys")
	if !slices.Equal(ids(all), []int64{1, 2, 3}) || all[1]["label"] != "CI runner" || all[1]["key"] != nil {
		t.Errorf("access keys %v", all)
	}

	k := b.ok(200, "POST", path+"/2/disable", "")
	hasFields(t, "disabled access key", k, "id", "label", "enabled", "created_at", "last_used_at", "expired")
	if k["id"] != 2.0 || k["enabled"] != false {
		t.Errorf("disabled %v", k)
	}
	if k := b.ok(200, "POST", path+"/2/enable", ""); k["enabled"] != true {
		t.Errorf("enabled %v", k)
	}
	if a := b.do("POST", path+"/2/enable", ""); bytes.Contains(a.body, []byte(key)) {
		t.Error("an access key answer shows the full key again")
	}
	if m := b.ok(200, "DELETE", path+"/2", ""); m["deleted"] != 2.0 || len(m) != 1 {
		t.Errorf("delete answered %v", m)
	}
	for _, r := range [][2]string{{"DELETE", path + "/2"}, {"POST", path + "/2/enable"}, {"POST", path + "/2/disable"}} {
		b.fails(404, "NOT_FOUND", r[0], r[1], "")
	}
	n := c.b.changes("AddAccessKey")
	for _, bad := range []string{`{"label":"` + strings.Repeat("x", 101) + `"}`, `{"label":"a\u0007b"}`, `{"label":"a\nb"}`, `{"label":5}`} {
		b.bad([]string{"label"}, "POST", path, bad)
	}
	b.ok(201, "POST", path, `{"label":"`+strings.Repeat("é", 100)+`"}`) // 100 characters, 200 bytes
	if c.b.changes("AddAccessKey") != n+1 {
		t.Error("a refused access key reached the backend")
	}
}

// TestContractAdminKeyChange: PUT admin-key needs the current key, checks the new one, and
// ends every other session (every session when sent with the Bearer key).
func TestContractAdminKeyChange(t *testing.T) {
	c := newContract(t, 1)
	const newKey = "the-new-admin-key-0123456789"
	c.secret(newKey)
	a, other := c.login(), c.login()
	path := "/admin/api/admin-key"
	a.fails(403, "PERMISSION_DENIED", "PUT", path, `{"current":"wrong","new":"`+newKey+`"}`)
	a.fails(403, "PERMISSION_DENIED", "PUT", path, `{"new":"`+newKey+`"}`)
	for _, bad := range []string{"short", "has a space in it 0123456", "tab\tin-it-0123456789", strings.Repeat("x", 513), ""} {
		a.bad([]string{"new"}, "PUT", path, fmt.Sprintf(`{"current":%q,"new":%q}`, contractAdminKey, bad))
	}
	if n := c.b.changes("SetAdminKey"); n != 0 {
		t.Fatalf("refused changes reached the backend %d times", n)
	}
	other.ok(200, "GET", "/admin/api/keys", "")
	m := a.ok(200, "PUT", path, `{"current":"`+contractAdminKey+`","new":"`+newKey+`"}`)
	if m["ok"] != true {
		t.Errorf("answer %v", m)
	}
	a.ok(200, "GET", "/admin/api/keys", "") // the changing session lives on
	other.fails(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	c.bearer().fails(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	byBearer := c.client("Authorization", "Bearer "+newKey)
	byBearer.ok(200, "PUT", path, `{"current":"`+newKey+`","new":"`+strings.Repeat("k", 512)+`"}`)
	a.fails(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	if n := c.b.sessionCount(); n != 0 {
		t.Errorf("%d sessions after a change by Bearer, want none", n)
	}
	c.secret(strings.Repeat("k", 512))
}

// TestContractSettings: GET settings shows the live settings; PUT takes a partial update of
// strings or numbers and answers them all; a bad value, name or type is a 400 naming each
// field, and then nothing changes.
func TestContractSettings(t *testing.T) {
	c := newContract(t, 1)
	b := c.login()
	m := b.ok(200, "GET", "/admin/api/settings", "")
	hasFields(t, "settings answer", m, "settings")
	s := m["settings"].(map[string]any)
	var names []string
	for name := range fakeSettings {
		names = append(names, name)
	}
	hasFields(t, "settings", s, names...)
	if s["max_retries"] != 3.0 || s["timezone"] != "UTC" || s["validation_interval"] != "1h" {
		t.Errorf("settings %v", s)
	}

	s = b.ok(200, "PUT", "/admin/api/settings", `{"max_retries":0,"timezone":"Europe/Berlin","request_log_retention":"7d","max_failures":"50"}`)["settings"].(map[string]any)
	if s["max_retries"] != 0.0 || s["timezone"] != "Europe/Berlin" || s["request_log_retention"] != "7d" || s["max_failures"] != 50.0 {
		t.Errorf("settings after the update %v", s)
	}
	c.b.mu.Lock()
	update := c.b.updates[0]
	c.b.mu.Unlock()
	if len(update) != 4 || update["max_retries"] != "0" || update["max_failures"] != "50" {
		t.Errorf("the backend was given %v: numbers as their text", update)
	}
	if s := b.ok(200, "PUT", "/admin/api/settings", `{}`)["settings"].(map[string]any); s["max_retries"] != 0.0 {
		t.Errorf("an empty update %v", s)
	}
	if n := c.b.changes("UpdateSettings"); n != 1 {
		t.Errorf("an empty update reached the backend")
	}

	before := c.b.changes("UpdateSettings")
	// Types: each field of another JSON type is named, before any value is checked.
	b.bad([]string{"proxy", "validation_model"}, "PUT", "/admin/api/settings", `{"max_retries":99,"proxy":true,"validation_model":["x"],"colour":"blue"}`)
	b.bad([]string{"max_retries"}, "PUT", "/admin/api/settings", `{"max_retries":null}`)
	// Values: each bad one named with its reason, the good ones not applied either.
	b.bad([]string{"colour", "max_retries", "timezone", "validation_interval"}, "PUT", "/admin/api/settings",
		`{"max_retries":99,"timezone":"Mars/Olympus","max_failures":2,"colour":"blue","validation_interval":"5s"}`)
	b.fails(400, "INVALID_ARGUMENT", "PUT", "/admin/api/settings", `["max_retries"]`)
	b.fails(400, "INVALID_ARGUMENT", "PUT", "/admin/api/settings", `{"max_retries":1`)
	if c.b.changes("UpdateSettings") != before || c.b.setting("max_failures") != "50" || c.b.setting("max_retries") != "0" {
		t.Error("a refused update changed settings")
	}
	// Times in answers use the new zone.
	if m := b.ok(200, "GET", "/admin/api/stats", ""); m["timezone"] != "Europe/Berlin" {
		t.Errorf("stats timezone %v", m["timezone"])
	}
}

// TestContractGuardedSettings: a session changing upstream or proxy must send the admin key
// again; sending their current values back, other settings and Bearer requests need none; a
// wrong key counts against the client.
func TestContractGuardedSettings(t *testing.T) {
	c := newContract(t, 1)
	browser := c.login()
	upstream := c.b.setting("upstream")
	for _, body := range []string{
		`{"upstream":"https://evil.example"}`,
		`{"proxy":"http://attacker.example:8080"}`,
		`{"upstream":"https://evil.example","max_retries":0}`,
		`{"upstream":"https://evil.example","admin_key":""}`,
	} {
		e := browser.fails(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", body)
		if !strings.Contains(e.Error.Message, "admin_key") || !strings.Contains(e.Error.Message, "nothing was changed") {
			t.Errorf("%s: message %q", body, e.Error.Message)
		}
	}
	browser.fails(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", `{"upstream":"https://evil.example","admin_key":"wrong"}`)
	browser.bad([]string{"admin_key"}, "PUT", "/admin/api/settings", `{"upstream":"https://evil.example","admin_key":5}`)
	if n := c.b.changes("UpdateSettings"); n != 0 {
		t.Fatalf("refused changes reached the backend %d times", n)
	}
	// The current values back, with other settings: no key needed.
	browser.ok(200, "PUT", "/admin/api/settings", `{"upstream":" `+upstream+` ","proxy":"","max_retries":1}`)
	if c.b.setting("max_retries") != "1" {
		t.Fatal("an unguarded change did not apply")
	}
	// A bad guarded value with the right key: a 400 for the value.
	browser.bad([]string{"upstream"}, "PUT", "/admin/api/settings", `{"upstream":"ftp://x","admin_key":"`+contractAdminKey+`"}`)
	// With the admin key it works; the key is not taken for a setting.
	browser.ok(200, "PUT", "/admin/api/settings", `{"upstream":"https://other.example","proxy":"http://user:s3cret-pass@127.0.0.1:3128","admin_key":"`+contractAdminKey+`"}`)
	c.secret("s3cret-pass")
	c.b.mu.Lock()
	last := c.b.updates[len(c.b.updates)-1]
	c.b.mu.Unlock()
	if _, ok := last["admin_key"]; ok || last["upstream"] != "https://other.example" {
		t.Errorf("the backend was given %v", last)
	}
	// The proxy's password is never shown; sending its hidden form back keeps it, no key needed.
	s := browser.ok(200, "GET", "/admin/api/settings", "")["settings"].(map[string]any)
	if s["proxy"] != "http://user:xxxxx@127.0.0.1:3128" {
		t.Errorf("proxy shown as %v", s["proxy"])
	}
	browser.ok(200, "PUT", "/admin/api/settings", fmt.Sprintf(`{"proxy":%q,"max_retries":2}`, s["proxy"]))
	if got := c.b.setting("proxy"); got != "http://user:s3cret-pass@127.0.0.1:3128" {
		t.Errorf("proxy after sending the hidden form back: %q", strings.ReplaceAll(got, "s3cret-pass", "***"))
	}
	// A Bearer request has shown the admin key already.
	c.bearer().ok(200, "PUT", "/admin/api/settings", `{"upstream":"`+upstream+`","proxy":""}`)
	if c.b.setting("upstream") != upstream || c.b.setting("proxy") != "" {
		t.Error("a Bearer change of upstream and proxy did not apply")
	}
	// Wrong admin keys here count against the client like any other.
	guesser := c.login("X-Test-Client", "198.51.100.20")
	for range loginFailuresAllowed {
		guesser.fails(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", `{"upstream":"https://evil.example","admin_key":"guess"}`)
	}
	guesser.fails(429, "RESOURCE_EXHAUSTED", "PUT", "/admin/api/settings", `{"upstream":"https://evil.example","admin_key":"`+contractAdminKey+`"}`)
	if c.b.setting("upstream") != upstream {
		t.Error("a locked-out client changed the upstream")
	}
}

// TestContractThrottle: after loginFailuresAllowed wrong admin keys a client's network gets
// 429 with Retry-After, even with the right key and as Bearer; other networks do not; once
// Retry-After has passed the right key works and clears the record.
func TestContractThrottle(t *testing.T) {
	c := newContract(t, 1)
	attacker := c.client("X-Test-Client", "203.0.113.7")
	bad, good := `{"admin_key":"guess"}`, `{"admin_key":"`+contractAdminKey+`"}`
	for range loginFailuresAllowed {
		attacker.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	}
	a := attacker.do("POST", "/admin/api/login", good)
	decodeEnvelope(t, a, 429, "RESOURCE_EXHAUSTED")
	retry, err := strconv.Atoi(a.header.Get("Retry-After"))
	if err != nil || retry != int(firstLockout.Seconds()) {
		t.Fatalf("Retry-After %q, want %v", a.header.Get("Retry-After"), firstLockout)
	}
	if a.cookie() != nil || c.b.sessionCount() != 0 {
		t.Fatal("a locked-out client got a session")
	}
	// Every way of sending the admin key is locked for that network, its IPv6 /64 likewise.
	c.client("X-Test-Client", "203.0.113.7", "Authorization", "Bearer "+contractAdminKey).
		fails(429, "RESOURCE_EXHAUSTED", "GET", "/admin/api/keys", "")
	ipv6 := c.client("X-Test-Client", "2001:db8:7:7::1")
	for range loginFailuresAllowed {
		ipv6.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	}
	c.client("X-Test-Client", "2001:db8:7:7::beef").fails(429, "RESOURCE_EXHAUSTED", "POST", "/admin/api/login", good)
	// Other networks are not.
	c.client("X-Test-Client", "198.51.100.1").ok(200, "POST", "/admin/api/login", good)
	c.client("X-Test-Client", "2001:db8:7:8::1").ok(200, "POST", "/admin/api/login", good)
	// Each further failure doubles the lockout.
	c.advance(time.Duration(retry) * time.Second)
	attacker.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	a = attacker.do("POST", "/admin/api/login", good)
	decodeEnvelope(t, a, 429, "RESOURCE_EXHAUSTED")
	if got := a.header.Get("Retry-After"); got != strconv.Itoa(2*retry) {
		t.Errorf("second lockout: Retry-After %s, want %d", got, 2*retry)
	}
	// Once it has passed the right key works, and clears the record.
	c.advance(time.Duration(2*retry) * time.Second)
	attacker.ok(200, "POST", "/admin/api/login", good)
	attacker.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	attacker.ok(200, "POST", "/admin/api/login", good)
	// Without ClientIP, the connection's address is the client.
	c = newContract(t, 1, func(h *Handler) { h.ClientIP = nil })
	local := c.client()
	for range loginFailuresAllowed {
		local.fails(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	}
	c.client("X-Test-Client", "192.0.2.99").fails(429, "RESOURCE_EXHAUSTED", "POST", "/admin/api/login", good)
}

// TestContractSharedThrottle: a Throttle handed in outlives the handler, so a new handler
// (a config reload) does not lift a lockout.
func TestContractSharedThrottle(t *testing.T) {
	th := &Throttle{}
	b := newFakeBackend(contractAdminKey)
	login := func(h *Handler, key string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/admin/api/login", strings.NewReader(`{"admin_key":"`+key+`"}`))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	first := &Handler{Prefix: "/admin", Backend: b, Throttle: th}
	for range loginFailuresAllowed {
		if code := login(first, "guess"); code != 401 {
			t.Fatalf("wrong key: %d", code)
		}
	}
	if code := login(&Handler{Prefix: "/admin", Backend: b, Throttle: th}, contractAdminKey); code != 429 {
		t.Errorf("a new handler with the same Throttle: %d, want 429", code)
	}
	if code := login(&Handler{Prefix: "/admin", Backend: b}, contractAdminKey); code != 200 {
		t.Errorf("a handler with its own Throttle: %d, want 200", code)
	}
}

// TestContractStats: GET stats answers the totals, the trend and the models of a range, in
// the configured zone, ending with the bucket that holds now.
func TestContractStats(t *testing.T) {
	c := newContract(t, 3)
	b := c.bearer()
	now := time.Date(2026, 3, 10, 15, 40, 0, 0, time.UTC) // 17:40 in the zone
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
	c.b.mu.Lock()
	c.b.loc = time.FixedZone("UTC+2", 2*3600)
	c.b.keys[1].Status = KeyDisabled
	c.b.keys[2].Status = KeyCooling
	row := func(ago time.Duration, model string, status int, tokens int64) store.RequestLog {
		return store.RequestLog{Time: now.Add(-ago), Model: model, Status: status,
			PromptTokens: tokens, CandidatesTokens: 2 * tokens, TotalTokens: 3 * tokens}
	}
	c.b.requests = []store.RequestLog{
		row(29*24*time.Hour, "gemini-2.0-flash", 200, 1), // in 30d only
		row(3*24*time.Hour, "gemini-2.5-pro", 503, 0),    // in 7d and 30d
		row(5*time.Hour, "gemini-2.5-pro", 200, 10),
		row(30*time.Minute, "gemini-2.5-flash", 200, 100),
		row(10*time.Minute, "gemini-2.5-flash", 302, 1000), // a 3xx succeeds
		row(time.Minute, "gemini-2.5-flash", 429, 0),
	}
	c.b.mu.Unlock()

	for _, r := range []struct {
		rng, bucket, from, last    string
		points                     int
		total, failure             float64
		tokens, prompt, candidates float64
		models                     []string
	}{
		{"", "1h", "2026-03-09T18:00:00+02:00", "2026-03-10T17:00:00+02:00", 24, 4, 1, 3330, 1110, 2220, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"24h", "1h", "2026-03-09T18:00:00+02:00", "2026-03-10T17:00:00+02:00", 24, 4, 1, 3330, 1110, 2220, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"7d", "6h", "2026-03-03T18:00:00+02:00", "2026-03-10T12:00:00+02:00", 28, 5, 2, 3330, 1110, 2220, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"30d", "1d", "2026-02-09T00:00:00+02:00", "2026-03-10T00:00:00+02:00", 30, 6, 2, 3333, 1111, 2222, []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"}},
	} {
		m := b.ok(200, "GET", "/admin/api/stats?range="+r.rng, "")
		hasFields(t, "stats", m, "range", "bucket", "timezone", "access_key_id", "from", "to", "requests", "tokens", "keys", "trend", "models", "access_keys")
		want := r.rng
		if want == "" {
			want = "24h"
		}
		if m["range"] != want || m["bucket"] != r.bucket || m["timezone"] != "UTC+2" || m["from"] != r.from {
			t.Errorf("range %q: %v %v %v from %v", r.rng, m["range"], m["bucket"], m["timezone"], m["from"])
		}
		req := m["requests"].(map[string]any)
		if req["total"] != r.total || req["failure"] != r.failure || req["success"] != r.total-r.failure {
			t.Errorf("range %q: requests %v", r.rng, req)
		}
		tok := m["tokens"].(map[string]any)
		if tok["total"] != r.tokens || tok["prompt"] != r.prompt || tok["candidates"] != r.candidates {
			t.Errorf("range %q: tokens %v", r.rng, tok)
		}
		if k := m["keys"].(map[string]any); k["active"] != 1.0 || k["cooling"] != 1.0 || k["disabled"] != 1.0 {
			t.Errorf("range %q: keys %v", r.rng, k)
		}
		trend := list(t, m, "trend")
		if len(trend) != r.points || trend[len(trend)-1]["t"] != r.last {
			t.Fatalf("range %q: %d points, the last at %v; want %d, the last at %s", r.rng, len(trend), trend[len(trend)-1]["t"], r.points, r.last)
		}
		hasFields(t, "a point", trend[0], "t", "success", "failure", "tokens")
		var succ, fail, tokens float64
		for _, p := range trend {
			succ, fail, tokens = succ+p["success"].(float64), fail+p["failure"].(float64), tokens+p["tokens"].(float64)
		}
		if succ != r.total-r.failure || fail != r.failure || tokens != r.tokens {
			t.Errorf("range %q: the trend sums to %v/%v/%v", r.rng, succ, fail, tokens)
		}
		if end, err := time.Parse(time.RFC3339, m["to"].(string)); err != nil || !end.After(now) || end.Add(-25*time.Hour).After(now) {
			t.Errorf("range %q: to %v does not end the bucket holding now", r.rng, m["to"])
		}
		models := list(t, m, "models")
		var names []string
		for _, mo := range models {
			names = append(names, mo["model"].(string))
		}
		if !slices.Equal(names, r.models) {
			t.Errorf("range %q: models %v, want %v", r.rng, names, r.models)
		}
		hasFields(t, "a model", models[0], "model", "requests", "failures", "tokens")
		if models[0]["requests"] != 3.0 || models[0]["failures"] != 1.0 || models[0]["tokens"] != 3300.0 {
			t.Errorf("range %q: flash %v", r.rng, models[0])
		}
	}
	// Each row is in the bucket of its local hour: now's holds the last three rows.
	trend := list(t, b.ok(200, "GET", "/admin/api/stats", ""), "trend")
	for i, want := range map[int][3]float64{23: {2, 1, 3300}, 22: {0, 0, 0}, 18: {1, 0, 30}, 0: {0, 0, 0}} {
		p := trend[i]
		if p["success"] != want[0] || p["failure"] != want[1] || p["tokens"] != want[2] {
			t.Errorf("point %d (%v): %v, want success, failure, tokens %v", i, p["t"], p, want)
		}
	}
	if trend[18]["t"] != "2026-03-10T12:00:00+02:00" {
		t.Errorf("point 18 starts %v", trend[18]["t"])
	}
	for _, q := range []string{"range=1y", "range=24H", "range=7"} {
		b.bad([]string{"range"}, "GET", "/admin/api/stats?"+q, "")
	}
}

// TestContractLogs: GET logs pages the request or error log, newest first, filtered; times
// in the configured zone, durations in milliseconds.
func TestContractLogs(t *testing.T) {
	c := newContract(t, 1)
	b := c.bearer()
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	c.b.mu.Lock()
	c.b.loc = time.FixedZone("UTC-5", -5*3600)
	for i := range 7 {
		model := []string{"gemini-2.5-flash", "gemini-2.5-pro"}[i%2]
		c.b.requests = append(c.b.requests, store.RequestLog{Time: t0.Add(time.Duration(i) * time.Minute), AccessKeyID: int64(1 + i%2),
			KeyID: int64(1 + i%3), Method: "POST", Path: "/v1beta/models/" + model + ":generateContent", Model: model,
			Stream: i == 6, Status: []int{200, 429}[i%2], Attempts: 1 + i%2, Latency: 1234567 * time.Microsecond,
			TTFB: 456 * time.Microsecond, PromptTokens: 1, CandidatesTokens: 2, ThoughtsTokens: 3, TotalTokens: 6,
			Error: []string{"", "quota"}[i%2]})
	}
	c.b.errorLogs = []store.ErrorLog{
		{Time: t0, KeyID: 1, AccessKeyID: 1, Model: "gemini-2.5-pro", Path: "/v1beta/x", Status: 429, Message: "quota"},
		{Time: t0.Add(time.Second), KeyID: 2, AccessKeyID: 2, Model: "gemini-2.5-pro", Path: "/v1beta/y", Status: 500, Message: "boom"},
	}
	c.b.mu.Unlock()

	m := b.ok(200, "GET", "/admin/api/logs", "")
	hasFields(t, "log page", m, "items", "total", "page", "page_size")
	items := list(t, m, "items")
	if m["total"] != 7.0 || m["page"] != 1.0 || m["page_size"] != 50.0 || len(items) != 7 {
		t.Fatalf("first page: %d items, total %v page %v size %v", len(items), m["total"], m["page"], m["page_size"])
	}
	want := map[string]any{
		"time": "2026-03-10T07:06:00-05:00", "access_key_id": 1.0, "key_id": 1.0, "method": "POST",
		"path": "/v1beta/models/gemini-2.5-flash:generateContent", "model": "gemini-2.5-flash", "stream": true,
		"status": 200.0, "attempts": 1.0, "latency_ms": 1234.567, "ttfb_ms": 0.456, "prompt_tokens": 1.0,
		"candidates_tokens": 2.0, "thoughts_tokens": 3.0, "total_tokens": 6.0, "error": "",
	}
	for k, v := range want {
		if items[0][k] != v {
			t.Errorf("newest row: %s = %v, want %v", k, items[0][k], v)
		}
	}
	hasFields(t, "a request row", items[0], slices.Collect(maps.Keys(want))...)
	for q, want := range map[string][]string{
		"kind=request&page_size=2":           {"07:06", "07:05"},
		"page=2&page_size=3":                 {"07:03", "07:02", "07:01"},
		"page=4&page_size=2":                 {"07:00"},
		"page=5&page_size=2":                 {},
		"model=gemini-2.5-pro":               {"07:05", "07:03", "07:01"},
		"model=+gemini-2.5-pro+&status=429":  {"07:05", "07:03", "07:01"},
		"status=200&key_id=1":                {"07:06", "07:00"},
		"access_key_id=2&page_size=1&page=3": {"07:01"},
		"key_id=999":                         {},
	} {
		m := b.ok(200, "GET", "/admin/api/logs?"+q, "")
		var got []string
		for _, it := range list(t, m, "items") {
			got = append(got, it["time"].(string)[11:16])
		}
		if !slices.Equal(got, want) {
			t.Errorf("?%s: %v, want %v", q, got, want)
		}
	}
	if m := b.ok(200, "GET", "/admin/api/logs?model=gemini-2.5-pro&page_size=1", ""); m["total"] != 3.0 {
		t.Errorf("filtered total %v, want 3", m["total"])
	}

	m = b.ok(200, "GET", "/admin/api/logs?kind=error", "")
	errs := list(t, m, "items")
	if m["total"] != 2.0 || len(errs) != 2 {
		t.Fatalf("error log %v", m)
	}
	hasFields(t, "an error row", errs[0], "time", "key_id", "access_key_id", "model", "path", "status", "message")
	if e := errs[0]; e["time"] != "2026-03-10T07:00:01-05:00" || e["status"] != 500.0 || e["message"] != "boom" || e["key_id"] != 2.0 {
		t.Errorf("newest error %v", e)
	}
	if m := b.ok(200, "GET", "/admin/api/logs?kind=error&status=429", ""); m["total"] != 1.0 {
		t.Errorf("errors with status 429: %v", m)
	}
	for _, q := range []string{"kind=debug", "status=abc", "status=-1", "status=1000", "key_id=-1", "key_id=x",
		"access_key_id=1.5", "page=0", "page_size=0", "page_size=501"} {
		b.bad([]string{strings.Split(q, "=")[0]}, "GET", "/admin/api/logs?"+q, "")
	}
}

// TestContractPanel: the panel's page answers the prefix and any path without an extension,
// its files their own path, revalidated by ETag; other methods are 405, missing files 404.
func TestContractPanel(t *testing.T) {
	c := newContract(t, 1)
	anon := c.client()
	a := anon.do("GET", "/admin?tab=keys", "")
	if a.status != 301 || a.header.Get("Location") != "/admin/?tab=keys" {
		t.Errorf("/admin: %d to %q", a.status, a.header.Get("Location"))
	}
	for _, p := range []string{"/admin/", "/admin/dashboard", "/admin/keys/1", "/admin/index.html"} {
		a = anon.do("GET", p, "")
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || !bytes.Contains(a.body, []byte("<html")) {
			t.Errorf("%s: %d %s", p, a.status, a.header.Get("Content-Type"))
		}
		if a.header.Get("Content-Security-Policy") != contentSecurityPolicy || a.header.Get("X-Content-Type-Options") != "nosniff" ||
			a.header.Get("Cache-Control") != "no-cache" || a.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", p, a.header)
		}
		if bytes.Contains(a.body, []byte(`"/admin`)) {
			t.Errorf("%s: the page hard-codes /admin", p)
		}
	}
	etag := a.header.Get("ETag")
	if a := anon.do("GET", "/admin/", "", "If-None-Match", etag); etag == "" || a.status != 304 {
		t.Errorf("revalidation: ETag %q, status %d", etag, a.status)
	}
	if a := anon.do("HEAD", "/admin/", ""); a.status != 200 || len(a.body) != 0 {
		t.Errorf("HEAD /admin/: %d, %d bytes", a.status, len(a.body))
	}
	a = anon.do("GET", "/admin/theme.js", "")
	if a.status != 200 || !strings.Contains(a.header.Get("Content-Type"), "javascript") {
		t.Errorf("theme.js: %d %q", a.status, a.header.Get("Content-Type"))
	}
	anon.fails(404, "NOT_FOUND", "GET", "/admin/missing.js", "")
	anon.fails(404, "NOT_FOUND", "GET", "/admin/../admin/x.css", "")
	a = anon.do("POST", "/admin/", "")
	decodeEnvelope(t, a, 405, "METHOD_NOT_ALLOWED")
	if a.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /admin/: Allow %q", a.header.Get("Allow"))
	}
}
