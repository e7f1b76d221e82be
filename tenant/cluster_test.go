package tenant

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLedger is an in-memory ledger with the PostgreSQL ledger's rules, for the tests of the
// limiter's side: rpm and tpm slices counted until 60 s after their end, rpd and budget
// counters per period, slots per instance (no heartbeat expiry). down makes every call fail.
type memLedger struct {
	mu       sync.Mutex
	now      func() time.Time
	grants   map[int64]*memGrant
	nextID   int64
	counters map[[3]int64]int64 // access key, kind (0 rpd, 1 tokens), period -> used
	slots    map[string]map[int64]int64
	down     atomic.Bool
	leases   atomic.Int64
	settles  atomic.Int64
}

type memGrant struct {
	key         int64
	tokens      bool
	at, until   time.Time
	units, used int64
}

func newMemLedger(now func() time.Time) *memLedger {
	return &memLedger{now: now, grants: map[int64]*memGrant{}, counters: map[[3]int64]int64{},
		slots: map[string]map[int64]int64{}}
}

var errDown = errors.New("ledger down")

func (m *memLedger) window(key int64, tokens bool, now time.Time) int64 {
	var n int64
	for _, g := range m.grants {
		if g.key == key && g.tokens == tokens && g.until.Add(time.Minute).After(now) {
			n += g.units
		}
	}
	return n
}

func (m *memLedger) grant(key int64, tokens bool, want, limit int64, life time.Duration, now time.Time) (int64, int64, int64) {
	used := m.window(key, tokens, now)
	n := min(want, max(limit-used, 0))
	if n == 0 {
		return 0, 0, used
	}
	m.nextID++
	m.grants[m.nextID] = &memGrant{key: key, tokens: tokens, at: now, until: now.Add(life), units: n}
	return n, m.nextID, used + n
}

func (m *memLedger) counter(key, kind, period, want, limit int64) (int64, int64) {
	k := [3]int64{key, kind, period}
	n := min(want, max(limit-m.counters[k], 0))
	m.counters[k] += n
	return n, m.counters[k]
}

func (m *memLedger) settle(instance string, key, rpmDone, rpmUsed, rpdReturn, day, tpmDone, tpmUsed, tpmCharge, budgetReturn, budgetCharge, period int64) {
	if g := m.grants[rpmDone]; g != nil {
		g.units = rpmUsed
	}
	if g := m.grants[tpmDone]; g != nil {
		g.units = tpmUsed
	}
	if tpmCharge > 0 {
		m.nextID++
		now := m.now()
		m.grants[m.nextID] = &memGrant{key: key, tokens: true, at: now, until: now, units: tpmCharge}
	}
	m.counters[[3]int64{key, 0, day}] -= rpdReturn
	m.counters[[3]int64{key, 1, period}] += budgetCharge - budgetReturn
}

func (m *memLedger) Lease(_ context.Context, r LeaseRequest) (LeaseGrant, error) {
	if m.down.Load() {
		return LeaseGrant{}, errDown
	}
	m.leases.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.settle(r.Instance, r.AccessKeyID, r.RPMDone, r.RPMDoneUsed, r.RPDReturn, r.RPDReturnDay, r.TPMDone, r.TPMDoneUsed,
		r.TPMCharge, r.BudgetReturn, r.BudgetCharge, r.BudgetDonePeriod)
	var g LeaseGrant
	if r.RPMWant > 0 {
		g.RPM, g.RPMLease, g.RPMUsed = m.grant(r.AccessKeyID, false, r.RPMWant, r.RPM, r.Lifetime, now)
	}
	if r.TPMWant > 0 {
		g.TPM, g.TPMLease, g.TPMUsed = m.grant(r.AccessKeyID, true, r.TPMWant, r.TPM, r.Lifetime, now)
	}
	if r.RPDWant > 0 {
		g.RPD, g.RPDUsed = m.counter(r.AccessKeyID, 0, r.Day, r.RPDWant, r.RPD)
	}
	if r.BudgetWant > 0 {
		g.Budget, g.BudgetUsed = m.counter(r.AccessKeyID, 1, r.Period, r.BudgetWant, r.Budget)
	}
	if r.Concurrency > 0 {
		var others int64
		for inst, per := range m.slots {
			if inst != r.Instance {
				others += per[r.AccessKeyID]
			}
		}
		total := max(min(r.SlotsHeld+r.SlotsWant, r.Concurrency-others), r.SlotsHeld)
		if m.slots[r.Instance] == nil {
			m.slots[r.Instance] = map[int64]int64{}
		}
		m.slots[r.Instance][r.AccessKeyID] = total
		g.Slots, g.SlotsUsed = total-r.SlotsHeld, others+total
	}
	return g, nil
}

