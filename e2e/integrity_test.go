package e2e

// Pool integrity (issue 11) through the real caddy: request text that looks like a key error
// touches no key, a real key error is confirmed by one probe before the key goes, an outage
// holds requests back instead of burning keys, one failing key is ejected (never more than half
// the pool), and a per-project daily quota cools every key of the project.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// The gateway's pool-integrity metrics, as caddy's admin /metrics names them.
const (
	metricKeyErrorProbes = "caddy_gemini_synapse_key_error_probes_total"
	metricKeyEjections   = "caddy_gemini_synapse_key_ejections_total"
	metricModelOutages   = "caddy_gemini_synapse_model_outages_total"
	metricOutageRefused  = "caddy_gemini_synapse_outage_refused_total"
)

// integrityKey is a key as GET P/api/keys shows it.
type integrityKey struct {
	ID             int64  `json:"id"`
	Masked         string `json:"masked"`
	Project        string `json:"project"`
	Status         string `json:"status"`
	DisabledReason string `json:"disabled_reason"`
	ManualDisabled bool   `json:"manual_disabled"`
	LastError      string `json:"last_error"`
	Cooldowns      []struct {
		Model string `json:"model"`
		Until string `json:"until"`
	} `json:"cooldowns"`
}

// cooldown returns the key's cooldown for model ("*" for an ejection), if it has one.
func (k integrityKey) cooldown(model string) (until string, ok bool) {
	for _, c := range k.Cooldowns {
		if c.Model == model {
			return c.Until, true
		}
	}
	return "", false
}

// keyStates returns the admin API's view of each of the given upstream keys, by secret. A key
// is recognised by the end of its masked form, which the tests' keys make unique.
func (g *gateway) keyStates(secrets []string) map[string]integrityKey {
	g.t.Helper()
	var out struct {
		Keys []integrityKey `json:"keys"`
	}
	g.adminAPI(http.MethodGet, "keys?page_size=500", "", http.StatusOK, &out)
	res := make(map[string]integrityKey, len(secrets))
	for _, s := range secrets {
		tail := s[len(s)-4:]
		n := 0
		for _, k := range out.Keys {
			if strings.HasSuffix(k.Masked, tail) {
				res[s] = k
				n++
			}
		}
		if n != 1 {
			g.t.Fatalf("the admin API lists %d keys ending like %s, want 1", n, mask(s))
		}
	}
	return res
}

// wantAllActive asserts that the admin API shows every key active: enabled, no cooldown.
func wantAllActive(t *testing.T, g *gateway, secrets []string) {
	t.Helper()
	for s, k := range g.keyStates(secrets) {
		if k.Status != "active" || len(k.Cooldowns) > 0 || k.DisabledReason != "" {
			t.Errorf("key %s: status %q, cooldowns %+v, disabled reason %q; want active and untouched",
				mask(s), k.Status, k.Cooldowns, k.DisabledReason)
		}
	}
}

// metricSum adds up every series of the metric name (all label values) in caddy's /metrics;
// a counter vector nobody incremented has no series and sums to 0.
func (g *gateway) metricSum(name string, labels ...string) float64 {
	g.t.Helper()
	sum := 0.0
	for series, v := range g.scrapeMetrics() {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if match {
			sum += v
		}
	}
	return sum
}

// tryDo is do for other goroutines: it returns transport errors instead of failing the test.
func (g *gateway) tryDo(method, path string, header http.Header, body string) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, g.URL+path, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.Client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}, err
}

// isModelsProbe tells whether c is the gateway's free key probe, GET /v1beta/models/{model}.
func isModelsProbe(c fakegemini.Call) bool {
	return c.Method == http.MethodGet && strings.HasPrefix(c.Path, "/v1beta/models/") &&
		!strings.ContainsAny(strings.TrimPrefix(c.Path, "/v1beta/models/"), ":/")
}

// probesWith counts the models probes made with key ("" for any key).
func probesWith(calls []fakegemini.Call, key string) int {
	n := 0
	for _, c := range calls {
		if isModelsProbe(c) && (key == "" || c.Key == key) {
			n++
		}
	}
	return n
}

// retryAfterSeconds returns the integer Retry-After of r.
func retryAfterSeconds(t *testing.T, r response) int {
	t.Helper()
	v := r.Header.Get("Retry-After")
	secs, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("Retry-After = %q, want integer seconds; body: %s", v, r.Body)
	}
	return secs
}

