package tenant

// Cluster mode: several gateway instances share one set of limits per access key. Each
// limiter keeps counting every limit exactly in memory, as alone, and besides admits a request
// only from slices of the cluster's limits it leased from a shared ledger (PostgreSQL):
//
//   - rpm: a slice of n units granted at t may be used until t + Lifetime (measured from the
//     moment the call was sent, so neither clock skew nor the call's latency lengthens it). The
//     ledger counts the slice against the limit from t until Lifetime + 60 s after t (minus
//     the units given back unused), and grants a slice only while the units it counts plus
//     the new ones stay within the limit. So in any 60 s at most rpm units are used.
//   - rpd: the ledger counts the units granted for the day (in the gateway's timezone) and
//     grants only within the limit; unused units go back after Lifetime.
//   - tpm and token_budget: slices of tokens, granted as those of rpm and rpd. A request is
//     admitted while the slice it falls in has tokens left; its answer's tokens are taken
//     from the slice when it ends. Answers that were in flight when a slice ran out take it
//     below zero: that excess (and tokens of answers that end after their slice's lifetime)
//     is charged to the ledger by the next call, within a fraction of a second. So a request
//     is admitted only while the tokens charged or leased to the cluster are below the limit,
//     and answers in flight may take it past, as on one instance.
//   - concurrency: the ledger counts the slots each instance holds; an admitted request
//     occupies one of this instance's slots until it ends, and free slots go back once idle
//     for a Lifetime. The slots of an instance that stops renewing its heartbeat (a crash)
//     return to the cluster SlotTTL later.
//
// Only an empty slice costs a call to the ledger, made by one request while the others needing
// it wait; slices grow while they are used up quickly (doubling, up to Share of the limit) and
// shrink to what was used when units go back. When the ledger cannot be reached, a request
// the slices held do not cover is refused (Refusal.Unavailable): never more than a limit is
// admitted.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync/atomic"
	"time"
)

// Ledger is the cluster's record of the slices of the access keys' limits, shared by every
// instance (store.Leaser, which PostgreSQL implements, converted field for field). Lease is
// called on the request path when a slice is empty; Settle every fraction of a second, by
// Sync.
type Ledger interface {
	// Lease settles the slices the request replaces, then grants slices of one access
	// key's limits, atomically.
	Lease(ctx context.Context, r LeaseRequest) (LeaseGrant, error)
	// Settle applies what an instance gives back and charges for many access keys and renews
	// its heartbeat.
	Settle(ctx context.Context, instance string, slotTTL time.Duration, items []Settlement) error
}

// LeaseRequest asks for slices of one access key's limits, after settling the slices it
// replaces. A zero Want asks for none of that limit.
type LeaseRequest struct {
	// Instance names the instance asking: its slots are its own, kept while its heartbeat
	// lives.
	Instance string
	// AccessKeyID is the access key whose limits these are.
	AccessKeyID int64
	// Seq grows with every call of the instance that writes its slots: a slot count of a
	// lower Seq than the one stored is ignored (a late statement never undoes a newer one).
	Seq int64
	// Lifetime is how long rpm and tpm units may be used after the call was sent: they
	// count against the limit from their grant until Lifetime + 60 s after it.
	Lifetime time.Duration
	// SlotTTL is how long the instance's slots outlive its last heartbeat.
	SlotTTL time.Duration

	// RPMDone finishes an earlier rpm grant (0: none): RPMDoneUsed of its units were used,
	// the rest go back.
	RPMDone, RPMDoneUsed int64
	// RPDReturn gives back unused rpd units of the day RPDReturnDay.
	RPDReturn, RPDReturnDay int64
	// TPMDone finishes an earlier tpm grant (0: none): TPMDoneUsed tokens were charged to it
	// (more than granted when answers in flight went past it).
	TPMDone, TPMDoneUsed int64
	// TPMCharge is tokens charged outside any tpm grant: they count from now.
	TPMCharge int64
	// BudgetReturn gives back unused tokens, and BudgetCharge charges tokens used beyond the
	// grants, of the budget's period starting at BudgetDonePeriod.
	BudgetReturn, BudgetCharge, BudgetDonePeriod int64

	// RPM is the requests-per-minute limit; RPMWant the units wanted.
	RPM, RPMWant int64
	// RPD is the requests-per-day limit; RPDWant the units wanted for the day starting at Day
	// (unix milliseconds).
	RPD, RPDWant, Day int64
	// TPM is the tokens-per-minute limit; TPMWant the tokens wanted.
	TPM, TPMWant int64
	// Budget is the token budget; BudgetWant the tokens wanted of its period starting at
	// Period (unix milliseconds).
	Budget, BudgetWant, Period int64
	// Concurrency is the limit of requests in flight; SlotsHeld the slots the instance holds
	// now and SlotsWant how many more it wants.
	Concurrency, SlotsHeld, SlotsWant int64
}

