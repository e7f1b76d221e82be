package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

func TestRotation(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	for i := 0; i < 30; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	calls := clientCalls(fake.Calls())
	if len(calls) != 30 {
		t.Fatalf("fake saw %d calls, want 30", len(calls))
	}
	per := countKeys(calls, "")
	for _, k := range pool {
		if per[k] != 10 {
			t.Errorf("key %s used %d times, want 10", mask(k), per[k])
		}
	}
	assertCleanUpstream(t, calls, pool, accessKey)
}

func TestQuotaCooldownIsPerModel(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	a, b := pool[0], pool[1]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetRetryDelay("30s")
	fake.SetKey(a, fakegemini.QuotaMinute)

	// Rotation over two keys must reach A within the first two requests; every request
	// still succeeds because the gateway retries on B.
	for i := 0; i < 4; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), modelFlash)[a]; n != 1 {
		t.Fatalf("key A was tried %d times for %s, want exactly 1 (then cooled down)", n, modelFlash)
	}

	fake.Reset()
	fake.SetRetryDelay("30s")
	fake.SetKey(a, fakegemini.QuotaMinute)
	for i := 0; i < 6; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	per := countKeys(fake.Calls(), modelFlash)
	if per[a] != 0 {
		t.Errorf("key A was used %d more times for %s while cooling down", per[a], modelFlash)
	}
	if per[b] != 6 {
		t.Errorf("key B served %d of 6 requests for %s", per[b], modelFlash)
	}

	// The cooldown is per model: A is still tried for another model.
	for i := 0; i < 4; i++ {
		wantOK(t, g.generate(modelPro, accessKey))
	}
	if n := countKeys(fake.Calls(), modelPro)[a]; n == 0 {
		t.Errorf("key A was never tried for %s; its %s cooldown must not cover other models", modelPro, modelFlash)
	}
}

func TestAllKeysCoolingDown(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetRetryDelay("30s")
	for _, k := range pool {
		fake.SetKey(k, fakegemini.QuotaMinute)
	}

	r := g.generate(modelFlash, accessKey)
	wantEnvelope(t, r, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED")
	checkRetryAfter(t, r)
	if per := countKeys(fake.Calls(), modelFlash); per[pool[0]] != 1 || per[pool[1]] != 1 {
		t.Errorf("first request should try each key once, got %v", maskCounts(per))
	}

	fake.Reset()
	r = g.generate(modelFlash, accessKey)
	wantEnvelope(t, r, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED")
	checkRetryAfter(t, r)
	if n := len(clientCalls(fake.Calls())); n != 0 {
		t.Errorf("with every key cooling down, a request still made %d upstream calls", n)
	}
}

func checkRetryAfter(t *testing.T, r response) {
	t.Helper()
	ra := r.Header.Get("Retry-After")
	secs, err := strconv.Atoi(ra)
	if err != nil {
		t.Errorf("Retry-After = %q, want integer seconds", ra)
		return
	}
	if secs < 25 || secs > 31 {
		t.Errorf("Retry-After = %d, want about 30 (the upstream retryDelay)", secs)
	}
}

func maskCounts(per map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range per {
		out[mask(k)] = v
	}
	return out
}

func TestInvalidKeyIsDisabledAndStaysDisabled(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	a := pool[0]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetKey(a, fakegemini.Invalid)

	for i := 0; i < 9; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 1 {
		t.Fatalf("invalid key A was tried %d times, want exactly 1", n)
	}

	// The disable is persisted: after a restart with the same database (and the same
	// google_api_keys in the Caddyfile) A stays out. (A stays invalid at the fake, so a
	// background re-validation has no reason to enable it again.)
	g.Restart()
	fake.Reset()
	for i := 0; i < 9; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	per := countKeys(fake.Calls(), "")
	if per[a] != 0 {
		t.Errorf("disabled key A was used %d times after a restart", per[a])
	}
	if per[pool[1]]+per[pool[2]] != 9 {
		t.Errorf("the other keys served %v, want 9 calls in total", maskCounts(per))
	}
}

func TestTransientFailuresDisableAfterMaxFailures(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	a := pool[0]
	g := startGateway(t, gatewayConfig{
		Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Options: []string{"max_failures 2"},
	})
	fake.SetKey(a, fakegemini.Internal)
	for i := 0; i < 10; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 2 {
		t.Errorf("failing key A was tried %d times with max_failures 2, want exactly 2", n)
	}
}

func TestClientErrorIsNotRetried(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})

	r := g.generate("nope", accessKey)
	if r.Status != http.StatusNotFound {
		t.Fatalf("status = %d, want 404; body: %s", r.Status, r.Body)
	}
	calls := clientCalls(fake.Calls())
	if len(calls) != 1 {
		t.Fatalf("fake saw %d calls, want exactly 1 (no retry on a client error)", len(calls))
	}
	// The body is Google's, byte for byte: ask the fake directly with the same key.
	want := directCall(t, up.URL, calls[0].Key, http.MethodPost, "/v1beta/models/nope:generateContent", genBody)
	if want.Status != http.StatusNotFound {
		t.Fatalf("direct call to the fake: status %d", want.Status)
	}
	if !bytes.Equal(r.Body, want.Body) {
		t.Errorf("body differs from the upstream's:\n got: %s\nwant: %s", r.Body, want.Body)
	}
	wantEnvelope(t, r, http.StatusNotFound, "NOT_FOUND")

	// A 404 says nothing about the key: the same key keeps serving.
	fake.Reset()
	for i := 0; i < 3; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[calls[0].Key]; n != 1 {
		t.Errorf("after a 404 its key served %d of 3 rotated requests, want 1", n)
	}
}

