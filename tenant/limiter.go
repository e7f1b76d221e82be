package tenant

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Names of the limits, as Violation.Limit names them (and the request log's limit_hit).
const (
	LimitRPM         = "rpm"
	LimitRPD         = "rpd"
	LimitTPM         = "tpm"
	LimitBudget      = "token_budget"
	LimitConcurrency = "concurrency"
)

// window is the span of the per-minute limits, in nanoseconds.
const window = int64(time.Minute)

// tpmBuckets is the number of one-second token buckets: a power of two (the index is a mask)
// of at least 61, since a charge counts for up to 61 whole seconds (see state.charge).
const tpmBuckets = 64

// concurrencyRetry is the Retry-After of a refusal for concurrency: when a request in flight
// ends is unknowable, so the client is told to try again soon.
const concurrencyRetry = time.Second

// Limiter enforces the limits of the access keys' policies exactly, under any concurrency:
// each access key with a limit has its own counters behind its own mutex, and the map from
// access key id to counters is replaced whole by Set, so Admit takes no lock but its key's.
// Time is never read: every call is given its now, and day, week and month boundaries are
// those of the limiter's location.
//
// What counts: requests per minute in a sliding window (the last rpm admission times are
// kept); requests per day since the local midnight; tokens per minute, each charge counting
// for 60 s from the end of the second it was charged in (so at least 60 s, under 61 s);
// tokens of the budget's period (the day's without a budget); requests in flight. A key
// with any limit counts all but the first, which needs an rpm limit, so a limit added
// later applies at once to the usage so far.
//
// The zero Limiter works too, in the local timezone; NewLimiter says so explicitly.
type Limiter struct {
	states atomic.Pointer[map[int64]*state]
	loc    atomic.Pointer[time.Location]
	mu     sync.Mutex // serializes Set, which copies the map

	// cl is the cluster mode (nil: this limiter alone counts every limit); retired holds
	// the counters Set dropped that still hold slices of the cluster's limits, to be
	// settled by the next Sync (both guarded by mu; cl set once, by SetCluster).
	cl      atomic.Pointer[cluster]
	retired []*state
}

// NewLimiter returns a limiter with no policies, in the local timezone.
func NewLimiter() *Limiter {
	l := new(Limiter)
	l.loc.Store(time.Local)
	return l
}

// SetLocation sets the timezone of the day, week and month boundaries (nil: the local one).
// Counters keep their counts; their boundaries are recomputed at their next use.
func (l *Limiter) SetLocation(loc *time.Location) {
	if loc == nil {
		loc = time.Local
	}
	l.loc.Store(loc)
}

// Set installs the policies of all access keys, by access key id. A key absent from the map,
// or whose policy limits nothing, loses its counters. A key that had counters keeps them
// (requests of the last minute and of the day, tokens of the last minute and of the budget's
// period, requests in flight), so a changed limit applies at once to the usage so far: a
// limit lowered below the current usage refuses the next request. A ticket admitted before
// its key lost its counters still ends safely, on the counters it came from, which no
// longer count. The policies must have passed Check; Set keeps none of them (it copies
// their limits).
func (l *Limiter) Set(policies map[int64]*Policy) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var old map[int64]*state
	if m := l.states.Load(); m != nil {
		old = *m
	}
	next := make(map[int64]*state, len(policies))
	for id, p := range policies {
		if !p.Limited() {
			continue
		}
		s := old[id]
		if s == nil {
			s = newState(l, id)
		}
		s.apply(p)
		next[id] = s
	}
	for id, s := range old {
		if next[id] != s && s.cl != nil {
			s.mu.Lock()
			s.cl.retired = true
			s.mu.Unlock()
			l.retired = append(l.retired, s) // its slices go back at the next Sync
		}
	}
	l.states.Store(&next)
}

