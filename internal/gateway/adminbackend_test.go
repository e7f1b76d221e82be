package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

const testAdminKey = "unit-admin-key-0123456789abcdef"

// adminKeys returns n distinct keys shaped exactly like Google's (AIza + 35 characters).
func adminKeys(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("AIzaSyADMINTEST%02d%s", from+i, strings.Repeat(string(rune('a'+from+i)), 22))
	}
	return out
}

// adminEnv is a core on a real SQLite file with the fake upstream, served over loopback the
// way a caddy site with `gemini_synapse_admin /admin` and `gemini_synapse` serves it. Every
// response the tests get and every log line is recorded, and at the end scanned for every
// pool key and the admin key (the export is the one answer allowed to hold pool keys).
type adminEnv struct {
	t    *testing.T
	c    *Core
	api  *admin.Handler
	fake *fakegemini.Server
	url  string
	logs *observer.ObservedLogs

	mu      sync.Mutex
	now     time.Time // the admin handler's clock
	secrets []string  // pool keys and admin keys that must never show
	seen    []string  // recorded responses, export answers left out
}

func newAdminEnv(t *testing.T, nKeys int) *adminEnv {
	t.Helper()
	keys := adminKeys(0, nKeys)
	tc := startCore(t, coreSetup{probeTimeout: 5 * time.Second},
		&Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: keys, AdminKey: testAdminKey})
	c, fake, logs := tc.c, tc.fake, tc.logs
	e := &adminEnv{t: t, c: c, fake: fake, logs: logs, now: time.Now(), secrets: append([]string{testAdminKey}, keys...)}
	e.api = &admin.Handler{
		Prefix:  "/admin",
		Backend: adminBackend{c},
		Now:     e.clock,
		// Tests pose as several clients; caddy would give the forwarded address here.
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Test-Client") },
	}
	e.url = serveCore(t, c, e.api, "/admin")
	t.Cleanup(e.assertNoSecretShown)
	return e
}

func (e *adminEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *adminEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

// secret adds s to the texts no response may hold.
func (e *adminEnv) secret(s ...string) {
	e.mu.Lock()
	e.secrets = append(e.secrets, s...)
	e.mu.Unlock()
}

func (e *adminEnv) assertNoSecretShown() {
	e.mu.Lock()
	defer e.mu.Unlock()
	seen := e.seen
	for _, l := range e.logs.All() {
		seen = append(seen, l.Message+" "+fmt.Sprint(l.ContextMap()))
	}
	for _, r := range seen {
		for _, s := range e.secrets {
			if strings.Contains(r, s) {
				e.t.Errorf("a response shows the secret %s…: %.200s", s[:10], strings.ReplaceAll(r, s, "<SECRET>"))
			}
		}
	}
}

// client is one browser or script talking to the gateway: its own cookie jar and headers.
type client struct {
	e      *adminEnv
	hc     *http.Client
	header http.Header
}

func (e *adminEnv) client(header http.Header) *client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if header == nil {
		header = http.Header{}
	}
	return &client{e: e, hc: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}, header: header}
}

// bearer is a client that sends the admin key on every request.
func (e *adminEnv) bearer() *client {
	return e.client(http.Header{"Authorization": {"Bearer " + testAdminKey}})
}

// login is a browser client signed in with the admin key.
func (e *adminEnv) login() *client {
	e.t.Helper()
	c := e.client(nil)
	c.wantStatus(200, "POST", "/admin/api/login", `{"admin_key":"`+testAdminKey+`"}`)
	return c
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request (the body as JSON when not empty) and records the answer.
func (c *client) do(method, path, body string, extra ...string) answer {
	c.e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.e.url+path, rd)
	if err != nil {
		c.e.t.Fatal(err)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.e.t.Fatalf("%s %s: %v", method, path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.e.t.Fatal(err)
	}
	if !strings.HasSuffix(path, "/keys/export") || resp.StatusCode != 200 {
		var hdr bytes.Buffer
		resp.Header.Write(&hdr)
		c.e.mu.Lock()
		c.e.seen = append(c.e.seen, hdr.String()+string(b))
		c.e.mu.Unlock()
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// wantStatus sends a request and fails unless the answer has status code; JSON is decoded.
func (c *client) wantStatus(code int, method, path, body string, extra ...string) map[string]any {
	c.e.t.Helper()
	a := c.do(method, path, body, extra...)
	if a.status != code {
		c.e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, a.status, code, a.body)
	}
	if !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		c.e.t.Fatalf("%s %s: not a JSON object: %v: %s", method, path, err, a.body)
	}
	return m
}

// wantError sends a request and checks Google's error envelope with that code and status.
func (c *client) wantError(code int, status, method, path, body string, extra ...string) googleError {
	c.e.t.Helper()
	a := c.do(method, path, body, extra...)
	if a.status != code {
		c.e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, a.status, code, a.body)
	}
	g := decodeError(c.e.t, a.body)
	if g.Error.Code != code || (status != "" && g.Error.Status != status) || g.Error.Message == "" {
		c.e.t.Errorf("%s %s: error envelope %+v, want code %d status %s", method, path, g.Error, code, status)
	}
	return g
}

// fieldViolations returns the fields a 400 names in its BadRequest details.
func fieldViolations(t *testing.T, a answer) []string {
	t.Helper()
	var env struct {
		Error struct {
			Details []struct {
				Type       string `json:"@type"`
				Violations []struct {
					Field, Description string
				} `json:"fieldViolations"`
			} `json:"details"`
		} `json:"error"`
	}
	if err := json.Unmarshal(a.body, &env); err != nil || len(env.Error.Details) != 1 ||
		env.Error.Details[0].Type != "type.googleapis.com/google.rpc.BadRequest" {
		t.Fatalf("no BadRequest details: %v: %s", err, a.body)
	}
	var fields []string
	for _, v := range env.Error.Details[0].Violations {
		if v.Description == "" {
			t.Errorf("field %s has no reason", v.Field)
		}
		fields = append(fields, v.Field)
	}
	slices.Sort(fields)
	return fields
}

// proxyCall makes a generateContent call through the proxy with the access key.
func (e *adminEnv) proxyCall(accessKey, model string) int {
	e.t.Helper()
	c := e.client(http.Header{"X-Goog-Api-Key": {accessKey}})
	return c.do("POST", genPath(model), helloBody).status
}

// list decodes a JSON list of objects from m[name].
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