// LeaseGrant is what a Lease granted.
type LeaseGrant struct {
	// RPM is the rpm units granted, RPMLease the grant's id (0 when none), RPMUsed the units
	// counting against the limit now (this grant's included) and RPMRetry how long until the
	// oldest of them stops counting.
	RPM, RPMLease, RPMUsed int64
	RPMRetry               time.Duration
	// RPD is the rpd units granted and RPDUsed the day's units counted with them.
	RPD, RPDUsed int64
	// TPM is the tokens of the minute granted, TPMLease the grant's id, TPMUsed the tokens
	// counting now (this grant's included) and TPMRetry how long until the oldest stop.
	TPM, TPMLease, TPMUsed int64
	TPMRetry               time.Duration
	// Budget is the tokens of the budget's period granted and BudgetUsed the period's tokens
	// counted with them (charged, or granted and not given back).
	Budget, BudgetUsed int64
	// Slots is the slots granted and SlotsUsed the slots the cluster holds (this instance's
	// included).
	Slots, SlotsUsed int64
}

// Settlement is what an instance settles for one access key.
type Settlement struct {
	// AccessKeyID is the access key.
	AccessKeyID int64
	// Seq orders the slot counts, as LeaseRequest.Seq.
	Seq int64
	// RPMLease finishes an rpm grant (0: none): RPMUsed of its units were used.
	RPMLease, RPMUsed int64
	// RPDReturn gives back unused rpd units of the day Day.
	RPDReturn, Day int64
	// TPMLease finishes a tpm grant (0: none): TPMUsed tokens were charged to it.
	TPMLease, TPMUsed int64
	// TPMCharge is tokens charged outside any tpm grant: they count from now.
	TPMCharge int64
	// BudgetReturn gives back unused tokens, and BudgetCharge charges tokens used beyond the
	// grants, of the budget's period starting at Period.
	BudgetReturn, BudgetCharge, Period int64
	// SetSlots writes Slots as the number of slots the instance holds.
	SetSlots bool
	Slots    int64
}

// Cluster configures the cluster mode of a Limiter. Zero durations and shares take their
// defaults.
type Cluster struct {
	// Ledger is the shared record of the slices.
	Ledger Ledger
	// Instance names this instance in the ledger; it must differ between instances (and
	// between two runs of one). Empty: the host name, the process id and random bytes.
	Instance string
	// Lifetime is how long a leased slice may be used (default 2 s). It bounds how long
	// units sit unused in a slice (and so away from the other instances) and is the margin
	// by which an rpm unit or a tpm token counts longer than on one instance.
	Lifetime time.Duration
	// Share is the largest slice as a fraction of its limit (default 0.1; at least one unit
	// is always asked). Larger slices mean fewer calls under load and more units held away
	// from the other instances.
	Share float64
	// SlotTTL is how long the concurrency slots of an instance outlive its last heartbeat
	// (default 30 s): the slots of an instance that died return to the cluster then.
	SlotTTL time.Duration
	// Timeout bounds one call to the ledger (default 2 s).
	Timeout time.Duration
	// Clock is the time the slices' lifetimes are measured with (default time.Now, whose
	// monotonic reading makes them immune to changes of the wall clock).
	Clock func() time.Time
	// Warn, when set, is told about a failed call to the ledger (at most one every 10 s).
	Warn func(msg string, err error)
}

// Defaults of Cluster.
const (
	DefaultLeaseLifetime = 2 * time.Second
	DefaultLeaseShare    = 0.1
	DefaultSlotTTL       = 30 * time.Second
	DefaultLedgerTimeout = 2 * time.Second
)

const (
	// failBackoff is how long requests that need the ledger are refused after a call to it
	// failed, before it is tried again.
	failBackoff = time.Second
	// maxFetches bounds the ledger calls one Admit makes or waits for (other requests may
	// take the units a call brought); it is reached only under heavy contention.
	maxFetches = 16
	// warnEvery spaces the warnings of failed ledger calls.
	warnEvery = 10 * time.Second
)

// ClusterStats counts the limiter's calls to the ledger.
type ClusterStats struct {
	// Leases is the calls to Lease that succeeded, LeaseErrors those that failed.
	Leases, LeaseErrors int64
	// Settles is the calls to Settle that succeeded, SettleErrors those that failed.
	Settles, SettleErrors int64
	// Unavailable is the requests refused because the ledger could not be reached.
	Unavailable int64
}

// cluster is a limiter's cluster mode: its configuration, with defaults, and counters.
type cluster struct {
	Cluster
	seq    atomic.Int64 // the last Seq given to a call that writes slots
	warned atomic.Int64 // Unix nanoseconds of the last warning

	leases, leaseErrors, settles, settleErrors, unavailable atomic.Int64
}

