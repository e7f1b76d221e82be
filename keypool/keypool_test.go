package keypool

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 5, 14, 12, 0, 0, 0, time.UTC)

func keys(ids ...int64) []Key {
	out := make([]Key, 0, len(ids))
	for _, id := range ids {
		out = append(out, Key{ID: id, Secret: fmt.Sprintf("secret-%d", id)})
	}
	return out
}

func newPool(t testing.TB, maxFailures int, ids ...int64) *Pool {
	t.Helper()
	p := New(maxFailures)
	p.Load(keys(ids...), nil)
	return p
}

// pick calls Next n times and counts the picks per key ID.
func pick(t testing.TB, p *Pool, model string, now time.Time, skip []int64, n int) map[int64]int {
	t.Helper()
	got := map[int64]int{}
	for range n {
		id, secret, err := p.Next(model, now, skip)
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if secret != fmt.Sprintf("secret-%d", id) {
			t.Fatalf("key %d came with secret %q", id, secret)
		}
		got[id]++
	}
	return got
}

func quota(until time.Time) Outcome { return Outcome{Kind: Quota, Until: until} }

func TestNextRoundRobin(t *testing.T) {
	p := newPool(t, 3, 50, 10, 40, 20, 30)
	got := pick(t, p, "m", t0, nil, 10_000)
	for _, id := range []int64{10, 20, 30, 40, 50} {
		if got[id] != 2000 {
			t.Errorf("key %d picked %d times, want 2000 (all: %v)", id, got[id], got)
		}
	}
	// Order is by ID: five consecutive picks visit every key once, in ID order.
	var seq []int64
	for range 5 {
		id, _, _ := p.Next("m", t0, nil)
		seq = append(seq, id)
	}
	for i := 1; i < 5; i++ {
		if seq[i] != seq[i-1]+10 && !(seq[i-1] == 50 && seq[i] == 10) {
			t.Fatalf("pick order %v is not round-robin by ID", seq)
		}
	}
}

func TestNextSkipsCoolingKeyForItsModelOnly(t *testing.T) {
	p := newPool(t, 3, 1, 2, 3, 4, 5)
	if c := p.Report(3, "A", quota(t0.Add(time.Minute)), t0); !c.Changed || c.Model != "A" || !c.CooldownUntil.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Report quota = %+v", c)
	}
	got := pick(t, p, "A", t0, nil, 10_000)
	if got[3] != 0 {
		t.Errorf("cooling key picked %d times for its model", got[3])
	}
	for _, id := range []int64{1, 2, 4, 5} {
		if got[id] != 2500 {
			t.Errorf("model A: key %d picked %d times, want 2500 (all: %v)", id, got[id], got)
		}
	}
	got = pick(t, p, "B", t0, nil, 10_000)
	for _, id := range []int64{1, 2, 3, 4, 5} {
		if got[id] != 2000 {
			t.Errorf("model B: key %d picked %d times, want 2000 (all: %v)", id, got[id], got)
		}
	}
	// Once the cooldown has passed (Until itself included) the key is back.
	got = pick(t, p, "A", t0.Add(time.Minute), nil, 10_000)
	if got[3] != 2000 {
		t.Errorf("after cooldown: key 3 picked %d times, want 2000", got[3])
	}
}

func TestNextEmptyModelIsNotSpecial(t *testing.T) {
	p := newPool(t, 3, 1, 2)
	p.Report(1, "", quota(t0.Add(time.Hour)), t0)
	if got := pick(t, p, "", t0, nil, 100); got[1] != 0 || got[2] != 100 {
		t.Errorf(`model "": picks %v, want only key 2`, got)
	}
	if got := pick(t, p, "gemini-2.5-flash", t0, nil, 100); got[1] != 50 || got[2] != 50 {
		t.Errorf("other model: picks %v, want 50/50", got)
	}
}

func TestNextSkipList(t *testing.T) {
	p := newPool(t, 3, 1, 2, 3, 4)
	got := pick(t, p, "m", t0, []int64{2, 4}, 1000)
	if got[2] != 0 || got[4] != 0 || got[1] != 500 || got[3] != 500 {
		t.Errorf("picks with skip [2 4] = %v", got)
	}
	// The typical retry loop: each attempt skips the keys already tried.
	var tried []int64
	for range 4 {
		id, _, err := p.Next("m", t0, tried)
		if err != nil {
			t.Fatal(err)
		}
		for _, prev := range tried {
			if prev == id {
				t.Fatalf("key %d picked again, skip = %v", id, tried)
			}
		}
		tried = append(tried, id)
	}
	if _, _, err := p.Next("m", t0, tried); !errors.Is(err, ErrNoKeys) {
		t.Errorf("all keys skipped: err = %v, want ErrNoKeys", err)
	}
}