// protectedRoutes are every API route that needs authentication, with a harmless body.
var protectedRoutes = [][3]string{
	{"GET", "/admin/api/status", ""},
	{"GET", "/admin/api/keys", ""},
	{"POST", "/admin/api/keys", `{"keys":[]}`},
	{"DELETE", "/admin/api/keys/1", ""},
	{"POST", "/admin/api/keys/1/enable", ""},
	{"POST", "/admin/api/keys/1/disable", ""},
	{"POST", "/admin/api/keys/1/validate", ""},
	{"GET", "/admin/api/keys/validate", ""},
	{"POST", "/admin/api/keys/validate", ""},
	{"POST", "/admin/api/keys/export", `{"admin_key":"` + testAdminKey + `"}`},
	{"GET", "/admin/api/access-keys", ""},
	{"POST", "/admin/api/access-keys", `{"label":"x"}`},
	{"DELETE", "/admin/api/access-keys/1", ""},
	{"POST", "/admin/api/access-keys/1/enable", ""},
	{"POST", "/admin/api/access-keys/1/disable", ""},
	{"PUT", "/admin/api/admin-key", `{"current":"` + testAdminKey + `","new":"another-admin-key-0123456789"}`},
	{"GET", "/admin/api/settings", ""},
	{"PUT", "/admin/api/settings", `{"max_retries":1}`},
	{"GET", "/admin/api/stats", ""},
	{"GET", "/admin/api/logs", ""},
	{"GET", "/admin/api/session", ""},
}

func TestAdminAuthentication(t *testing.T) {
	e := newAdminEnv(t, 2)
	anon := e.client(nil)
	for _, r := range protectedRoutes {
		anon.wantError(401, "UNAUTHENTICATED", r[0], r[1], r[2])
	}
	wrong := e.client(http.Header{"Authorization": {"Bearer not-the-admin-key"}, "X-Test-Client": {"10.0.0.9"}})
	wrong.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	// Nothing above changed anything: both keys are still there and enabled.
	if active, _, _ := e.c.pool.Counts(time.Now()); active != 2 {
		t.Fatalf("unauthenticated requests changed the pool: %d active", active)
	}

	// Login: a wrong key is 401, a missing one 400, the right one sets the session cookie.
	anon.wantError(401, "UNAUTHENTICATED", "POST", "/admin/api/login", `{"admin_key":"nope"}`)
	if f := fieldViolations(t, anon.do("POST", "/admin/api/login", `{}`)); !slices.Equal(f, []string{"admin_key"}) {
		t.Errorf("empty login names %v", f)
	}
	anon.wantError(400, "INVALID_ARGUMENT", "POST", "/admin/api/login", `not json`)
	a := anon.do("POST", "/admin/api/login", `{"admin_key":"`+testAdminKey+`"}`)
	if a.status != 200 {
		t.Fatalf("login: %d %s", a.status, a.body)
	}
	cookies := (&http.Response{Header: a.header}).Cookies()
	if len(cookies) != 1 {
		t.Fatalf("login set %d cookies", len(cookies))
	}
	ck := cookies[0]
	if ck.Name != admin.SessionCookie || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/admin" || ck.Secure || len(ck.Value) < 40 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/admin, not Secure over http, a long token", ck)
	}
	if bytes.Contains(a.body, []byte(ck.Value)) {
		t.Error("the session token is in the login answer's body")
	}
	// The token is stored only as its hash: the database files never hold it.
	if _, ok, err := e.c.store.SessionExpiry(context.Background(), sha256.Sum256([]byte(ck.Value)), e.clock()); !ok || err != nil {
		t.Errorf("no session stored under the token's hash: %v", err)
	}
	e.c.store.Flush()
	for _, suffix := range []string{"", "-wal"} {
		raw, err := os.ReadFile(e.c.store.Path() + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte(ck.Value)) {
			t.Errorf("the session token is stored in clear in %s", filepath.Base(e.c.store.Path()+suffix))
		}
	}
	s := anon.wantStatus(200, "GET", "/admin/api/session", "")
	if s["via"] != "cookie" || s["expires_at"] == nil {
		t.Errorf("session = %v", s)
	}
	for _, r := range protectedRoutes[:2] {
		anon.wantStatus(200, r[0], r[1], r[2])
	}
	if s := e.bearer().wantStatus(200, "GET", "/admin/api/session", ""); s["via"] != "bearer" {
		t.Errorf("bearer session = %v", s)
	}

	// Logout ends the session: the old token no longer works even if a client keeps it.
	anon.wantStatus(200, "POST", "/admin/api/logout", "")
	stale := e.client(http.Header{"Cookie": {admin.SessionCookie + "=" + ck.Value}})
	stale.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	anon.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")

	// Over TLS the cookie is Secure.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "https://gw.example/admin/api/login", strings.NewReader(`{"admin_key":"`+testAdminKey+`"}`))
	req.Header.Set("Content-Type", "application/json")
	e.api.ServeHTTP(rec, req)
	if c := rec.Result().Cookies(); rec.Code != 200 || len(c) != 1 || !c[0].Secure {
		t.Errorf("login over TLS: %d, cookies %+v", rec.Code, c)
	}

	// Unknown routes and methods answer JSON too.
	b := e.bearer()
	b.wantError(404, "NOT_FOUND", "GET", "/admin/api/nope", "")
	b.wantError(404, "NOT_FOUND", "DELETE", "/admin/api/keys/999", "")
	a = b.do("PATCH", "/admin/api/keys", "")
	if a.status != 405 || a.header.Get("Allow") != "GET, POST" {
		t.Errorf("PATCH keys: %d, Allow %q", a.status, a.header.Get("Allow"))
	}
	decodeError(t, a.body)
}