// directCall sends a request straight to the fake upstream with the given pool key.
func directCall(t *testing.T, base, key, method, path, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Goog-Api-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

func TestAllKeysFailingWithServerError(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(5)
	g := startGateway(t, gatewayConfig{
		Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Options: []string{"max_retries 3"},
	})
	fake.SetDefault(fakegemini.Internal)

	r := g.generate(modelFlash, accessKey)
	wantEnvelope(t, r, http.StatusInternalServerError, "INTERNAL")
	// A 5xx is about the model or the service: one retry on another key at most, whatever
	// max_retries allows (that is for quota and key errors).
	calls := clientCalls(fake.Calls())
	if len(calls) != 2 {
		t.Fatalf("fake saw %d calls, want 2 (one retry for a 5xx)", len(calls))
	}
	seen := map[string]bool{}
	for _, c := range calls {
		if seen[c.Key] {
			t.Errorf("key %s was tried twice in one request", mask(c.Key))
		}
		seen[c.Key] = true
	}
	want := directCall(t, up.URL, calls[0].Key, http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", genBody)
	if !bytes.Equal(r.Body, want.Body) {
		t.Errorf("body is not the upstream's error:\n got: %s\nwant: %s", r.Body, want.Body)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{
		Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Options: []string{"max_request_body 1KiB"},
	})
	path := "/v1beta/models/" + modelFlash + ":generateContent"

	big := `{"contents":[{"role":"user","parts":[{"text":"` + strings.Repeat("x", 2048) + `"}]}]}`
	r := g.do(http.MethodPost, path, apiKeyHeader(accessKey), big)
	wantEnvelope(t, r, http.StatusRequestEntityTooLarge, "")
	if n := len(clientCalls(fake.Calls())); n != 0 {
		t.Errorf("an oversized body caused %d upstream calls", n)
	}

	// A body under the limit still goes through.
	wantOK(t, g.do(http.MethodPost, path, apiKeyHeader(accessKey), genBody))
	if n := len(clientCalls(fake.Calls())); n != 1 {
		t.Errorf("fake saw %d calls, want 1", n)
	}
}

// TestRequestsDuringStartup sends API requests while caddy starts: once the port accepts
// connections, every request must be served (Caddy starts its apps in random order, so the HTTP
// server may accept requests before the gemini_synapse app has loaded keys).
func TestRequestsDuringStartup(t *testing.T) {
	_, up := newFake(t)
	pool := poolKeys(2)
	g := newGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	for round := 0; round < 12; round++ {
		g.startProcess()
		deadline := time.Now().Add(readyTimeout)
		for {
			status, body, err := g.tryGenerate(accessKey)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
					continue
				}
				t.Fatalf("round %d: a request during startup failed: %v", round, err)
			}
			if status != http.StatusOK {
				t.Fatalf("round %d: the first request caddy answered got %d: %s", round, status, body)
			}
			break
		}
		g.Stop()
	}
}

// tryGenerate is generate without failing the test on a transport error.
func (g *gateway) tryGenerate(key string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.URL+"/v1beta/models/"+modelFlash+":generateContent", strings.NewReader(genBody))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Goog-Api-Key", key)
	resp, err := g.Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}
