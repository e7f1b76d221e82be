package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// proxyEnv is a gateway like newTestGateway's (real SQLite file, real HTTP on loopback, the
// fake upstream) with n pool keys and an observed logger, so that every test can also check
// that no pool key reached a response, a log line or a stored row.
type proxyEnv struct {
	*testGateway
	t        *testing.T
	keys     []string
	ids      map[string]int64 // pool key -> store id
	logs     *observer.ObservedLogs
	upstream string // base URL of the fake

	made atomic.Int64 // requests sent to the gateway, each of which ends in one request-log row
}

// proxyKeys returns n distinct pool keys shaped like Google's.
func proxyKeys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("AIzaSyPROXYTEST-%02d-%s", i, strings.Repeat(string(rune('a'+i)), 22))
	}
	return out
}

// sharedAccess makes the test's access key a shared one: it may use resources the gateway did
// not record as made by an access key (made upstream directly, as the tests of routing do).
func sharedAccess(c *Config) {
	c.AccessKeys = slices.DeleteFunc(c.AccessKeys, func(k string) bool { return k == testAccessKey })
	c.PolicyKeys = append(c.PolicyKeys, AccessKeyConfig{Label: "shared", Key: testAccessKey, Policy: tenant.Policy{Shared: true}})
}

func newProxyEnv(t *testing.T, nKeys int, configure func(*Config)) *proxyEnv {
	t.Helper()
	keys := proxyKeys(nKeys)
	a := &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: keys}
	if configure != nil {
		configure(a)
	}
	tc := startCore(t, coreSetup{}, a)
	c, fake := tc.c, tc.fake
	e := &proxyEnv{t: t, keys: keys, ids: map[string]int64{}, logs: tc.logs, upstream: tc.up.URL}
	stored, err := c.store.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range stored {
		e.ids[k.Secret] = k.ID
	}
	if len(e.ids) != nKeys {
		t.Fatalf("%d keys stored, want %d", len(e.ids), nKeys)
	}
	// Runs after srv.Close (which waits for the handlers) and before Destruct.
	t.Cleanup(e.assertNoSecretsStoredOrLogged)
	e.testGateway = &testGateway{url: serveCore(t, c, nil, ""), fake: fake, core: c}
	return e
}

// assertNoLeak fails if any pool key appears in a response header or body.
func (e *proxyEnv) assertNoLeak(hdr http.Header, body []byte) {
	e.t.Helper()
	for _, k := range e.keys {
		if bytes.Contains(body, []byte(k)) {
			e.t.Errorf("pool key %s… reached a client in a response body", k[:16])
		}
		for name, vv := range hdr {
			for _, v := range vv {
				if strings.Contains(v, k) || strings.Contains(name, k) {
					e.t.Errorf("pool key %s… reached a client in header %s", k[:16], name)
				}
			}
		}
	}
}

// assertNoSecretsStoredOrLogged checks every log line, stored log row and key error text for
// pool keys, and every upstream call for the client's access key.
func (e *proxyEnv) assertNoSecretsStoredOrLogged() {
	t := e.t
	ctx := context.Background()
	e.core.store.Flush()
	var texts []string
	reqs, err := e.core.store.RecentRequests(ctx, store.LogQuery{Limit: 10000})
	if err != nil {
		t.Error(err)
	}
	for _, r := range reqs {
		texts = append(texts, r.Path, r.Error, r.Model)
	}
	errs, err := e.core.store.RecentErrors(ctx, store.LogQuery{Limit: 10000})
	if err != nil {
		t.Error(err)
	}
	for _, r := range errs {
		texts = append(texts, r.Path, r.Message, r.Model)
	}
	keys, err := e.core.store.Keys(ctx)
	if err != nil {
		t.Error(err)
	}
	for _, k := range keys {
		texts = append(texts, k.LastError, k.DisabledReason)
	}
	for _, l := range e.logs.All() {
		texts = append(texts, l.Message, fmt.Sprint(l.ContextMap()))
	}
	for _, s := range texts {
		for _, k := range e.keys {
			if strings.Contains(s, k) {
				t.Errorf("pool key %s… stored or logged: %q", k[:16], s)
			}
		}
	}
	for _, c := range e.fake.Calls() {
		if !slices.Contains(e.keys, c.Key) && !strings.HasPrefix(c.Header.Get("Authorization"), "Token auth_tokens/") {
			t.Errorf("upstream call %s %s authenticated with %q, not a pool key", c.Method, c.Path, c.Key)
		}
		if strings.Contains(c.RawQuery, testAccessKey) || strings.Contains(fmt.Sprint(c.Header), testAccessKey) {
			t.Errorf("the access key reached the upstream on %s %s", c.Method, c.Path)
		}
	}
}

// do sends one request with the access key and returns the response (body read and closed).
func (e *proxyEnv) do(method, path, body string) (*http.Response, []byte) {
	e.t.Helper()
	return e.doAs(testAccessKey, method, path, body)
}

const helloBody = `{"contents":[{"parts":[{"text":"hello proxy"}]}]}`