func TestAdminCSRF(t *testing.T) {
	e := newAdminEnv(t, 2)
	u, _ := url.Parse(e.url)
	self := "http://" + u.Host
	browser := e.login()
	disable := "/admin/api/keys/1/disable"
	browser.wantError(403, "PERMISSION_DENIED", "POST", disable, "", "Origin", "https://evil.example")
	browser.wantError(403, "PERMISSION_DENIED", "POST", disable, "", "Sec-Fetch-Site", "cross-site")
	browser.wantError(403, "PERMISSION_DENIED", "POST", disable, "", "Origin", "null")
	browser.wantError(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", `{"max_retries":0}`, "Origin", "https://evil.example")
	if _, _, disabled := e.c.pool.Counts(time.Now()); disabled != 0 {
		t.Fatal("a cross-site request disabled a key")
	}
	if e.c.settings.Load().maxRetries != defaultMaxRetries {
		t.Fatal("a cross-site request changed a setting")
	}
	// Reading from anywhere is harmless (the browser does not let the other site read it).
	browser.wantStatus(200, "GET", "/admin/api/keys", "", "Origin", "https://evil.example")
	// The site itself may change things.
	browser.wantStatus(200, "POST", disable, "", "Origin", self, "Sec-Fetch-Site", "same-origin")
	// A Bearer request carries no ambient credential: no CSRF check.
	e.bearer().wantStatus(200, "POST", "/admin/api/keys/1/enable", "", "Origin", "https://evil.example")
	// Login and logout from another site are refused too.
	e.client(nil).wantError(403, "PERMISSION_DENIED", "POST", "/admin/api/login", `{"admin_key":"`+testAdminKey+`"}`, "Origin", "https://evil.example")
	browser.wantError(403, "PERMISSION_DENIED", "POST", "/admin/api/logout", "", "Sec-Fetch-Site", "cross-site")
	browser.wantStatus(200, "GET", "/admin/api/session", "")
}

func TestAdminSessionExpiry(t *testing.T) {
	e := newAdminEnv(t, 1)
	browser := e.login()
	browser.wantStatus(200, "GET", "/admin/api/keys", "")
	e.advance(admin.DefaultSessionTTL - time.Second)
	browser.wantStatus(200, "GET", "/admin/api/keys", "")
	e.advance(time.Second)
	browser.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	// The Bearer key does not expire.
	e.bearer().wantStatus(200, "GET", "/admin/api/keys", "")
}

func TestAdminLoginThrottling(t *testing.T) {
	e := newAdminEnv(t, 1)
	attacker := e.client(http.Header{"X-Test-Client": {"203.0.113.7"}})
	bad := `{"admin_key":"guess"}`
	good := `{"admin_key":"` + testAdminKey + `"}`
	for range 5 {
		attacker.wantError(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	}
	a := attacker.do("POST", "/admin/api/login", good)
	if a.status != 429 {
		t.Fatalf("after 5 failures: status %d, want 429 even with the right key", a.status)
	}
	decodeError(t, a.body)
	retry, err := strconv.Atoi(a.header.Get("Retry-After"))
	if err != nil || retry < 1 {
		t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
	}
	// Bearer attempts from that IP are locked out too; other IPs are not.
	e.client(http.Header{"X-Test-Client": {"203.0.113.7"}, "Authorization": {"Bearer " + testAdminKey}}).
		wantError(429, "RESOURCE_EXHAUSTED", "GET", "/admin/api/keys", "")
	e.client(http.Header{"X-Test-Client": {"198.51.100.1"}}).wantStatus(200, "POST", "/admin/api/login", good)
	// Once Retry-After has passed the right key works, and clears the record.
	e.advance(time.Duration(retry) * time.Second)
	attacker.wantStatus(200, "POST", "/admin/api/login", good)
	attacker.wantError(401, "UNAUTHENTICATED", "POST", "/admin/api/login", bad)
	attacker.wantStatus(200, "POST", "/admin/api/login", good)
}

func TestAdminKeyChange(t *testing.T) {
	e := newAdminEnv(t, 1)
	const newKey = "the-new-admin-key-0123456789"
	e.secret(newKey)
	a, b := e.login(), e.login()
	path := "/admin/api/admin-key"
	a.wantError(403, "PERMISSION_DENIED", "PUT", path, `{"current":"wrong","new":"`+newKey+`"}`)
	if f := fieldViolations(t, a.do("PUT", path, `{"current":"`+testAdminKey+`","new":"short"}`)); !slices.Equal(f, []string{"new"}) {
		t.Errorf("short key names %v", f)
	}
	if f := fieldViolations(t, a.do("PUT", path, `{"current":"`+testAdminKey+`","new":"has a space in it 0123456"}`)); !slices.Equal(f, []string{"new"}) {
		t.Errorf("key with spaces names %v", f)
	}
	b.wantStatus(200, "GET", "/admin/api/keys", "") // nothing changed yet
	a.wantStatus(200, "PUT", path, `{"current":"`+testAdminKey+`","new":"`+newKey+`"}`)
	a.wantStatus(200, "GET", "/admin/api/keys", "") // the changing session lives on
	b.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	e.bearer().wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	e.client(http.Header{"Authorization": {"Bearer " + newKey}}).wantStatus(200, "GET", "/admin/api/keys", "")

	// A reload with the same Caddyfile admin_key keeps the panel's key; a changed one wins.
	app := &Config{AccessKeys: []string{testAccessKey}, AdminKey: testAdminKey}
	if err := e.c.Apply(context.Background(), app); err != nil {
		t.Fatal(err)
	}
	newOK, err1 := (adminBackend{e.c}).CheckAdminKey(newKey)
	oldOK, err2 := (adminBackend{e.c}).CheckAdminKey(testAdminKey)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !newOK || oldOK {
		t.Error("a reload with the unchanged Caddyfile admin_key undid the panel's change")
	}
	a.wantStatus(200, "GET", "/admin/api/keys", "") // and the session lives on
	// Changing by Bearer ends every session.
	c := e.client(http.Header{"Authorization": {"Bearer " + newKey}})
	c.wantStatus(200, "PUT", path, `{"current":"`+newKey+`","new":"`+testAdminKey+`"}`)
	a.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	// A new admin key in the Caddyfile wins, and ends every session too.
	d := e.login()
	const rotated = "rotated-in-the-caddyfile-0123456789"
	e.secret(rotated)
	if err := e.c.Apply(context.Background(), &Config{AccessKeys: []string{testAccessKey}, AdminKey: rotated}); err != nil {
		t.Fatal(err)
	}
	d.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys", "")
	e.client(http.Header{"Authorization": {"Bearer " + rotated}}).wantStatus(200, "GET", "/admin/api/keys", "")
}

// keyIDs returns the ids of the listed keys.
func keyIDs(keys []map[string]any) []int64 {
	var out []int64
	for _, k := range keys {
		out = append(out, int64(k["id"].(float64)))
	}
	return out
}

func TestAdminKeys(t *testing.T) {
	e := newAdminEnv(t, 5)
	b := e.bearer()
	m := b.wantStatus(200, "GET", "/admin/api/keys", "")
	keys := list(t, m, "keys")
	if len(keys) != 5 || m["total"] != 5.0 || m["page"] != 1.0 || m["page_size"] != 50.0 {
		t.Fatalf("keys: %d, total %v page %v size %v", len(keys), m["total"], m["page"], m["page_size"])
	}
	k := keys[0]
	for _, f := range []string{"id", "masked", "status", "disabled_reason", "failure_count", "last_error", "last_used_at", "requests", "failures", "cooldowns"} {
		if _, ok := k[f]; !ok {
			t.Errorf("key has no %q: %v", f, k)
		}
	}
	if k["status"] != "active" || !strings.HasPrefix(k["masked"].(string), "AIzaSy") || len(k["masked"].(string)) > 16 {
		t.Errorf("first key %v", k)
	}
	// Paging.
	m = b.wantStatus(200, "GET", "/admin/api/keys?page=2&page_size=2", "")
	if ids := keyIDs(list(t, m, "keys")); !slices.Equal(ids, []int64{3, 4}) || m["total"] != 5.0 {
		t.Errorf("page 2 of 2: %v, total %v", ids, m["total"])
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?page=9", ""), "keys")); len(ids) != 0 {
		t.Errorf("a page past the end has %v", ids)
	}
	for _, q := range []string{"page=0", "page_size=501", "page=x", "status=sleepy"} {
		a := b.do("GET", "/admin/api/keys?"+q, "")
		field := strings.Split(q, "=")[0]
		if a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{field}) {
			t.Errorf("?%s: %d %s", q, a.status, a.body)
		}
	}

	// Disable, cool down, filter by status.
	got := b.wantStatus(200, "POST", "/admin/api/keys/2/disable", "")
	if got["status"] != "disabled" || got["manual_disabled"] != true || got["disabled_reason"] != operatorDisabled {
		t.Errorf("disabled key: %v", got)
	}
	until := time.Now().Add(time.Hour)
	e.c.pool.Report(3, "gemini-2.5-pro", quota(until), time.Now())
	m = b.wantStatus(200, "GET", "/admin/api/keys?status=cooling", "")
	cooling := list(t, m, "keys")
	if ids := keyIDs(cooling); !slices.Equal(ids, []int64{3}) {
		t.Fatalf("cooling keys %v", ids)
	}
	cds := cooling[0]["cooldowns"].([]any)
	if len(cds) != 1 || cds[0].(map[string]any)["model"] != "gemini-2.5-pro" {
		t.Errorf("cooldowns %v", cds)
	}
	if counts := m["counts"].(map[string]any); counts["active"] != 3.0 || counts["cooling"] != 1.0 || counts["disabled"] != 1.0 {
		t.Errorf("counts %v", counts)
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?status=disabled", ""), "keys")); !slices.Equal(ids, []int64{2}) {
		t.Errorf("disabled keys %v", ids)
	}
	// The proxy no longer uses the disabled key; enabling brings it back at once.
	for range 4 {
		if s := e.proxyCall(testAccessKey, "gemini-2.5-flash"); s != 200 {
			t.Fatalf("proxy call: %d", s)
		}
	}
	for _, c := range e.fake.Calls() {
		if c.Key == adminKeys(1, 1)[0] {
			t.Fatal("the proxy used a disabled key")
		}
	}
	if got := b.wantStatus(200, "POST", "/admin/api/keys/2/enable", ""); got["status"] != "active" {
		t.Errorf("enabled key: %v", got)
	}

	// Add from pasted text: new keys, repeats, keys already there and broken ones.
	fresh := adminKeys(10, 3)
	e.secret(fresh...)
	text := fmt.Sprintf("GEMINI_API_KEY=%s\n%s, %s\n%s again, old: %s, broken AIzaSyTooShort and %sXYZ",
		fresh[0], fresh[1], fresh[2], fresh[0], adminKeys(0, 1)[0], fresh[1])
	body, _ := json.Marshal(map[string]string{"text": text})
	m = b.wantStatus(200, "POST", "/admin/api/keys", string(body))
	if m["added"] != 3.0 || m["duplicates"] != 2.0 || m["invalid"] != 2.0 {
		t.Errorf("paste: %v, want added 3, duplicates 2, invalid 2", m)
	}
	if e.c.pool.Len() != 8 {
		t.Fatalf("pool has %d keys after the paste, want 8", e.c.pool.Len())
	}
	// Add from a list.
	more := adminKeys(20, 1)
	e.secret(more...)
	m = b.wantStatus(200, "POST", "/admin/api/keys", fmt.Sprintf(`{"keys":[%q, %q, "not-a-key"]}`, more[0], fresh[0]))
	if m["added"] != 1.0 || m["duplicates"] != 1.0 || m["invalid"] != 1.0 {
		t.Errorf("list: %v", m)
	}
	for _, bad := range []string{`{}`, `{"keys":["x"],"text":"y"}`, `{"keys":"x"}`} {
		if a := b.do("POST", "/admin/api/keys", bad); a.status != 400 || len(fieldViolations(t, a)) != 1 {
			t.Errorf("%s: %d %s", bad, a.status, a.body)
		}
	}
	// The new keys serve the proxy at once: disable every old one and call.
	for id := 1; id <= 5; id++ {
		b.wantStatus(200, "POST", fmt.Sprintf("/admin/api/keys/%d/disable", id), "")
	}
	e.fake.Reset()
	for range 4 {
		if s := e.proxyCall(testAccessKey, "gemini-2.5-flash"); s != 200 {
			t.Fatalf("proxy call on added keys: %d", s)
		}
	}
	used := map[string]bool{}
	for _, c := range e.fake.Calls() {
		used[c.Key] = true
	}
	if !used[fresh[0]] || !used[fresh[1]] || !used[fresh[2]] || !used[more[0]] || len(used) != 4 {
		t.Errorf("the proxy used %d keys, want exactly the 4 added", len(used))
	}

	// Delete: gone from the store and the pool; a second delete is 404.
	b.wantStatus(200, "DELETE", "/admin/api/keys/9", "")
	b.wantError(404, "NOT_FOUND", "DELETE", "/admin/api/keys/9", "")
	b.wantError(404, "NOT_FOUND", "POST", "/admin/api/keys/9/enable", "")
	if e.c.pool.Len() != 8 {
		t.Errorf("pool has %d keys after a delete, want 8", e.c.pool.Len())
	}

	// Validate one key: the fake says a key is invalid, so it is disabled with the reason.
	e.fake.SetKey(fresh[0], fakegemini.Invalid)
	m = b.wantStatus(200, "POST", "/admin/api/keys/6/validate", "")
	check := m["check"].(map[string]any)
	if check["result"] != "key_invalid" || check["action"] != "disabled" || check["http_status"] != 400.0 {
		t.Errorf("check of an invalid key: %v", check)
	}
	if m["key"].(map[string]any)["status"] != "disabled" {
		t.Errorf("key after the check: %v", m["key"])
	}
	m = b.wantStatus(200, "POST", "/admin/api/keys/7/validate", "")
	if check := m["check"].(map[string]any); check["result"] != "success" || check["action"] != "valid" {
		t.Errorf("check of a valid key: %v", check)
	}

	// Export asks for the admin key again and gives full keys, one per line.
	exp := "/admin/api/keys/export"
	b.wantError(403, "PERMISSION_DENIED", "POST", exp, `{"admin_key":"wrong"}`)
	b.wantError(400, "INVALID_ARGUMENT", "POST", exp, `{"admin_key":"`+testAdminKey+`","status":"odd"}`)
	a := b.do("POST", exp, `{"admin_key":"`+testAdminKey+`"}`)
	if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("export: %d %s", a.status, a.header.Get("Content-Type"))
	}
	lines := strings.Fields(string(a.body))
	// Key 9 (more[0]) was deleted, key 6 (fresh[0]) disabled by its check, 1-5 by hand.
	want := append(adminKeys(0, 5), fresh...)
	if !slices.Equal(lines, want) {
		t.Errorf("export has %d lines, want the 8 keys in id order", len(lines))
	}
	a = b.do("POST", exp, `{"admin_key":"`+testAdminKey+`","status":"active"}`)
	if lines := strings.Fields(string(a.body)); !slices.Equal(lines, []string{fresh[1], fresh[2]}) {
		t.Errorf("export of active keys has %d lines, want 2", len(lines))
	}
}

