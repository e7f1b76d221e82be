package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// openStream starts a streamGenerateContent request with alt=sse and returns the response.
func (g *gateway) openStream(ctx context.Context, key string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		g.URL+"/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse", strings.NewReader(genBody))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Goog-Api-Key", key)
	// Not reused afterwards: a reload test would otherwise race the old server's close of it.
	req.Close = true
	return g.Client.Do(req)
}

func TestStreamingIsFlushedPerEvent(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(1)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetStream(5, 300*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := g.openStream(ctx, accessKey)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	var raw bytes.Buffer
	events, rest, err := readSSE(io.TeeReader(resp.Body, &raw), nil)
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	if len(events) != 5 {
		t.Fatalf("got %d events, want 5; raw: %q", len(events), raw.String())
	}
	if len(rest) != 0 {
		t.Errorf("stream ends with an incomplete event: %q", rest)
	}
	first, last := events[0].At.Sub(start), events[len(events)-1].At.Sub(start)
	t.Logf("first event after %s, last after %s", first.Round(time.Millisecond), last.Round(time.Millisecond))
	if first > last-900*time.Millisecond {
		t.Errorf("first event arrived at %s, last at %s: the gateway buffers the stream", first, last)
	}
	for i, ev := range events {
		checkSSEEvent(t, i, ev.Data)
	}
	if !bytes.Contains(events[len(events)-1].Data, []byte("finishReason")) {
		t.Errorf("last event has no finishReason: %s", events[len(events)-1].Data)
	}

	// The bytes are the upstream's, unchanged.
	calls := clientCalls(fake.Calls())
	if len(calls) != 1 {
		t.Fatalf("fake saw %d calls, want 1", len(calls))
	}
	assertCleanUpstream(t, calls, pool, accessKey)
	fake.SetStream(5, 0)
	direct := directCall(t, up.URL, pool[0], http.MethodPost, "/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse", genBody)
	if !sameEvents(raw.Bytes(), direct.Body) {
		t.Errorf("streamed events differ from the upstream's (responseId aside):\n got: %q\nwant: %q", raw.String(), direct.Body)
	}
}

// sameEvents compares two SSE bodies event by event, ignoring the random responseId.
func sameEvents(a, b []byte) bool {
	ea := bytes.Split(a, []byte("\r\n\r\n"))
	eb := bytes.Split(b, []byte("\r\n\r\n"))
	if len(ea) != len(eb) {
		return false
	}
	for i := range ea {
		if len(ea[i]) == 0 && len(eb[i]) == 0 {
			continue
		}
		var ma, mb map[string]any
		if json.Unmarshal(bytes.TrimPrefix(ea[i], []byte("data: ")), &ma) != nil ||
			json.Unmarshal(bytes.TrimPrefix(eb[i], []byte("data: ")), &mb) != nil {
			return false
		}
		delete(ma, "responseId")
		delete(mb, "responseId")
		if !reflect.DeepEqual(ma, mb) {
			return false
		}
	}
	return true
}

func TestJSONArrayStream(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(1)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetStream(3, 0)
	r := g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":streamGenerateContent", apiKeyHeader(accessKey), genBody)
	if r.Status != http.StatusOK {
		t.Fatalf("status = %d; body: %s", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var arr []map[string]any
	if err := json.Unmarshal(r.Body, &arr); err != nil {
		t.Fatalf("body is not a JSON array: %v; body: %s", err, r.Body)
	}
	if len(arr) != 3 {
		t.Errorf("array has %d elements, want 3", len(arr))
	}
	calls := clientCalls(fake.Calls())
	assertCleanUpstream(t, calls, pool, accessKey)
	if len(calls) == 1 && strings.Contains(calls[0].RawQuery, "alt=sse") {
		t.Errorf("gateway added alt=sse to a JSON-array stream request: %q", calls[0].RawQuery)
	}
}

func TestClientDisconnectClosesUpstream(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(1)
	// One key that a single failure would disable: a client going away must not count.
	g := startGateway(t, gatewayConfig{
		Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Options: []string{"max_failures 1"},
	})
	fake.SetStream(20, 500*time.Millisecond)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := g.openStream(ctx, accessKey)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	gotFirst := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var once bool
		_, _, err := readSSE(resp.Body, func(sseEvent) {
			if !once {
				once = true
				close(gotFirst)
			}
		})
		done <- err
	}()
	select {
	case <-gotFirst:
	case <-time.After(10 * time.Second):
		t.Fatal("no first event within 10s")
	}
	if n := fake.OpenStreams(); n != 1 {
		t.Fatalf("fake reports %d open streams mid-stream, want 1", n)
	}
	cancel()
	resp.Body.Close()
	<-done
	if !eventually(3*time.Second, func() bool { return fake.OpenStreams() == 0 }) {
		t.Fatalf("upstream stream still open 3s after the client went away (%d open)", fake.OpenStreams())
	}

	// The key was not blamed for the client's disconnect.
	fake.SetStream(2, 0)
	wantOK(t, g.generate(modelFlash, accessKey))
}

func TestReloadDuringOpenStream(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	cfg := gatewayConfig{Upstream: up.URL, PoolKeys: pool[:2], AccessKeys: []string{accessKey}}
	g := startGateway(t, cfg)
	fake.SetStream(6, 500*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := g.openStream(ctx, accessKey)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	gotFirst := make(chan struct{})
	type result struct {
		events []sseEvent
		rest   []byte
		err    error
	}
	streamDone := make(chan result, 1)
	go func() {
		var once bool
		ev, rest, err := readSSE(resp.Body, func(sseEvent) {
			if !once {
				once = true
				close(gotFirst)
			}
		})
		streamDone <- result{ev, rest, err}
	}()
	select {
	case <-gotFirst:
	case <-time.After(10 * time.Second):
		t.Fatal("no first event within 10s")
	}

	// Mid-stream: add an access key and a pool key.
	newCfg := cfg
	newCfg.AccessKeys = []string{accessKey, accessKey2}
	newCfg.PoolKeys = pool
	reloadDone := make(chan error, 1)
	go func() { reloadDone <- g.tryReload(newCfg) }()

	var res result
	select {
	case res = <-streamDone:
	case <-time.After(30 * time.Second):
		t.Fatal("stream did not finish within 30s of the reload")
	}
	if res.err != nil {
		t.Fatalf("stream broke during reload after %d events: %v", len(res.events), res.err)
	}
	if len(res.events) != 6 || len(res.rest) != 0 {
		t.Fatalf("stream delivered %d complete events (rest %q), want 6", len(res.events), res.rest)
	}
	for i, ev := range res.events {
		checkSSEEvent(t, i, ev.Data)
	}
	select {
	case err := <-reloadDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("caddy reload did not return within 30s")
	}

	fake.Reset()
	wantOK(t, g.generate(modelFlash, accessKey2))
	wantOK(t, g.generate(modelFlash, accessKey))
	for i := 0; i < 4; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[pool[2]]; n == 0 {
		t.Errorf("the pool key added on reload was never used in 6 requests")
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey, accessKey2)
}

func TestReloadKeepsPoolKeysRemovedFromCaddyfile(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	cfg := gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}}
	g := startGateway(t, cfg)
	wantOK(t, g.generate(modelFlash, accessKey))

	// google_api_keys only ever adds: dropping a key from the Caddyfile leaves it in the pool.
	cfg.PoolKeys = pool[:1]
	g.Reload(cfg)
	g.Client.CloseIdleConnections()
	fake.Reset()
	for i := 0; i < 4; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	per := countKeys(fake.Calls(), "")
	if per[pool[0]] != 2 || per[pool[1]] != 2 {
		t.Errorf("after a reload without key 2, keys served %v, want 2 each", maskCounts(per))
	}
}