func genPath(model string) string { return "/v1beta/models/" + model + ":generateContent" }

// generate makes one generateContent call and returns the response, its body and the pool
// keys of the upstream calls it caused, in order.
func (e *proxyEnv) generate(model string) (*http.Response, []byte, []string) {
	e.t.Helper()
	before := len(e.fake.Calls())
	resp, b := e.do("POST", genPath(model), helloBody)
	return resp, b, e.keysSince(before)
}

// keysSince returns the pool keys of the upstream calls after the first n, leaving out the
// probes that confirm a key error (see probesSince).
func (e *proxyEnv) keysSince(n int) []string {
	var out []string
	for _, c := range e.fake.Calls()[n:] {
		if !isProbe(c) {
			out = append(out, c.Key)
		}
	}
	return out
}

// probesSince returns the keys of the confirming probes after the first n upstream calls.
func (e *proxyEnv) probesSince(n int) []string {
	var out []string
	for _, c := range e.fake.Calls()[n:] {
		if isProbe(c) {
			out = append(out, c.Key)
		}
	}
	return out
}

// isProbe tells a key probe (GET /v1beta/models/{model}) from the client's own calls.
func isProbe(c fakegemini.Call) bool {
	return c.Method == http.MethodGet && strings.HasPrefix(c.Path, "/v1beta/models/") && !strings.Contains(c.Path, ":")
}