func TestAdminValidateAllReportsProgress(t *testing.T) {
	e := newAdminEnv(t, 4)
	b := e.bearer()
	keys := adminKeys(0, 4)
	e.fake.SetKey(keys[1], fakegemini.Invalid)
	e.fake.SetKey(keys[2], fakegemini.Hang) // holds the run until its probe times out
	e.c.probeTimeout = 2 * time.Second
	if m := b.wantStatus(200, "GET", "/admin/api/keys/validate", ""); m["running"] != false || m["started_at"] != nil {
		t.Errorf("before any run: %v", m)
	}
	m := b.wantStatus(202, "POST", "/admin/api/keys/validate", "")
	if m["running"] != true || m["total"] != 4.0 {
		t.Fatalf("started run: %v", m)
	}
	g := b.wantError(409, "ABORTED", "POST", "/admin/api/keys/validate", "")
	if !strings.Contains(g.Error.Message, "of 4 keys") {
		t.Errorf("409 message %q", g.Error.Message)
	}
	var last map[string]any
	waitFor(t, 20*time.Second, func() bool {
		last = b.wantStatus(200, "GET", "/admin/api/keys/validate", "")
		if d := last["done"].(float64); d < 0 || d > 4 {
			t.Fatalf("done = %v", d)
		}
		return last["running"] == false
	}, "the run to finish")
	if last["done"] != 4.0 || last["finished_at"] == nil {
		t.Errorf("finished run: %v", last)
	}
	summary := last["summary"].(map[string]any)
	if summary["valid"] != 2.0 || summary["disabled"] != 1.0 || summary["unchanged"] != 1.0 {
		t.Errorf("summary %v, want 2 valid, 1 disabled, 1 unchanged (the hanging key)", summary)
	}
	if results := list(t, last, "results"); len(results) != 4 || results[1]["action"] != "disabled" || results[2]["result"] != "transient" {
		t.Errorf("results %v", results)
	}
	// A new run may start once the last one is over, on a selection of keys this time.
	e.fake.SetKey(keys[1], fakegemini.OK)
	e.fake.Reset()
	if m := b.wantStatus(202, "POST", "/admin/api/keys/validate", `{"ids":[2, 99]}`); m["total"] != 1.0 {
		t.Errorf("selection run: %v, want total 1 (key 99 does not exist)", m)
	}
	waitFor(t, 20*time.Second, func() bool {
		last = b.wantStatus(200, "GET", "/admin/api/keys/validate", "")
		return last["running"] == false
	}, "the second run to finish")
	if results := list(t, last, "results"); len(results) != 1 || results[0]["key_id"] != 2.0 || results[0]["action"] != "enabled" {
		t.Errorf("selection results %v, want key 2 enabled again", results)
	}
	if calls := e.fake.Calls(); len(calls) != 1 || calls[0].Key != keys[1] {
		t.Errorf("the selection run made %d upstream calls, want 1 with key 2", len(calls))
	}
	for _, bad := range []string{`{"ids":[]}`, `{"ids":"all"}`, `[1]`} {
		if a := b.do("POST", "/admin/api/keys/validate", bad); a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{"ids"}) {
			t.Errorf("%s: %d %s", bad, a.status, a.body)
		}
	}
}