func TestNextNeverPicksDisabled(t *testing.T) {
	p := New(3)
	p.Load([]Key{{ID: 1, Secret: "secret-1"}, {ID: 2, Secret: "secret-2", Disabled: true}, {ID: 3, Secret: "secret-3"}}, nil)
	p.SetDisabled(3, true)
	got := pick(t, p, "m", t0, nil, 1000)
	if got[1] != 1000 {
		t.Errorf("picks = %v, want only key 1", got)
	}
}

func TestNextNoUsableKey(t *testing.T) {
	later, earliest := t0.Add(10*time.Minute), t0.Add(2*time.Minute)

	t.Run("empty pool", func(t *testing.T) {
		if _, _, err := New(1).Next("m", t0, nil); !errors.Is(err, ErrNoKeys) {
			t.Errorf("err = %v, want ErrNoKeys", err)
		}
		var zero Pool
		if _, _, err := zero.Next("m", t0, nil); !errors.Is(err, ErrNoKeys) || zero.Len() != 0 {
			t.Errorf("zero Pool: err = %v, want ErrNoKeys", err)
		}
		zero.Add(Key{ID: 1, Secret: "s"})
		if id, _, err := zero.Next("m", t0, nil); id != 1 || err != nil {
			t.Errorf("zero Pool after Add: Next = %d, %v", id, err)
		}
	})
	t.Run("all disabled", func(t *testing.T) {
		p := newPool(t, 1, 1, 2)
		p.SetDisabled(1, true)
		p.SetDisabled(2, true)
		if _, _, err := p.Next("m", t0, nil); !errors.Is(err, ErrNoKeys) {
			t.Errorf("err = %v, want ErrNoKeys", err)
		}
	})
	t.Run("all cooling: earliest end", func(t *testing.T) {
		p := newPool(t, 1, 1, 2, 3)
		p.Report(1, "m", quota(later), t0)
		p.Report(2, "m", quota(earliest), t0)
		p.Report(3, "m", quota(later.Add(time.Hour)), t0)
		_, _, err := p.Next("m", t0, nil)
		var ce *CoolingError
		if !errors.As(err, &ce) {
			t.Fatalf("err = %v, want *CoolingError", err)
		}
		if ce.Model != "m" || !ce.Until.Equal(earliest) {
			t.Errorf("CoolingError = %+v, want model m until %v", ce, earliest)
		}
		if !strings.Contains(ce.Error(), `"m"`) || errors.Is(err, ErrNoKeys) {
			t.Errorf("Error() = %q", ce.Error())
		}
		// Skipped and disabled keys do not count towards Until.
		p.SetDisabled(3, true)
		_, _, err = p.Next("m", t0, []int64{2})
		if !errors.As(err, &ce) || !ce.Until.Equal(later) {
			t.Errorf("skip 2, disable 3: err = %v, want CoolingError until %v", err, later)
		}
		// Skipping the only remaining cooling key leaves nothing to wait for.
		if _, _, err = p.Next("m", t0, []int64{1, 2}); !errors.Is(err, ErrNoKeys) {
			t.Errorf("all enabled keys skipped: err = %v, want ErrNoKeys", err)
		}
		// When the earliest cooldown is over, that key is picked.
		if id, _, err := p.Next("m", earliest, nil); err != nil || id != 2 {
			t.Errorf("at the earliest end: Next = %d, %v; want key 2", id, err)
		}
	})
}

func TestNextDoesNotAllocate(t *testing.T) {
	p := newPool(t, 3, 1, 2, 3, 4, 5, 6)
	p.Report(2, "gemini-2.5-pro", quota(t0.Add(time.Hour)), t0)
	p.Report(3, "other-model", quota(t0.Add(time.Hour)), t0)
	p.SetDisabled(4, true)
	skip := []int64{5}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, err := p.Next("gemini-2.5-pro", t0, skip); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Next allocates %v times per call, want 0", allocs)
	}
}