// Seed sets the counts of an access key restored from the request log: the requests of the
// current day and the tokens of its token budget's current period (of the current day when
// it has none). It is meant for the start, after Set; a key with no limits is ignored. The
// counts are taken as those of the periods that hold the next call's now.
func (l *Limiter) Seed(id int64, requestsToday, tokensThisPeriod int64) {
	s := l.state(id)
	if s == nil {
		return
	}
	s.mu.Lock()
	s.requests = max(requestsToday, 0)
	s.tokens = min(max(tokensThisPeriod, 0), maxLimit)
	s.mu.Unlock()
}

// Violation is one limit a request would exceed.
type Violation struct {
	// Limit is the limit's name: LimitRPM, LimitRPD, LimitTPM, LimitBudget or
	// LimitConcurrency.
	Limit string
	// Value is the limit set by the policy.
	Value int64
	// Used is the usage the limit is measured against (at least Value).
	Used int64
	// RetryAt is the first moment this limit lets a request pass, unless usage grows
	// meanwhile (for concurrency, which cannot know: one second later).
	RetryAt time.Time
}

// Refusal says why a request was refused: every limit it would exceed.
type Refusal struct {
	// Violations are the limits exceeded, in the order rpm, rpd, tpm, token_budget,
	// concurrency.
	Violations []Violation
	// RetryAt is the latest RetryAt of the violations: the first moment none of them
	// refuses a request (unless usage grows meanwhile).
	RetryAt time.Time
	// Unavailable says that the limits could not be checked against the cluster's (cluster
	// mode only): the ledger did not answer, and the slices held here did not cover the
	// request, so admitting it might have exceeded a limit of the cluster. Violations then
	// name the limits that needed the ledger, with Used 0 (unknown), and RetryAt is when
	// the ledger will be asked again.
	Unavailable bool
}

// Ticket is an admitted request. Its Done must be called once the request ends (a stream at
// its end), with the tokens its answer used. The zero Ticket, which Admit returns for an
// access key with no limits, does nothing.
type Ticket struct {
	s    *state
	gen  uint64 // the generation of the slot when it was granted
	slot int32
}

// Done ends the request: it frees its place among the requests in flight and charges tokens
// (prompt + candidates + thoughts; none when <= 0) to the access key's tokens per minute and
// token budget at now, whatever its policy has become meanwhile. Only the first call on a
// ticket (or on any copy of it) counts; later ones do nothing. It does not allocate.
func (t Ticket) Done(tokens int64, now time.Time) {
	s := t.s
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.gens[t.slot] == t.gen {
		s.gens[t.slot]++
		s.free = append(s.free, t.slot)
		s.inflight--
		if tokens > 0 {
			ns := now.UnixNano()
			s.roll(now, ns, s.lim.location())
			tokens = min(tokens, maxLimit)
			s.charge(tokens, ns)
			s.tokens = min(s.tokens+tokens, maxLimit)
			if s.cl != nil {
				s.cl.charge(s, tokens) // cluster.go: taken from the token slices
			}
		}
	}
	s.mu.Unlock()
}

// Admit admits a request of access key id at now, or refuses it with every limit it would
// exceed. An admitted request counts at once toward the requests per minute and per day and
// the requests in flight, until its ticket's Done; a refused one counts toward nothing. A key
// with no limits gets the zero Ticket. Admitting does not allocate; refusing does.
//
// In cluster mode (SetCluster) a request must also fit in the slices of the cluster's limits
// this limiter holds; when one is empty, Admit asks the ledger for another before it decides
// (see cluster.go).
func (l *Limiter) Admit(id int64, now time.Time) (Ticket, *Refusal) {
	s := l.state(id)
	if s == nil {
		return Ticket{}, nil
	}
	ns := now.UnixNano()
	loc := l.location()
	s.mu.Lock()
	if s.cl != nil {
		return s.admitShared(now, ns, loc) // cluster.go; it unlocks s.mu
	}
	s.roll(now, ns, loc)
	var vs [5]Violation
	if n := s.check(now, ns, loc, &vs); n > 0 {
		s.mu.Unlock()
		return Ticket{}, refusal(vs[:n], false)
	}
	t := s.take(ns)
	s.mu.Unlock()
	return t, nil
}