func TestAdminAccessKeys(t *testing.T) {
	e := newAdminEnv(t, 2)
	b := e.login()
	path := "/admin/api/access-keys"
	m := b.wantStatus(201, "POST", path, `{"label":"  CI runner  "}`)
	key, _ := m["key"].(string)
	if !strings.HasPrefix(key, "gs-") || len(key) < 30 || m["label"] != "CI runner" || m["enabled"] != true {
		t.Fatalf("created access key: %v", m)
	}
	id := int64(m["id"].(float64))
	// The full key is shown once: the list never has it.
	if a := b.do("GET", path, ""); bytes.Contains(a.body, []byte(key)) {
		t.Error("the access key list shows a full key")
	}
	all := list(t, b.wantStatus(200, "GET", path, ""), "access_keys")
	if len(all) != 2 || all[1]["label"] != "CI runner" || all[1]["key"] != nil {
		t.Errorf("access keys %v", all)
	}
	// It works in the proxy at once.
	if s := e.proxyCall(key, "gemini-2.5-flash"); s != 200 {
		t.Fatalf("new access key: %d", s)
	}
	waitFor(t, 5*time.Second, func() bool {
		e.c.store.Flush()
		l := list(t, b.wantStatus(200, "GET", path, ""), "access_keys")
		return l[1]["last_used_at"] != nil
	}, "last_used_at to be set")
	if m := b.wantStatus(200, "POST", fmt.Sprintf("%s/%d/disable", path, id), ""); m["enabled"] != false {
		t.Errorf("disabled: %v", m)
	}
	if s := e.proxyCall(key, "gemini-2.5-flash"); s != 403 {
		t.Errorf("disabled access key: %d, want 403", s)
	}
	b.wantStatus(200, "POST", fmt.Sprintf("%s/%d/enable", path, id), "")
	if s := e.proxyCall(key, "gemini-2.5-flash"); s != 200 {
		t.Errorf("enabled access key: %d", s)
	}
	b.wantStatus(200, "DELETE", fmt.Sprintf("%s/%d", path, id), "")
	if s := e.proxyCall(key, "gemini-2.5-flash"); s != 401 {
		t.Errorf("deleted access key: %d, want 401", s)
	}
	b.wantError(404, "NOT_FOUND", "DELETE", fmt.Sprintf("%s/%d", path, id), "")
	b.wantError(404, "NOT_FOUND", "POST", fmt.Sprintf("%s/%d/enable", path, id), "")
	for _, bad := range []string{`{"label":"` + strings.Repeat("x", 101) + `"}`, `{"label":"a\u0007b"}`, `{"label":5}`} {
		if a := b.do("POST", path, bad); a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{"label"}) {
			t.Errorf("%s: %d %s", bad, a.status, a.body)
		}
	}
	if n := len(list(t, b.wantStatus(200, "GET", path, ""), "access_keys")); n != 1 {
		t.Errorf("%d access keys after bad creates, want 1", n)
	}
}

