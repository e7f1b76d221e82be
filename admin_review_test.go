package geminisynapse

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

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
