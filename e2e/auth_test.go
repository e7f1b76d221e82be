package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

func TestAuth(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{
		Upstream:   up.URL,
		PoolKeys:   pool,
		AccessKeys: []string{accessKey, accessKey2},
		// route keeps this order, so /hello passes through gemini_synapse first.
		Site: "route {\n\t\tgemini_synapse\n\t\trespond /hello \"hi\"\n\t}",
	})
	genPath := "/v1beta/models/" + modelFlash + ":generateContent"

	t.Run("NoCredential", func(t *testing.T) {
		fake.Reset()
		r := g.do(http.MethodPost, genPath, nil, genBody)
		wantEnvelope(t, r, http.StatusUnauthorized, "UNAUTHENTICATED")
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			t.Errorf("Content-Type = %q, want application/json", r.Header.Get("Content-Type"))
		}
		if n := len(clientCalls(fake.Calls())); n != 0 {
			t.Errorf("unauthenticated request caused %d upstream calls", n)
		}
	})

	t.Run("WrongKey", func(t *testing.T) {
		fake.Reset()
		for name, h := range map[string]http.Header{
			"x-goog-api-key": apiKeyHeader(wrongKey),
			"bearer":         {"Authorization": {"Bearer " + wrongKey}},
		} {
			r := g.do(http.MethodPost, genPath, h, genBody)
			switch r.Status {
			case http.StatusUnauthorized:
				wantEnvelope(t, r, http.StatusUnauthorized, "UNAUTHENTICATED")
			case http.StatusForbidden:
				wantEnvelope(t, r, http.StatusForbidden, "PERMISSION_DENIED")
			default:
				t.Errorf("%s: status = %d, want 401 or 403; body: %s", name, r.Status, r.Body)
			}
		}
		r := g.do(http.MethodPost, genPath+"?key="+url.QueryEscape(wrongKey), nil, genBody)
		if r.Status != http.StatusUnauthorized && r.Status != http.StatusForbidden {
			t.Errorf("?key=: status = %d, want 401 or 403; body: %s", r.Status, r.Body)
		}
		if n := len(clientCalls(fake.Calls())); n != 0 {
			t.Errorf("requests with a wrong key caused %d upstream calls", n)
		}
	})

	t.Run("AcceptedForms", func(t *testing.T) {
		fake.Reset()
		wantOK(t, g.do(http.MethodPost, genPath, apiKeyHeader(accessKey), genBody))
		wantOK(t, g.do(http.MethodPost, genPath, http.Header{"Authorization": {"Bearer " + accessKey}}, genBody))
		wantOK(t, g.do(http.MethodPost, genPath+"?key="+url.QueryEscape(accessKey2)+"&prettyPrint=false", nil, genBody))
		calls := clientCalls(fake.Calls())
		if len(calls) != 3 {
			t.Fatalf("fake saw %d calls, want 3", len(calls))
		}
		assertCleanUpstream(t, calls, pool, accessKey, accessKey2)
		if q, _ := url.ParseQuery(calls[2].RawQuery); q.Get("prettyPrint") != "false" {
			t.Errorf("other query parameters were not preserved: raw query %q", calls[2].RawQuery)
		}
	})

	t.Run("Preflight", func(t *testing.T) {
		fake.Reset()
		h := http.Header{
			"Origin":                         {"http://app.example"},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"x-goog-api-key, content-type"},
		}
		r := g.do(http.MethodOptions, genPath, h, "")
		if r.Status != http.StatusNoContent && r.Status != http.StatusOK {
			t.Fatalf("preflight status = %d, want 204 or 200; body: %s", r.Status, r.Body)
		}
		if r.Header.Get("Access-Control-Allow-Origin") == "" {
			t.Errorf("preflight lacks Access-Control-Allow-Origin; headers: %v", r.Header)
		}
		allow := strings.ToLower(strings.Join(r.Header.Values("Access-Control-Allow-Headers"), ","))
		if !strings.Contains(allow, "x-goog-api-key") {
			t.Errorf("Access-Control-Allow-Headers = %q, want it to contain x-goog-api-key", allow)
		}
		if n := countMethodPath(fake.Calls(), http.MethodOptions, ""); n != 0 {
			t.Errorf("preflight caused %d upstream calls", n)
		}
	})

	t.Run("NonAPIPathPassesThrough", func(t *testing.T) {
		fake.Reset()
		r := g.do(http.MethodGet, "/hello", nil, "")
		if r.Status != http.StatusOK || string(r.Body) != "hi" {
			t.Errorf("GET /hello = %d %q, want 200 \"hi\" from the next handler", r.Status, r.Body)
		}
		if n := countMethodPath(fake.Calls(), "", "/hello"); n != 0 {
			t.Errorf("/hello caused %d upstream calls", n)
		}
	})
}

// countMethodPath counts calls with the given method and path ("" matches any).
func countMethodPath(calls []fakegemini.Call, method, path string) int {
	n := 0
	for _, c := range calls {
		if (method == "" || c.Method == method) && (path == "" || c.Path == path) {
			n++
		}
	}
	return n
}