// TestKeyErrorWordsInRequestTouchNoKey is the attack on a pool: a client puts Google's key
// error words in a JSON member name, Google quotes the name back in its 400 ("Unknown name
// \"API key not valid…\""), and a gateway that searched messages for those words would disable
// (or probe, or retry through) every key in turn. Each such request must cost one upstream
// call and no probe, go back to the client as Google sent it, and leave every key active.
func TestKeyErrorWordsInRequestTouchNoKey(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	probesBefore := g.metricSum(metricKeyErrorProbes)

	phrases := []string{
		"API key not valid. Please pass a valid API key.",
		"API key expired. Please renew the API key.",
		"API Key not found. Please pass a valid API key.",
		"Your API key was reported as leaked. Please use another API key.",
		"Permission denied: Consumer 'api_key:AIzaXX' has been suspended.",
		"Permission denied: Consumer 'projects/123' has been suspended.",
		"API_KEY_INVALID",
		"API_KEY_SERVICE_BLOCKED",
		"CONSUMER_SUSPENDED",
		"SERVICE_DISABLED",
		"has not been used in project 123 before or it is disabled",
		"Your prepayment credits are depleted.",
	}
	native := func(field string) string {
		name, _ := json.Marshal(field)
		return `{"contents":[{"parts":[{"text":"hi"}]}],` + string(name) + `:1}`
	}
	chat := func(field string) string {
		name, _ := json.Marshal(field)
		return `{"model":"` + modelFlash + `","messages":[{"role":"user","content":"hi"}],` + string(name) + `:1}`
	}
	endpoints := []struct {
		name   string
		path   string
		header http.Header
		body   func(string) string
	}{
		{"generateContent", "/v1beta/models/" + modelFlash + ":generateContent", apiKeyHeader(accessKey), native},
		{"streamGenerateContent", "/v1beta/models/" + modelFlash + ":streamGenerateContent?alt=sse", apiKeyHeader(accessKey), native},
		{"chat completions", "/v1beta/openai/chat/completions", http.Header{"Authorization": {"Bearer " + accessKey}}, chat},
	}
	for _, phrase := range phrases {
		for _, ep := range endpoints {
			what := fmt.Sprintf("%s with member %q", ep.name, phrase)
			fake.Reset()
			body := ep.body(phrase)
			r := g.do(http.MethodPost, ep.path, ep.header, body)
			calls := fake.Calls()
			assertCleanUpstream(t, calls, pool, accessKey)
			if len(calls) != 1 || !calls[0].IsGeneration() {
				for i, c := range calls {
					t.Logf("%s: upstream call %d: %s %s with key %s", what, i, c.Method, c.Path, mask(c.Key))
				}
				t.Errorf("%s: the upstream saw %d calls, want exactly 1 (no retry, no probe)", what, len(calls))
				continue
			}
			// What Google (the fake) answers this request, asked directly with the same key.
			want := directCall(t, up.URL, calls[0].Key, http.MethodPost, ep.path, body)
			if want.Status != http.StatusBadRequest || !bytes.Contains(want.Body, []byte("Cannot find field.")) {
				t.Fatalf("%s: the fake does not refuse the unknown member (status %d): %s", what, want.Status, want.Body)
			}
			if r.Status != http.StatusBadRequest {
				t.Errorf("%s: status %d, want Google's 400; body: %s", what, r.Status, r.Body)
			}
			if !bytes.Equal(r.Body, want.Body) {
				t.Errorf("%s: the body is not the upstream's, byte for byte:\n got: %s\nwant: %s", what, r.Body, want.Body)
			}
			if got, w := r.Header.Get("Content-Type"), want.Header.Get("Content-Type"); got != w {
				t.Errorf("%s: Content-Type %q, the upstream sent %q", what, got, w)
			}
		}
		wantAllActive(t, g, pool)
		if t.Failed() {
			t.FailNow()
		}
	}
	if after := g.metricSum(metricKeyErrorProbes); after != probesBefore {
		t.Errorf("%s went from %v to %v: a request's own words made the gateway probe a key", metricKeyErrorProbes, probesBefore, after)
	}
}