func TestNextConcurrentBalanced(t *testing.T) {
	const goroutines, picks = 16, 10_000
	run := func(p *Pool, model string) map[int64]int {
		var mu sync.Mutex
		total := map[int64]int{}
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				local := map[int64]int{}
				for range picks {
					id, _, err := p.Next(model, t0, nil)
					if err != nil {
						t.Error(err)
						return
					}
					local[id]++
				}
				mu.Lock()
				for id, n := range local {
					total[id] += n
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		return total
	}

	p := newPool(t, 3, 1, 2, 3, 4, 5)
	// Every key usable: each pick takes a distinct cursor position, so the split is exact.
	got := run(p, "A")
	for id := int64(1); id <= 5; id++ {
		if got[id] != goroutines*picks/5 {
			t.Errorf("all usable: key %d picked %d times, want %d", id, got[id], goroutines*picks/5)
		}
	}
	// One key cooling: the other four share the load within 10% (exactly in the sequential test).
	p.Report(3, "A", quota(t0.Add(time.Hour)), t0)
	got = run(p, "A")
	want := goroutines * picks / 4
	for _, id := range []int64{1, 2, 4, 5} {
		if d := got[id] - want; d > want/10 || d < -want/10 {
			t.Errorf("one cooling: key %d picked %d times, want %d ±10%% (all: %v)", id, got[id], want, got)
		}
	}
	if got[3] != 0 {
		t.Errorf("cooling key picked %d times", got[3])
	}
}

// TestConcurrentMutation runs readers against every writer at once; it asserts
// invariants that must hold at any instant and is mostly there for -race.
func TestConcurrentMutation(t *testing.T) {
	p := newPool(t, 2, 1, 2, 3, 4, 5, 6, 7, 8)
	p.Add(Key{ID: 100, Secret: "secret-100", Disabled: true})
	stop := make(chan struct{})
	var writers sync.WaitGroup
	writer := func(f func(i int)) {
		writers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
					f(i)
				}
			}
		})
	}
	writer(func(i int) {
		id := int64(i%8 + 1)
		switch i % 5 {
		case 0:
			p.Report(id, "A", Outcome{Kind: Transient, Reason: "boom"}, t0)
		case 1:
			p.Report(id, "A", Outcome{Kind: Success}, t0)
		case 2:
			p.Report(id, "B", quota(t0.Add(time.Duration(i)*time.Millisecond)), t0)
		case 3:
			p.SetDisabled(id, false)
		case 4:
			p.Report(id, "A", Outcome{Kind: KeyInvalid, Reason: "bad"}, t0)
		}
	})
	writer(func(i int) {
		if i%2 == 0 {
			p.Add(Key{ID: 50, Secret: fmt.Sprintf("secret-50-%d", i)})
		} else {
			p.Remove(50)
		}
	})
	writer(func(i int) {
		if i%100 == 0 {
			p.Load(append(keys(1, 2, 3, 4, 5, 6, 7, 8), Key{ID: 100, Secret: "secret-100", Disabled: true}), nil)
		}
		p.Keys(t0)
		p.Counts(t0)
	})
	var readers sync.WaitGroup
	for range 8 {
		readers.Go(func() {
			for range 5000 {
				id, secret, err := p.Next("A", t0, []int64{7})
				if err != nil {
					var ce *CoolingError
					if !errors.Is(err, ErrNoKeys) && !errors.As(err, &ce) {
						t.Errorf("Next: unexpected error %v", err)
					}
					continue
				}
				if id == 7 || id == 100 {
					t.Errorf("picked key %d (skipped or always disabled)", id)
				}
				if !strings.HasPrefix(secret, fmt.Sprintf("secret-%d", id)) {
					t.Errorf("key %d came with secret %q", id, secret)
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	writers.Wait()
}

func TestReportTransientNeverDisables(t *testing.T) {
	p := newPool(t, 3, 1)
	fail := Outcome{Kind: Transient, Reason: "The model is overloaded. Please try again later."}
	for n := 1; n <= 9; n++ {
		c := p.Report(1, "m", fail, t0.Add(time.Duration(n)*time.Second))
		if c.Disabled || c.NewlyDisabled || c.Ejected {
			t.Fatalf("failure %d: Change = %+v; a lone failing key is neither disabled nor ejected", n, c)
		}
	}
	if _, _, err := p.Next("m", t0, nil); err != nil {
		t.Errorf("key not picked after transient failures: %v", err)
	}
}

func TestReportSuccessResetsFailures(t *testing.T) {
	p := newPool(t, 3, 1)
	if c := p.Report(1, "m", Outcome{Kind: Success}, t0); c.Changed || c.Failures != 0 || c.KeyID != 1 {
		t.Errorf("success at 0 failures: Change = %+v, want unchanged", c)
	}
	p.Report(1, "m", Outcome{Kind: Transient}, t0)
	p.Report(1, "m", Outcome{Kind: Transient}, t0)
	if c := p.Report(1, "m", Outcome{Kind: Success}, t0); !c.Changed || c.Failures != 0 || c.Disabled {
		t.Errorf("success after 2 failures: Change = %+v", c)
	}
	// The count starts over: two more failures do not reach 3.
	p.Report(1, "m", Outcome{Kind: Transient}, t0)
	if c := p.Report(1, "m", Outcome{Kind: Transient}, t0); c.Disabled || c.Failures != 2 {
		t.Errorf("after reset: Change = %+v", c)
	}
}

func TestReportQuotaNeverDisables(t *testing.T) {
	p := newPool(t, 1, 1, 2)
	for i := range 100 {
		c := p.Report(1, "m", quota(t0.Add(time.Duration(i+1)*time.Second)), t0)
		if c.Disabled || c.NewlyDisabled || c.Failures != 0 {
			t.Fatalf("quota report %d: Change = %+v", i, c)
		}
	}
	if _, _, disabled := p.Counts(t0); disabled != 0 {
		t.Errorf("%d keys disabled by quota", disabled)
	}
}

func TestReportQuotaKeepsLaterCooldown(t *testing.T) {
	p := newPool(t, 3, 1, 2)
	long, short := t0.Add(10*time.Minute), t0.Add(time.Minute)
	if c := p.Report(1, "m", quota(long), t0); !c.Changed || !c.CooldownUntil.Equal(long) {
		t.Fatalf("first quota: Change = %+v", c)
	}
	if c := p.Report(1, "m", quota(short), t0); c.Changed || !c.CooldownUntil.IsZero() {
		t.Errorf("shorter quota: Change = %+v, want unchanged", c)
	}
	if id, _, _ := p.Next("m", short.Add(time.Second), []int64{2}); id != 0 {
		t.Errorf("key 1 picked at %v, its cooldown runs until %v", short.Add(time.Second), long)
	}
	if c := p.Report(1, "m", quota(long.Add(time.Minute)), t0); !c.Changed || !c.CooldownUntil.Equal(long.Add(time.Minute)) {
		t.Errorf("longer quota: Change = %+v", c)
	}
	// A Quota without a future Until still cools down, for 60 s.
	if c := p.Report(2, "m", Outcome{Kind: Quota}, t0); !c.Changed || !c.CooldownUntil.Equal(t0.Add(time.Minute)) {
		t.Errorf("quota without Until: Change = %+v", c)
	}
	// Expired cooldowns of other models are pruned on write.
	p.Report(1, "x", quota(t0.Add(time.Second)), t0)
	later := t0.Add(time.Hour)
	p.Report(1, "y", quota(later.Add(time.Hour)), later)
	e := find(p.list(), 1)
	for _, c := range *e.cooldowns.Load() {
		if c.model == "x" || c.model == "m" {
			t.Errorf("expired cooldown for %q kept", c.model)
		}
	}
}

func TestReportKeyInvalidDisablesAtOnce(t *testing.T) {
	p := newPool(t, 100, 1, 2)
	reason := "API_KEY_INVALID: API key not valid. Please pass a valid API key."
	c := p.Report(1, "m", Outcome{Kind: KeyInvalid, Reason: reason}, t0)
	want := Change{KeyID: 1, Disabled: true, NewlyDisabled: true, Reason: reason, Changed: true}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Change = %+v, want %+v", c, want)
	}
	if c := p.Report(1, "m", Outcome{Kind: KeyInvalid, Reason: reason}, t0); c.Changed || c.NewlyDisabled || !c.Disabled {
		t.Errorf("second KeyInvalid: Change = %+v", c)
	}
	if got := pick(t, p, "m", t0, nil, 10); got[2] != 10 {
		t.Errorf("picks = %v, want only key 2", got)
	}
	// The reason is masked even when the caller built the Outcome itself.
	c = p.Report(2, "m", Outcome{Kind: KeyInvalid, Reason: "bad key AIzaSyA1b2C3d4E5f6G7h8I9j0K_L-mnopqrstu"}, t0)
	if strings.Contains(c.Reason, "A1b2C3") {
		t.Errorf("Reason leaks the key: %q", c.Reason)
	}
}

func TestReportNoPenalty(t *testing.T) {
	p := newPool(t, 1, 1)
	for _, k := range []Kind{ClientError, Canceled} {
		if c := p.Report(1, "m", Outcome{Kind: k, Reason: "x"}, t0); c.Changed || c.Disabled || c.Failures != 0 {
			t.Errorf("%v: Change = %+v", k, c)
		}
	}
	if c := p.Report(99, "m", Outcome{Kind: KeyInvalid}, t0); !reflect.DeepEqual(c, Change{}) {
		t.Errorf("unknown id: Change = %+v, want zero", c)
	}
}

func TestSetDisabledEnableResetsState(t *testing.T) {
	p := newPool(t, 5, 1)
	p.Report(1, "m", Outcome{Kind: Transient}, t0)
	p.Report(1, "m", quota(t0.Add(time.Hour)), t0)
	p.Report(1, "m", Outcome{Kind: KeyInvalid, Reason: "bad"}, t0)
	p.SetDisabled(1, false)
	ks := p.Keys(t0)
	if len(ks) != 1 || ks[0].Disabled || ks[0].Failures != 0 || len(ks[0].Cooldowns) != 0 {
		t.Fatalf("after enable: %+v", ks)
	}
	if id, _, err := p.Next("m", t0, nil); err != nil || id != 1 {
		t.Errorf("Next = %d, %v", id, err)
	}
	// Disabling keeps failures and cooldowns.
	p.Report(1, "m", Outcome{Kind: Transient}, t0)
	p.Report(1, "m", quota(t0.Add(time.Hour)), t0)
	p.SetDisabled(1, true)
	ks = p.Keys(t0)
	if !ks[0].Disabled || ks[0].Failures != 1 || len(ks[0].Cooldowns) != 1 {
		t.Errorf("after disable: %+v", ks)
	}
	p.SetDisabled(42, true) // unknown: no panic
}

func TestSetMaxFailures(t *testing.T) {
	p := newPool(t, 5, 1, 2)
	p.SetMaxFailures(0) // treated as 1
	// Another key's success must come after the failing key's streak began.
	if c := p.Report(1, "m", Outcome{Kind: Transient, Reason: "EOF"}, t0); c.Ejected || c.Failures != 1 {
		t.Errorf("no other key succeeded yet: Change = %+v", c)
	}
	p.Report(2, "m", Outcome{Kind: Success}, t0.Add(time.Second))
	if c := p.Report(1, "m", Outcome{Kind: Transient, Reason: "EOF"}, t0.Add(2*time.Second)); !c.Ejected || c.Disabled ||
		c.Reason != "ejected for 1m0s after 2 consecutive failures while other keys served m; last: EOF" {
		t.Errorf("Change = %+v", c)
	}
	if c := New(-3).Report(1, "m", Outcome{Kind: Transient}, t0); c.Changed {
		t.Errorf("empty pool: Change = %+v", c)
	}
}

func TestLoadKeepsGivenState(t *testing.T) {
	p := New(3)
	p.Load(keys(1, 2, 3), nil)
	p.Report(1, "m", Outcome{Kind: Transient}, t0)

	until := t0.Add(time.Hour)
	p.Load([]Key{
		{ID: 3, Secret: "secret-3", Failures: 2},
		{ID: 2, Secret: "old", Disabled: true},
		{ID: 2, Secret: "secret-2", Disabled: true}, // duplicate: the last wins
		{ID: 4, Secret: "secret-4"},
	}, []Cooldown{
		{KeyID: 4, Model: "m", Until: until},
		{KeyID: 4, Model: "m", Until: t0.Add(time.Minute)}, // earlier duplicate: the later is kept
		{KeyID: 4, Model: "expired", Until: t0.Add(-time.Minute)},
		{KeyID: 1, Model: "m", Until: until}, // key 1 is gone
	})
	if p.Len() != 3 {
		t.Fatalf("Len = %d, want 3", p.Len())
	}
	want := []KeyState{
		{ID: 2, Disabled: true},
		{ID: 3, Failures: 2},
		{ID: 4, Cooldowns: []Cooldown{{KeyID: 4, Model: "m", Until: until}}},
	}
	got := p.Keys(t0)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Keys =\n%+v\nwant\n%+v", got, want)
	}
	// Key 3 already has 2 failures: one more counts 3 (with no other key succeeding, it stays).
	if c := p.Report(3, "m", Outcome{Kind: Transient}, t0); c.Failures != 3 || c.Ejected || c.Disabled {
		t.Errorf("Change = %+v, want 3 failures, still in service", c)
	}
	p.SetDisabled(3, true)
	// Nothing usable for m: 2 and 3 disabled, 4 cooling.
	var ce *CoolingError
	if _, _, err := p.Next("m", t0, nil); !errors.As(err, &ce) || !ce.Until.Equal(until) {
		t.Errorf("Next = %v, want CoolingError until %v", err, until)
	}
	if active, cooling, disabled := p.Counts(t0); active != 0 || cooling != 1 || disabled != 2 {
		t.Errorf("Counts = %d, %d, %d; want 0, 1, 2", active, cooling, disabled)
	}
	if active, cooling, disabled := p.Counts(until); active != 1 || cooling != 0 || disabled != 2 {
		t.Errorf("Counts after cooldown = %d, %d, %d; want 1, 0, 2", active, cooling, disabled)
	}
	p.Load(nil, nil)
	if p.Len() != 0 || len(p.Keys(t0)) != 0 {
		t.Errorf("Load(nil) left %d keys", p.Len())
	}
}

func TestAddAndRemove(t *testing.T) {
	p := newPool(t, 3, 10, 30)
	p.Add(Key{ID: 20, Secret: "secret-20"})
	p.Add(Key{ID: 5, Secret: "secret-5"})
	p.Add(Key{ID: 40, Secret: "secret-40"})
	var ids []int64
	for _, ks := range p.Keys(t0) {
		ids = append(ids, ks.ID)
	}
	if fmt.Sprint(ids) != "[5 10 20 30 40]" {
		t.Fatalf("Keys IDs = %v", ids)
	}

	// Updating an existing ID: the secret changes, the cooldowns stay.
	p.Report(20, "m", quota(t0.Add(time.Hour)), t0)
	p.Add(Key{ID: 20, Secret: "rotated", Failures: 2})
	ks := p.Keys(t0)[2]
	if ks.ID != 20 || ks.Failures != 2 || len(ks.Cooldowns) != 1 {
		t.Errorf("after update: %+v", ks)
	}
	seen := false
	for range 5 {
		if id, secret, _ := p.Next("other", t0, nil); id == 20 {
			seen = true
			if secret != "rotated" {
				t.Errorf("key 20 secret = %q, want rotated", secret)
			}
		}
	}
	if !seen {
		t.Error("key 20 never picked")
	}
	// Same secret: state updated in place.
	p.Add(Key{ID: 10, Secret: "secret-10", Disabled: true, Failures: 1})
	if ks := p.Keys(t0)[1]; !ks.Disabled || ks.Failures != 1 {
		t.Errorf("in-place update: %+v", ks)
	}

	p.Remove(30)
	p.Remove(999)
	if p.Len() != 4 {
		t.Errorf("Len = %d, want 4", p.Len())
	}
	if c := p.Report(30, "m", Outcome{Kind: Transient}, t0); c.Changed {
		t.Errorf("removed key still reported: %+v", c)
	}
	for _, id := range []int64{5, 10, 20, 40} {
		p.Remove(id)
	}
	if _, _, err := p.Next("m", t0, nil); !errors.Is(err, ErrNoKeys) || p.Len() != 0 {
		t.Errorf("empty after removes: err = %v, Len = %d", err, p.Len())
	}
}

func TestKeysShowsLiveCooldownsOnly(t *testing.T) {
	p := newPool(t, 3, 1)
	p.Report(1, "b", quota(t0.Add(2*time.Minute)), t0)
	p.Report(1, "a", quota(t0.Add(time.Minute)), t0)
	got := p.Keys(t0)[0].Cooldowns
	if len(got) != 2 || got[0].Model != "a" || got[1].Model != "b" || got[0].KeyID != 1 {
		t.Fatalf("Cooldowns = %+v, want a then b", got)
	}
	if got := p.Keys(t0.Add(90 * time.Second))[0].Cooldowns; len(got) != 1 || got[0].Model != "b" {
		t.Errorf("after a expired: %+v", got)
	}
}
