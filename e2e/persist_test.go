package e2e

import (
	"database/sql"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	_ "github.com/mattn/go-sqlite3"
)

func TestRequestLogsArePersisted(t *testing.T) {
	_, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	const n = 7
	for i := 0; i < n; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	g.Stop()

	db, err := sql.Open("sqlite3", "file:"+g.cfg.Database+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var count int
	if err := db.QueryRow(`SELECT COUNT(*) FROM request_logs`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Errorf("request_logs has %d rows after %d requests, want %d", count, n, n)
	}
	var tokens sql.NullInt64
	if err := db.QueryRow(`SELECT SUM(total_tokens) FROM request_logs`).Scan(&tokens); err != nil {
		t.Fatal(err)
	}
	if !tokens.Valid || tokens.Int64 <= 0 {
		t.Errorf("SUM(total_tokens) = %v, want > 0", tokens)
	}
}

// TestSecretsNeverLeak drives the error paths that are most likely to echo a key (invalid,
// suspended and leaked keys, quota, server errors, streams) and relies on the gateway cleanup,
// which fails the test if caddy's log output or any response contains a full pool key.
func TestSecretsNeverLeak(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(6)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetKey(pool[0], fakegemini.Invalid)
	fake.SetKey(pool[1], fakegemini.Suspended)
	fake.SetKey(pool[2], fakegemini.Leaked)
	fake.SetKey(pool[3], fakegemini.QuotaMinute)
	fake.SetKey(pool[4], fakegemini.Internal)
	fake.SetStream(3, 0)
	for i := 0; i < 8; i++ {
		g.generate(modelFlash, accessKey)
		g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse", apiKeyHeader(accessKey), genBody)
	}
	g.generate("nope", accessKey)
	g.do(http.MethodGet, "/v1beta/models", apiKeyHeader(accessKey), "")
	fake.SetDefault(fakegemini.Internal)
	g.generate(modelPro, accessKey)

	// Every key has now been used at least once, so a leak would have had its chance.
	per := countKeys(fake.Calls(), "")
	for _, k := range pool {
		if per[k] == 0 {
			t.Errorf("key %s was never used; the test did not exercise it", mask(k))
		}
	}
	// Let batched log writers and any error logging run before the cleanup reads the output.
	time.Sleep(200 * time.Millisecond)
	out := g.Output()
	if strings.Contains(out, accessKey) {
		t.Errorf("caddy's log output contains the full access key")
	}
}

func TestOpenAICompatible(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	body := `{"model":"` + modelFlash + `","messages":[{"role":"user","content":"hello"}]}`
	r := g.do(http.MethodPost, "/v1beta/openai/chat/completions", http.Header{"Authorization": {"Bearer " + accessKey}}, body)
	if r.Status != http.StatusOK {
		t.Fatalf("status = %d; body: %s", r.Status, r.Body)
	}
	var cc struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(r.Body, &cc); err != nil || len(cc.Choices) == 0 {
		t.Errorf("not a chat.completion: %v; body: %s", err, r.Body)
	}
	calls := clientCalls(fake.Calls())
	if len(calls) != 1 {
		t.Fatalf("fake saw %d calls, want 1", len(calls))
	}
	c := calls[0]
	if c.Path != "/v1beta/openai/chat/completions" {
		t.Errorf("upstream path = %q", c.Path)
	}
	auth := c.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") || !slices.Contains(pool, strings.TrimPrefix(auth, "Bearer ")) {
		t.Errorf("upstream Authorization is not Bearer <pool key> (got %q)", mask(auth))
	}
	assertCleanUpstream(t, calls, pool, accessKey)

	// The models list of the compat surface goes through too.
	r = g.do(http.MethodGet, "/v1beta/openai/models", http.Header{"Authorization": {"Bearer " + accessKey}}, "")
	if r.Status != http.StatusOK {
		t.Errorf("GET /v1beta/openai/models: status = %d; body: %s", r.Status, r.Body)
	}
}