func TestAdminSettings(t *testing.T) {
	e := newAdminEnv(t, 3)
	b := e.login()
	s := b.wantStatus(200, "GET", "/admin/api/settings", "")["settings"].(map[string]any)
	if s["max_retries"] != 3.0 || s["timezone"] != "UTC" || s["validation_interval"] != "1h" || s["error_log_retention"] != "15d" {
		t.Errorf("settings %v", s)
	}
	if len(s) != len(liveSettings) {
		t.Errorf("%d settings shown, want %d", len(s), len(liveSettings))
	}
	// Bad values: each named with its reason, and nothing changes (not even the good one).
	a := b.do("PUT", "/admin/api/settings", `{"max_retries":99,"timezone":"Mars/Olympus","max_failures":2,"colour":"blue","proxy":true,"validation_interval":"5s"}`)
	if f := fieldViolations(t, a); a.status != 400 || !slices.Equal(f, []string{"proxy"}) {
		t.Errorf("bad types: %d, fields %v", a.status, f)
	}
	a = b.do("PUT", "/admin/api/settings", `{"max_retries":99,"timezone":"Mars/Olympus","max_failures":2,"colour":"blue","validation_interval":"5s","upstream":"ftp://x","admin_key":"`+testAdminKey+`"}`)
	if f := fieldViolations(t, a); a.status != 400 || !slices.Equal(f, []string{"colour", "max_retries", "timezone", "upstream", "validation_interval"}) {
		t.Errorf("bad values: %d, fields %v", a.status, f)
	}
	if !strings.Contains(string(a.body), "out of range") {
		t.Errorf("the message does not say why: %s", a.body)
	}
	if cur := e.c.settings.Load(); cur.maxFailures != defaultMaxFailures || cur.maxRetries != defaultMaxRetries {
		t.Fatalf("a refused update changed settings: %+v", cur)
	}

	// A good update applies at once, without a reload, and is stored.
	// (Quota errors: they are retried up to max_retries; a 5xx only once.)
	e.fake.SetDefault(fakegemini.QuotaMinute)
	e.fake.Reset()
	if s := e.proxyCall(testAccessKey, "gemini-2.5-flash"); s != 429 {
		t.Fatalf("exhausted upstream: %d", s)
	}
	if n := len(e.fake.Calls()); n != 3 {
		t.Fatalf("%d upstream calls with max_retries 3 and 3 keys, want 3 (every key once)", n)
	}
	s = b.wantStatus(200, "PUT", "/admin/api/settings", `{"max_retries":0,"timezone":"Europe/Berlin","request_log_retention":"7d","max_failures":"50"}`)["settings"].(map[string]any)
	if s["max_retries"] != 0.0 || s["timezone"] != "Europe/Berlin" || s["request_log_retention"] != "7d" || s["max_failures"] != 50.0 {
		t.Errorf("settings after the update %v", s)
	}
	e.fake.Reset()
	// Another model: the keys cool down for flash only.
	if s := e.proxyCall(testAccessKey, "gemini-2.5-pro"); s != 429 {
		t.Fatalf("exhausted upstream: %d", s)
	}
	if n := len(e.fake.Calls()); n != 1 {
		t.Errorf("%d upstream calls after max_retries 0, want 1", n)
	}
	if got := e.c.settings.Load().timezone.String(); got != "Europe/Berlin" {
		t.Errorf("timezone %s", got)
	}
	stored, err := e.c.store.Settings(context.Background())
	if err != nil || stored[setMaxRetries] != "0" || stored[setTimezone] != "Europe/Berlin" {
		t.Errorf("stored settings %v, %v", stored, err)
	}
	// Times in answers now use the new zone.
	if st := b.wantStatus(200, "GET", "/admin/api/stats", ""); st["timezone"] != "Europe/Berlin" {
		t.Errorf("stats timezone %v", st["timezone"])
	}
	// A reload with the Caddyfile's unchanged value keeps the panel's edit.
	zero := 3
	if err := e.c.Apply(context.Background(), &Config{MaxRetries: &zero, AdminKey: testAdminKey}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Apply(context.Background(), &Config{MaxRetries: &zero, AdminKey: testAdminKey}); err != nil {
		t.Fatal(err)
	}
	if got := e.c.settings.Load().maxRetries; got != 3 {
		// The first applyConfig above set the Caddyfile's value for the first time: it wins.
		t.Errorf("max_retries after a new Caddyfile value: %d, want 3", got)
	}
	b.wantStatus(200, "PUT", "/admin/api/settings", `{"max_retries":1}`)
	if err := e.c.Apply(context.Background(), &Config{MaxRetries: &zero, AdminKey: testAdminKey}); err != nil {
		t.Fatal(err)
	}
	if got := e.c.settings.Load().maxRetries; got != 1 {
		t.Errorf("max_retries after a reload with the same Caddyfile value: %d, want the panel's 1", got)
	}
	// The proxy's password is never shown, and sending the hidden form back keeps it.
	b.wantStatus(200, "PUT", "/admin/api/settings", `{"proxy":"http://user:s3cret-pass@127.0.0.1:3128","admin_key":"`+testAdminKey+`"}`)
	e.secret("s3cret-pass")
	s = b.wantStatus(200, "GET", "/admin/api/settings", "")["settings"].(map[string]any)
	b.wantStatus(200, "PUT", "/admin/api/settings", fmt.Sprintf(`{"proxy":%q}`, s["proxy"]))
	if got := e.c.settings.Load().proxy; got != "http://user:s3cret-pass@127.0.0.1:3128" {
		t.Errorf("proxy after sending the hidden form back: %q", strings.ReplaceAll(got, "s3cret-pass", "***"))
	}
	b.wantStatus(200, "PUT", "/admin/api/settings", `{"proxy":"","admin_key":"`+testAdminKey+`"}`)
	if got := e.c.settings.Load().proxy; got != "" {
		t.Errorf("proxy not cleared")
	}
}

func TestAdminStatsAndLogs(t *testing.T) {
	e := newAdminEnv(t, 2)
	b := e.login()
	for range 3 {
		if s := e.proxyCall(testAccessKey, "gemini-2.5-flash"); s != 200 {
			t.Fatal(s)
		}
	}
	if s := e.proxyCall(testAccessKey, "gemini-2.5-pro"); s != 200 {
		t.Fatal(s)
	}
	e.fake.SetModelState("gemini-2.0-flash", fakegemini.Overloaded)
	if s := e.proxyCall(testAccessKey, "gemini-2.0-flash"); s != 503 {
		t.Fatalf("overloaded model: %d", s)
	}
	waitFor(t, 5*time.Second, func() bool {
		e.c.store.Flush()
		n, _ := e.c.store.CountRequestLogs(context.Background())
		return n == 5
	}, "5 request rows")
	e.mu.Lock()
	e.now = time.Now() // the stats end with the bucket that holds the handler's now
	e.mu.Unlock()

	for _, rg := range []string{"", "24h", "7d", "30d"} {
		m := b.wantStatus(200, "GET", "/admin/api/stats?range="+rg, "")
		req := m["requests"].(map[string]any)
		if req["total"] != 5.0 || req["success"] != 4.0 || req["failure"] != 1.0 {
			t.Errorf("range %q: requests %v", rg, req)
		}
		tok := m["tokens"].(map[string]any)
		if tok["total"].(float64) <= 0 || tok["prompt"].(float64) <= 0 {
			t.Errorf("range %q: tokens %v", rg, tok)
		}
		if k := m["keys"].(map[string]any); k["active"] != 2.0 || k["cooling"] != 0.0 || k["disabled"] != 0.0 {
			t.Errorf("range %q: keys %v", rg, k)
		}
		trend := list(t, m, "trend")
		want := map[string]int{"": 24, "24h": 24, "7d": 28, "30d": 30}[rg]
		var succ, fail, tokens float64
		for _, p := range trend {
			succ += p["success"].(float64)
			fail += p["failure"].(float64)
			tokens += p["tokens"].(float64)
		}
		if len(trend) != want || succ != 4 || fail != 1 || tokens != tok["total"] {
			t.Errorf("range %q: %d points summing to %v/%v/%v", rg, len(trend), succ, fail, tokens)
		}
		models := list(t, m, "models")
		if len(models) != 3 || models[0]["model"] != "gemini-2.5-flash" || models[0]["requests"] != 3.0 {
			t.Errorf("range %q: models %v", rg, models)
		}
	}
	if a := b.do("GET", "/admin/api/stats?range=1y", ""); a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{"range"}) {
		t.Errorf("range=1y: %d %s", a.status, a.body)
	}

	// Logs: newest first, paged on the server, filtered.
	m := b.wantStatus(200, "GET", "/admin/api/logs?kind=request&page_size=2", "")
	items := list(t, m, "items")
	if m["total"] != 5.0 || len(items) != 2 || items[0]["model"] != "gemini-2.0-flash" || items[0]["status"] != 503.0 {
		t.Errorf("first page %v, total %v", items, m["total"])
	}
	m = b.wantStatus(200, "GET", "/admin/api/logs?page=3&page_size=2", "")
	if items := list(t, m, "items"); len(items) != 1 || m["page"] != 3.0 {
		t.Errorf("last page %v", items)
	}
	m = b.wantStatus(200, "GET", "/admin/api/logs?model=gemini-2.5-flash&status=200&access_key_id=1", "")
	if m["total"] != 3.0 {
		t.Errorf("filtered total %v, want 3", m["total"])
	}
	m = b.wantStatus(200, "GET", "/admin/api/logs?kind=error", "")
	errs := list(t, m, "items")
	if m["total"].(float64) < 1 || errs[0]["model"] != "gemini-2.0-flash" || errs[0]["status"] != 503.0 || errs[0]["message"] == "" {
		t.Errorf("error log %v", errs)
	}
	if m := b.wantStatus(200, "GET", "/admin/api/logs?kind=error&key_id=999", ""); m["total"] != 0.0 || len(list(t, m, "items")) != 0 {
		t.Errorf("error log of an unknown key: %v", m)
	}
	for _, q := range []string{"kind=debug", "status=abc", "key_id=-1", "page_size=0"} {
		a := b.do("GET", "/admin/api/logs?"+q, "")
		if a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{strings.Split(q, "=")[0]}) {
			t.Errorf("?%s: %d %s", q, a.status, a.body)
		}
	}
	// The status route is still there.
	if st := b.wantStatus(200, "GET", "/admin/api/status", ""); st["keys"] == nil {
		t.Errorf("status %v", st)
	}
}

