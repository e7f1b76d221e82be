package keypool

import (
	"errors"
	"testing"
	"time"
)

var (
	serverError = Outcome{Kind: Transient, Reason: "An internal error has occurred."}
	ok          = Outcome{Kind: Success}
)

// serve runs one client request the way the gateway does: pick a key for model, and report
// what answer(id) says; it returns the key used (0 when none was usable).
func serve(p *Pool, model string, now time.Time, answer func(id int64) Outcome) int64 {
	id, _, err := p.Next(model, now, nil)
	if err != nil {
		return 0
	}
	p.Report(id, model, answer(id), now)
	return id
}

func TestOneFailingKeyIsEjectedWhileOthersServe(t *testing.T) {
	p := newPool(t, 5, 1, 2, 3, 4)
	bad := func(id int64) Outcome {
		if id == 3 {
			return serverError
		}
		return ok
	}
	now := t0
	var ejectedAt time.Time
	for i := 0; i < 40 && ejectedAt.IsZero(); i++ {
		now = now.Add(100 * time.Millisecond)
		if id, _, _ := p.Next("m", now, nil); id == 3 {
			if c := p.Report(3, "m", serverError, now); c.Ejected {
				ejectedAt = now
				if !c.CooldownUntil.Equal(now.Add(baseEjection)) || c.Model != EjectAll || c.Disabled {
					t.Fatalf("ejection Change = %+v", c)
				}
			}
			continue
		} else {
			p.Report(id, "m", bad(id), now)
		}
	}
	if ejectedAt.IsZero() {
		t.Fatal("key 3 failed 5 times in a row while the others served, and was not ejected")
	}
	// Out of rotation for every model: the next requests never reach it.
	for i := 0; i < 10; i++ {
		for _, model := range []string{"m", "other"} {
			if id := serve(p, model, ejectedAt.Add(time.Second), bad); id == 3 || id == 0 {
				t.Fatalf("request %d for %s went to key %d", i, model, id)
			}
		}
	}
	ks := p.Keys(ejectedAt)[2]
	if ks.Disabled || len(ks.Cooldowns) != 1 || ks.Cooldowns[0].Model != EjectAll {
		t.Fatalf("key 3 state %+v, want enabled with a cooldown on %q", ks, EjectAll)
	}
	if a, c, d := p.Counts(ejectedAt); a != 3 || c != 1 || d != 0 {
		t.Errorf("Counts = %d active, %d cooling, %d disabled", a, c, d)
	}
	// Back on its own after the ejection time.
	back := ejectedAt.Add(baseEjection)
	seen := false
	for i := 0; i < 4; i++ {
		if serve(p, "m", back, func(int64) Outcome { return ok }) == 3 {
			seen = true
		}
	}
	if !seen {
		t.Error("key 3 not back in rotation after its ejection ended")
	}
}

func TestEjectionDoublesAndIsCapped(t *testing.T) {
	p := newPool(t, 1, 1, 2)
	now := t0
	var got []time.Duration
	for i := 0; i < 9; i++ {
		p.Report(1, "m", serverError, now) // the streak begins
		now = now.Add(time.Millisecond)
		p.Report(2, "m", ok, now) // another key serves meanwhile
		now = now.Add(time.Millisecond)
		c := p.Report(1, "m", serverError, now)
		if !c.Ejected {
			t.Fatalf("ejection %d: Change = %+v", i+1, c)
		}
		got = append(got, c.CooldownUntil.Sub(now))
		now = c.CooldownUntil // it comes back and fails again at once
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute,
		32 * time.Minute, time.Hour, time.Hour, time.Hour}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ejection times %v, want %v", got, want)
		}
	}
	// A key that then serves well for a while starts short again.
	now = now.Add(time.Hour + 2*time.Minute)
	p.Report(1, "m", ok, now)
	p.Report(1, "m", serverError, now.Add(time.Second))
	p.Report(2, "m", ok, now.Add(2*time.Second))
	if c := p.Report(1, "m", serverError, now.Add(3*time.Second)); !c.Ejected || c.CooldownUntil.Sub(now.Add(3*time.Second)) != time.Minute {
		t.Errorf("after a healthy period: Change = %+v, want a 1m ejection", c)
	}
}

func TestNeverMoreThanMaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		keys, pct, want int
	}{{4, 50, 2}, {5, 50, 2}, {3, 50, 1}, {1, 50, 0}, {10, 0, 0}, {10, 100, 9}, {10, 30, 3}} {
		ids := make([]int64, tc.keys)
		for i := range ids {
			ids[i] = int64(i + 1)
		}
		p := newPool(t, 1, ids...)
		p.SetMaxEjectionPercent(tc.pct)
		now := t0
		// Every key but the last fails while the last one keeps serving.
		healthy := int64(tc.keys)
		for _, id := range ids[:len(ids)-1] {
			p.Report(id, "m", serverError, now)
		}
		// Enough successes that the failures stay below an outage's share.
		served := func() {
			now = now.Add(time.Millisecond)
			for range 5 {
				p.Report(healthy, "m", ok, now)
			}
		}
		served()
		for round := 0; round < 3; round++ {
			now = now.Add(time.Millisecond)
			for _, id := range ids[:len(ids)-1] {
				p.Report(id, "m", serverError, now)
			}
			served()
		}
		_, cooling, disabled := p.Counts(now)
		if cooling != tc.want || disabled != 0 {
			t.Errorf("%d keys, %d%%: %d ejected, %d disabled; want %d ejected, 0 disabled", tc.keys, tc.pct, cooling, disabled, tc.want)
		}
	}
}