// check puts in vs every limit a request at now would exceed, in the order rpm, rpd, tpm,
// token_budget, concurrency, and returns how many. s.mu is held and s rolled to now.
func (s *state) check(now time.Time, ns int64, loc *time.Location, vs *[5]Violation) int {
	n := 0
	if len(s.ring) > 0 && s.n == len(s.ring) && s.ring[s.head]+window > ns {
		vs[n] = Violation{LimitRPM, s.rpm, s.rpmUsed(ns), time.Unix(0, s.ring[s.head]+window).In(loc)}
		n++
	}
	if s.rpd > 0 && s.requests >= s.rpd {
		vs[n] = Violation{LimitRPD, s.rpd, s.requests, s.dayEnd}
		n++
	}
	if s.tpm > 0 {
		if sum := s.tpmUsed(ns); sum >= s.tpm {
			vs[n] = Violation{LimitTPM, s.tpm, sum, s.tpmRetry(ns, sum).In(loc)}
			n++
		}
	}
	if s.budget > 0 && s.tokens >= s.budget {
		vs[n] = Violation{LimitBudget, s.budget, s.tokens, s.periodEnd}
		n++
	}
	if s.conc > 0 && s.inflight >= s.conc {
		vs[n] = Violation{LimitConcurrency, s.conc, s.inflight, now.Add(concurrencyRetry).In(loc)}
		n++
	}
	return n
}

// refusal is the Refusal of the violations vs (copied).
func refusal(vs []Violation, unavailable bool) *Refusal {
	r := &Refusal{Violations: make([]Violation, len(vs)), Unavailable: unavailable}
	copy(r.Violations, vs)
	for _, v := range r.Violations {
		if v.RetryAt.After(r.RetryAt) {
			r.RetryAt = v.RetryAt
		}
	}
	return r
}

// take counts an admitted request at ns and returns its ticket. s.mu is held.
func (s *state) take(ns int64) Ticket {
	if len(s.ring) > 0 {
		s.push(ns)
	}
	s.requests++
	s.inflight++
	var slot int32
	if k := len(s.free); k > 0 {
		slot = s.free[k-1]
		s.free = s.free[:k-1]
	} else {
		slot = int32(len(s.gens))
		s.gens = append(s.gens, 0)
		if cap(s.free) < len(s.gens) {
			s.free = slices.Grow(s.free, len(s.gens))
		}
	}
	s.gens[slot]++
	return Ticket{s: s, gen: s.gens[slot], slot: slot}
}

// Usage is an access key's current usage against its limits.
type Usage struct {
	// RPM is the requests admitted in the last 60 s (counted only under an rpm limit, and
	// at most that limit).
	RPM int64
	// RPD is the requests admitted since the day started.
	RPD int64
	// TPM is the tokens charged in the last 60 s.
	TPM int64
	// Tokens is the tokens charged since the token budget's period started (without a
	// budget: since the day started).
	Tokens int64
	// InFlight is the requests admitted and not done.
	InFlight int64
	// DayEndsAt is when RPD starts again from zero.
	DayEndsAt time.Time
	// PeriodEndsAt is when the token budget's period ends (zero without a budget).
	PeriodEndsAt time.Time
}

// Usage returns the usage of access key id at now; the zero Usage for a key with no limits.
func (l *Limiter) Usage(id int64, now time.Time) Usage {
	s := l.state(id)
	if s == nil {
		return Usage{}
	}
	ns := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roll(now, ns, l.location())
	u := Usage{
		RPM:       s.rpmUsed(ns),
		RPD:       s.requests,
		TPM:       s.tpmUsed(ns),
		Tokens:    s.tokens,
		InFlight:  s.inflight,
		DayEndsAt: s.dayEnd,
	}
	if s.budget > 0 {
		u.PeriodEndsAt = s.periodEnd
	}
	if s.cl != nil {
		s.cl.usage(s, &u) // cluster.go: the cluster's usage as last seen
	}
	return u
}