func TestAdminServesThePanel(t *testing.T) {
	e := newAdminEnv(t, 1)
	anon := e.client(nil)
	a := anon.do("GET", "/admin", "")
	if a.status != 301 || a.header.Get("Location") != "/admin/" {
		t.Errorf("/admin: %d to %q", a.status, a.header.Get("Location"))
	}
	for _, p := range []string{"/admin/", "/admin/dashboard", "/admin/index.html"} {
		a = anon.do("GET", p, "")
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || !bytes.Contains(a.body, []byte("<html")) {
			t.Errorf("%s: %d %s", p, a.status, a.header.Get("Content-Type"))
		}
		csp := a.header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: CSP %q lacks %s", p, csp, d)
			}
		}
		if a.header.Get("X-Content-Type-Options") != "nosniff" || a.header.Get("Referrer-Policy") != "no-referrer" || a.header.Get("Cache-Control") == "" {
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
	a = anon.do("GET", "/admin/theme.js", "")
	if a.status != 200 || !strings.Contains(a.header.Get("Content-Type"), "javascript") {
		t.Errorf("theme.js: %d %q", a.status, a.header.Get("Content-Type"))
	}
	anon.wantError(404, "NOT_FOUND", "GET", "/admin/missing.js", "")
	anon.wantError(405, "METHOD_NOT_ALLOWED", "POST", "/admin/", "")
	// Outside the prefix the next handler answers.
	if a := anon.do("GET", "/administrator", ""); a.status != http.StatusTeapot {
		t.Errorf("/administrator went to the admin handler: %d", a.status)
	}
}