func (m *memLedger) Settle(_ context.Context, instance string, _ time.Duration, items []Settlement) error {
	if m.down.Load() {
		return errDown
	}
	m.settles.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, it := range items {
		m.settle(instance, it.AccessKeyID, it.RPMLease, it.RPMUsed, it.RPDReturn, it.Day, it.TPMLease, it.TPMUsed,
			it.TPMCharge, it.BudgetReturn, it.BudgetCharge, it.Period)
		if it.SetSlots {
			if m.slots[instance] == nil {
				m.slots[instance] = map[int64]int64{}
			}
			m.slots[instance][it.AccessKeyID] = it.Slots
		}
	}
	return nil
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// sharedLimiter is a limiter in cluster mode on m, in UTC, with the policies.
func sharedLimiter(m *memLedger, now func() time.Time, policies map[int64]*Policy) *Limiter {
	l := NewLimiter()
	l.SetLocation(time.UTC)
	l.SetCluster(Cluster{Ledger: m, Clock: now})
	l.Set(policies)
	return l
}

// TestClusterSlicesGrow: under steady load the slices double while they are used up quickly,
// up to Share of the limit, so that calls to the ledger become rare; units left in a slice
// when its lifetime ends go back, and the next slice is the size of what was used.
func TestClusterSlicesGrow(t *testing.T) {
	c := &clock{now: utc("2026-05-01T10:00:00Z")}
	m := newMemLedger(c.Now)
	l := sharedLimiter(m, c.Now, map[int64]*Policy{1: {RPM: 10000}})
	for range 1000 {
		tk, r := l.Admit(1, c.Now())
		if r != nil {
			t.Fatal(*r)
		}
		tk.Done(0, c.Now())
	}
	// 1 + 2 + 4 + ... + 512 covers 1023: ten calls; never one per request.
	if n := m.leases.Load(); n != 10 {
		t.Errorf("%d calls to the ledger for 1000 requests, want 10 (slices 1, 2, 4, ... 512)", n)
	}
	// Once the largest slice (10% of 10000) is reached it stays there.
	for range 5000 {
		tk, _ := l.Admit(1, c.Now())
		tk.Done(0, c.Now())
	}
	if n := m.leases.Load(); n != 10+5 {
		t.Errorf("%d calls for 6000 requests, want 15 (the 23 units left, then 5 slices of 1000)", n)
	}
	// The slice's lifetime ends with 24 units unused: they go back, and the ledger counts the
	// 6000 requests only.
	c.Advance(DefaultLeaseLifetime)
	if err := l.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	used := m.window(1, false, c.Now())
	m.mu.Unlock()
	if used != 6000 {
		t.Errorf("the ledger counts %d rpm units, want the 6000 used", used)
	}
}

// TestClusterUnavailable: with the ledger down a request is admitted from the slices held,
// and refused as Unavailable once they do not cover it, naming the limits that need the
// ledger, until failBackoff has passed.
func TestClusterUnavailable(t *testing.T) {
	c := &clock{now: utc("2026-05-01T10:00:00Z")}
	m := newMemLedger(c.Now)
	l := sharedLimiter(m, c.Now, map[int64]*Policy{1: {RPM: 100, Concurrency: 10}})
	for range 3 { // slices of 1 then 2
		tk, r := l.Admit(1, c.Now())
		if r != nil {
			t.Fatal(*r)
		}
		tk.Done(0, c.Now())
	}
	m.down.Store(true)
	tk, r := l.Admit(1, c.Now()) // the rpm slice is empty, the slot is free
	if r == nil || !r.Unavailable || len(r.Violations) != 1 || r.Violations[0].Limit != LimitRPM {
		t.Fatalf("refusal %+v, want Unavailable for rpm", r)
	}
	if !r.RetryAt.Equal(c.Now().Add(failBackoff)) {
		t.Errorf("RetryAt %v, want %v", r.RetryAt, c.Now().Add(failBackoff))
	}
	tk.Done(0, c.Now())
	calls := m.leases.Load()
	if _, r := l.Admit(1, c.Now()); r == nil || !r.Unavailable {
		t.Fatalf("refusal %+v, want Unavailable", r)
	}
	if st := l.ClusterStats(); st.LeaseErrors != 1 || st.Unavailable != 2 || m.leases.Load() != calls {
		t.Errorf("stats %+v: want one failed call (the second refusal asks nobody) and two refusals", st)
	}
	m.down.Store(false)
	c.Advance(failBackoff)
	if _, r := l.Admit(1, c.Now()); r != nil {
		t.Fatalf("refused once the ledger is back: %+v", *r)
	}
}

// TestClusterRetiredGiveBack: the slices of a key that loses its limits go back at the next
// Sync, and so do the slots of its requests in flight once they end.
func TestClusterRetiredGiveBack(t *testing.T) {
	c := &clock{now: utc("2026-05-01T10:00:00Z")}
	m := newMemLedger(c.Now)
	l := sharedLimiter(m, c.Now, map[int64]*Policy{1: {RPD: 100, Concurrency: 5}})
	var held []Ticket
	for range 3 {
		tk, r := l.Admit(1, c.Now())
		if r != nil {
			t.Fatal(*r)
		}
		held = append(held, tk)
	}
	l.Set(map[int64]*Policy{})
	if err := l.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	day := m.counters[[3]int64{1, 0, utc("2026-05-01T00:00:00Z").UnixMilli()}]
	slots := m.slots[l.Instance()][1]
	m.mu.Unlock()
	if day != 3 || slots != 0 {
		t.Errorf("after the key lost its limits the ledger counts %d units of the day and %d slots, want 3 and 0", day, slots)
	}
	for _, tk := range held {
		tk.Done(0, c.Now())
	}
	l.Sync(context.Background())
	l.mu.Lock()
	retired := len(l.retired)
	l.mu.Unlock()
	if retired != 0 {
		t.Errorf("%d retired counters kept after everything went back", retired)
	}
}

// BenchmarkAdmitShared is BenchmarkAdmit in cluster mode: every limit set, the request
// served from the slices held (the ledger is asked once per slice: rarely).
func BenchmarkAdmitShared(b *testing.B) {
	now := utc("2026-05-01T10:00:00Z")
	m := newMemLedger(func() time.Time { return now })
	l := NewLimiter()
	l.SetLocation(location(b, "Europe/Berlin"))
	l.SetCluster(Cluster{Ledger: m, Share: 1, Clock: func() time.Time { return now }})
	l.Set(map[int64]*Policy{1: everyLimit()})
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(100 * time.Microsecond) // 600k a minute, within rpm
		tk, r := l.Admit(1, now)
		if r != nil {
			b.Fatalf("refused: %+v", *r)
		}
		tk.Done(100, now)
	}
	b.ReportMetric(float64(m.leases.Load())/float64(b.N), "leases/op")
}