// TestInvalidKeyIsDisabledAfterOneProbe: a key Google really refuses (API_KEY_INVALID on every
// call, the models probe too) is disabled after exactly one confirming probe, and the request
// that met it is retried on another key and succeeds.
func TestInvalidKeyIsDisabledAfterOneProbe(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	a := pool[0]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetKey(a, fakegemini.Invalid)

	met := false
	for i := 0; i < 3; i++ {
		before := len(fake.Calls())
		r := g.generate(modelFlash, accessKey)
		wantOK(t, r)
		calls := fake.Calls()[before:]
		gens := clientCalls(calls)
		if len(gens) == 0 || gens[0].Key != a {
			if len(gens) != 1 {
				t.Errorf("request %d did not meet key A but made %d generate calls", i, len(gens))
			}
			continue
		}
		met = true
		if len(gens) != 2 || gens[1].Key == a {
			t.Errorf("the request that met key A made %d generate calls (want A, then one other key)", len(gens))
		}
		if n := probesWith(calls, a); n != 1 {
			t.Errorf("the request that met key A made %d models probes with it, want 1", n)
		}
	}
	if !met {
		t.Fatal("three rotated requests over three keys never started with key A")
	}
	all := fake.Calls()
	if n := countKeys(all, "")[a]; n != 1 {
		t.Errorf("key A got %d generate calls, want 1", n)
	}
	if n, na := probesWith(all, ""), probesWith(all, a); n != 1 || na != 1 {
		t.Errorf("%d models probes (%d with key A), want exactly 1, with key A", n, na)
	}
	if got := g.metricSum(metricKeyErrorProbes, `verdict="dead"`); got != 1 {
		t.Errorf(`%s{verdict="dead"} = %v, want 1`, metricKeyErrorProbes, got)
	}
	var st integrityKey
	if !eventually(5*time.Second, func() bool {
		st = g.keyStates(pool)[a]
		return st.Status == "disabled" && st.DisabledReason != ""
	}) {
		t.Fatalf("key A in the admin API: status %q, disabled reason %q; want disabled with a reason", st.Status, st.DisabledReason)
	}
	if !strings.Contains(st.DisabledReason, "API_KEY_INVALID") && !strings.Contains(st.DisabledReason, "API key not valid") {
		t.Errorf("key A's disabled reason %q does not say why", st.DisabledReason)
	}
	if st.ManualDisabled {
		t.Errorf("key A shows as disabled by an operator")
	}
	wantAllActive(t, g, pool[1:])

	assertCleanUpstream(t, all, pool, accessKey)
	fake.Reset()
	for i := 0; i < 6; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := len(fake.Calls()); n != 6 {
		t.Errorf("6 requests made %d upstream calls, want 6", n)
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 0 {
		t.Errorf("disabled key A got %d more calls", n)
	}
}

// TestUnconfirmedKeyErrorGoesBackAsSent: Google answers API_KEY_INVALID to a generation call but
// the key answers the models probe: the answer was about the request. It goes back to the
// client as Google sent it, is not retried, and the key stays; the fine verdict is remembered,
// and a burst of such answers on one key costs one probe.
func TestUnconfirmedKeyErrorGoesBackAsSent(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(4)
	a, d := pool[0], pool[3]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool[:3], AccessKeys: []string{accessKey}})
	fake.SetKey(a, fakegemini.InvalidOnGenerate)
	fake.SetKey(d, fakegemini.InvalidOnGenerate)
	genPath := "/v1beta/models/" + modelFlash + ":generateContent"
	want := directCall(t, up.URL, a, http.MethodPost, genPath, genBody)
	if want.Status != http.StatusBadRequest || !bytes.Contains(want.Body, []byte("API_KEY_INVALID")) {
		t.Fatalf("the fake's InvalidOnGenerate answer: %d %s", want.Status, want.Body)
	}
	fake.Reset()

	// sendUntilA sends requests until one starts with key A and checks it: Google's 400 as
	// sent, one generate call, and the given number of probes.
	sendUntilA := func(wantProbes int) {
		t.Helper()
		for i := 0; i < 3; i++ {
			before := len(fake.Calls())
			r := g.generate(modelFlash, accessKey)
			calls := fake.Calls()[before:]
			gens := clientCalls(calls)
			if len(gens) == 0 {
				t.Fatalf("a request made no upstream call: %d %s", r.Status, r.Body)
			}
			if gens[0].Key != a {
				wantOK(t, r)
				continue
			}
			if r.Status != http.StatusBadRequest || !bytes.Equal(r.Body, want.Body) {
				t.Errorf("the answer is not Google's, as sent:\n got: %d %s\nwant: %d %s", r.Status, r.Body, want.Status, want.Body)
			}
			if len(gens) != 1 {
				t.Errorf("the request that met key A made %d generate calls, want 1 (not retried)", len(gens))
			}
			if n := probesWith(calls, ""); n != wantProbes {
				t.Errorf("the request that met key A made %d models probes, want %d", n, wantProbes)
			}
			return
		}
		t.Fatal("three rotated requests over three keys never started with key A")
	}
	sendUntilA(1)
	if n := probesWith(fake.Calls(), a); n != 1 {
		t.Errorf("%d models probes with key A, want 1", n)
	}
	if got := g.metricSum(metricKeyErrorProbes, `verdict="fine"`); got != 1 {
		t.Errorf(`%s{verdict="fine"} = %v, want 1`, metricKeyErrorProbes, got)
	}
	wantAllActive(t, g, pool[:3])

	// Within 30 s the verdict is remembered: the next such answer costs no probe.
	sendUntilA(0)
	if got := g.metricSum(metricKeyErrorProbes, `verdict="remembered"`); got != 1 {
		t.Errorf(`%s{verdict="remembered"} = %v, want 1`, metricKeyErrorProbes, got)
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 2 {
		t.Errorf("key A got %d generate calls, want 2", n)
	}
	wantAllActive(t, g, pool[:3])
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)

	// A burst of 10 at once on a key never probed, the only key of its gateway: one probe.
	g2 := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: []string{d}, AccessKeys: []string{accessKey}})
	fake.Reset()
	const burst = 10
	results := make([]response, burst)
	errs := make([]error, burst)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = g2.tryDo(http.MethodPost, genPath, apiKeyHeader(accessKey), genBody)
		}()
	}
	close(start)
	wg.Wait()
	for i := range burst {
		if errs[i] != nil {
			t.Fatalf("burst request %d: %v", i, errs[i])
		}
		if r := results[i]; r.Status != http.StatusBadRequest || !bytes.Equal(r.Body, want.Body) {
			t.Errorf("burst request %d: got %d %s, want Google's 400 as sent", i, r.Status, r.Body)
		}
	}
	calls := fake.Calls()
	if n := countKeys(calls, "")[d]; n != burst || len(clientCalls(calls)) != burst {
		t.Errorf("the burst made %d generate calls (%d with the key), want %d: one each, none retried", len(clientCalls(calls)), n, burst)
	}
	if n := probesWith(calls, d); n != 1 || probesWith(calls, "") != 1 {
		t.Errorf("a burst of %d key errors on one key made %d models probes with it, want 1", burst, n)
	}
	wantAllActive(t, g2, []string{d})
	assertCleanUpstream(t, calls, pool, accessKey)
}