// SetCluster puts the limiter in cluster mode: every limit then holds for all the instances
// sharing c.Ledger. Call it once, before Set; Sync must then be called every SyncEvery (it
// gives back unused slices and charges tokens), and Release when the limiter stops.
func (l *Limiter) SetCluster(c Cluster) {
	if c.Lifetime <= 0 {
		c.Lifetime = DefaultLeaseLifetime
	}
	if c.Share <= 0 || c.Share > 1 {
		c.Share = DefaultLeaseShare
	}
	if c.SlotTTL <= 0 {
		c.SlotTTL = DefaultSlotTTL
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultLedgerTimeout
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Instance == "" {
		c.Instance = newInstanceName()
	}
	cl := &cluster{Cluster: c}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cl.Store(cl)
	if m := l.states.Load(); m != nil {
		for _, s := range *m {
			s.mu.Lock()
			if s.cl == nil {
				s.cl = newShared(cl)
			}
			s.mu.Unlock()
		}
	}
}

// newInstanceName is a name no other instance has: host, process and random bytes.
func newInstanceName() string {
	host, _ := os.Hostname()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return host + "/" + itoa(int64(os.Getpid())) + "/" + hex.EncodeToString(b[:])
}

func itoa(n int64) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// Instance is the name of this instance in the ledger ("" when not in cluster mode).
func (l *Limiter) Instance() string {
	if c := l.cl.Load(); c != nil {
		return c.Instance
	}
	return ""
}

// SyncEvery is how often Sync should run in cluster mode: a quarter of the lease lifetime (0
// when not in cluster mode).
func (l *Limiter) SyncEvery() time.Duration {
	c := l.cl.Load()
	if c == nil {
		return 0
	}
	return c.Lifetime / 4
}

// ClusterStats returns the counters of the calls to the ledger (zero when not in cluster mode).
func (l *Limiter) ClusterStats() ClusterStats {
	c := l.cl.Load()
	if c == nil {
		return ClusterStats{}
	}
	return ClusterStats{Leases: c.leases.Load(), LeaseErrors: c.leaseErrors.Load(), Settles: c.settles.Load(),
		SettleErrors: c.settleErrors.Load(), Unavailable: c.unavailable.Load()}
}

// warn reports a failed call, at most once every warnEvery.
func (c *cluster) warn(msg string, err error) {
	if c.Warn == nil {
		return
	}
	now := time.Now().UnixNano()
	last := c.warned.Load()
	if now-last < int64(warnEvery) || !c.warned.CompareAndSwap(last, now) {
		return
	}
	c.Warn(msg, err)
}

// slice is a leased slice of one limit: request units (rpm, rpd) or tokens (tpm, budget).
type slice struct {
	live   bool      // granted and not finished
	id     int64     // rpm, tpm: the grant's id in the ledger
	left   int64     // units not used yet (tokens: below zero when answers went past)
	used   int64     // units used (tokens charged)
	at     time.Time // when the call that brought it was sent
	until  time.Time // usable until then (rpd, budget: then what is left goes back)
	period int64     // rpd, budget: the start of the day or period the units count in
	want   int64     // the size of the next slice asked (0: the smallest)
	seen   int64     // the cluster's usage counted with the last grant

	denied       time.Time // the ledger had no unit: refuse without asking until then
	deniedPeriod int64     // rpd, budget: the period of that answer
	retry        time.Time // rpm, tpm: when the ledger expects units to free up
}

// usable tells whether the slice covers a request at wall in period.
func (sl *slice) usable(wall time.Time, period int64) bool {
	return sl.live && sl.left > 0 && wall.Before(sl.until) && sl.period == period
}

// refused tells whether the ledger's last answer, no units in period, still stands at wall.
func (sl *slice) refused(wall time.Time, period int64) bool {
	return wall.Before(sl.denied) && sl.deniedPeriod == period
}

// check is checkShared for the leased limit limit (of value) served by sl: nothing when the
// slice covers a request at wall in period, a violation retrying at retryAt when the ledger's
// last answer still refuses, else bit in need (a new slice must be asked).
func (sl *slice) check(limit string, value int64, wall time.Time, period int64, retryAt time.Time, bit uint8,
	vs *[5]Violation, n int, need uint8) (int, uint8) {
	switch {
	case sl.usable(wall, period):
	case sl.refused(wall, period):
		vs[n] = Violation{limit, value, max(sl.seen, value), retryAt}
		n++
	default:
		need |= bit
	}
	return n, need
}

// finish ends the slice and sizes the next one: when units were left, what it would have used
// over a whole lifetime at the rate it was used; doubled when it was used up within half its
// lifetime; unchanged otherwise.
func (sl *slice) finish(now time.Time, lifetime time.Duration, least, largest int64) {
	age := now.Sub(sl.at)
	switch {
	case sl.left > 0:
		sl.want = int64(float64(sl.used) * float64(lifetime) / float64(max(age, lifetime/8)))
	case age < lifetime/2:
		sl.want *= 2
	}
	sl.want = min(max(sl.want, least), largest)
	sl.live, sl.id, sl.left, sl.used = false, 0, 0, 0
}

// sizes are the smallest and largest slices of limit: of requests, 1 and Share of it (at
// least 1); of tokens, an eighth of that and that.
func (c *cluster) sizes(limit int64, tokens bool) (least, largest int64) {
	largest = max(1, int64(float64(limit)*c.Share))
	if tokens {
		return max(1, largest/8), largest
	}
	return 1, largest
}

// Bits of what a request needs from the ledger.
const (
	needRPM uint8 = 1 << iota
	needRPD
	needTPM
	needBudget
	needSlots
)

// shared is what one access key's counters hold of the cluster's limits (guarded by the
// state's mutex).
type shared struct {
	cfg *cluster

	rpm, rpd, tpm, budget slice
	// tpmExtra is tokens charged when no tpm slice was in its lifetime; budgetExtra tokens
	// charged to the period starting at budgetExtraPeriod when no budget slice of it was
	// held. The next call charges them.
	tpmExtra, budgetExtra int64
	budgetExtraPeriod     int64

	slots      int64     // concurrency slots held here (the requests in flight use some)
	slotsValid time.Time // they may be used until then: the last heartbeat sent + SlotTTL
	slotWant   int64     // the slots asked at a time
	slotAt     time.Time // when slots were last asked
	slotUsed   time.Time // when a slot was last taken
	slotDenied time.Time // the ledger had no slot: refuse without asking until then
	slotsSeen  int64     // the cluster's slots at the last grant
	slotsDirty bool      // the count written last may have failed: write it again

	failed  time.Time     // a ledger call failed: refuse what needs the ledger until then
	busy    bool          // a Lease call is under way; the others wait for done
	done    chan struct{} // closed when that call ends
	waiters int64         // requests waiting for it
	returns []Settlement  // what failed to settle and may be sent again, for the next Sync
	retired bool          // the key lost its limits: everything goes back
}

func newShared(c *cluster) *shared {
	return &shared{cfg: c, slotWant: 1}
}

// admitShared is Admit in cluster mode, s.mu held (it unlocks it).
func (s *state) admitShared(now time.Time, ns int64, loc *time.Location) (Ticket, *Refusal) {
	c := s.cl
	for fetches := 0; ; fetches++ {
		s.roll(now, ns, loc)
		wall := c.cfg.Clock()
		var vs [5]Violation
		n := s.check(now, ns, loc, &vs)
		n, need := s.checkShared(wall, loc, &vs, n)
		if n > 0 {
			s.mu.Unlock()
			sortViolations(vs[:n])
			return Ticket{}, refusal(vs[:n], false)
		}
		if need == 0 {
			c.consume(s, wall)
			t := s.take(ns)
			s.mu.Unlock()
			return t, nil
		}
		if wall.Before(c.failed) || fetches == maxFetches {
			r := s.unavailable(need, later(c.failed, wall.Add(failBackoff)).In(loc))
			s.mu.Unlock()
			c.cfg.unavailable.Add(1)
			return Ticket{}, r
		}
		s.fetch(need, wall)
	}
}

// checkShared adds to vs[:n] the limits of the cluster a request at wall would exceed (those
// not already there) and says which slices it needs from the ledger.
func (s *state) checkShared(wall time.Time, loc *time.Location, vs *[5]Violation, n int) (int, uint8) {
	c := s.cl
	var need uint8
	if s.rpm > 0 && !violated(vs, n, LimitRPM) {
		n, need = c.rpm.check(LimitRPM, s.rpm, wall, 0, later(c.rpm.retry, wall.Add(time.Second)).In(loc), needRPM, vs, n, need)
	}
	if s.rpd > 0 && !violated(vs, n, LimitRPD) {
		n, need = c.rpd.check(LimitRPD, s.rpd, wall, s.dayStart, s.dayEnd, needRPD, vs, n, need)
	}
	if s.tpm > 0 && !violated(vs, n, LimitTPM) {
		n, need = c.tpm.check(LimitTPM, s.tpm, wall, 0, later(c.tpm.retry, wall.Add(time.Second)).In(loc), needTPM, vs, n, need)
	}
	if s.budget > 0 && !violated(vs, n, LimitBudget) {
		n, need = c.budget.check(LimitBudget, s.budget, wall, s.periodStart, s.periodEnd, needBudget, vs, n, need)
	}
	if s.conc > 0 && !violated(vs, n, LimitConcurrency) {
		switch {
		case s.inflight < c.slots && wall.Before(c.slotsValid):
		case wall.Before(c.slotDenied):
			vs[n] = Violation{LimitConcurrency, s.conc, max(c.slotsSeen, s.conc), wall.Add(concurrencyRetry).In(loc)}
			n++
		default:
			need |= needSlots
		}
	}
	return n, need
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// earlier is the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// violated tells whether vs[:n] names limit.
func violated(vs *[5]Violation, n int, limit string) bool {
	for i := range n {
		if vs[i].Limit == limit {
			return true
		}
	}
	return false
}

// limitOrder is the order of the limits in a Refusal.
var limitOrder = map[string]int{LimitRPM: 0, LimitRPD: 1, LimitTPM: 2, LimitBudget: 3, LimitConcurrency: 4}

// sortViolations puts violations in the order rpm, rpd, tpm, token_budget, concurrency.
func sortViolations(vs []Violation) {
	for i := 1; i < len(vs); i++ {
		for j := i; j > 0 && limitOrder[vs[j].Limit] < limitOrder[vs[j-1].Limit]; j-- {
			vs[j], vs[j-1] = vs[j-1], vs[j]
		}
	}
}

// unavailable is the refusal of a request that needed the ledger (need) when it could not be
// reached.
func (s *state) unavailable(need uint8, retry time.Time) *Refusal {
	var vs []Violation
	for _, l := range [...]struct {
		bit   uint8
		name  string
		value int64
	}{{needRPM, LimitRPM, s.rpm}, {needRPD, LimitRPD, s.rpd}, {needTPM, LimitTPM, s.tpm},
		{needBudget, LimitBudget, s.budget}, {needSlots, LimitConcurrency, s.conc}} {
		if need&l.bit != 0 {
			vs = append(vs, Violation{Limit: l.name, Value: l.value, RetryAt: retry})
		}
	}
	return refusal(vs, true)
}

// consume takes a request's units from the slices.
func (c *shared) consume(s *state, wall time.Time) {
	if s.rpm > 0 {
		c.rpm.left--
		c.rpm.used++
	}
	if s.rpd > 0 {
		c.rpd.left--
		c.rpd.used++
	}
	if s.conc > 0 {
		c.slotUsed = wall
	}
}

// charge takes tokens an answer used (Done) from the token slices; what no slice covers
// waits for the next call.
func (c *shared) charge(s *state, tokens int64) {
	if s.tpm <= 0 && s.budget <= 0 {
		return
	}
	wall := c.cfg.Clock()
	if s.tpm > 0 {
		if c.tpm.live && wall.Before(c.tpm.until) {
			c.tpm.left -= tokens
			c.tpm.used += tokens
		} else {
			c.tpmExtra += tokens
		}
	}
	if s.budget > 0 {
		switch {
		case c.budget.live && c.budget.period == s.periodStart:
			c.budget.left -= tokens
			c.budget.used += tokens
		default:
			if c.budgetExtra > 0 && c.budgetExtraPeriod != s.periodStart {
				c.returns = append(c.returns, Settlement{AccessKeyID: s.id, BudgetCharge: c.budgetExtra, Period: c.budgetExtraPeriod})
				c.budgetExtra = 0
			}
			c.budgetExtra += tokens
			c.budgetExtraPeriod = s.periodStart
		}
	}
}

// fetch asks the ledger for what need lacks, or waits for the call another request makes; s.mu
// is held, released meanwhile and held again at the end.
func (s *state) fetch(need uint8, wall time.Time) {
	c := s.cl
	if c.busy {
		c.waiters++
		done := c.done
		s.mu.Unlock()
		<-done
		s.mu.Lock()
		return
	}
	req := s.request(need, wall)
	done := make(chan struct{})
	c.busy, c.done = true, done
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	g, err := c.cfg.Ledger.Lease(ctx, req)
	cancel()
	s.mu.Lock()
	s.granted(req, g, err, wall)
	c.busy, c.waiters = false, 0
	close(done)
}

// request builds the call that brings what need lacks, and renews the other slices that are
// spent or over (unless the ledger just had none); the slices it replaces are settled with it.
func (s *state) request(need uint8, wall time.Time) LeaseRequest {
	c := s.cl
	cfg := c.cfg
	r := LeaseRequest{Instance: cfg.Instance, AccessKeyID: s.id, Lifetime: cfg.Lifetime, SlotTTL: cfg.SlotTTL}
	crowd := c.waiters + 1
	// A slice that is spent, or in the second half of its lifetime, is renewed with the
	// needed ones (unless the ledger just had none): their lifetimes then end together, and
	// one call renews them all.
	soon := wall.Add(cfg.Lifetime / 2)
	renew := func(sl *slice, bit uint8, period int64) bool {
		return need&bit != 0 || !sl.usable(soon, period) && !sl.refused(wall, period)
	}
	if s.rpm > 0 && renew(&c.rpm, needRPM, 0) {
		if c.rpm.live && c.rpm.left > 0 {
			r.RPMDone, r.RPMDoneUsed = c.rpm.id, c.rpm.used
		}
		least, largest := cfg.sizes(s.rpm, false)
		c.rpm.finish(wall, cfg.Lifetime, least, largest)
		r.RPM, r.RPMWant = s.rpm, min(max(c.rpm.want, crowd), largest)
	}
	if s.rpd > 0 && renew(&c.rpd, needRPD, s.dayStart) {
		if c.rpd.live && c.rpd.left > 0 {
			r.RPDReturn, r.RPDReturnDay = c.rpd.left, c.rpd.period
		}
		least, largest := cfg.sizes(s.rpd, false)
		c.rpd.finish(wall, cfg.Lifetime, least, largest)
		r.RPD, r.RPDWant, r.Day = s.rpd, min(max(c.rpd.want, crowd), largest), s.dayStart
	}
	if s.tpm > 0 && renew(&c.tpm, needTPM, 0) {
		if c.tpm.live && c.tpm.left != 0 {
			r.TPMDone, r.TPMDoneUsed = c.tpm.id, c.tpm.used
		}
		r.TPMCharge, c.tpmExtra = c.tpmExtra, 0
		least, largest := cfg.sizes(s.tpm, true)
		c.tpm.finish(wall, cfg.Lifetime, least, largest)
		r.TPM, r.TPMWant = s.tpm, c.tpm.want
	}
	if s.budget > 0 && renew(&c.budget, needBudget, s.periodStart) {
		if c.budget.live {
			r.BudgetReturn, r.BudgetCharge = max(c.budget.left, 0), max(-c.budget.left, 0)
			r.BudgetDonePeriod = c.budget.period
		}
		if c.budgetExtra > 0 {
			if !c.budget.live || c.budgetExtraPeriod == c.budget.period {
				r.BudgetCharge += c.budgetExtra
				r.BudgetDonePeriod = c.budgetExtraPeriod
			} else {
				c.returns = append(c.returns, Settlement{AccessKeyID: s.id, BudgetCharge: c.budgetExtra, Period: c.budgetExtraPeriod})
			}
			c.budgetExtra = 0
		}
		least, largest := cfg.sizes(s.budget, true)
		c.budget.finish(wall, cfg.Lifetime, least, largest)
		r.Budget, r.BudgetWant, r.Period = s.budget, c.budget.want, s.periodStart
	}
	if s.conc > 0 && need&needSlots != 0 {
		_, largest := cfg.sizes(s.conc, false)
		if wall.Sub(c.slotAt) < cfg.Lifetime/2 {
			c.slotWant *= 2
		}
		c.slotWant = min(max(c.slotWant, 1), largest)
		c.slotAt = wall
		r.Concurrency, r.SlotsHeld = s.conc, c.slots
		r.SlotsWant = min(max(c.slotWant, crowd, s.inflight+1-c.slots), largest)
		r.Seq = cfg.seq.Add(1)
	}
	return r
}

// granted takes in the answer to the call req, sent at sent.
func (s *state) granted(req LeaseRequest, g LeaseGrant, err error, sent time.Time) {
	c := s.cl
	cfg := c.cfg
	if err != nil {
		cfg.leaseErrors.Add(1)
		c.failed = cfg.Clock().Add(failBackoff)
		if req.Concurrency > 0 {
			c.slotsDirty = true // the ledger may count the slots asked: write the count again
		}
		// Whether the call was applied is unknown. What writes a count (the units a grant
		// used) or adds (tokens charged: counted twice at worst, more, never less) is sent
		// again; a return, a subtraction, is not (the units stay counted).
		if it := (Settlement{AccessKeyID: s.id, RPMLease: req.RPMDone, RPMUsed: req.RPMDoneUsed, TPMLease: req.TPMDone,
			TPMUsed: req.TPMDoneUsed, TPMCharge: req.TPMCharge, BudgetCharge: req.BudgetCharge,
			Period: req.BudgetDonePeriod}); it.RPMLease != 0 || it.TPMLease != 0 || it.TPMCharge > 0 || it.BudgetCharge > 0 {
			c.returns = append(c.returns, it)
		}
		cfg.warn("the limits shared with the other instances could not be leased: requests the slices held do not cover are refused until it works again", err)
		return
	}
	cfg.leases.Add(1)
	deny := sent.Add(cfg.Lifetime / 4)
	take := func(sl *slice, units, id, seen int64, period int64, retry time.Duration) {
		sl.live, sl.id, sl.left, sl.used = units > 0, id, units, 0
		sl.at, sl.until, sl.period, sl.seen = sent, sent.Add(cfg.Lifetime), period, seen
		if units == 0 {
			sl.retry = sent.Add(retry)
			sl.denied, sl.deniedPeriod = earlier(deny, later(sl.retry, sent.Add(50*time.Millisecond))), period
			if retry == 0 {
				sl.denied = deny
			}
		}
	}
	if req.RPMWant > 0 {
		take(&c.rpm, g.RPM, g.RPMLease, g.RPMUsed, 0, g.RPMRetry)
	}
	if req.RPDWant > 0 {
		take(&c.rpd, g.RPD, 0, g.RPDUsed, req.Day, 0)
	}
	if req.TPMWant > 0 {
		take(&c.tpm, g.TPM, g.TPMLease, g.TPMUsed, 0, g.TPMRetry)
	}
	if req.BudgetWant > 0 {
		take(&c.budget, g.Budget, 0, g.BudgetUsed, req.Period, 0)
	}
	// Answers that ended while the call was under way charged no slice: the new ones pay.
	if c.tpm.live && c.tpmExtra > 0 {
		c.tpm.left -= c.tpmExtra
		c.tpm.used += c.tpmExtra
		c.tpmExtra = 0
	}
	if c.budget.live && c.budgetExtra > 0 && c.budgetExtraPeriod == c.budget.period {
		c.budget.left -= c.budgetExtra
		c.budget.used += c.budgetExtra
		c.budgetExtra = 0
	}
	if req.Concurrency > 0 {
		c.slots += g.Slots
		c.slotsValid, c.slotsSeen = sent.Add(cfg.SlotTTL), g.SlotsUsed
		if g.Slots == 0 && req.SlotsWant > 0 {
			c.slotDenied = deny
		}
	}
}

// apply settles the slices of the limits p changes, before s takes p's limits.
func (c *shared) apply(s *state, p *Policy) {
	budget, period := int64(0), daily
	if b := p.TokenBudget; b != nil && b.Limit > 0 {
		budget, period = b.Limit, kindOf(b.Period)
	}
	it := Settlement{AccessKeyID: s.id}
	if p.RPM != s.rpm {
		if c.rpm.live && c.rpm.left > 0 {
			it.RPMLease, it.RPMUsed = c.rpm.id, c.rpm.used
		}
		c.rpm = slice{}
	}
	if p.RPD != s.rpd {
		if c.rpd.live && c.rpd.left > 0 {
			c.returns = append(c.returns, Settlement{AccessKeyID: s.id, RPDReturn: c.rpd.left, Day: c.rpd.period})
		}
		c.rpd = slice{}
	}
	if p.TPM != s.tpm {
		if c.tpm.live && c.tpm.left != 0 {
			it.TPMLease, it.TPMUsed = c.tpm.id, c.tpm.used
		}
		c.tpm = slice{}
	}
	if budget != s.budget || period != s.period {
		if c.budget.live {
			it.BudgetReturn, it.BudgetCharge, it.Period = max(c.budget.left, 0), max(-c.budget.left, 0), c.budget.period
		}
		c.budget = slice{}
	}
	if it != (Settlement{AccessKeyID: s.id}) {
		c.returns = append(c.returns, it)
	}
	if p.Concurrency != s.conc {
		c.slotDenied = time.Time{}
	}
}

// usage puts in u the cluster's usage as last seen, where it is higher than this instance's.
func (c *shared) usage(s *state, u *Usage) {
	if s.rpd > 0 && c.rpd.period == s.dayStart {
		u.RPD = max(u.RPD, c.rpd.seen)
	}
	if s.budget > 0 && c.budget.period == s.periodStart {
		u.Tokens = max(u.Tokens, c.budget.seen)
	}
}

// Sync settles with the ledger, in one call: it gives back the units of the slices whose
// lifetime ended and the concurrency slots idle for a lifetime, charges the tokens answers
// used beyond their slices, and renews this instance's heartbeat. Call it every SyncEvery in
// cluster mode; it does nothing otherwise.
func (l *Limiter) Sync(ctx context.Context) error { return l.settle(ctx, false) }

// Release gives back every unused unit and free slot and charges the tokens not yet charged:
// call it when the limiter stops (requests still in flight keep their slots until the
// heartbeat lapses).
func (l *Limiter) Release(ctx context.Context) error { return l.settle(ctx, true) }

func (l *Limiter) settle(ctx context.Context, all bool) error {
	cfg := l.cl.Load()
	if cfg == nil {
		return nil
	}
	l.mu.Lock()
	var states []*state
	if m := l.states.Load(); m != nil {
		states = make([]*state, 0, len(*m)+len(l.retired))
		for _, s := range *m {
			if s.cl != nil {
				states = append(states, s)
			}
		}
	}
	states = append(states, l.retired...)
	l.mu.Unlock()

	wall := cfg.Clock()
	var items []Settlement
	var owners []*state
	heartbeat := false
	for _, s := range states {
		s.mu.Lock()
		c := s.cl
		for _, r := range c.returns {
			items = append(items, r)
			owners = append(owners, s)
		}
		c.returns = nil
		if it, ok := s.settlement(wall, all); ok {
			items = append(items, it)
			owners = append(owners, s)
		}
		heartbeat = heartbeat || c.slots > 0
		s.mu.Unlock()
	}
	var err error
	if len(items) > 0 || heartbeat {
		err = cfg.Ledger.Settle(ctx, cfg.Instance, cfg.SlotTTL, items)
		if err != nil {
			cfg.settleErrors.Add(1)
			cfg.warn("settling the limits shared with the other instances failed; retrying", err)
			for i, s := range owners {
				s.mu.Lock()
				s.unsettled(items[i])
				s.mu.Unlock()
			}
		} else {
			cfg.settles.Add(1)
			for _, s := range states {
				s.mu.Lock()
				if s.cl.slots > 0 {
					s.cl.slotsValid = later(s.cl.slotsValid, wall.Add(cfg.SlotTTL))
				}
				s.mu.Unlock()
			}
		}
	}
	l.pruneRetired()
	return err
}

// pruneRetired forgets the retired counters that hold nothing of the cluster any more.
func (l *Limiter) pruneRetired() {
	l.mu.Lock()
	defer l.mu.Unlock()
	keep := l.retired[:0]
	for _, s := range l.retired {
		s.mu.Lock()
		c := s.cl
		held := c.slots > 0 || c.slotsDirty || c.busy || len(c.returns) > 0 || c.tpmExtra > 0 || c.budgetExtra > 0 ||
			c.rpm.live || c.rpd.live || c.tpm.live || c.budget.live
		s.mu.Unlock()
		if held {
			keep = append(keep, s)
		}
	}
	clear(l.retired[len(keep):])
	l.retired = keep
}

// settlement is what s settles at wall (all: everything it holds), or false when nothing. s.mu
// is held. Nothing is settled while a Lease is under way: it may be settling the same slices,
// and its slots are not counted yet.
func (s *state) settlement(wall time.Time, all bool) (Settlement, bool) {
	c := s.cl
	cfg := c.cfg
	if c.busy {
		return Settlement{}, false
	}
	all = all || c.retired
	// A slice is settled at the end of its lifetime, and a token slice as soon as answers
	// took it below zero, so that the cluster counts what they used beyond it.
	over := func(sl *slice, limit int64) bool {
		return sl.live && (all || limit == 0 || !wall.Before(sl.until) || sl.left < 0)
	}
	it := Settlement{AccessKeyID: s.id}
	if over(&c.rpm, s.rpm) {
		if c.rpm.left > 0 {
			it.RPMLease, it.RPMUsed = c.rpm.id, c.rpm.used
		}
		least, largest := cfg.sizes(s.rpm, false)
		c.rpm.finish(wall, cfg.Lifetime, least, largest)
	}
	if over(&c.rpd, s.rpd) {
		if c.rpd.left > 0 {
			it.RPDReturn, it.Day = c.rpd.left, c.rpd.period
		}
		least, largest := cfg.sizes(s.rpd, false)
		c.rpd.finish(wall, cfg.Lifetime, least, largest)
	}
	if over(&c.tpm, s.tpm) {
		if c.tpm.left != 0 {
			it.TPMLease, it.TPMUsed = c.tpm.id, c.tpm.used
		}
		least, largest := cfg.sizes(s.tpm, true)
		c.tpm.finish(wall, cfg.Lifetime, least, largest)
	}
	it.TPMCharge, c.tpmExtra = c.tpmExtra, 0
	if over(&c.budget, s.budget) {
		it.BudgetReturn, it.BudgetCharge, it.Period = max(c.budget.left, 0), max(-c.budget.left, 0), c.budget.period
		least, largest := cfg.sizes(s.budget, true)
		c.budget.finish(wall, cfg.Lifetime, least, largest)
	}
	if c.budgetExtra > 0 {
		if it.BudgetReturn == 0 && it.BudgetCharge == 0 || it.Period == c.budgetExtraPeriod {
			it.BudgetCharge += c.budgetExtra
			it.Period = c.budgetExtraPeriod
		} else {
			c.returns = append(c.returns, Settlement{AccessKeyID: s.id, BudgetCharge: c.budgetExtra, Period: c.budgetExtraPeriod})
		}
		c.budgetExtra = 0
	}
	if c.slots > 0 || c.slotsDirty {
		target := c.slots
		switch {
		case c.retired || s.conc == 0:
			target = 0
		case all || !wall.Before(c.slotUsed.Add(cfg.Lifetime)):
			target = min(s.inflight, c.slots)
			c.slotWant = max(1, c.slotWant/2)
		default:
			target = min(s.inflight+c.slotWant, c.slots)
		}
		if target < c.slots || c.slotsDirty {
			it.SetSlots, it.Slots, it.Seq = true, target, cfg.seq.Add(1)
			c.slots, c.slotsDirty = target, false
		}
	}
	return it, it != (Settlement{AccessKeyID: s.id})
}

// unsettled takes back what a failed Settle carried that may be sent again: what writes a
// count, or adds (counted twice at worst: more, never less). Returns, subtractions, are
// dropped: the units stay counted.
func (s *state) unsettled(it Settlement) {
	c := s.cl
	if it.SetSlots {
		c.slotsDirty = true
	}
	again := Settlement{AccessKeyID: s.id, RPMLease: it.RPMLease, RPMUsed: it.RPMUsed, TPMLease: it.TPMLease,
		TPMUsed: it.TPMUsed, TPMCharge: it.TPMCharge, BudgetCharge: it.BudgetCharge, Period: it.Period}
	if again.RPMLease != 0 || again.TPMLease != 0 || again.TPMCharge > 0 || again.BudgetCharge > 0 {
		c.returns = append(c.returns, again)
	}
}
