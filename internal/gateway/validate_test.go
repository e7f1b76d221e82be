package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// poolKeys returns n distinct keys shaped like Google's.
func poolKeys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("AIzaSyVALIDATE-%04d-abcdefghijklmnopqrstu", i)
	}
	return out
}

// storedKey reads key id from the store, after the writer has written what it holds.
func storedKey(t *testing.T, c *Core, id int64) store.Key {
	t.Helper()
	c.store.Flush()
	keys, err := c.store.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.ID == id {
			return k
		}
	}
	t.Fatalf("no key %d", id)
	return store.Key{}
}

func storedCooldowns(t *testing.T, c *Core, id int64) []store.Cooldown {
	t.Helper()
	c.store.Flush()
	all, err := c.store.Cooldowns(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Cooldown
	for _, cd := range all {
		if cd.KeyID == id {
			out = append(out, cd)
		}
	}
	return out
}

func poolState(c *Core, id int64) keypool.KeyState {
	return c.poolStates(time.Now())[id]
}

// report applies an outcome to a key the way the proxy does: pool first, then the store.
func report(c *Core, id int64, model string, o keypool.Outcome) {
	c.persist(c.pool.Report(id, model, o, time.Now()), o.Reason)
}

// disableAuto disables a key the way the pool does after failures (not by an operator).
func disableAuto(t *testing.T, c *Core, id int64, reason string) {
	t.Helper()
	report(c, id, "", keypool.Outcome{Kind: keypool.KeyInvalid, Reason: reason})
	if k := storedKey(t, c, id); k.Status != store.StatusDisabled || k.ManualDisabled {
		t.Fatalf("key %d not disabled: %+v", id, k)
	}
}

func generate(t *testing.T, proxy string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", proxy+"/v1beta/models/gemini-2.5-flash:generateContent",
		strings.NewReader(`{"contents":[{"parts":[{"text":"hello"}]}]}`))
	req.Header.Set("x-goog-api-key", testAccessKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// assertNoSecretsLogged fails if any log entry carries one of the keys.
func assertNoSecretsLogged(t *testing.T, e *jobsEnv) {
	t.Helper()
	for _, en := range e.logs.All() {
		text := en.Message + fmt.Sprint(en.ContextMap())
		for _, k := range e.keys {
			if strings.Contains(text, k) {
				t.Errorf("a key was logged: %q %v", en.Message, en.ContextMap())
			}
		}
	}
}

// TestValidationBringsBackARecoveredKey: a key the upstream rejected is disabled by proxy
// traffic; once the upstream accepts it again, the scheduled validation (driven by the fake
// clock) enables it with its failures and cooldowns cleared, and the proxy uses it again.
func TestValidationBringsBackARecoveredKey(t *testing.T) {
	clock := clockwork.NewFakeClockAt(time.Now())
	keys := poolKeys(2)
	e := newJobsEnv(t, jobsSetup{keys: keys, clock: clock})
	c := e.c
	// Earlier trouble on key 1: two failures and a long cooldown on another model.
	report(c, 1, "gemini-2.5-pro", keypool.Outcome{Kind: keypool.Transient, Reason: "HTTP 500"})
	report(c, 1, "gemini-2.5-pro", keypool.Outcome{Kind: keypool.Transient, Reason: "HTTP 500"})
	report(c, 1, "gemini-2.5-pro", keypool.Outcome{Kind: keypool.Quota, Until: time.Now().Add(20 * time.Hour)})

	e.fake.SetKey(keys[0], fakegemini.Invalid)
	for range 2 { // round robin: one of them tries key 1 first
		if code := generate(t, e.proxy); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	k := storedKey(t, c, 1)
	if k.Status != store.StatusDisabled || !strings.Contains(k.DisabledReason, "API_KEY_INVALID") || k.Failures != 2 {
		t.Fatalf("key 1 after the upstream rejected it: %+v", k)
	}
	if len(storedCooldowns(t, c, 1)) != 1 {
		t.Fatal("the cooldown was not stored")
	}

	e.fake.SetKey(keys[0], fakegemini.OK)
	e.fake.Reset()
	e.runNext(t, jobValidation)
	e.waitCount(t, msgValidationDone, 1)

	calls := e.fake.Calls()
	if len(calls) != 1 || calls[0].Method != "GET" || calls[0].Path != "/v1beta/models/gemini-2.5-flash" || calls[0].Key != keys[0] {
		t.Fatalf("probes: %+v; want one GET of the validation model with key 1", calls)
	}
	if st := poolState(c, 1); st.Disabled || st.Failures != 0 || len(st.Cooldowns) != 0 {
		t.Errorf("pool state of key 1: %+v; want enabled, no failures, no cooldowns", st)
	}
	k = storedKey(t, c, 1)
	if k.Status != store.StatusActive || k.DisabledReason != "" || k.Failures != 0 {
		t.Errorf("stored key 1: %+v; want active with failures and reason cleared", k)
	}
	if cds := storedCooldowns(t, c, 1); len(cds) != 0 {
		t.Errorf("stored cooldowns of key 1: %+v", cds)
	}
	f := e.logs.FilterMessage(msgValidationDone).All()[0].ContextMap()
	if f["checked"] != int64(1) || f["enabled"] != int64(1) {
		t.Errorf("validation summary: %v", f)
	}

	// The proxy uses the key again.
	e.fake.Reset()
	for range 4 {
		if code := generate(t, e.proxy); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	used := 0
	for _, call := range e.fake.Calls() {
		if call.Key == keys[0] {
			used++
		}
	}
	if used != 2 {
		t.Errorf("key 1 served %d of 4 requests, want 2 (round robin over 2 keys)", used)
	}
	assertNoSecretsLogged(t, e)
}

// TestValidationKeepsDeadKeysOut checks keys the upstream still refuses, with its real error
// bodies: they stay disabled, now with the upstream's reason. An enabled key found dead by
// "validate one" is disabled.
func TestValidationKeepsDeadKeysOut(t *testing.T) {
	keys := poolKeys(5)
	e := newJobsEnv(t, jobsSetup{keys: keys})
	c := e.c
	ctx := context.Background()
	states := []fakegemini.KeyState{fakegemini.Invalid, fakegemini.Suspended, fakegemini.Leaked, fakegemini.ServiceBlocked}
	wantReason := []string{"API_KEY_INVALID", "CONSUMER_SUSPENDED", "reported as leaked", "API_KEY_SERVICE_BLOCKED"}
	for i, st := range states {
		disableAuto(t, c, int64(i+1), "5 consecutive failures, last: upstream: EOF")
		e.fake.SetKey(keys[i], st)
	}
	e.fake.SetKey(keys[4], fakegemini.Leaked) // enabled so far

	c.runValidation(ctx)
	if n := len(e.fake.Calls()); n != 4 {
		t.Errorf("%d probes, want 4 (the disabled keys only)", n)
	}
	for i := range states {
		k := storedKey(t, c, int64(i+1))
		if k.Status != store.StatusDisabled || !strings.Contains(k.DisabledReason, wantReason[i]) {
			t.Errorf("key %d (%s): %+v; want disabled with %q", i+1, states[i], k, wantReason[i])
		}
		if strings.Contains(k.DisabledReason, keys[i]) || strings.Contains(k.LastError, keys[i]) {
			t.Errorf("key %d: the secret is in its reason", i+1)
		}
		if !poolState(c, int64(i+1)).Disabled {
			t.Errorf("key %d is enabled in the pool", i+1)
		}
	}
	f := e.logs.FilterMessage(msgValidationDone).All()[0].ContextMap()
	if f["checked"] != int64(4) || f["disabled"] != int64(4) || f["enabled"] != int64(0) {
		t.Errorf("validation summary: %v", f)
	}

	r, err := c.validateKey(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != keypool.KeyInvalid || r.Status != 403 || r.Action != actionDisabled || !strings.Contains(r.Reason, "leaked") {
		t.Errorf("validate one on a leaked key: %+v", r)
	}
	if k := storedKey(t, c, 5); k.Status != store.StatusDisabled || !strings.Contains(k.DisabledReason, "leaked") {
		t.Errorf("key 5: %+v", k)
	}
	if e.logs.FilterMessage("upstream key disabled").FilterField(zap.Int64("key_id", 5)).Len() != 1 {
		t.Error("the newly disabled key was not logged")
	}
	if _, err := c.validateKey(ctx, 99); err == nil {
		t.Error("validating an unknown key did not fail")
	}
	assertNoSecretsLogged(t, e)
}

// TestValidationQuota uses the generate probe, which sees exhausted quota: a 429 makes a key
// cool down instead of being disabled (a disabled key the upstream accepts with a 429 comes
// back, cooling); a key that answers again has its cooldowns cleared. With the free models
// probe, which cannot see quota, a valid key keeps its cooldowns.
func TestValidationQuota(t *testing.T) {
	keys := poolKeys(5)
	e := newJobsEnv(t, jobsSetup{keys: keys, configure: func(a *Config) { a.ValidationProbe = "generate" }})
	c := e.c
	ctx := context.Background()
	model := "gemini-2.5-flash"
	now := time.Now()
	dayLong := now.Add(20 * time.Hour)
	disableAuto(t, c, 1, "old reason")                                                     // quota for the day
	report(c, 2, model, keypool.Outcome{Kind: keypool.Quota, Until: dayLong})              // still out of quota
	report(c, 3, "gemini-2.5-pro", keypool.Outcome{Kind: keypool.Quota, Until: dayLong})   // quota is back
	disableAuto(t, c, 4, "old reason")                                                     // fine again
	report(c, 5, model, keypool.Outcome{Kind: keypool.Quota, Until: now.Add(time.Minute)}) // a short wait: not checked
	e.fake.SetKey(keys[0], fakegemini.QuotaDay)
	e.fake.SetKey(keys[1], fakegemini.QuotaMinute)

	ids, err := c.keysToRecheck(ctx, time.Now())
	if err != nil || !slices.Equal(ids, []int64{1, 2, 3, 4}) {
		t.Fatalf("keys to recheck: %v, %v; want [1 2 3 4]", ids, err)
	}
	results, err := c.validateKeys(ctx, ids, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		kind   keypool.Kind
		action string
	}{{keypool.Quota, actionCooling}, {keypool.Quota, actionCooling}, {keypool.Success, actionEnabled}, {keypool.Success, actionEnabled}}
	for i, r := range results {
		if r.KeyID != int64(i+1) || r.Kind != want[i].kind || r.Action != want[i].action {
			t.Errorf("result %d: %+v; want %v %s", i, r, want[i].kind, want[i].action)
		}
	}

	// Key 1: back in service, cooling until Google's daily reset.
	st := poolState(c, 1)
	if st.Disabled || len(st.Cooldowns) != 1 || st.Cooldowns[0].Model != model || !st.Cooldowns[0].Until.Equal(results[0].Until) {
		t.Errorf("key 1 in the pool: %+v (result %+v)", st, results[0])
	}
	if u := results[0].Until; u.Before(time.Now()) || u.After(time.Now().Add(25*time.Hour)) {
		t.Errorf("key 1 cools until %v", u)
	}
	if k := storedKey(t, c, 1); k.Status != store.StatusActive {
		t.Errorf("key 1 stored: %+v", k)
	}
	if cds := storedCooldowns(t, c, 1); len(cds) != 1 || !cds[0].Until.Equal(results[0].Until.Truncate(time.Millisecond)) {
		t.Errorf("key 1 stored cooldowns: %+v", cds)
	}
	// Key 2: the longer cooldown it had is kept.
	if st := poolState(c, 2); st.Disabled || len(st.Cooldowns) != 1 || !st.Cooldowns[0].Until.Equal(dayLong) || !results[1].Until.Equal(dayLong) {
		t.Errorf("key 2: %+v, result %+v", st, results[1])
	}
	// Keys 3 and 4: usable, nothing left.
	for _, id := range []int64{3, 4} {
		if st := poolState(c, id); st.Disabled || len(st.Cooldowns) != 0 || len(storedCooldowns(t, c, id)) != 0 {
			t.Errorf("key %d: %+v", id, st)
		}
		if k := storedKey(t, c, id); k.Status != store.StatusActive {
			t.Errorf("key %d stored: %+v", id, k)
		}
	}
	// The probe is a one-token generation without thinking.
	call := e.fake.Calls()[0]
	var body struct {
		GenerationConfig struct {
			MaxOutputTokens int
			ThinkingConfig  struct{ ThinkingBudget *int }
		}
	}
	if err := json.Unmarshal(call.Body, &body); err != nil || call.Method != "POST" ||
		call.Path != "/v1beta/models/gemini-2.5-flash:generateContent" || body.GenerationConfig.MaxOutputTokens != 1 ||
		body.GenerationConfig.ThinkingConfig.ThinkingBudget == nil || *body.GenerationConfig.ThinkingConfig.ThinkingBudget != 0 {
		t.Errorf("probe %s %s %s (%v)", call.Method, call.Path, call.Body, err)
	}

	// Switch to the free probe (as the admin panel would): it cannot see quota, so a valid key
	// keeps its cooldown.
	if err := c.store.SetSetting(ctx, setValidationProbe, "models"); err != nil {
		t.Fatal(err)
	}
	if err := c.reloadSettings(ctx); err != nil {
		t.Fatal(err)
	}
	report(c, 3, "gemini-2.5-pro", keypool.Outcome{Kind: keypool.Quota, Until: dayLong})
	r, err := c.validateKey(ctx, 3)
	if err != nil || r.Kind != keypool.Success || r.Action != actionValid {
		t.Errorf("models probe on a cooling key: %+v, %v", r, err)
	}
	if st := poolState(c, 3); len(st.Cooldowns) != 1 {
		t.Errorf("key 3 lost its cooldown to a probe that cannot see quota: %+v", st)
	}
	if calls := e.fake.Calls(); calls[len(calls)-1].Method != "GET" {
		t.Errorf("the models probe sent %s", calls[len(calls)-1].Method)
	}
}

// TestValidationLeavesKeysOnNetworkTrouble: a check that times out or finds the upstream gone
// changes nothing, and is logged by key id.
func TestValidationLeavesKeysOnNetworkTrouble(t *testing.T) {
	keys := poolKeys(2)
	e := newJobsEnv(t, jobsSetup{keys: keys, probeTimeout: 300 * time.Millisecond})
	c := e.c
	ctx := context.Background()
	report(c, 1, "", keypool.Outcome{Kind: keypool.Transient, Reason: "HTTP 500"})
	report(c, 1, "", keypool.Outcome{Kind: keypool.Transient, Reason: "HTTP 500"})
	disableAuto(t, c, 1, "old reason")
	before := storedKey(t, c, 1)

	e.fake.SetKey(keys[0], fakegemini.Hang)
	start := time.Now()
	r, err := c.validateKey(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("a hanging check took %v, want the 300ms timeout", took)
	}
	if r.Kind != keypool.Transient || r.Status != 0 || r.Action != actionUnchanged {
		t.Errorf("hanging upstream: %+v", r)
	}
	warns := e.logs.FilterMessage("key validation gave no verdict, the key is left as it is").All()
	if len(warns) != 1 || warns[0].ContextMap()["key_id"] != int64(1) {
		t.Errorf("warnings: %v", warns)
	}

	e.up.Close()
	r, err = c.validateKey(ctx, 1)
	if err != nil || r.Kind != keypool.Transient || r.Status != 0 || r.Action != actionUnchanged {
		t.Errorf("upstream gone: %+v, %v", r, err)
	}
	after := storedKey(t, c, 1)
	if after != before {
		t.Errorf("key 1 changed:\n%+v\n%+v", before, after)
	}
	if st := poolState(c, 1); !st.Disabled || st.Failures != 2 {
		t.Errorf("key 1 in the pool: %+v", st)
	}
	assertNoSecretsLogged(t, e)
}

// TestValidationStopsWhenTheUpstreamIsDown: when many checks in a row get no answer, a large
// batch stops probing instead of waiting out a timeout per key.
func TestValidationStopsWhenTheUpstreamIsDown(t *testing.T) {
	var hits atomic.Int32
	keys := poolKeys(40)
	e := newJobsEnv(t, jobsSetup{keys: keys, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/v1beta/models/") && r.Header.Get("x-goog-api-key") != "" && r.Method == "GET" {
				hits.Add(1)
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close() // no answer at all
				}
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	c := e.c
	ids := make([]int64, len(keys))
	for i := range ids {
		ids[i] = int64(i + 1)
		disableAuto(t, c, ids[i], "old reason")
	}
	results, err := c.validateKeys(context.Background(), ids, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	limit := max(unreachableAfter, 2*4)
	if n := int(hits.Load()); n < limit || n > limit+3 {
		t.Errorf("%d probes before giving up, want %d (plus at most 3 in flight)", n, limit)
	}
	skipped := 0
	for _, r := range results {
		if r.Action != actionUnchanged || r.Kind != keypool.Transient {
			t.Errorf("result %+v", r)
		}
		if strings.HasPrefix(r.Reason, "not checked") {
			skipped++
		}
	}
	if skipped+int(hits.Load()) != len(keys) {
		t.Errorf("%d skipped + %d probed != %d keys", skipped, hits.Load(), len(keys))
	}
	if _, _, disabled := c.pool.Counts(time.Now()); disabled != len(keys) {
		t.Errorf("%d keys disabled, want all %d", disabled, len(keys))
	}
}

// TestValidationConcurrencyIsBounded checks 60 keys through a counting wrapper: never more
// than the limit at once, progress reported for every key in order.
func TestValidationConcurrencyIsBounded(t *testing.T) {
	var cur, peak atomic.Int32
	keys := poolKeys(60)
	e := newJobsEnv(t, jobsSetup{keys: keys, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := cur.Add(1)
			defer cur.Add(-1)
			for m := peak.Load(); n > m && !peak.CompareAndSwap(m, n); m = peak.Load() {
			}
			time.Sleep(10 * time.Millisecond)
			h.ServeHTTP(w, r)
		})
	}})
	c := e.c
	ids := make([]int64, len(keys))
	for i := range ids {
		ids[i] = int64(i + 1)
		disableAuto(t, c, ids[i], "old reason")
	}
	var mu sync.Mutex
	var seen []int
	results, err := c.validateKeys(context.Background(), append(ids, 999, 1), 4, func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if total != len(keys) {
			t.Errorf("progress total %d", total)
		}
		seen = append(seen, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p > 4 || p < 2 {
		t.Errorf("peak of %d concurrent checks, want at most 4 (and more than 1)", p)
	}
	if len(results) != len(keys) {
		t.Fatalf("%d results for %d keys (an unknown id and a repeat were given)", len(results), len(keys))
	}
	for i, r := range results {
		if r.KeyID != ids[i] || r.Action != actionEnabled {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	for i, d := range seen {
		if d != i+1 {
			t.Fatalf("progress calls %v, want 1..%d", seen, len(keys))
		}
	}
	if len(seen) != len(keys) {
		t.Errorf("%d progress calls", len(seen))
	}
	if active, _, _ := c.pool.Counts(time.Now()); active != len(keys) {
		t.Errorf("%d keys active, want %d", active, len(keys))
	}
}

// TestScheduledValidationChoosesKeys: the job checks disabled keys and keys cooling for a day,
// never a key an operator disabled; "validate one" checks such a key but does not enable it.
func TestScheduledValidationChoosesKeys(t *testing.T) {
	keys := poolKeys(7)
	e := newJobsEnv(t, jobsSetup{keys: keys})
	c := e.c
	ctx := context.Background()
	now := time.Now()
	disableAuto(t, c, 2, "old reason")
	if err := c.store.SetKeyStatus(ctx, 3, store.StatusDisabled, "by hand", true); err != nil {
		t.Fatal(err)
	}
	c.pool.SetDisabled(3, true)
	report(c, 4, "m", keypool.Outcome{Kind: keypool.Quota, Until: now.Add(time.Minute)})
	report(c, 5, "m", keypool.Outcome{Kind: keypool.Quota, Until: now.Add(20 * time.Hour)})
	report(c, 6, "m", keypool.Outcome{Kind: keypool.Quota, Until: now.Add(recheckCoolingFor + time.Second)})
	c.pool.SetDisabled(7, true) // disabled in the pool, not written yet

	ids, err := c.keysToRecheck(ctx, now)
	if err != nil || !slices.Equal(ids, []int64{2, 5, 6, 7}) {
		t.Errorf("keys to recheck: %v, %v; want [2 5 6 7]", ids, err)
	}
	c.runValidation(ctx)
	for _, call := range e.fake.Calls() {
		if call.Key == keys[2] {
			t.Error("the scheduled job probed a key disabled by hand")
		}
	}
	r, err := c.validateKey(ctx, 3)
	if err != nil || r.Kind != keypool.Success || r.Action != actionUnchanged {
		t.Errorf("validate one on a key disabled by hand: %+v, %v", r, err)
	}
	if k := storedKey(t, c, 3); k.Status != store.StatusDisabled || !k.ManualDisabled || k.DisabledReason != "by hand" {
		t.Errorf("key 3: %+v", k)
	}
	if !poolState(c, 3).Disabled {
		t.Error("key 3 was enabled in the pool")
	}
}

func TestValidationProbeSetting(t *testing.T) {
	if cfg := (&Config{ValidationProbe: "generate"}); cfg.Check() != nil || cfg.settings()[setValidationProbe] != "generate" {
		t.Fatalf("config %+v: %v", cfg, cfg.Check())
	}
	if err := (&Config{ValidationProbe: "count"}).Check(); err == nil || !strings.Contains(err.Error(), "validation_probe") {
		t.Errorf("a bad probe was accepted: %v", err)
	}
	for raw, want := range map[string]string{"": probeModels, "models": probeModels, " Generate ": probeGenerate, "bogus": probeModels} {
		m := map[string]string{}
		if raw != "" {
			m[setValidationProbe] = raw
		}
		s, err := parseSettings(m)
		if s.validationProbe != want || (err != nil) != (raw == "bogus") {
			t.Errorf("parseSettings(%q) = %q, %v; want %q", raw, s.validationProbe, err, want)
		}
	}
}

// TestKeyViewSeesChangesDuringALongBatch: a batch acts on keys read at most a few seconds
// ago, so a key an operator disables meanwhile is left alone and a deleted one is skipped.
func TestKeyViewSeesChangesDuringALongBatch(t *testing.T) {
	e := newJobsEnv(t, jobsSetup{keys: poolKeys(3)})
	c := e.c
	ctx := context.Background()
	disableAuto(t, c, 1, "old reason")
	v := &keyView{c: c}
	if err := v.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.store.SetKeyStatus(ctx, 1, store.StatusDisabled, "by hand", true); err != nil {
		t.Fatal(err)
	}
	if err := c.store.DeleteKey(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if k, _, ok, err := v.get(ctx, 1); err != nil || !ok || k.ManualDisabled {
		t.Errorf("a fresh view was read again: %+v %v %v", k, ok, err)
	}
	v.at = v.at.Add(-keyViewMaxAge - time.Millisecond)
	if k, st, ok, err := v.get(ctx, 1); err != nil || !ok || !k.ManualDisabled || !st.Disabled {
		t.Errorf("key 1 after the operator's disable: %+v %+v %v %v", k, st, ok, err)
	}
	if _, _, ok, err := v.get(ctx, 2); err != nil || ok {
		t.Errorf("deleted key 2: ok %v, %v", ok, err)
	}
}