func TestStreamFailover(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	ssePath := "/v1beta/models/" + modelFlash + ":streamGenerateContent?alt=sse"

	t.Run("RetriedBeforeTheFirstByte", func(t *testing.T) {
		fake.SetKey(pool[0], fakegemini.Invalid)
		defer fake.SetKey(pool[0], fakegemini.OK)
		for i := 0; i < 2; i++ {
			r := g.do(http.MethodPost, ssePath, apiKeyHeader(accessKey), genBody)
			if r.Status != http.StatusOK || !bytes.Contains(r.Body, []byte("finishReason")) {
				t.Fatalf("stream %d: status %d, body %q", i, r.Status, r.Body)
			}
		}
	})

	t.Run("MidStreamErrorPassedThrough", func(t *testing.T) {
		fake.Reset()
		fake.SetStream(4, 0)
		fake.SetFailAfterEvents(2)
		defer fake.SetFailAfterEvents(0)
		r := g.do(http.MethodPost, ssePath, apiKeyHeader(accessKey), genBody)
		if r.Status != http.StatusOK {
			t.Fatalf("status = %d; body: %s", r.Status, r.Body)
		}
		if n := bytes.Count(r.Body, []byte("data: ")); n != 2 {
			t.Errorf("got %d events before the error, want 2; body: %q", n, r.Body)
		}
		if !bytes.Contains(r.Body, []byte(`"UNAVAILABLE"`)) {
			t.Errorf("the mid-stream error object was not passed on; body: %q", r.Body)
		}
		if n := len(clientCalls(fake.Calls())); n != 1 {
			t.Errorf("fake saw %d calls, want 1: a started stream must not be retried", n)
		}
	})
}