func (l *Limiter) state(id int64) *state {
	if m := l.states.Load(); m != nil {
		return (*m)[id]
	}
	return nil
}

func (l *Limiter) location() *time.Location {
	if loc := l.loc.Load(); loc != nil {
		return loc
	}
	return time.Local
}

// state is the counters of one access key with limits. Times are Unix nanoseconds.
type state struct {
	lim *Limiter
	id  int64 // the access key's id
	mu  sync.Mutex
	cl  *shared // the slices of the cluster's limits held here (cluster.go); nil: not in cluster mode

	// The limits (0: none) and the token budget's period.
	rpm, rpd, tpm, budget, conc int64
	period                      periodKind

	// ring holds the times of the last len(ring) admitted requests (len(ring) = rpm), the
	// oldest at head, n of them set; times never decrease (an earlier now counts as the
	// latest time).
	ring    []int64
	head, n int

	// requests is the requests admitted since the day started; tokens, the tokens charged
	// since the budget's period started. dayEnd and periodEnd end those periods (zero: not
	// computed yet); they were computed in loc, periodEnd for endsPeriod.
	requests, tokens      int64
	dayEnd, periodEnd     time.Time
	dayEndNs, periodEndNs int64
	// dayStart and periodStart start those periods, in Unix milliseconds: the identity of the
	// period in the cluster's ledger.
	dayStart, periodStart int64
	loc                   *time.Location
	endsPeriod            periodKind
	// tkey and tval are the token buckets: tval[i] tokens were charged in the second that
	// ended at Unix second tkey[i] (i = tkey[i] mod tpmBuckets). The buckets of seconds up
	// to tcut have aged out (their tval is zero); tsum is the tokens of the others. Every
	// key is at most tcut + 61, since tcut is brought up to date before each charge.
	tkey, tval [tpmBuckets]int64
	tcut, tsum int64

	// Requests in flight hold a slot each: gens[slot] is odd while held, and grows by one at
	// each grant and each release, so a ticket's second Done finds another generation.
	gens     []uint64
	free     []int32
	inflight int64
}

func newState(l *Limiter, id int64) *state {
	s := &state{lim: l, id: id, gens: make([]uint64, 0, 8), free: make([]int32, 0, 8)}
	if c := l.cl.Load(); c != nil {
		s.cl = newShared(c)
	}
	return s
}

// apply sets the limits of p, keeping the counters.
func (s *state) apply(p *Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl != nil {
		s.cl.apply(s, p) // cluster.go: slices of changed limits go back
	}
	s.rpd, s.tpm, s.conc = p.RPD, p.TPM, p.Concurrency
	s.budget, s.period = 0, daily
	if b := p.TokenBudget; b != nil && b.Limit > 0 {
		s.budget, s.period = b.Limit, kindOf(b.Period)
	}
	if p.RPM != s.rpm {
		s.resize(max(p.RPM, 0))
	}
	s.rpm = p.RPM
}

// resize gives the ring room for size times, keeping the newest.
func (s *state) resize(size int64) {
	if size == 0 {
		s.ring, s.head, s.n = nil, 0, 0
		return
	}
	ring := make([]int64, size)
	keep := min(s.n, int(size))
	for i := range keep {
		ring[i] = s.ring[(s.head+s.n-keep+i)%len(s.ring)]
	}
	s.ring, s.head, s.n = ring, 0, keep
}

