package e2e

// An access key's limits hold for a cluster of caddy instances sharing one PostgreSQL
// database (each leases slices of them from it), through the Go SDK.

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// TestClusterLimitsHoldAcrossInstances: an access key with rpm 30 (from the Caddyfile of each
// instance) and 90 generateContent calls made at once through the Go SDK, spread over three
// instances: exactly 30 succeed, the others get 429 RESOURCE_EXHAUSTED; and a key with
// concurrency 2 never has more than 2 requests at the upstream at once across the three.
func TestClusterLimitsHoldAcrossInstances(t *testing.T) {
	fake := fakegemini.New()
	var inflight, peak atomic.Int64
	slowKey := tenantKey("conc")
	// While slow is set (only the concurrency-limited key sends requests then) the upstream
	// answers after 20 ms and counts the requests it holds at once.
	var slow atomic.Bool
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			n := inflight.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(20 * time.Millisecond)
			inflight.Add(-1)
		}
		fake.ServeHTTP(w, r)
	})
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close) // registered before the gateways: stopped after them
	pool := poolKeys(3)
	dbURL := pgtest.URL(t)
	gs := startCluster(t, 3, gatewayConfig{Upstream: up.URL, PoolKeys: pool, Database: dbURL, Options: []string{
		accessKeyOption("rpm", "rpm 30"),
		accessKeyOption("conc", "concurrency 2"),
	}})

	clients := make([]*genai.Client, len(gs))
	for i, g := range gs {
		c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
			APIKey: tenantKey("rpm"), Backend: genai.BackendGeminiAPI, HTTPClient: g.Client,
			HTTPOptions: genai.HTTPOptions{BaseURL: g.URL},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 90 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := clients[i%3].Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
			var apiErr genai.APIError
			switch {
			case err == nil:
				ok.Add(1)
			case asAPIError(err, &apiErr) && apiErr.Code == http.StatusTooManyRequests && apiErr.Status == "RESOURCE_EXHAUSTED":
				limited.Add(1)
			default:
				t.Errorf("call %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if ok.Load() != 30 || limited.Load() != 60 {
		t.Fatalf("%d succeeded and %d were refused under rpm 30 shared by three instances, want 30 and 60", ok.Load(), limited.Load())
	}

	// Concurrency 2 across the three instances, slow answers, nine clients at once.
	slow.Store(true)
	var passed atomic.Int64
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 6 {
				r := gs[i%3].generate(modelFlash, slowKey)
				switch r.Status {
				case http.StatusOK:
					passed.Add(1)
				case http.StatusTooManyRequests:
					time.Sleep(5 * time.Millisecond)
				default:
					t.Errorf("status %d: %s", r.Status, r.Body)
				}
			}
		}()
	}
	wg.Wait()
	slow.Store(false)
	if p := peak.Load(); p > 2 {
		t.Fatalf("the upstream saw %d requests at once of a key with concurrency 2 shared by three instances", p)
	}
	if passed.Load() == 0 {
		t.Fatal("no request of the concurrency-limited key passed")
	}
	t.Logf("concurrency 2: %d of 54 passed, at most %d at once upstream", passed.Load(), peak.Load())
}