// state returns the pool's runtime state of a key.
func (e *proxyEnv) state(key string) keypool.KeyState {
	e.t.Helper()
	id := e.ids[key]
	for _, s := range e.core.pool.Keys(time.Now()) {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("key %d not in the pool", id)
	return keypool.KeyState{}
}

// storedKey returns the stored row of a key after the writer caught up.
func (e *proxyEnv) storedKey(key string) store.Key {
	e.t.Helper()
	e.core.store.Flush()
	keys, err := e.core.store.Keys(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, k := range keys {
		if k.Secret == key {
			return k
		}
	}
	e.t.Fatal("key not stored")
	return store.Key{}
}

// waitLogged waits until every request made so far has its request-log row. A client can have
// read a whole answer (with a Content-Length) before the handler has queued the row, which it
// does last; once the row is there, every row the exchange queued before it is there too.
func (e *proxyEnv) waitLogged() {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		e.core.store.Flush()
		n, err := e.core.store.CountRequestLogs(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		if n >= e.made.Load() {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d request rows after 3s, want %d", n, e.made.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *proxyEnv) requests() []store.RequestLog {
	e.t.Helper()
	e.waitLogged()
	rows, err := e.core.store.RecentRequests(context.Background(), store.LogQuery{Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	return rows
}

func (e *proxyEnv) errorRows() []store.ErrorLog {
	e.t.Helper()
	e.waitLogged()
	rows, err := e.core.store.RecentErrors(context.Background(), store.LogQuery{Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	return rows
}

// assertNoPenalty checks that no key has failures, is disabled or cools down.
func (e *proxyEnv) assertNoPenalty() {
	e.t.Helper()
	for _, k := range e.keys {
		if s := e.state(k); s.Failures != 0 || s.Disabled || len(s.Cooldowns) != 0 {
			e.t.Errorf("key %d penalised: %+v", s.ID, s)
		}
		if sk := e.storedKey(k); sk.Failures != 0 || sk.Status != store.StatusActive {
			e.t.Errorf("stored key %d penalised: failures %d status %s", sk.ID, sk.Failures, sk.Status)
		}
	}
}

type googleError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	} `json:"error"`
}

func decodeError(t *testing.T, b []byte) googleError {
	t.Helper()
	var g googleError
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("not a Google error envelope: %v: %s", err, b)
	}
	return g
}

func intPtr(n int) *int { return &n }

func TestProxyRetriesOnAnotherKey(t *testing.T) {
	for _, tc := range []struct {
		state  fakegemini.KeyState
		status int
	}{
		{fakegemini.Internal, 500},
		{fakegemini.Overloaded, 503},
		{fakegemini.QuotaMinute, 429},
		{fakegemini.Invalid, 400},
		{fakegemini.Suspended, 403},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			e := newProxyEnv(t, 2, nil)
			bad, good := e.keys[0], e.keys[1]
			e.fake.SetKey(bad, tc.state)
			// Round-robin reaches the bad key within two requests.
			hit := false
			for i := 0; i < 2 && !hit; i++ {
				resp, b, used := e.generate("gemini-2.5-flash")
				if resp.StatusCode != 200 || !strings.Contains(string(b), "echo: hello proxy") {
					t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
				}
				switch {
				case slices.Equal(used, []string{good}):
				case slices.Equal(used, []string{bad, good}):
					hit = true
				default:
					t.Fatalf("request %d: upstream calls on %d keys in order %v", i, len(used), used)
				}
			}
			if !hit {
				t.Fatal("the bad key was never tried")
			}
			rows := e.requests()
			if len(rows) == 0 || rows[0].Attempts != 2 || rows[0].Status != 200 || rows[0].KeyID != e.ids[good] {
				t.Errorf("newest request row = %+v, want 2 attempts ending on key %d with 200", rows[0], e.ids[good])
			}
			errs := e.errorRows()
			if len(errs) != 1 || errs[0].KeyID != e.ids[bad] || errs[0].Status != tc.status {
				t.Errorf("error rows = %+v, want one for key %d with status %d", errs, e.ids[bad], tc.status)
			}
		})
	}
}

func TestProxyQuotaCooldownIsPerModel(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	cooled, other := e.keys[0], e.keys[1]
	const modelA, modelB = "gemini-2.5-flash", "gemini-2.5-pro"
	e.fake.SetRetryDelay("20s")
	e.fake.SetKey(cooled, fakegemini.QuotaMinute)
	start := time.Now()
	hit := false
	for i := 0; i < 2 && !hit; i++ {
		resp, b, used := e.generate(modelA)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		hit = slices.Contains(used, cooled)
	}
	if !hit {
		t.Fatal("the 429 key was never tried")
	}
	st := e.state(cooled)
	if len(st.Cooldowns) != 1 || st.Cooldowns[0].Model != modelA ||
		st.Cooldowns[0].Until.Before(start.Add(19*time.Second)) || st.Cooldowns[0].Until.After(time.Now().Add(21*time.Second)) {
		t.Fatalf("cooldowns of the 429 key = %+v, want %s for ~20s", st.Cooldowns, modelA)
	}
	if st.Disabled || st.Failures != 0 {
		t.Errorf("a quota error penalised the key beyond the cooldown: %+v", st)
	}
	e.core.store.Flush()
	cds, err := e.core.store.Cooldowns(context.Background(), time.Now())
	if err != nil || len(cds) != 1 || cds[0].KeyID != e.ids[cooled] || cds[0].Model != modelA {
		t.Errorf("stored cooldowns = %+v, %v", cds, err)
	}

	// The key answers again, but stays off model A until its cooldown ends; model B may use it.
	e.fake.SetKey(cooled, fakegemini.OK)
	n := len(e.fake.Calls())
	for range 4 {
		if resp, b, _ := e.generate(modelA); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	if used := e.keysSince(n); !slices.Equal(used, []string{other, other, other, other}) {
		t.Errorf("model %s used keys %v, want only the key that is not cooling", modelA, used)
	}
	n = len(e.fake.Calls())
	for range 4 {
		if resp, b, _ := e.generate(modelB); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	if used := e.keysSince(n); !slices.Contains(used, cooled) || !slices.Contains(used, other) {
		t.Errorf("model %s used keys %v, want both", modelB, used)
	}
}

func TestProxyAllKeysCooling(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	e.fake.SetRetryDelay("7s")
	for _, k := range e.keys {
		e.fake.SetKey(k, fakegemini.QuotaMinute)
	}
	const model = "gemini-2.5-flash"
	// First request: both keys answer 429; the client gets Google's 429.
	resp, b, used := e.generate(model)
	if resp.StatusCode != 429 || len(used) != 2 || used[0] == used[1] {
		t.Fatalf("first request: %d on keys %v: %s", resp.StatusCode, used, b)
	}
	if g := decodeError(t, b); g.Error.Status != "RESOURCE_EXHAUSTED" {
		t.Errorf("first request: %+v", g)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 7 {
		t.Errorf("first request: Retry-After %q, want whole seconds in [1, 7]", resp.Header.Get("Retry-After"))
	}

	// Second request: every key is cooling for the model, so nothing is sent upstream.
	resp, b, used = e.generate(model)
	if len(used) != 0 {
		t.Errorf("upstream called on %v while every key cools down", used)
	}
	g := decodeError(t, b)
	if resp.StatusCode != 429 || g.Error.Code != 429 || g.Error.Status != "RESOURCE_EXHAUSTED" || g.Error.Message == "" {
		t.Errorf("second request: %d %+v", resp.StatusCode, g)
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 7 {
		t.Errorf("second request: Retry-After %q, want whole seconds in [1, 7]", resp.Header.Get("Retry-After"))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}

	// Another model is not cooling.
	for _, k := range e.keys {
		e.fake.SetKey(k, fakegemini.OK)
	}
	if resp, b, used := e.generate("gemini-2.5-pro"); resp.StatusCode != 200 || len(used) != 1 {
		t.Errorf("other model: %d on %v: %s", resp.StatusCode, used, b)
	}
	if rows := e.requests(); len(rows) != 3 || rows[1].Status != 429 || rows[1].Attempts != 0 {
		t.Errorf("request rows = %+v", rows)
	}
}

func TestProxyInvalidKeyIsDisabledAtOnce(t *testing.T) {
	e := newProxyEnv(t, 2, func(a *Config) { a.MaxFailures = 5 })
	bad := e.keys[0]
	e.fake.SetKey(bad, fakegemini.Invalid)
	n := 0
	for i := range 6 {
		resp, b, used := e.generate("gemini-2.5-flash")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		for _, k := range used {
			if k == bad {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("the invalid key was called %d times, want exactly once", n)
	}
	if probes := e.probesSince(0); !slices.Equal(probes, []string{bad}) {
		t.Errorf("confirming probes on %d keys, want one on the invalid key", len(probes))
	}
	if s := e.state(bad); !s.Disabled {
		t.Errorf("pool state of the invalid key: %+v", s)
	}
	sk := e.storedKey(bad)
	if sk.Status != store.StatusDisabled || !strings.Contains(sk.DisabledReason, "API_KEY_INVALID") {
		t.Errorf("stored invalid key: status %s reason %q", sk.Status, sk.DisabledReason)
	}
	if s := e.state(e.keys[1]); s.Disabled || s.Failures != 0 {
		t.Errorf("the good key was penalised: %+v", s)
	}
}

func TestProxyTransientFailuresEjectAtMaxFailures(t *testing.T) {
	const maxFailures = 3
	e := newProxyEnv(t, 2, func(a *Config) { a.MaxFailures = maxFailures })
	bad := e.keys[0]
	e.fake.SetKey(bad, fakegemini.Internal)
	calls := 0
	for i := 0; calls < maxFailures; i++ {
		if i > 3*maxFailures {
			t.Fatalf("the failing key got only %d calls in %d requests", calls, i)
		}
		resp, b, used := e.generate("gemini-2.5-flash")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		if slices.Contains(used, bad) {
			calls++
		}
		s := e.state(bad)
		if s.Disabled {
			t.Fatalf("after %d failures: disabled; transient failures must never disable", calls)
		}
		ejected := len(s.Cooldowns) == 1 && s.Cooldowns[0].Model == keypool.EjectAll
		if want := calls >= maxFailures; ejected != want {
			t.Fatalf("after %d failures (max %d): ejected = %v (%+v)", calls, maxFailures, ejected, s)
		}
		if !ejected && s.Failures != calls {
			t.Errorf("after %d failures the pool counts %d", calls, s.Failures)
		}
	}
	n := len(e.fake.Calls())
	for range 4 {
		if resp, b, _ := e.generate("gemini-2.5-flash"); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	if used := e.keysSince(n); slices.Contains(used, bad) {
		t.Errorf("the ejected key was used again: %v", used)
	}
	e.core.store.Flush()
	sk := e.storedKey(bad)
	if sk.Status != store.StatusActive || !strings.Contains(sk.LastError, "ejected for 1m0s after 3 consecutive failures") {
		t.Errorf("stored: status %s last error %q", sk.Status, sk.LastError)
	}
	cds, err := e.core.store.Cooldowns(context.Background(), time.Now())
	if err != nil || len(cds) != 1 || cds[0].KeyID != e.ids[bad] || cds[0].Model != keypool.EjectAll {
		t.Errorf("stored cooldowns = %+v, %v; want the ejection", cds, err)
	}
}

func TestProxyClientErrorsAreNotRetried(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	for _, tc := range []struct {
		name, path, body string
		status           int
		gstatus          string
	}{
		{"unknown model", genPath("gemini-0-nope"), helloBody, 404, "NOT_FOUND"},
		{"bad json", genPath("gemini-2.5-flash"), `{"contents": nope`, 400, "INVALID_ARGUMENT"},
	} {
		n := len(e.fake.Calls())
		resp, b := e.do("POST", tc.path, tc.body)
		if used := e.keysSince(n); len(used) != 1 {
			t.Errorf("%s: %d upstream calls, want 1", tc.name, len(used))
		}
		g := decodeError(t, b)
		if resp.StatusCode != tc.status || g.Error.Code != tc.status || g.Error.Status != tc.gstatus {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, b)
		}
	}
	e.assertNoPenalty()
	if rows := e.errorRows(); len(rows) != 0 {
		t.Errorf("client errors were logged as upstream failures: %+v", rows)
	}
}

// A 5xx is about the model or the service: retried at most once on another key, whatever
// max_retries says.
func TestProxyAllKeysFailing(t *testing.T) {
	for _, tc := range []struct {
		maxRetries, calls int
	}{
		{0, 1},
		{1, 2},
		{2, 2},
		{5, 2},
	} {
		t.Run(fmt.Sprintf("max_retries=%d", tc.maxRetries), func(t *testing.T) {
			e := newProxyEnv(t, 3, func(a *Config) { a.MaxRetries = intPtr(tc.maxRetries); a.MaxFailures = 10 })
			e.fake.SetDefault(fakegemini.Internal)
			resp, b, used := e.generate("gemini-2.5-flash")
			if len(used) != tc.calls {
				t.Errorf("%d upstream calls, want %d", len(used), tc.calls)
			}
			if distinct := slices.Compact(slices.Sorted(slices.Values(used))); len(distinct) != len(used) {
				t.Errorf("a key was tried twice: %v", used)
			}
			g := decodeError(t, b)
			if resp.StatusCode != 500 || g.Error.Code != 500 || g.Error.Status != "INTERNAL" || g.Error.Message == "" {
				t.Errorf("%d %s", resp.StatusCode, b)
			}
			if rows := e.requests(); len(rows) != 1 || rows[0].Attempts != tc.calls || rows[0].Status != 500 {
				t.Errorf("request rows = %+v", rows)
			}
			if errs := e.errorRows(); len(errs) != tc.calls {
				t.Errorf("%d error rows, want %d", len(errs), tc.calls)
			}
		})
	}
}

func TestProxyAllKeysRejected(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	for _, k := range e.keys {
		e.fake.SetKey(k, fakegemini.Invalid)
	}
	before := len(e.fake.Calls())
	resp, b, used := e.generate("gemini-2.5-flash")
	if len(used) != 2 || used[0] == used[1] {
		t.Errorf("upstream calls on keys %v, want each key once", used)
	}
	if probes := e.probesSince(before); len(probes) != 2 || probes[0] == probes[1] {
		t.Errorf("confirming probes on %d keys, want one on each", len(probes))
	}
	// Not Google's "API key not valid": that would blame the client's own key.
	g := decodeError(t, b)
	if resp.StatusCode != 503 || g.Error.Code != 503 || g.Error.Status != "UNAVAILABLE" || strings.HasPrefix(g.Error.Message, "API key not valid") {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
	for _, k := range e.keys {
		if !e.state(k).Disabled {
			t.Errorf("key %d not disabled", e.ids[k])
		}
	}
	resp, b, used = e.generate("gemini-2.5-flash")
	if g := decodeError(t, b); len(used) != 0 || resp.StatusCode != 503 || g.Error.Status != "UNAVAILABLE" {
		t.Errorf("with every key disabled: %d on %v: %s", resp.StatusCode, used, b)
	}
}

var responseID = regexp.MustCompile(`"responseId": ?"[^"]*"`)

func TestProxyMidStreamErrorIsForwarded(t *testing.T) {
	for _, tc := range []struct {
		name, query string
	}{
		{"sse", "?alt=sse"},
		{"json array", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newProxyEnv(t, 2, nil)
			e.fake.SetStream(4, 0)
			e.fake.SetFailAfterEvents(2)
			path := "/v1beta/models/gemini-2.5-flash:streamGenerateContent" + tc.query
			resp, got := e.do("POST", path, helloBody)
			if resp.StatusCode != 200 || !bytes.Contains(got, []byte("overloaded")) {
				t.Fatalf("%d %s", resp.StatusCode, got)
			}
			calls := e.fake.Calls()
			if len(calls) != 1 {
				t.Fatalf("%d upstream calls, want 1 (no retry after the answer started)", len(calls))
			}
			// The same call straight to the fake: the bytes must be the same (but the random id).
			req, _ := http.NewRequest("POST", e.upstream+path, strings.NewReader(helloBody))
			req.Header.Set("x-goog-api-key", calls[0].Key)
			req.Header.Set("Content-Type", "application/json")
			dr, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := io.ReadAll(dr.Body)
			dr.Body.Close()
			norm := func(b []byte) string { return responseID.ReplaceAllString(string(b), `"responseId":"X"`) }
			if norm(got) != norm(want) {
				t.Errorf("the stream was not forwarded byte for byte:\ngot  %q\nwant %q", got, want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != dr.Header.Get("Content-Type") {
				t.Errorf("Content-Type %q, upstream sent %q", ct, dr.Header.Get("Content-Type"))
			}
			rows := e.requests()
			if len(rows) != 1 || rows[0].Status != 503 || !rows[0].Stream || !strings.Contains(rows[0].Error, "overloaded") {
				t.Errorf("request rows = %+v, want one failed stream with status 503", rows)
			}
			errs := e.errorRows()
			if len(errs) != 1 || errs[0].Status != 503 || errs[0].KeyID != e.ids[calls[0].Key] || !strings.Contains(errs[0].Message, "overloaded") {
				t.Errorf("error rows = %+v, want one 503 row for key %d", errs, e.ids[calls[0].Key])
			}
		})
	}
}

// readEvents reads SSE events from r and returns the arrival time of each and their payloads.
func readEvents(t *testing.T, r io.Reader) ([]time.Time, []string) {
	t.Helper()
	var times []time.Time
	var events []string
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "data: ") {
			times = append(times, time.Now())
			events = append(events, strings.TrimSpace(strings.TrimPrefix(line, "data: ")))
		}
		if err == io.EOF {
			return times, events
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestProxyStreamFlushesEveryEvent(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	const events, delay = 4, 200 * time.Millisecond
	e.fake.SetStream(events, delay)
	req, _ := http.NewRequest("POST", e.url+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", strings.NewReader(helloBody))
	req.Header.Set("x-goog-api-key", testAccessKey)
	start := time.Now()
	e.made.Add(1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var raw bytes.Buffer
	times, got := readEvents(t, io.TeeReader(resp.Body, &raw))
	e.assertNoLeak(resp.Header, raw.Bytes())
	if len(got) != events {
		t.Fatalf("%d events, want %d", len(got), events)
	}
	end := times[len(times)-1]
	if d := end.Sub(times[0]); d < 2*delay {
		t.Errorf("the first event came only %v before the last (first after %v): the stream was buffered", d, times[0].Sub(start))
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < delay/2 {
			t.Errorf("event %d arrived %v after event %d: held back and sent together", i, gap, i-1)
		}
	}
}

func TestProxyClientDisconnect(t *testing.T) {
	t.Run("stream", func(t *testing.T) {
		e := newProxyEnv(t, 2, nil)
		e.fake.SetStream(50, 100*time.Millisecond) // 5 s if nobody stops it
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", e.url+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", strings.NewReader(helloBody))
		req.Header.Set("x-goog-api-key", testAccessKey)
		e.made.Add(1)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "data: ") {
			t.Fatalf("first line %q, %v", line, err)
		}
		e.assertNoLeak(resp.Header, []byte(line))
		if n := e.fake.OpenStreams(); n != 1 {
			t.Fatalf("%d open upstream streams while the client reads, want 1", n)
		}
		gone := time.Now()
		cancel()
		resp.Body.Close()
		for e.fake.OpenStreams() != 0 {
			if time.Since(gone) > 2*time.Second {
				t.Fatal("the upstream stream is still open 2s after the client left")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if rows := e.requests(); len(rows) != 1 || !rows[0].Stream {
			t.Errorf("request rows = %+v, want the one stream", rows)
		}
		if calls := e.fake.Calls(); len(calls) != 1 {
			t.Errorf("%d upstream calls, want 1", len(calls))
		}
		e.assertNoPenalty()
		if errs := e.errorRows(); len(errs) != 0 {
			t.Errorf("a client disconnect was logged as a key error: %+v", errs)
		}
	})
	t.Run("waiting for the answer", func(t *testing.T) {
		e := newProxyEnv(t, 2, nil)
		e.fake.SetDefault(fakegemini.Hang)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", e.url+genPath("gemini-2.5-flash"), strings.NewReader(helloBody))
		req.Header.Set("x-goog-api-key", testAccessKey)
		e.made.Add(1)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("got an answer (%d) from a hanging upstream", resp.StatusCode)
		}
		rows := e.requests()
		if len(rows) != 1 {
			t.Fatalf("%d request rows, want 1", len(rows))
		}
		if rows[0].Status != 499 || rows[0].Attempts != 1 {
			t.Errorf("request row %+v, want status 499 after 1 attempt", rows[0])
		}
		if calls := e.fake.Calls(); len(calls) != 1 {
			t.Errorf("%d upstream calls, want 1 (no retry for a client that left)", len(calls))
		}
		e.assertNoPenalty()
		if errs := e.errorRows(); len(errs) != 0 {
			t.Errorf("a client disconnect was logged as a key error: %+v", errs)
		}
	})
}

// rawRequest writes request lines to the gateway on a raw TCP connection and reads the answer.
func rawRequest(t *testing.T, e *proxyEnv, requestLine string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "%s\r\nHost: %s\r\nx-goog-api-key: %s\r\nConnection: close\r\n\r\n",
		requestLine, strings.TrimPrefix(e.url, "http://"), testAccessKey)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", requestLine, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	return resp.StatusCode, b
}

func TestProxyRequestTargetCannotChangeTheUpstream(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	var evilHits atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilHits.Add(1)
		w.Write([]byte(`{"models":[]}`))
	}))
	defer evil.Close()
	evilHost := strings.TrimPrefix(evil.URL, "http://")

	// Absolute form: the host in the request line is ignored, the fake answers.
	status, b := rawRequest(t, e, "GET http://"+evilHost+"/v1beta/models HTTP/1.1")
	if status != 200 || !strings.Contains(string(b), "models/gemini-2.5-flash") {
		t.Errorf("absolute-form request: %d %s", status, b)
	}
	calls := e.fake.Calls()
	if len(calls) != 1 || calls[0].Path != "/v1beta/models" || calls[0].Method != "GET" {
		t.Errorf("absolute-form request reached the fake as %+v", calls)
	}
	status, _ = rawRequest(t, e, "GET http://evil.example/v1beta/models HTTP/1.1")
	if status != 200 || len(e.fake.Calls()) != 2 {
		t.Errorf("absolute-form request to a named host: %d, %d fake calls", status, len(e.fake.Calls()))
	}

	// Targets that would name another host or climb out of the API go to the next handler.
	for _, target := range []string{
		"//" + evilHost + "/v1beta/models",
		"/v1beta/models/..%2F..%2F..%2F" + evilHost + "%2Fv1beta%2Fmodels",
		"/v1beta/%2e%2e/%2e%2e/" + evilHost + "/v1beta/models",
		"/v1beta/./../admin",
	} {
		n := len(e.fake.Calls())
		if status, b := rawRequest(t, e, "GET "+target+" HTTP/1.1"); status != http.StatusTeapot {
			t.Errorf("%s: %d %s, want the next handler's 418", target, status, b)
		}
		if len(e.fake.Calls()) != n {
			t.Errorf("%s reached the upstream", target)
		}
	}
	// Targets that stay in the API reach the fake (which does not know them), never another host.
	for _, target := range []string{
		"/v1beta//" + evilHost + "/v1beta/models",
		`/v1beta/..\..\` + evilHost + `\v1beta\models`,
		"/v1beta/models%2F..%2F..%2F%2F" + evilHost + "%2Fv1beta%2Fmodels",
		"http://" + evilHost + "//" + evilHost + "/v1beta/models",
	} {
		n := len(e.fake.Calls())
		status, b := rawRequest(t, e, "GET "+target+" HTTP/1.1")
		for _, c := range e.fake.Calls()[n:] {
			if !strings.HasPrefix(c.Path, "/v1beta/") {
				t.Errorf("%s reached the fake as %s", target, c.Path)
			}
		}
		if status == 200 && len(e.fake.Calls()) == n {
			t.Errorf("%s: 200 without an upstream call: %s", target, b)
		}
	}
	if n := evilHits.Load(); n != 0 {
		t.Errorf("%d requests reached another host", n)
	}
}

func TestProxyRequestLogMatchesRequests(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	type want struct {
		status         int
		model          string
		stream         bool
		prompt, thinks int64
		cands, total   int64
		authenticated  bool
	}
	var wants []want
	usageOf := func(b []byte) (u struct {
		Prompt     int64 `json:"promptTokenCount"`
		Candidates int64 `json:"candidatesTokenCount"`
		Thoughts   int64 `json:"thoughtsTokenCount"`
		Total      int64 `json:"totalTokenCount"`
	}) {
		var r struct {
			UsageMetadata json.RawMessage `json:"usageMetadata"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		json.Unmarshal(r.UsageMetadata, &u)
		return u
	}
	for i := range 4 {
		model := []string{"gemini-2.5-flash", "gemini-2.0-flash"}[i%2]
		prompt := strings.TrimSpace(strings.Repeat("word ", i+2))
		resp, b := e.do("POST", genPath(model), `{"contents":[{"parts":[{"text":"`+prompt+`"}]}]}`)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		u := usageOf(b)
		if u.Prompt == 0 || u.Total == 0 {
			t.Fatalf("the fake sent no usage: %s", b)
		}
		wants = append(wants, want{200, model, false, u.Prompt, u.Thoughts, u.Candidates, u.Total, true})
	}
	for i := range 2 {
		prompt := strings.TrimSpace(strings.Repeat("stream ", i+7))
		resp, b := e.do("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"parts":[{"text":"`+prompt+`"}]}]}`)
		_, events := readEvents(t, bytes.NewReader(b))
		if resp.StatusCode != 200 || len(events) == 0 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		u := usageOf([]byte(events[len(events)-1]))
		wants = append(wants, want{200, "gemini-2.5-flash", true, u.Prompt, u.Thoughts, u.Candidates, u.Total, true})
	}
	if resp, _ := e.do("GET", "/v1beta/models", ""); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	wants = append(wants, want{status: 200, authenticated: true})
	if resp, _ := e.do("POST", genPath("gemini-0-nope"), helloBody); resp.StatusCode != 404 {
		t.Fatal(resp.StatusCode)
	}
	wants = append(wants, want{status: 404, model: "gemini-0-nope", authenticated: true})
	// A request without an access key is refused and writes no row (it is counted in
	// rejected_total).
	resp, err := http.Post(e.url+genPath("gemini-2.5-flash"), "application/json", strings.NewReader(helloBody))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	if resp.StatusCode != 401 {
		t.Fatal(resp.StatusCode)
	}

	e.waitLogged()
	if n, err := e.core.store.CountRequestLogs(context.Background()); err != nil || n != int64(len(wants)) {
		t.Fatalf("%d request rows (%v), want %d", n, err, len(wants))
	}
	rows := e.requests()
	slices.Reverse(rows) // oldest first, as made
	for i, w := range wants {
		r := rows[i]
		got := want{r.Status, r.Model, r.Stream, r.PromptTokens, r.ThoughtsTokens, r.CandidatesTokens, r.TotalTokens, r.AccessKeyID != 0}
		if got != w {
			t.Errorf("row %d = %+v, want %+v", i, got, w)
		}
		wantAttempts := 1
		if r.Attempts != wantAttempts || r.Method == "" || r.Path == "" || r.Latency <= 0 {
			t.Errorf("row %d: attempts %d method %q path %q latency %v", i, r.Attempts, r.Method, r.Path, r.Latency)
		}
		if (r.KeyID != 0) != (wantAttempts == 1) {
			t.Errorf("row %d: key id %d", i, r.KeyID)
		}
	}
	if n := len(e.fake.Calls()); n != len(wants) {
		t.Errorf("%d upstream calls for %d authenticated requests", n, len(wants))
	}
}

func TestProxyUploadSessionStaysOnItsKey(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	data := "hello file"
	req, _ := http.NewRequest("POST", e.url+"/upload/v1beta/files", strings.NewReader(`{"file":{"display_name":"greeting"}}`))
	req.Header.Set("x-goog-api-key", testAccessKey)
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	req.Header.Set("X-Goog-Upload-Header-Content-Length", strconv.Itoa(len(data)))
	req.Header.Set("X-Goog-Upload-Header-Content-Type", "text/plain")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	upURL, err := url.Parse(resp.Header.Get("X-Goog-Upload-Url"))
	if resp.StatusCode != 200 || err != nil || upURL.Query().Get("upload_id") == "" {
		t.Fatalf("start: %d upload URL %q: %s", resp.StatusCode, resp.Header.Get("X-Goog-Upload-Url"), b)
	}
	// A client that follows the returned URL must come back to the gateway (gemini-api.md §1.3).
	rewritten := "http://"+upURL.Host == e.url

	// An SDK that swaps in its base URL (go-genai >= 1.50) sends the chunk to the gateway.
	req, _ = http.NewRequest("POST", e.url+upURL.RequestURI(), strings.NewReader(data))
	req.Header.Set("x-goog-api-key", testAccessKey)
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	req.Header.Set("X-Goog-Upload-Offset", "0")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	calls := e.fake.Calls()
	sameKey := len(calls) == 2 && calls[0].Key == calls[1].Key
	if !sameKey || resp.StatusCode != 200 || !rewritten {
		t.Fatalf("upload session not bound to its key or not rewritten: "+
			"chunk went to the starting key: %v, chunk answer %d %s, upload URL host %q rewritten: %v",
			sameKey, resp.StatusCode, bytes.TrimSpace(b), upURL.Host, rewritten)
	}
	if resp.Header.Get("X-Goog-Upload-Status") != "final" || !strings.Contains(string(b), `"files/`) {
		t.Errorf("finalize: %q %s", resp.Header.Get("X-Goog-Upload-Status"), b)
	}
}

func TestProxyMasksEchoedKeys(t *testing.T) {
	// An upstream that quotes the key it got in its error messages.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Goog-Api-Key")
		code, status := 404, "NOT_FOUND"
		if strings.Contains(r.URL.Path, "broken") {
			code, status = 500, "INTERNAL"
		}
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"code":%d,"message":"nothing here for key %s","status":"%s"}}`, code, key, status)
	}))
	defer echo.Close()
	e := newProxyEnv(t, 2, func(a *Config) { a.Upstream = echo.URL; a.MaxRetries = intPtr(1) })
	for _, model := range []string{"missing", "broken"} {
		resp, b := e.do("POST", genPath(model), helloBody)
		// e.do fails the test if a key is in b; the message itself must still be there.
		if resp.StatusCode < 400 || !strings.Contains(string(b), "nothing here for key ") {
			t.Errorf("%s: %d %s, want the upstream error with the key masked", model, resp.StatusCode, b)
		}
	}
	// The 404 is the client's own error: only the request log has it. Both 500s are upstream
	// failures, one row each.
	if rows := e.errorRows(); len(rows) != 2 || rows[0].Status != 500 || rows[1].Status != 500 {
		t.Errorf("error rows %+v, want two 500s", rows)
	}
	// e's cleanup checks the stored rows and the log lines for the keys.
}

func TestProxyMasksKeysInSuccessfulAnswers(t *testing.T) {
	// An upstream that answers 200, quotes the key in a header and then breaks the stream with
	// an error that names the key's consumer, as Google's CONSUMER_SUSPENDED message does.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Goog-Api-Key")
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-Goog-Upload-Url", "https://generativelanguage.googleapis.com/upload/v1beta/files?key="+key+"&upload_id=1")
		fmt.Fprintf(w, "data: {\"candidates\":[]}\r\n\r\n"+
			`{"error":{"code":403,"message":"Permission denied: Consumer 'api_key:%s' has been suspended.","status":"PERMISSION_DENIED"}}`+"\n", key)
	}))
	defer echo.Close()
	e := newProxyEnv(t, 1, func(a *Config) { a.Upstream = echo.URL })
	key := e.keys[0]
	req, _ := http.NewRequest("POST", e.url+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", strings.NewReader(helloBody))
	req.Header.Set("x-goog-api-key", testAccessKey)
	e.made.Add(1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Errorf("reading the answer (Content-Length %q): %v", resp.Header.Get("Content-Length"), err)
	}
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte("has been suspended")) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var leaks []string
	if bytes.Contains(b, []byte(key)) {
		leaks = append(leaks, "response body")
	}
	if strings.Contains(resp.Header.Get("X-Goog-Upload-Url"), key) {
		leaks = append(leaks, "X-Goog-Upload-Url header")
	}
	rows := e.requests()
	if len(rows) != 1 || rows[0].Status != 403 {
		t.Errorf("request rows = %+v, want one with the mid-stream status 403", rows)
	}
	for _, r := range rows {
		if strings.Contains(r.Error, key) {
			leaks = append(leaks, "request-log error text")
		}
	}
	for _, r := range e.errorRows() {
		if strings.Contains(r.Message, key) {
			leaks = append(leaks, "error-log message")
		}
	}
	if len(leaks) > 0 {
		t.Errorf("a pool key echoed by the upstream in a 200 answer reached: %s", strings.Join(leaks, ", "))
	}
}