// TestOutageHoldsRequestsBackAndTouchesNoKey: every key gets 503 "overloaded" for a model. The
// gateway retries a failure at most once, then opens the model's circuit and answers 503 with
// Retry-After without calling upstream; no key is disabled, ejected or cooled. After the
// upstream recovers, a client that waits Retry-After is served, and so is everyone after it.
func TestOutageHoldsRequestsBackAndTouchesNoKey(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetOutage(fakegemini.Overloaded)

	const requests = 30
	refused := 0
	begin := time.Now()
	for i := 0; i < requests; i++ {
		before := len(clientCalls(fake.Calls()))
		r := g.generate(modelFlash, accessKey)
		n := len(clientCalls(fake.Calls())) - before
		wantEnvelope(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
		if n > 2 {
			t.Errorf("request %d made %d upstream attempts while the model fails for every key, want at most 2", i, n)
		}
		if refused > 0 && n > 1 {
			t.Errorf("request %d made %d upstream attempts after the circuit opened, want at most 1 (a trial, not retried)", i, n)
		}
		if n == 0 {
			refused++
			if secs := retryAfterSeconds(t, r); secs < 1 || secs > 2 {
				t.Errorf("request %d held back with Retry-After %d, want 1 or 2 (a trial passes every second)", i, secs)
			}
		}
	}
	elapsed := time.Since(begin)
	total := len(clientCalls(fake.Calls()))
	t.Logf("%d requests in %s: %d upstream attempts, %d held back at the gateway", requests, elapsed.Round(time.Millisecond), total, refused)
	if total > 2*requests {
		t.Errorf("%d upstream attempts for %d requests, want at most %d", total, requests, 2*requests)
	}
	// 10 failed attempts open the circuit; then one trial a second.
	if limit := 10 + 2 + int(elapsed/time.Second); total > limit {
		t.Errorf("%d upstream attempts in %s, want at most %d: the circuit should open after 10 failed attempts", total, elapsed, limit)
	}
	if refused < requests/2 {
		t.Errorf("only %d of %d requests were held back at the gateway; the circuit did not open", refused, requests)
	}
	if n := probesWith(fake.Calls(), ""); n != 0 {
		t.Errorf("%d key probes during an outage", n)
	}
	if got := g.metricSum(metricModelOutages); got != 1 {
		t.Errorf("%s = %v, want 1", metricModelOutages, got)
	}
	if got := g.metricSum(metricOutageRefused); got != float64(refused) {
		t.Errorf("%s = %v, want %d (the requests that made no upstream call)", metricOutageRefused, got, refused)
	}
	if got := g.metricSum(metricKeyEjections); got != 0 {
		t.Errorf("%s = %v during an outage, want 0", metricKeyEjections, got)
	}
	wantAllActive(t, g, pool)
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)

	// Recovery: a client that honours Retry-After gets through, then everyone does.
	fake.SetOutage(fakegemini.OK)
	fake.Reset()
	r := g.generate(modelFlash, accessKey)
	if r.Status == http.StatusServiceUnavailable {
		if n := len(clientCalls(fake.Calls())); n != 0 {
			t.Fatalf("a 503 after the recovery came from %d upstream calls: %s", n, r.Body)
		}
		secs := retryAfterSeconds(t, r)
		if secs < 1 || secs > 2 {
			t.Errorf("Retry-After %d, want 1 or 2", secs)
		}
		time.Sleep(time.Duration(secs) * time.Second)
		r = g.generate(modelFlash, accessKey)
	}
	wantOK(t, r)
	for i := 0; i < 10; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := len(clientCalls(fake.Calls())); n != 11 {
		t.Errorf("11 served requests after the recovery made %d upstream calls, want 11", n)
	}
	wantAllActive(t, g, pool)
}

