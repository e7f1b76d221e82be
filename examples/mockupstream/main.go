// Command mockupstream serves a fake Gemini API, so the gateway can be tried
// without a Google key:
//
//	go run ./examples/mockupstream -listen 127.0.0.1:9999
//
// Every key is valid and the model answers "echo: <your text>", except for
// keys containing one of these words, which fail the way real keys do:
//
//	invalid  400 INVALID_ARGUMENT, API_KEY_INVALID
//	leaked   403 PERMISSION_DENIED, "reported as leaked"
//	quota    429 RESOURCE_EXHAUSTED, per-minute quota, retryDelay "30s"
//	daily    429 RESOURCE_EXHAUSTED, per-day quota
//	flaky    503 UNAVAILABLE, "The model is overloaded"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// magicWords maps a word found in a key to the state such keys get.
var magicWords = []struct {
	word  string
	state fakegemini.KeyState
}{
	{"invalid", fakegemini.Invalid},
	{"leaked", fakegemini.Leaked},
	{"quota", fakegemini.QuotaMinute},
	{"daily", fakegemini.QuotaDay},
	{"flaky", fakegemini.Overloaded},
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9999", "address to listen on")
	events := flag.Int("stream-events", 3, "number of events in a streamed answer")
	delay := flag.Duration("stream-delay", 0, "delay between streamed events, e.g. 200ms")
	flag.Parse()

	fake := fakegemini.New()
	fake.SetStream(*events, *delay)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: magicKeys(fake), ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Printf("fake Gemini upstream listening on http://%s (any key works; keys containing invalid, leaked, quota, daily or flaky fail)\n", ln.Addr())

	select {
	case err := <-errc:
		log.Fatal(err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Print(err)
	}
	_ = srv.Close()
}

// magicKeys programs the state of each key from the words it contains before
// handing the request to the fake, and drops the fake's call log afterwards.
func magicKeys(fake *fakegemini.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := requestKey(r)
		lower := strings.ToLower(key)
		for _, m := range magicWords {
			if strings.Contains(lower, m.word) {
				fake.SetKey(key, m.state)
				break
			}
		}
		fake.ServeHTTP(w, r)
		fake.Reset() // nobody reads the recorded calls here; keep memory flat
	})
}

// requestKey returns the credential of r, in the order Google reads it.
func requestKey(r *http.Request) string {
	if k := r.Header.Get("X-Goog-Api-Key"); k != "" {
		return k
	}
	if k := r.URL.Query().Get("key"); k != "" {
		return k
	}
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(token)
	}
	return ""
}
