package gateway

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
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
