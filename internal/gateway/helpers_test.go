package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// teapot stands for the next handler of the server: what the gateway leaves alone gets 418.
func teapot(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }

// serveCore serves the gateway c over loopback as a server would, the admin API first when
// api is not nil (under its Prefix), and returns the server's URL; the server stops with the
// test.
func serveCore(t testing.TB, c *Core, api http.Handler, prefix string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if api != nil && (r.URL.Path == prefix || strings.HasPrefix(r.URL.Path, prefix+"/")) {
			<-c.Ready()
			api.ServeHTTP(w, r)
			return
		}
		if !c.Serve(w, r) {
			teapot(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// quota is a quota outcome that cools a key down until until.
func quota(until time.Time) keypool.Outcome {
	return keypool.Outcome{Kind: keypool.Quota, Until: until}
}

// filterStacks keeps the goroutine stacks of the gateway, the scheduler and SQLite.
func filterStacks(all string) string {
	var out []string
	for _, g := range strings.Split(all, "\n\n") {
		if strings.Contains(g, "geminisynapse") || strings.Contains(g, "gocron") || strings.Contains(g, "sqlite") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// coreSetup is what a test asks of the core it starts; the zero value is a core on a fresh
// database in front of a fresh fake upstream.
type coreSetup struct {
	wrap         func(http.Handler) http.Handler // wraps the fake upstream
	upstream     http.Handler                    // another upstream instead of the fake
	clock        *clockwork.FakeClock            // drives the scheduler; nil: the real clock
	probeTimeout time.Duration
	path         string // the database file; "" for a new one
	wrapStore    func(store.Store) store.Store
}

// testCore is a started core with its fake upstream and its log lines.
type testCore struct {
	c    *Core
	fake *fakegemini.Server
	up   *httptest.Server
	logs *observer.ObservedLogs
}

// startCore opens a core as a server would and applies cfg (its Upstream defaults to the
// fake's). The core and the upstream stop with the test. It is the one setup every test of
// the package builds on.
func startCore(t testing.TB, s coreSetup, cfg *Config) testCore {
	t.Helper()
	tc := testCore{fake: fakegemini.New()}
	var h http.Handler = tc.fake
	if s.upstream != nil {
		h = s.upstream
	}
	if s.wrap != nil {
		h = s.wrap(h)
	}
	tc.up = httptest.NewServer(h)
	t.Cleanup(tc.up.Close)
	obs, logs := observer.New(zap.DebugLevel)
	tc.logs = logs
	path := s.path
	if path == "" {
		path = filepath.Join(t.TempDir(), "db", "data.db")
	}
	c := New(path, zap.New(obs), Hooks{})
	if s.clock != nil {
		c.clock = s.clock
	}
	c.probeTimeout = s.probeTimeout
	c.wrapStore = s.wrapStore
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Destruct() })
	if cfg == nil {
		cfg = &Config{}
	}
	if cfg.Upstream == "" {
		cfg.Upstream = tc.up.URL
	}
	if err := c.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	tc.c = c
	return tc
}

// cannedPolls is the fake upstream, except that a GET of a path in answers gets that answer:
// a finished batch or operation as Google answers its poll.
type cannedPolls struct {
	fake    *fakegemini.Server
	answers map[string]string
}

func (u cannedPolls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := u.answers[r.URL.Path]
	if r.Method != http.MethodGet || !ok {
		u.fake.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	io.WriteString(w, body)
}
