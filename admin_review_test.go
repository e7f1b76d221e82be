package geminisynapse

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// rawDo sends a request with exactly the given body and headers (no Content-Type added).
func (c *client) rawDo(method, path, body string, header ...string) answer {
	c.e.t.Helper()
	req, err := http.NewRequest(method, c.e.url+path, strings.NewReader(body))
	if err != nil {
		c.e.t.Fatal(err)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.e.t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.e.mu.Lock()
	c.e.seen = append(c.e.seen, string(b))
	c.e.mu.Unlock()
	return answer{resp.StatusCode, resp.Header, b}
}

// TestAdminRefusesBodiesNotDeclaredJSON: a body a cross-site form could send (text/plain,
// form-encoded, no type) is refused with 415 and changes nothing; routes without a body work
// without a Content-Type.
func TestAdminRefusesBodiesNotDeclaredJSON(t *testing.T) {
	e := newAdminEnv(t, 2)
	b := e.bearer()
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		a := b.rawDo("PUT", "/admin/api/settings", `{"max_retries":0}`, "Content-Type", ct)
		if a.status != http.StatusUnsupportedMediaType {
			t.Fatalf("Content-Type %q: status %d, want 415: %s", ct, a.status, a.body)
		}
		if g := decodeError(t, a.body); g.Error.Code != 415 || g.Error.Status != "INVALID_ARGUMENT" {
			t.Errorf("Content-Type %q: envelope %+v", ct, g.Error)
		}
		if a := b.rawDo("POST", "/admin/api/keys/validate", `{"ids":[1]}`, "Content-Type", ct); a.status != 415 {
			t.Errorf("validate with Content-Type %q: status %d", ct, a.status)
		}
	}
	if e.c.settings.Load().maxRetries != defaultMaxRetries {
		t.Fatal("a body not declared as JSON changed a setting")
	}
	// With a parameter the type is still JSON.
	if a := b.rawDo("PUT", "/admin/api/settings", `{"max_retries":0}`, "Content-Type", "application/json; charset=utf-8"); a.status != 200 {
		t.Fatalf("JSON with charset: %d %s", a.status, a.body)
	}
	// Routes without a body need no Content-Type.
	if a := b.rawDo("POST", "/admin/api/keys/1/disable", ""); a.status != 200 {
		t.Errorf("disable without a body: %d %s", a.status, a.body)
	}
	if a := b.rawDo("DELETE", "/admin/api/keys/2", ""); a.status != 200 {
		t.Errorf("delete without a body: %d %s", a.status, a.body)
	}
	if a := b.rawDo("POST", "/admin/api/keys/validate", ""); a.status != 202 {
		t.Errorf("validate all without a body: %d %s", a.status, a.body)
	}
	waitFor(t, 20*time.Second, func() bool {
		return b.wantStatus(200, "GET", "/admin/api/keys/validate", "")["running"] == false
	}, "the run to finish")
}

// TestShortCaddyfileAdminKeyRefused: the Caddyfile's admin_key follows the panel's rules.
func TestShortCaddyfileAdminKeyRefused(t *testing.T) {
	db := filepath.Join(t.TempDir(), "data.db")
	for key, ok := range map[string]bool{"short-key": false, "exactly-16-chars": true} {
		err := caddy.Validate(&caddy.Config{AppsRaw: caddy.ModuleMap{
			"gemini_synapse": json.RawMessage(fmt.Sprintf(`{"database":%q,"admin_key":%q}`, db, key)),
		}})
		if ok && err != nil {
			t.Errorf("admin_key %q: %v", key, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "admin_key: must be at least 16 characters")) {
			t.Errorf("admin_key %q: err %v, want the length named", key, err)
		}
	}
}