// push records an admitted request at ns in the ring.
func (s *state) push(ns int64) {
	if s.n > 0 {
		last := s.head + s.n - 1
		if last >= len(s.ring) {
			last -= len(s.ring)
		}
		ns = max(ns, s.ring[last])
	}
	if s.n < len(s.ring) {
		i := s.head + s.n
		if i >= len(s.ring) {
			i -= len(s.ring)
		}
		s.ring[i] = ns
		s.n++
		return
	}
	s.ring[s.head] = ns
	s.head++
	if s.head == len(s.ring) {
		s.head = 0
	}
}

// rpmUsed counts the requests of the ring admitted in the 60 s before ns.
func (s *state) rpmUsed(ns int64) int64 {
	// The ring is sorted from head: find the first time still in the window.
	old := sort.Search(s.n, func(i int) bool {
		return s.ring[(s.head+i)%len(s.ring)]+window > ns
	})
	return int64(s.n - old)
}

// charge adds tokens charged at ns to their bucket: the second that ends at or after ns, so
// they count for at least 60 s and less than 61 s.
func (s *state) charge(tokens, ns int64) {
	s.tpmUsed(ns) // brings tcut up to date
	k := ceilDiv(ns, int64(time.Second))
	if k <= s.tcut { // ns is over a minute before a later now: aged out already
		return
	}
	i := k & (tpmBuckets - 1)
	if s.tkey[i] != k { // the bucket's second is at least 64 s older: aged out, zero
		s.tkey[i], s.tval[i] = k, 0
	}
	s.tval[i] += tokens
	s.tsum += tokens
}

// tpmUsed is the tokens charged in the 60 s before ns: of the buckets of the seconds that
// end less than 60 s before it. It first drops the buckets that aged out. (A now earlier
// than a former one finds the buckets that aged out for the former gone.)
func (s *state) tpmUsed(ns int64) int64 {
	cut := floorDiv(ns-window, int64(time.Second))
	if d := cut - s.tcut; d >= tpmBuckets {
		s.tval, s.tsum = [tpmBuckets]int64{}, 0
	} else if d > 0 {
		for k := s.tcut + 1; k <= cut; k++ {
			if i := k & (tpmBuckets - 1); s.tkey[i] == k {
				s.tsum -= s.tval[i]
				s.tval[i] = 0
			}
		}
	}
	s.tcut = max(s.tcut, cut)
	return s.tsum
}

// tpmRetry is the first moment the tokens of the last 60 s fall below the limit as the
// buckets age out, given sum, the tokens at ns (just computed by tpmUsed).
func (s *state) tpmRetry(ns, sum int64) time.Time {
	var live [tpmBuckets]int
	n := 0
	for i := range tpmBuckets {
		if s.tkey[i] > s.tcut && s.tval[i] > 0 {
			live[n] = i
			n++
		}
	}
	order := live[:n]
	slices.SortFunc(order, func(a, b int) int { return int(s.tkey[a] - s.tkey[b]) })
	for _, i := range order {
		sum -= s.tval[i]
		if sum < s.tpm {
			return time.Unix(s.tkey[i]+int64(window/int64(time.Second)), 0)
		}
	}
	return time.Unix(0, ns) // not reached: sum ends at 0, below any limit
}

// roll starts the day and the budget's period over when now has passed their end, and
// recomputes the ends when the location or the budget's period changed.
func (s *state) roll(now time.Time, ns int64, loc *time.Location) {
	if ns >= s.dayEndNs || s.loc != loc {
		if s.dayEndNs != 0 && ns >= s.dayEndNs {
			s.requests = 0
		}
		s.dayEnd = periodEnd(daily, now, loc)
		s.dayEndNs = s.dayEnd.UnixNano()
		s.dayStart = PeriodStart(Daily, now, loc).UnixMilli()
	}
	if ns >= s.periodEndNs || s.loc != loc || s.endsPeriod != s.period {
		if s.periodEndNs != 0 && ns >= s.periodEndNs {
			s.tokens = 0
		}
		s.periodEnd = periodEnd(s.period, now, loc)
		s.periodEndNs = s.periodEnd.UnixNano()
		y, m, d := periodDate(s.period, now, loc)
		s.periodStart = dayStart(y, m, d, loc).UnixMilli()
		s.endsPeriod = s.period
	}
	s.loc = loc
}