// TestAdminAnyPrefix serves the panel under another prefix: the redirect, the page and the
// cookie's path follow it.
func TestAdminAnyPrefix(t *testing.T) {
	e := newAdminEnv(t, 1)
	h := &admin.Handler{Prefix: "/ops/gs", Backend: adminBackend{e.c}}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ops/gs?x=1", nil))
	if rec.Code != 301 || rec.Header().Get("Location") != "/ops/gs/?x=1" {
		t.Errorf("/ops/gs: %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ops/gs/", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Errorf("/ops/gs/: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/ops/gs/api/login", strings.NewReader(`{"admin_key":"`+testAdminKey+`"}`))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	cookies := rec.Result().Cookies()
	if rec.Code != 200 || len(cookies) != 1 || cookies[0].Path != "/ops/gs" {
		t.Fatalf("login under /ops/gs: %d, cookies %+v", rec.Code, cookies)
	}
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/ops/gs/api/keys", nil)
	req.AddCookie(cookies[0])
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"total":1`) {
		t.Errorf("keys under /ops/gs: %d %s", rec.Code, rec.Body)
	}
}

// TestAdminKeyOwningResources: a key that owns live resources (here a cached content created
// through the proxy) shows how many, and is deleted only when the operator insists, since the
// gateway cannot reach its resources with another key.
func TestAdminKeyOwningResources(t *testing.T) {
	e := newAdminEnv(t, 3)
	b := e.bearer()
	ctx := context.Background()
	proxy := e.client(http.Header{"X-Goog-Api-Key": {testAccessKey}})
	m := proxy.wantStatus(200, "POST", "/v1beta/cachedContents",
		`{"model":"models/gemini-2.5-flash","ttl":"600s","contents":[{"role":"user","parts":[{"text":"a long context"}]}]}`)
	cache, _ := m["name"].(string)
	calls := e.fake.Calls()
	owner := int64(slices.Index(adminKeys(0, 3), calls[len(calls)-1].Key) + 1)
	if cache == "" || owner == 0 {
		t.Fatalf("cached content %q created by an unknown key", cache)
	}
	other := owner%3 + 1
	// One more live resource of the owner, and an expired one of another key that must not count.
	if err := e.c.store.AddResources(ctx,
		store.Resource{Name: "files/admin-live", KeyID: owner, ExpiresAt: time.Now().Add(time.Hour)},
		store.Resource{Name: "files/admin-expired", KeyID: other, ExpiresAt: time.Now().Add(-time.Minute)},
	); err != nil {
		t.Fatal(err)
	}

	counts := map[int64]float64{}
	for _, k := range list(t, b.wantStatus(200, "GET", "/admin/api/keys", ""), "keys") {
		counts[int64(k["id"].(float64))] = k["resources"].(float64)
	}
	if counts[owner] != 2 || counts[other] != 0 || len(counts) != 3 {
		t.Errorf("resources per key %v, want 2 for key %d and 0 for the others", counts, owner)
	}
	// The single-key answers carry it too.
	if k := b.wantStatus(200, "POST", fmt.Sprintf("/admin/api/keys/%d/disable", owner), ""); k["resources"] != 2.0 {
		t.Errorf("disable answer: resources %v, want 2", k["resources"])
	}
	b.wantStatus(200, "POST", fmt.Sprintf("/admin/api/keys/%d/enable", owner), "")

	// Without force: 409 that says how many and why, and nothing changes.
	del := fmt.Sprintf("/admin/api/keys/%d", owner)
	for _, q := range []string{"", "?force=false", "?force=0"} {
		g := b.wantError(409, "FAILED_PRECONDITION", "DELETE", del+q, "")
		if msg := g.Error.Message; !strings.Contains(msg, "2 live files or other resources") ||
			!strings.Contains(msg, "no longer be reached through the gateway") || !strings.Contains(msg, "force=true") {
			t.Errorf("409 message %q does not say what is at stake", msg)
		}
	}
	if a := b.do("DELETE", del+"?force=maybe", ""); a.status != 400 || !slices.Equal(fieldViolations(t, a), []string{"force"}) {
		t.Errorf("?force=maybe: %d %s", a.status, a.body)
	}
	if e.c.pool.Len() != 3 {
		t.Errorf("pool has %d keys after refused deletes, want 3", e.c.pool.Len())
	}
	if owners, err := e.c.store.ResourceOwners(ctx, []string{cache, "files/admin-live"}, time.Now()); err != nil || len(owners) != 2 {
		t.Errorf("owners after refused deletes: %v %v", owners, err)
	}
	// The cached content still works through its key.
	n := len(e.fake.Calls())
	proxy.wantStatus(200, "POST", genPath("gemini-2.5-flash"), `{"cachedContent":"`+cache+`","contents":[{"role":"user","parts":[{"text":"hello"}]}]}`)
	if calls := e.fake.Calls()[n:]; len(calls) != 1 || calls[0].Key != adminKeys(0, 3)[owner-1] {
		t.Errorf("the cached content was not used through its key after a refused delete")
	}

	// A key owning nothing live (only an expired record) needs no force.
	b.wantStatus(200, "DELETE", fmt.Sprintf("/admin/api/keys/%d", other), "")

	// With force the key goes, and with it the records of what it owned.
	if m := b.wantStatus(200, "DELETE", del+"?force=true", ""); m["deleted"] != float64(owner) {
		t.Errorf("forced delete answered %v", m)
	}
	b.wantError(404, "NOT_FOUND", "DELETE", del+"?force=true", "")
	b.wantError(404, "NOT_FOUND", "DELETE", del, "")
	if e.c.pool.Len() != 1 {
		t.Errorf("pool has %d keys after two deletes, want 1", e.c.pool.Len())
	}
	if owners, err := e.c.store.ResourceOwners(ctx, []string{cache, "files/admin-live"}, time.Now()); err != nil || len(owners) != 0 {
		t.Errorf("records of a deleted key's resources remain: %v %v", owners, err)
	}
	for _, k := range list(t, b.wantStatus(200, "GET", "/admin/api/keys", ""), "keys") {
		if k["resources"] != 0.0 {
			t.Errorf("key %v shows resources after its owner was deleted", k)
		}
	}
}
