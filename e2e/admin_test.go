package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"
)

// adminSession is a browser-like client of the admin API: a cookie jar on the gateway's
// recording transport, so every answer is scanned for pool keys at the end.
type adminSession struct {
	t  *testing.T
	g  *gateway
	hc *http.Client
}

func newAdminSession(t *testing.T, g *gateway) *adminSession {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &adminSession{t: t, g: g, hc: &http.Client{Transport: g.Client.Transport, Jar: jar, Timeout: 30 * time.Second}}
}

// call sends a JSON request to P/api/<path> and decodes a JSON answer into out (if not nil).
func (s *adminSession) call(method, path, body string, want int, out any, header ...string) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.g.URL+"/admin/api/"+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	if resp.StatusCode != want {
		s.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		s.t.Fatalf("%s %s: Content-Type %q", method, path, resp.Header.Get("Content-Type"))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// adminGeminiKeys returns n keys shaped exactly like Google's: "AIza" and 35 more characters.
func adminGeminiKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("AIzaSyE2E-admin-api-%02d-%s", i+1, strings.Repeat(string(rune('k'+i)), 16))
	}
	return keys
}

// TestAdminAPI runs an operator's first session against the real caddy: sign in, paste keys,
// watch a proxied call show up in the logs and the stats, change a setting that survives a
// restart, and be refused from another site.
func TestAdminAPI(t *testing.T) {
	fake, up := newFake(t)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, AccessKeys: []string{accessKey}})
	keys := adminGeminiKeys(2)
	g.secretKs = append(g.secretKs, keys...)

	// No pool key yet: the proxy has nothing to call with.
	if r := g.generate(modelFlash, accessKey); r.Status == http.StatusOK {
		t.Fatalf("a call with an empty pool succeeded: %s", r.Body)
	}

	s := newAdminSession(t, g)
	s.call("GET", "keys", "", http.StatusUnauthorized, nil)
	s.call("POST", "login", `{"admin_key":"wrong"}`, http.StatusUnauthorized, nil)
	s.call("POST", "login", fmt.Sprintf(`{"admin_key":%q}`, adminKey), http.StatusOK, nil)

	// Paste a config snippet holding both keys (one twice) and some noise.
	text := fmt.Sprintf("export GEMINI_API_KEY=%s\n# backup: %s, again %s\nnot a key: AIzaSyBroken", keys[0], keys[1], keys[0])
	body, _ := json.Marshal(map[string]string{"text": text})
	var added struct{ Added, Duplicates, Invalid int }
	s.call("POST", "keys", string(body), http.StatusOK, &added)
	if added.Added != 2 || added.Duplicates != 1 || added.Invalid != 1 {
		t.Errorf("paste: %+v, want 2 added, 1 duplicate, 1 invalid", added)
	}
	var list struct {
		Keys []struct {
			ID     int64
			Masked string
			Status string
		}
		Total int
	}
	s.call("GET", "keys?status=active", "", http.StatusOK, &list)
	if list.Total != 2 || len(list.Keys) != 2 || list.Keys[0].Status != "active" {
		t.Fatalf("keys after the paste: %+v", list)
	}

	// The proxy uses them at once, without a reload.
	wantOK(t, g.generate(modelFlash, accessKey))
	calls := clientCalls(fake.Calls())
	if len(calls) != 1 || (calls[0].Key != keys[0] && calls[0].Key != keys[1]) {
		t.Fatalf("upstream calls after the paste: %d", len(calls))
	}

	// The call shows in the request log and in the stats.
	type logItem struct {
		Model  string
		Status int
		KeyID  int64 `json:"key_id"`
	}
	var logs struct {
		Items []logItem
		Total int
	}
	if !eventually(10*time.Second, func() bool {
		s.call("GET", "logs?kind=request&model="+modelFlash+"&status=200", "", http.StatusOK, &logs)
		return logs.Total == 1
	}) {
		t.Fatalf("the proxied call is not in the request log: %+v", logs)
	}
	if it := logs.Items[0]; it.Model != modelFlash || it.Status != 200 || (it.KeyID != list.Keys[0].ID && it.KeyID != list.Keys[1].ID) {
		t.Errorf("log item %+v", it)
	}
	var stats struct {
		Requests struct{ Total, Success, Failure int }
		Keys     struct{ Active, Cooling, Disabled int }
		Trend    []struct{ Success, Failure int }
		Models   []struct {
			Model    string
			Requests int
		}
	}
	s.call("GET", "stats?range=24h", "", http.StatusOK, &stats)
	// Two requests: the one refused with an empty pool, and the one that worked.
	trendSuccess, trendFailure := 0, 0
	for _, p := range stats.Trend {
		trendSuccess += p.Success
		trendFailure += p.Failure
	}
	if stats.Requests.Total != 2 || stats.Requests.Success != 1 || stats.Requests.Failure != 1 ||
		stats.Keys.Active != 2 || len(stats.Trend) != 24 || trendSuccess != 1 || trendFailure != 1 {
		t.Errorf("stats: %+v", stats)
	}
	found := false
	for _, m := range stats.Models {
		found = found || (m.Model == modelFlash && m.Requests == 2)
	}
	if !found {
		t.Errorf("models: %+v", stats.Models)
	}

	// A change from another site is refused; from the panel it applies and is stored.
	s.call("PUT", "settings", `{"max_retries":1}`, http.StatusForbidden, nil, "Origin", "https://evil.example")
	s.call("PUT", "settings", `{"max_retries":1,"timezone":"Asia/Tokyo"}`, http.StatusOK, nil, "Origin", g.URL)
	var bad struct {
		Error struct {
			Code    int
			Message string
		}
	}
	s.call("PUT", "settings", `{"max_failures":0}`, http.StatusBadRequest, &bad)
	if !strings.Contains(bad.Error.Message, "max_failures") {
		t.Errorf("the 400 does not name the field: %+v", bad)
	}

	// After a restart with the same Caddyfile: the session, the keys and the panel's edits are
	// still there.
	g.Restart()
	var settings struct {
		Settings map[string]any
	}
	s.call("GET", "settings", "", http.StatusOK, &settings)
	if settings.Settings["max_retries"] != 1.0 || settings.Settings["timezone"] != "Asia/Tokyo" {
		t.Errorf("settings after a restart: %v", settings.Settings)
	}
	s.call("GET", "stats?range=7d", "", http.StatusOK, &stats)
	if stats.Keys.Active != 2 || stats.Requests.Success != 1 {
		t.Errorf("stats after a restart: %+v", stats)
	}
	s.call("POST", "logout", "", http.StatusOK, nil)
	s.call("GET", "keys", "", http.StatusUnauthorized, nil)

	// The panel page is served under the prefix, with its security headers.
	r := g.do("GET", "/admin/", nil, "")
	if r.Status != http.StatusOK || !strings.Contains(r.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("panel page: %d, CSP %q", r.Status, r.Header.Get("Content-Security-Policy"))
	}

	// Guessing the admin key is cut short: 429 with Retry-After, even for the right key.
	for range 5 {
		s.call("POST", "login", `{"admin_key":"guess"}`, http.StatusUnauthorized, nil)
	}
	req, _ := http.NewRequest("POST", g.URL+"/admin/api/login", strings.NewReader(fmt.Sprintf(`{"admin_key":%q}`, adminKey)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("after 5 wrong keys: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