// periodKind is a budget period as a number.
type periodKind uint8

const (
	daily periodKind = iota
	weekly
	monthly
)

// kindOf reads a period's name; anything but weekly and monthly is daily.
func kindOf(period string) periodKind {
	switch period {
	case Weekly:
		return weekly
	case Monthly:
		return monthly
	}
	return daily
}

// PeriodStart is when the period (Daily, Weekly or Monthly; anything else is Daily) holding
// now started in loc: the day's midnight, the Monday's of the week, the first day's of the
// month. Where clocks skip midnight the day starts when they jump; where midnight comes
// twice, at the first.
func PeriodStart(period string, now time.Time, loc *time.Location) time.Time {
	y, m, d := periodDate(kindOf(period), now, loc)
	return dayStart(y, m, d, loc)
}

// PeriodEnd is when the period holding now ends in loc: the start of the next one.
func PeriodEnd(period string, now time.Time, loc *time.Location) time.Time {
	return periodEnd(kindOf(period), now, loc)
}

func periodEnd(k periodKind, now time.Time, loc *time.Location) time.Time {
	y, m, d := periodDate(k, now, loc)
	switch k {
	case weekly:
		d += 7
	case monthly:
		m++
	default:
		d++
	}
	end := dayStart(y, m, d, loc)
	if !end.After(now) {
		// The clocks went back over the boundary, and now is in the repeated time, which is
		// still of the period (a few zones did so until 2010): it ends at the boundary's
		// wall time in now's offset.
		_, off := now.In(loc).Zone()
		end = time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Add(-time.Duration(off) * time.Second).In(loc)
	}
	return end
}

// periodDate is the local date the period holding now started on.
func periodDate(k periodKind, now time.Time, loc *time.Location) (int, time.Month, int) {
	if loc == nil {
		loc = time.Local
	}
	t := now.In(loc)
	y, m, d := t.Date()
	switch k {
	case weekly:
		d -= (int(t.Weekday()) + 6) % 7 // days since Monday
	case monthly:
		d = 1
	}
	return y, m, d
}

// dayStart is the first instant of the local date y-m-d (normalized as time.Date does) in
// loc. It is midnight, unless the clocks skip midnight on that date (then the day starts at
// the jump) or go back over it (then the day starts at the first midnight); time.Date
// leaves both cases undefined.
func dayStart(y int, m time.Month, d int, loc *time.Location) time.Time {
	if loc == nil {
		loc = time.Local
	}
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	if t.Hour() == 0 && t.Minute() == 0 && t.Second() == 0 && t.Nanosecond() == 0 {
		// Midnight exists; if the zone started just before it, midnight may also have
		// come earlier, in the previous zone.
		start, _ := t.ZoneBounds()
		if start.IsZero() || !start.After(t.Add(-24*time.Hour)) {
			return t
		}
		_, off := start.Add(-1).Zone()
		first := time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Add(-time.Duration(off) * time.Second).In(loc)
		fy, fm, fd := first.Date()
		ty, tm, td := t.Date()
		if first.Before(t) && fy == ty && fm == tm && fd == td && first.Hour() == 0 &&
			first.Minute() == 0 && first.Second() == 0 {
			return first
		}
		return t
	}
	// Midnight does not exist: the day starts when the clocks jump over it, the end of the
	// zone in effect before it (time.Date picked a time on one side of the jump).
	if start, end := t.ZoneBounds(); t.Hour() >= 12 {
		if !end.IsZero() { // t is in the previous day: the jump is at the end of its zone
			return end
		}
	} else if !start.IsZero() { // t is after the jump, which started its zone
		return start
	}
	return t
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }
