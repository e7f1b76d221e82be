package gateway

import (
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