// TestFailingKeyIsEjectedNotDisabled: one key of four answers 500 while the others serve. It is
// ejected (cooling on every model, not disabled) after max_failures (5) failures in a row,
// every request is rescued by the one retry, and the ejected key gets no traffic. With three of
// four keys failing, at most half the pool is ejected. A validation that finds the key working
// brings it back at once.
func TestFailingKeyIsEjectedNotDisabled(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(4)
	a, b, c, d := pool[0], pool[1], pool[2], pool[3]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetKey(a, fakegemini.Internal)

	ejected := false
	for i := 0; i < 60 && !ejected; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
		ejected = g.keyStates(pool)[a].Status != "active"
	}
	if !ejected {
		t.Fatalf("key A answering 500 was never taken out of rotation in 60 requests (%d calls to it)", countKeys(fake.Calls(), "")[a])
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 5 {
		t.Errorf("key A was ejected after %d calls, want max_failures = 5", n)
	}
	var st integrityKey
	if !eventually(5*time.Second, func() bool {
		st = g.keyStates(pool)[a]
		return st.LastError != ""
	}) {
		t.Errorf("ejected key A has no last_error")
	}
	until, ok := st.cooldown("*")
	if st.Status != "cooling" || !ok || st.DisabledReason != "" || st.ManualDisabled {
		t.Fatalf("key A in the admin API: status %q, cooldowns %+v, disabled reason %q; want cooling with a \"*\" cooldown, not disabled",
			st.Status, st.Cooldowns, st.DisabledReason)
	}
	if u, err := time.Parse(time.RFC3339, until); err != nil || u.Before(time.Now().Add(30*time.Second)) || u.After(time.Now().Add(90*time.Second)) {
		t.Errorf("key A's ejection ends at %q, want about a minute from now (%v)", until, err)
	}
	t.Logf("ejected key A: last_error %q", st.LastError)
	wantAllActive(t, g, []string{b, c, d})
	if got := g.metricSum(metricKeyEjections); got != 1 {
		t.Errorf("%s = %v, want 1", metricKeyEjections, got)
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)

	fake.Reset()
	for i := 0; i < 10; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[a]; n != 0 {
		t.Errorf("ejected key A got %d of the next 10 requests", n)
	}

	// Three of four keys failing: at most half of the pool is ejected. (A request may now meet
	// two failing keys, and the one retry cannot rescue it.)
	fake.SetKey(b, fakegemini.Internal)
	fake.SetKey(c, fakegemini.Internal)
	fake.Reset()
	statuses := map[int]int{}
	for i := 0; i < 40; i++ {
		r := g.generate(modelFlash, accessKey)
		statuses[r.Status]++
		if r.Status != http.StatusOK && r.Status != http.StatusInternalServerError {
			t.Errorf("request %d: status %d: %s", i, r.Status, r.Body)
		}
	}
	per := countKeys(fake.Calls(), "")
	t.Logf("three failing keys: answers %v, calls per key %v", statuses, maskCounts(per))
	states := g.keyStates(pool)
	out := 0
	for _, k := range pool {
		if _, ok := states[k].cooldown("*"); ok {
			out++
		}
		if states[k].Status == "disabled" {
			t.Errorf("key %s was disabled by 500s", mask(k))
		}
	}
	if _, ok := states[b].cooldown("*"); !ok {
		t.Errorf("key B, failing while D served, was not ejected: %+v", states[b])
	}
	if out > 2 {
		t.Errorf("%d of 4 keys are ejected, want at most half", out)
	}
	if _, ok := states[c].cooldown("*"); ok || per[c] < 10 {
		t.Errorf("key C: ejected %v after %d calls; want it kept in rotation (two of four are out already) and failing at least 10 times", ok, per[c])
	}
	if got := g.metricSum(metricKeyEjections); got != 2 {
		t.Errorf("%s = %v, want 2", metricKeyEjections, got)
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)

	// The upstream serves A again: validating it ends its ejection at once.
	for _, k := range pool {
		fake.SetKey(k, fakegemini.OK)
	}
	var v struct {
		Key integrityKey `json:"key"`
	}
	g.adminAPI(http.MethodPost, fmt.Sprintf("keys/%d/validate", states[a].ID), "", http.StatusOK, &v)
	if v.Key.Status != "active" {
		t.Errorf("after a validation that found it working, key A is %q with cooldowns %+v, want active", v.Key.Status, v.Key.Cooldowns)
	}
	if st := g.keyStates(pool)[a]; st.Status != "active" {
		t.Errorf("key A listed as %q after the validation, want active", st.Status)
	}
	fake.Reset()
	for i := 0; i < 6; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[a]; n == 0 {
		t.Errorf("readmitted key A served none of 6 requests over three keys")
	}
}

