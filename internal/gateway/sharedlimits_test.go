package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// leasing is a store of one instance with PostgreSQL's ledger of the shared limits: the
// cores of these tests share a SQLite file for everything else, and their limits through a
// real PostgreSQL.
type leasing struct {
	store.Store
	store.Leaser
}

// sharedCores starts n cores on one database file, their limits shared through the
// PostgreSQL database at url, in front of upstream, with cfg; it returns them and their URLs.
func sharedCores(t *testing.T, url string, n int, upstream http.Handler, cfg func() *Config) ([]testCore, []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shared.db")
	var cores []testCore
	var urls []string
	for range n {
		pg, err := postgres.Open(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Close() }) // after the core's Destruct, which gives its slices back
		tc := startCore(t, coreSetup{path: path, upstream: upstream, wrapStore: func(s store.Store) store.Store {
			return leasing{s, pg}
		}}, cfg())
		cores = append(cores, tc)
		urls = append(urls, serveCore(t, tc.c, nil, ""))
	}
	return cores, urls
}

// sharedGenerate sends one generateContent with key to the gateway at base and returns the status
// and the body.
func sharedGenerate(t *testing.T, base, key string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+genPath("gemini-2.5-flash"), strings.NewReader(helloBody))
	req.Header.Set("x-goog-api-key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, nil, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestSharedLimitsRPM: an access key with rpm 30 used through three gateway cores sharing one
// PostgreSQL ledger: of 90 requests at once spread over them, exactly 30 pass; the others get
// Google's 429 naming rpm.
func TestSharedLimitsRPM(t *testing.T) {
	url := pgtest.URL(t)
	fake := fakegemini.New()
	keys := proxyKeys(2)
	const key = "gs-shared-rpm-0123456789abcdef"
	cfg := func() *Config {
		return &Config{GoogleAPIKeys: keys, PolicyKeys: []AccessKeyConfig{{Label: "rpm", Key: key, Policy: tenant.Policy{RPM: 30}}}}
	}
	cores, urls := sharedCores(t, url, 3, fake, cfg)
	if cores[0].c.limiter.Instance() == "" {
		t.Fatal("the core is not in cluster mode on a store with a ledger")
	}
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 90 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, _, body := sharedGenerate(t, urls[i%3], key)
			switch code {
			case http.StatusOK:
				ok.Add(1)
			case http.StatusTooManyRequests:
				var q quotaError
				json.Unmarshal(body, &q)
				if m, _ := q.limits(); len(m) != 1 || m[0] != tenant.LimitRPM {
					t.Errorf("429 naming %v, want rpm: %s", m, body)
				}
				limited.Add(1)
			default:
				t.Errorf("status %d: %s", code, body)
			}
		}()
	}
	close(start)
	wg.Wait()
	if ok.Load() != 30 || limited.Load() != 60 {
		t.Fatalf("%d passed and %d were refused under rpm 30 shared by three instances, want 30 and 60", ok.Load(), limited.Load())
	}
}

// TestSharedLimitsConcurrency: concurrency 2 shared by three cores, slow answers and many
// requests at once: the upstream never sees more than 2 of the key's requests at a time, and
// every request either passes or gets a 429 naming concurrency.
func TestSharedLimitsConcurrency(t *testing.T) {
	url := pgtest.URL(t)
	fake := fakegemini.New()
	var inflight, peak atomic.Int64
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		inflight.Add(-1)
		fake.ServeHTTP(w, r)
	})
	keys := proxyKeys(2)
	const key = "gs-shared-conc-0123456789abcdef"
	cfg := func() *Config {
		return &Config{GoogleAPIKeys: keys, PolicyKeys: []AccessKeyConfig{{Label: "conc", Key: key, Policy: tenant.Policy{Concurrency: 2}}}}
	}
	_, urls := sharedCores(t, url, 3, slow, cfg)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 8 {
				code, _, body := sharedGenerate(t, urls[i%3], key)
				switch code {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusTooManyRequests:
					if !strings.Contains(string(body), "ConcurrentRequestsPerAccessKey") {
						t.Errorf("429 not for concurrency: %s", body)
					}
					time.Sleep(5 * time.Millisecond)
				default:
					t.Errorf("status %d: %s", code, body)
				}
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Fatalf("the upstream saw %d of the key's requests at once under concurrency 2 shared by three instances", p)
	}
	if ok.Load() == 0 {
		t.Fatal("no request passed")
	}
	t.Logf("%d of 72 passed, at most %d at once upstream", ok.Load(), peak.Load())
}

// TestSharedLimitsUnavailable: with the ledger's PostgreSQL stopped, a request of a limited
// access key that the slices held do not cover gets 503 UNAVAILABLE with Retry-After (and its
// row says why), a key without limits is served as ever, and once PostgreSQL is back the
// limited key passes again.
func TestSharedLimitsUnavailable(t *testing.T) {
	srv := pgtest.NewServer(t)
	url := srv.URL(t)
	fake := fakegemini.New()
	keys := proxyKeys(1)
	const limited = "gs-shared-down-0123456789abcdef"
	cfg := func() *Config {
		return &Config{GoogleAPIKeys: keys, AccessKeys: []string{testAccessKey},
			PolicyKeys: []AccessKeyConfig{{Label: "limited", Key: limited, Policy: tenant.Policy{RPD: 1000}}}}
	}
	cores, urls := sharedCores(t, url, 1, fake, cfg)
	if code, _, body := sharedGenerate(t, urls[0], limited); code != http.StatusOK {
		t.Fatalf("before the outage: %d %s", code, body)
	}
	srv.Stop(t)
	// The slice leased before (one unit, doubling) runs out, or its lifetime does.
	var code int
	var hdr http.Header
	var body []byte
	for range 20 {
		if code, hdr, body = sharedGenerate(t, urls[0], limited); code != http.StatusOK {
			break
		}
	}
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), `"UNAVAILABLE"`) {
		t.Fatalf("with the ledger down: %d (Retry-After %q) %s; want 503 UNAVAILABLE with Retry-After", code, hdr.Get("Retry-After"), body)
	}
	if code, _, body := sharedGenerate(t, urls[0], testAccessKey); code != http.StatusOK {
		t.Fatalf("a key without limits with the ledger down: %d %s", code, body)
	}
	st := cores[0].c.limiter.ClusterStats()
	if st.LeaseErrors == 0 || st.Unavailable == 0 {
		t.Errorf("stats %+v: want the failed leases and the refusals counted", st)
	}
	srv.Start(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, body := sharedGenerate(t, urls[0], limited)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the limited key still refused after PostgreSQL came back: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The refusals are logged with the reason.
	eventually(t, "a request row with limit_hit shared_limits", func() bool {
		rows, err := cores[0].c.store.RecentRequests(context.Background(), store.LogQuery{Limit: 100})
		if err != nil {
			return false
		}
		for _, r := range rows {
			if r.LimitHit == hitShared && r.Status == http.StatusServiceUnavailable {
				return true
			}
		}
		return false
	})
}