func TestOutageOpensTheCircuitAndCountsNothing(t *testing.T) {
	p := newPool(t, 2, 1, 2, 3, 4)
	down := func(int64) Outcome { return Outcome{Kind: Transient, Reason: "The model is overloaded."} }
	now := t0
	p.Report(1, "m", ok, now) // the model served a moment ago
	opened := false
	for i := 0; i < 30; i++ {
		now = now.Add(50 * time.Millisecond)
		admitted, _ := p.Admit("m", now)
		if !admitted {
			continue
		}
		id, _, err := p.Next("m", now, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if c := p.Report(id, "m", down(id), now); c.Opened {
			opened = true
		}
	}
	if !opened {
		t.Fatal("30 failures of every key did not open the model's circuit")
	}
	for _, ks := range p.Keys(now) {
		if ks.Disabled || len(ks.Cooldowns) > 0 {
			t.Errorf("key %d after the outage: %+v, want neither disabled nor ejected", ks.ID, ks)
		}
	}
	if a, _ := p.Admit("m", now.Add(time.Millisecond)); a {
		t.Error("the open circuit admitted a request before its first trial")
	}
	// Half-open: one trial per second, the others refused with the time of the next trial.
	now = now.Add(time.Second)
	if a, _ := p.Admit("m", now); !a {
		t.Fatal("no trial after a second")
	}
	a, retry := p.Admit("m", now.Add(10*time.Millisecond))
	if a || !retry.Equal(now.Add(trialEvery)) {
		t.Fatalf("second request in the same second: admitted %v, retry at %v", a, retry)
	}
	// Other models are not affected.
	if a, _ := p.Admit("other", now); !a {
		t.Error("another model was refused")
	}
	// The upstream recovers: the trial succeeds and closes the circuit.
	id, _, _ := p.Next("m", now, nil)
	if c := p.Report(id, "m", ok, now); !c.Closed {
		t.Errorf("successful trial: Change = %+v, want Closed", c)
	}
	for i := 0; i < 5; i++ {
		if a, _ := p.Admit("m", now.Add(time.Millisecond)); !a {
			t.Fatal("request refused after the circuit closed")
		}
	}
}

func TestSparseOutageEjectsNobody(t *testing.T) {
	// Too little traffic to see an outage in the window: failures count, but no key is ejected
	// while no other key succeeds.
	p := newPool(t, 2, 1, 2, 3)
	now := t0
	p.Report(2, "m", ok, now)
	for i := 0; i < 30; i++ {
		now = now.Add(5 * time.Second)
		id, _, err := p.Next("m", now, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c := p.Report(id, "m", serverError, now); c.Ejected || c.Disabled {
			t.Fatalf("request %d: key %d %+v", i, id, c)
		}
	}
}

func TestReadmitEndsAnEjection(t *testing.T) {
	p := newPool(t, 1, 1, 2)
	p.Report(1, "m", serverError, t0)
	p.Report(2, "m", ok, t0.Add(time.Millisecond))
	p.Report(1, "m", quota(t0.Add(time.Hour)), t0)
	if c := p.Report(1, "m", serverError, t0.Add(2*time.Millisecond)); !c.Ejected {
		t.Fatalf("not ejected: %+v", c)
	}
	if !p.Readmit(1, t0.Add(time.Second)) {
		t.Fatal("Readmit = false for an ejected key")
	}
	if p.Readmit(1, t0.Add(time.Second)) {
		t.Error("Readmit = true twice")
	}
	ks := p.Keys(t0.Add(time.Second))[0]
	if len(ks.Cooldowns) != 1 || ks.Cooldowns[0].Model != "m" {
		t.Errorf("cooldowns after Readmit: %+v, want only the quota one", ks.Cooldowns)
	}
	if _, err := p.Get(1, "other", t0.Add(time.Second)); err != nil {
		t.Errorf("Get after Readmit: %v", err)
	}
}

func TestBoundCallsStillReachAnEjectedKey(t *testing.T) {
	p := newPool(t, 1, 1, 2)
	p.Report(1, "m", serverError, t0)
	p.Report(2, "m", ok, t0.Add(time.Millisecond))
	if c := p.Report(1, "m", serverError, t0.Add(2*time.Millisecond)); !c.Ejected {
		t.Fatalf("not ejected: %+v", c)
	}
	if _, err := p.Get(1, "m", t0.Add(time.Second)); err != nil {
		t.Errorf("Get of the only key that can serve a resource: %v", err)
	}
}

func TestPerProjectQuotaCoolsSiblingsForThatModelOnly(t *testing.T) {
	p := New(3)
	p.Load([]Key{
		{ID: 1, Secret: "secret-1", Project: "alpha"},
		{ID: 2, Secret: "secret-2", Project: "alpha"},
		{ID: 3, Secret: "secret-3", Project: "alpha", Disabled: true},
		{ID: 4, Secret: "secret-4", Project: "beta"},
		{ID: 5, Secret: "secret-5"},
	}, nil)
	until := t0.Add(10 * time.Hour)
	c := p.Report(1, "flash", Outcome{Kind: Quota, Until: until, PerProject: true}, t0)
	if !c.CooldownUntil.Equal(until) || len(c.Siblings) != 1 || c.Siblings[0] != 2 || !c.SiblingsUntil.Equal(until) {
		t.Fatalf("Change = %+v, want key 1 and its enabled sibling 2 cooled until %v", c, until)
	}
	got := pick(t, p, "flash", t0.Add(time.Hour), nil, 10)
	if got[1]+got[2] != 0 || got[4]+got[5] != 10 {
		t.Errorf("picks for flash: %v, want only keys 4 and 5", got)
	}
	if got := pick(t, p, "pro", t0.Add(time.Hour), nil, 30); got[1] == 0 || got[2] == 0 {
		t.Errorf("picks for pro: %v, want the alpha keys too", got)
	}
	// A per-key quota, or a key without a label, cools only itself.
	c = p.Report(4, "pro", Outcome{Kind: Quota, Until: until}, t0)
	if len(c.Siblings) != 0 {
		t.Errorf("per-key quota cooled siblings: %+v", c)
	}
	c = p.Report(5, "pro", Outcome{Kind: Quota, Until: until, PerProject: true}, t0)
	if len(c.Siblings) != 0 {
		t.Errorf("unlabelled key cooled others: %+v", c)
	}
}

func TestProjectIsLearnedOnlyWhenUnlabelled(t *testing.T) {
	p := New(3)
	p.Load([]Key{{ID: 1, Secret: "secret-1"}, {ID: 2, Secret: "secret-2", Project: "mine"}}, nil)
	if c := p.Report(1, "m", Outcome{Kind: ClientError, Project: "123456"}, t0); c.Project != "123456" || c.Changed {
		t.Errorf("Change = %+v, want project learned", c)
	}
	if c := p.Report(1, "m", Outcome{Kind: ClientError, Project: "999"}, t0); c.Project != "" {
		t.Errorf("a learned label was replaced: %+v", c)
	}
	if c := p.Report(2, "m", Outcome{Kind: ClientError, Project: "999"}, t0); c.Project != "" {
		t.Errorf("an operator's label was replaced: %+v", c)
	}
	if ks := p.Keys(t0); ks[0].Project != "123456" || ks[1].Project != "mine" {
		t.Errorf("Keys = %+v", ks)
	}
	p.SetProject(2, "")
	if c := p.Report(2, "m", Outcome{Kind: ClientError, Project: "999"}, t0); c.Project != "999" {
		t.Errorf("cleared label not learned: %+v", c)
	}
}

func TestAdmitUnknownModel(t *testing.T) {
	p := newPool(t, 3, 1)
	if a, _ := p.Admit("never-seen", t0); !a {
		t.Error("a model without history was refused")
	}
	if _, _, err := p.Next("m", t0, []int64{1}); !errors.Is(err, ErrNoKeys) {
		t.Errorf("Next = %v", err)
	}
}

func TestAnOutageLeavesNoFailureBehind(t *testing.T) {
	p := newPool(t, 5, 1, 2, 3)
	now := t0
	p.Report(1, "m", ok, now)
	opened := false
	for i := 0; i < 12 && !opened; i++ {
		now = now.Add(10 * time.Millisecond)
		id, _, _ := p.Next("m", now, nil)
		opened = p.Report(id, "m", serverError, now).Opened
	}
	if !opened {
		t.Fatal("the circuit did not open")
	}
	for _, ks := range p.Keys(now) {
		if ks.Failures != 0 {
			t.Errorf("key %d keeps %d failures of the outage", ks.ID, ks.Failures)
		}
	}
	// Recovery, then key 1 fails alone: it takes the full max_failures to eject it.
	now = now.Add(time.Second)
	p.Report(2, "m", ok, now)
	for n := 1; n <= 5; n++ {
		now = now.Add(time.Millisecond)
		p.Report(3, "m", ok, now)
		c := p.Report(1, "m", serverError, now)
		if c.Ejected != (n == 5) {
			t.Fatalf("failure %d after the outage: %+v", n, c)
		}
	}
}