// TestProjectDailyQuotaCoolsTheProjectsKeys: keys A and B are labelled with one project, C with
// another. A per-project daily 429 on one of A, B cools both for that model (and only that
// model) until the same time; C serves alone.
func TestProjectDailyQuotaCoolsTheProjectsKeys(t *testing.T) {
	fake, up := newFake(t)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, AccessKeys: []string{accessKey}})
	keys := adminGeminiKeys(3)
	a, b, c := keys[0], keys[1], keys[2]
	g.secretKs = append(g.secretKs, keys...)
	text, _ := json.Marshal(map[string]string{"text": a + " p1\n" + b + " p1\n" + c + " p2\n"})
	var added struct {
		Added   int `json:"added"`
		Invalid int `json:"invalid"`
	}
	g.adminAPI(http.MethodPost, "keys", string(text), http.StatusOK, &added)
	if added.Added != 3 || added.Invalid != 0 {
		t.Fatalf("labelled import: %+v, want 3 added", added)
	}
	for k, want := range map[string]string{a: "p1", b: "p1", c: "p2"} {
		if got := g.keyStates(keys)[k].Project; got != want {
			t.Fatalf("key %s has project label %q, want %q", mask(k), got, want)
		}
	}
	// At Google, A and B are in one Cloud project, whose daily quota is spent.
	fake.SetProject(a, "111")
	fake.SetProject(b, "111")
	fake.SetProject(c, "222")
	fake.SetProjectState("111", fakegemini.QuotaDay)

	hit := ""
	for i := 0; i < 3 && hit == ""; i++ {
		before := len(fake.Calls())
		r := g.generate(modelFlash, accessKey)
		wantOK(t, r)
		gens := clientCalls(fake.Calls()[before:])
		switch {
		case len(gens) == 0:
			t.Fatal("a served request made no upstream call")
		case gens[0].Key == a || gens[0].Key == b:
			hit = gens[0].Key
			if len(gens) != 2 || gens[1].Key != c {
				t.Errorf("the request that met the daily 429 made %d calls; want it retried once, on C (the other p1 key cools too)", len(gens))
			}
		case len(gens) != 1 || gens[0].Key != c:
			t.Errorf("request %d: %d calls, first with %s", i, len(gens), mask(gens[0].Key))
		}
	}
	if hit == "" {
		t.Fatal("three rotated requests over three keys never started with a p1 key")
	}
	t.Logf("the daily 429 came with key %s", mask(hit))
	per := countKeys(fake.Calls(), modelFlash)
	if per[a]+per[b] != 1 {
		t.Errorf("p1 keys got %d %s calls (A %d, B %d), want 1: the first 429 cools both", per[a]+per[b], modelFlash, per[a], per[b])
	}
	states := g.keyStates(keys)
	ua, okA := states[a].cooldown(modelFlash)
	ub, okB := states[b].cooldown(modelFlash)
	if !okA || !okB || ua != ub || states[a].Status != "cooling" || states[b].Status != "cooling" {
		t.Errorf("after a per-project daily 429: A %q %+v, B %q %+v; want both cooling for %s until the same time",
			states[a].Status, states[a].Cooldowns, states[b].Status, states[b].Cooldowns, modelFlash)
	}
	if u, err := time.Parse(time.RFC3339, ua); err != nil || !u.After(time.Now()) || u.After(time.Now().Add(25*time.Hour)) {
		t.Errorf("the daily cooldown ends at %q, want the next Pacific midnight (%v)", ua, err)
	}
	for _, k := range []string{a, b} {
		if _, ok := states[k].cooldown(modelPro); ok || len(states[k].Cooldowns) != 1 {
			t.Errorf("key %s has cooldowns %+v, want one, for %s only", mask(k), states[k].Cooldowns, modelFlash)
		}
	}
	wantAllActive(t, g, []string{c})
	assertCleanUpstream(t, fake.Calls(), keys, accessKey)

	fake.Reset()
	for i := 0; i < 10; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if per := countKeys(fake.Calls(), ""); per[c] != 10 || len(per) != 1 {
		t.Errorf("10 %s requests went to %v, want all to C", modelFlash, maskCounts(per))
	}

	// The quota is per model: gemini-2.5-pro still reaches both p1 keys. (The fake's project
	// state covers every model, so it is cleared first; the gateway's flash cooldown stays.)
	fake.SetProjectState("111", fakegemini.OK)
	fake.Reset()
	for i := 0; i < 6; i++ {
		wantOK(t, g.generate(modelPro, accessKey))
	}
	if per := countKeys(fake.Calls(), modelPro); per[a] == 0 || per[b] == 0 {
		t.Errorf("6 %s requests went to %v, want some to A and to B", modelPro, maskCounts(per))
	}
	fake.Reset()
	for i := 0; i < 4; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if per := countKeys(fake.Calls(), ""); per[c] != 4 {
		t.Errorf("4 %s requests went to %v, want all to C (A and B cool until the quota day ends)", modelFlash, maskCounts(per))
	}
	assertCleanUpstream(t, fake.Calls(), keys, accessKey)
}