// TestAdminUpstreamChangeNeedsAdminKey: a session alone cannot point the upstream keys at
// another server (then validate them all there): upstream and proxy need the admin key again.
func TestAdminUpstreamChangeNeedsAdminKey(t *testing.T) {
	e := newAdminEnv(t, 2)
	browser := e.login()
	before := e.c.settings.Load()
	evil := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(evil.Close)
	for _, body := range []string{
		`{"upstream":"` + evil.URL + `"}`,
		`{"proxy":"http://attacker.example:8080"}`,
		`{"upstream":"` + evil.URL + `","max_retries":0}`,
		`{"upstream":"` + evil.URL + `","admin_key":""}`,
	} {
		g := browser.wantError(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", body)
		if !strings.Contains(g.Error.Message, "admin_key") {
			t.Errorf("%s: message %q does not name admin_key", body, g.Error.Message)
		}
	}
	browser.wantError(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", `{"upstream":"`+evil.URL+`","admin_key":"wrong"}`)
	if s := e.c.settings.Load(); s.upstream.String() != before.upstream.String() || s.proxy != before.proxy || s.maxRetries != before.maxRetries {
		t.Fatalf("a refused change changed settings: upstream %s proxy %q retries %d", s.upstream, s.proxy, s.maxRetries)
	}
	// Sending the current values back, or changing other settings, needs no key.
	browser.wantStatus(200, "PUT", "/admin/api/settings", `{"upstream":"`+before.upstream.String()+`","proxy":"","max_retries":1}`)
	if e.c.settings.Load().maxRetries != 1 {
		t.Fatal("an unguarded change did not apply")
	}
	// With the admin key it works, and the log names the old and the new host.
	browser.wantStatus(200, "PUT", "/admin/api/settings", `{"upstream":"`+evil.URL+`","admin_key":"`+testAdminKey+`"}`)
	if got := e.c.settings.Load().upstream.String(); got != evil.URL {
		t.Fatalf("upstream %s after a change with the admin key", got)
	}
	logged := e.logs.FilterMessageSnippet("upstream was changed").All()
	if len(logged) != 1 || logged[0].ContextMap()["old_host"] != before.upstream.Host ||
		logged[0].ContextMap()["new_host"] != strings.TrimPrefix(evil.URL, "http://") {
		t.Errorf("upstream change log: %+v", logged)
	}
	// A Bearer request has shown the admin key already.
	e.bearer().wantStatus(200, "PUT", "/admin/api/settings", `{"upstream":"`+before.upstream.String()+`/"}`)
	// Wrong admin keys here count against the client like any other.
	guesser := e.login()
	for range 5 {
		guesser.wantError(403, "PERMISSION_DENIED", "PUT", "/admin/api/settings", `{"upstream":"`+evil.URL+`","admin_key":"guess"}`)
	}
	guesser.wantError(429, "RESOURCE_EXHAUSTED", "PUT", "/admin/api/settings", `{"upstream":"`+evil.URL+`","admin_key":"`+testAdminKey+`"}`)
}

// TestAdminLockoutSurvivesReload: the login throttle lives in the core, so reloading the
// config does not give a locked-out client new guesses.
func TestAdminLockoutSurvivesReload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts caddy in-process")
	}
	up := httptest.NewServer(fakegemini.New())
	defer up.Close()
	db := filepath.Join(t.TempDir(), "data.db")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := func(accessKey string) []byte {
		var cfg map[string]any
		if err := json.Unmarshal(caddyConfig(t, db, up.URL, addr, accessKey), &cfg); err != nil {
			t.Fatal(err)
		}
		srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["s"].(map[string]any)
		srv["routes"] = []any{map[string]any{"handle": []any{
			map[string]any{"handler": "gemini_synapse_admin"},
			map[string]any{"handler": "gemini_synapse"},
		}}}
		b, _ := json.Marshal(cfg)
		return b
	}
	if err := caddy.Load(config("k1"), true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	login := func() int {
		t.Helper()
		for try := 0; ; try++ { // a connection reset by the previous server's shutdown: retry
			resp, err := http.Post("http://"+addr+"/admin/api/login", "application/json", strings.NewReader(`{"admin_key":"wrong-wrong-wrong"}`))
			if err == nil {
				resp.Body.Close()
				return resp.StatusCode
			}
			if try == 3 {
				t.Fatal(err)
			}
		}
	}
	for range 5 {
		if s := login(); s != http.StatusUnauthorized {
			t.Fatalf("wrong key: %d", s)
		}
	}
	if s := login(); s != http.StatusTooManyRequests {
		t.Fatalf("after 5 wrong keys: %d", s)
	}
	if err := caddy.Load(config("k2"), true); err != nil {
		t.Fatal(err)
	}
	if s := login(); s != http.StatusTooManyRequests {
		t.Errorf("after a reload: %d, want the lockout kept (429)", s)
	}
}

// TestAdminBehindTrustedProxy: behind a proxy the server trusts, X-Forwarded-Proto: https makes
// the session cookie Secure and X-Forwarded-Host counts as this site for the Origin check;
// from a client that is not a trusted proxy both headers are ignored.
func TestAdminBehindTrustedProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts caddy in-process")
	}
	up := httptest.NewServer(fakegemini.New())
	defer up.Close()
	db := filepath.Join(t.TempDir(), "data.db")
	trustedAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	otherAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var cfg map[string]any
	if err := json.Unmarshal(caddyConfig(t, db, up.URL, trustedAddr, "k1"), &cfg); err != nil {
		t.Fatal(err)
	}
	server := func(addr string, trusted []string) map[string]any {
		return map[string]any{
			"listen":          []string{addr},
			"trusted_proxies": map[string]any{"source": "static", "ranges": trusted},
			"routes": []any{map[string]any{"handle": []any{
				map[string]any{"handler": "gemini_synapse_admin"},
				map[string]any{"handler": "gemini_synapse"},
			}}},
		}
	}
	cfg["apps"].(map[string]any)["http"] = map[string]any{"servers": map[string]any{
		"trusted": server(trustedAddr, []string{"127.0.0.1/32"}),
		"other":   server(otherAddr, []string{"10.0.0.0/8"}),
	}}
	b, _ := json.Marshal(cfg)
	if err := caddy.Load(b, true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	login := func(addr string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+addr+"/admin/api/login", strings.NewReader(`{"admin_key":"lifecycle-admin-key-0123"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Forwarded-Host", "gw.example")
		req.Header.Set("Origin", "https://gw.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := login(trustedAddr)
	if c := resp.Cookies(); resp.StatusCode != 200 || len(c) != 1 || !c[0].Secure {
		t.Errorf("login through a trusted TLS proxy: %d, cookies %+v; want 200 and a Secure cookie", resp.StatusCode, c)
	}
	if resp := login(otherAddr); resp.StatusCode != http.StatusForbidden {
		t.Errorf("forwarded headers from an untrusted client: %d, want 403 (Origin is not this host)", resp.StatusCode)
	}
	// Without the Origin, the untrusted client's claimed HTTPS does not make the cookie Secure.
	req, _ := http.NewRequest("POST", "http://"+otherAddr+"/admin/api/login", strings.NewReader(`{"admin_key":"lifecycle-admin-key-0123"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if c := resp.Cookies(); resp.StatusCode != 200 || len(c) != 1 || c[0].Secure {
		t.Errorf("login from an untrusted client claiming https: %d, cookies %+v; want a cookie without Secure", resp.StatusCode, c)
	}
}
