package main

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestEventScannerCountsEvents(t *testing.T) {
	long := strings.Repeat("x", 40<<10) // longer than the reader's buffer
	cases := []struct {
		name, stream string
		events       int
	}{
		{"crlf", "data: {\"a\":1}\r\n\r\ndata: {\"a\":2}\r\n\r\n", 2},
		{"lf", "data: 1\n\ndata: 2\n\ndata: 3\n\n", 3},
		{"unterminated last event", "data: 1\n\ndata: 2", 2},
		{"blank lines without data", "\n\n: comment\n\n", 0},
		{"line longer than the buffer", "data: " + long + "\r\n\r\n", 1},
		{"empty", "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc := eventScanner{r: bufio.NewReaderSize(strings.NewReader(c.stream), 16)}
			n := 0
			for {
				ok, err := sc.next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				n++
			}
			if n != c.events {
				t.Errorf("got %d events, want %d", n, c.events)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var v []time.Duration
	for i := 1; i <= 100; i++ {
		v = append(v, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.50, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(v, c.p); got != c.want {
			t.Errorf("p%.2f = %s, want %s", c.p, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("empty: %s", got)
	}
}

func TestOnlyLoopbackTargets(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:9/x", "http://[::1]:9/"} {
		if err := checkLoopback(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{"http://10.0.0.1/", "http://example.com/", "https://127.0.0.1/", "http://localhost/"} {
		if err := checkLoopback(u); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

// A run against a real server: every request is counted, failures are errors, and the
// connections are kept alive (one dial per client).
func TestRunPhaseCountsRequestsAndErrors(t *testing.T) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1)%10 == 0 {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"candidates":[]}`))
	}))
	defer srv.Close()
	cfg := &config{body: []byte(`{}`), key: "k"}
	var dials atomic.Int64
	client := newClient(4, true, 5*time.Second, &dials)
	defer client.CloseIdleConnections()
	callers := make([]caller, 4)
	for i := range callers {
		callers[i] = generateCaller(cfg, client, srv.URL)
	}
	r := runPhase(t.Context(), callers, time.Minute, 200)
	if r.sent != 200 || served.Load() != 200 {
		t.Fatalf("sent %d, served %d, want 200", r.sent, served.Load())
	}
	if r.errs != 20 || len(r.lats) != 180 {
		t.Errorf("errors %d, successes %d; want 20 and 180", r.errs, len(r.lats))
	}
	if !strings.Contains(r.firstErr, "status 503") {
		t.Errorf("first error %q", r.firstErr)
	}
	// http.Error sends Content-Length, so even failed answers keep their connection.
	if d := dials.Load(); d > 4 {
		t.Errorf("%d dials for 4 keep-alive clients", d)
	}
}