// TestProjectQuotaOnUnlabelledKeysCoolsEachAlone: keys without a project label share nothing,
// even when Google puts them in one project: each per-project 429 cools only the key that got
// it, so the pool keeps serving with the others.
func TestProjectQuotaOnUnlabelledKeysCoolsEachAlone(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	x, y, z := pool[0], pool[1], pool[2]
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	fake.SetProject(x, "111")
	fake.SetProject(y, "111")
	fake.SetProject(z, "222")
	fake.SetProjectState("111", fakegemini.QuotaDay)

	for i := 0; i < 6; i++ {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	per := countKeys(fake.Calls(), modelFlash)
	if per[x] != 1 || per[y] != 1 {
		t.Errorf("calls per key %v: want one each for X and Y (each 429 cools only its own key), the rest on Z", maskCounts(per))
	}
	states := g.keyStates(pool)
	for _, k := range []string{x, y} {
		if _, ok := states[k].cooldown(modelFlash); !ok || len(states[k].Cooldowns) != 1 {
			t.Errorf("key %s: cooldowns %+v, want one for %s", mask(k), states[k].Cooldowns, modelFlash)
		}
		if states[k].Project != "" {
			t.Errorf("key %s got the project label %q from a 429 that names no project", mask(k), states[k].Project)
		}
	}
	wantAllActive(t, g, []string{z})
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}
