package storetest

import (
	"cmp"
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// The statistics are answered from the per-slot sums when every bound is on store.UsageSlot
// and from the request rows otherwise. The tests here log random rows and check both answers
// against the same figures computed in Go from the rows logged (see logged), for the
// dashboard's ranges in many zones and random quarter-hour bounds, and each bound set moved off
// the slots.

// usageZones are the zones whose calendars the statistics tests follow: DST in both
// hemispheres and both directions, a half-hour DST shift (Lord Howe), and offsets of +05:30,
// +05:45 and -09:30.
var usageZones = []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
	"Australia/Lord_Howe", "Pacific/Marquesas", "Pacific/Chatham"}

// UsageWindows are the stretches RandomTime's times fall in: spring and autumn 2026, with the
// DST changes of Europe, North America and Lord Howe.
var UsageWindows = [][2]time.Time{
	{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 12, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 9, 25, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 8, 0, 0, 0, 0, time.UTC)},
}

// RandomTime is a random millisecond in one of UsageWindows; some land on a slot's first or
// last millisecond or the one before it.
func RandomTime(rng *rand.Rand) time.Time {
	w := UsageWindows[rng.IntN(len(UsageWindows))]
	ms := w[0].UnixMilli() + rng.Int64N(w[1].Sub(w[0]).Milliseconds())
	switch rng.IntN(8) {
	case 0:
		ms = store.SlotOf(ms)
	case 1:
		ms = store.SlotOf(ms) - 1
	case 2:
		ms = store.SlotOf(ms) + store.SlotMS - 1
	}
	return time.UnixMilli(ms)
}

// calendarBounds returns the bounds the dashboard asks for with now in loc: 30 local days, 28
// six-hour blocks and 24 hours, each ending with the bucket holding now (as admin's statsBounds
// builds them, which store cannot import).
func calendarBounds(now time.Time, loc *time.Location) [][]time.Time {
	now = now.In(loc)
	y, m, d := now.Date()
	var days, blocks, hours []time.Time
	h0 := now.Hour() - now.Hour()%6
	cur := now.Add(-(time.Duration(now.Minute())*time.Minute + time.Duration(now.Second())*time.Second +
		time.Duration(now.Nanosecond())))
	for i := 29; i >= -1; i-- {
		days = append(days, time.Date(y, m, d-i, 0, 0, 0, 0, loc))
	}
	for i := 27; i >= -1; i-- {
		blocks = append(blocks, time.Date(y, m, d, h0-6*i, 0, 0, 0, loc))
	}
	for i := 23; i >= -1; i-- {
		hours = append(hours, cur.Add(-time.Duration(i)*time.Hour))
	}
	out := [][]time.Time{}
	for _, b := range [][]time.Time{days, blocks, hours} {
		kept := b[:1]
		for _, t := range b[1:] {
			if t.After(kept[len(kept)-1]) {
				kept = append(kept, t)
			}
		}
		out = append(out, kept)
	}
	return out
}

// BoundSets returns many bound sets on slot starts: the dashboard's three ranges in every zone
// of usageZones at random nows, and random sorted quarter hours.
func BoundSets(t testing.TB, rng *rand.Rand) [][]time.Time {
	t.Helper()
	var sets [][]time.Time
	for _, name := range usageZones {
		loc := loadZone(t, name)
		for range 12 {
			sets = append(sets, calendarBounds(RandomTime(rng), loc)...)
		}
	}
	for range 40 {
		n := 2 + rng.IntN(40)
		var b []time.Time
		for range n {
			b = append(b, time.UnixMilli(store.SlotOf(RandomTime(rng).UnixMilli())))
		}
		slices.SortFunc(b, func(x, y time.Time) int { return x.Compare(y) })
		b = slices.CompactFunc(b, func(x, y time.Time) bool { return x.Equal(y) })
		if len(b) >= 2 {
			sets = append(sets, b)
		}
	}
	for _, b := range sets {
		for _, x := range b {
			if !store.OnSlot(x) {
				t.Fatalf("bound %v (%s) is not on a slot start", x, x.Location())
			}
		}
	}
	return sets
}

var (
	usageModels   = []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "", "Gemini-2.5-flash", "embedding-001"}
	usageStatuses = []int{0, 100, 199, 200, 200, 200, 204, 301, 399, 400, 429, 429, 499, 500, 503}
	usageLimits   = []string{"rpm", "rpd", "tpm", "token_budget", "concurrency", "models", "expired"}
)

// RandomRequest is a request row at at with a random model, status and token counts.
func RandomRequest(rng *rand.Rand, at time.Time) store.RequestLog {
	p, c := rng.Int64N(5000), rng.Int64N(2000)
	if rng.IntN(5) == 0 {
		p, c = 0, 0
	}
	return store.RequestLog{
		Time: at, Model: usageModels[rng.IntN(len(usageModels))], Status: usageStatuses[rng.IntN(len(usageStatuses))],
		Path: "/v1beta/models/x:generateContent", PromptTokens: p, CandidatesTokens: c, ThoughtsTokens: rng.Int64N(100),
		TotalTokens: p + c + rng.Int64N(50),
	}
}

// RandomKeyRequest is RandomRequest by access key 0 to 4; about one in five of those with a
// key is refused by a limit (no tokens, a 429, 403 or 401).
func RandomKeyRequest(rng *rand.Rand, at time.Time) store.RequestLog {
	r := RandomRequest(rng, at)
	r.AccessKeyID = rng.Int64N(5)
	if r.AccessKeyID != 0 && rng.IntN(5) == 0 {
		r.LimitHit = usageLimits[rng.IntN(len(usageLimits))]
		r.Status = []int{429, 403, 401}[rng.IntN(3)]
		r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens = 0, 0, 0, 0
	}
	return r
}

// logged are request rows as they were logged, in time order: the statistics every engine
// must answer for them, computed in Go.
type logged []store.RequestLog

// newLogged returns rows as logged, sorted by time.
func newLogged(rows []store.RequestLog) logged {
	rs := slices.Clone(rows)
	slices.SortStableFunc(rs, func(a, b store.RequestLog) int { return cmp.Compare(unixMS(a.Time), unixMS(b.Time)) })
	return rs
}

// in calls f for every row in [from, to) (to the millisecond, as the store keeps times) of
// access key id (every row when id is 0).
func (rs logged) in(from, to time.Time, id int64, f func(r *store.RequestLog)) {
	lo, hi := unixMS(from), unixMS(to)
	i, _ := slices.BinarySearchFunc(rs, lo, func(r store.RequestLog, ms int64) int { return cmp.Compare(unixMS(r.Time), ms) })
	for ; i < len(rs) && unixMS(rs[i].Time) < hi; i++ {
		if r := &rs[i]; id == 0 || r.AccessKeyID == id {
			f(r)
		}
	}
}

// add returns u with r added.
func add(u store.Usage, r *store.RequestLog) store.Usage {
	u.Requests++
	if store.Failed(r.Status) {
		u.Failures++
	}
	u.PromptTokens += r.PromptTokens
	u.CandidatesTokens += r.CandidatesTokens
	u.TotalTokens += r.TotalTokens
	return u
}

// buckets is UsageBuckets (id 0) or UsageBucketsOf(id).
func (rs logged) buckets(bounds []time.Time, id int64) []store.Usage {
	out := make([]store.Usage, len(bounds)-1)
	for i := range out {
		rs.in(bounds[i], bounds[i+1], id, func(r *store.RequestLog) { out[i] = add(out[i], r) })
	}
	return out
}

// byModel is UsageByModel (id 0) or UsageByModelOf(id).
func (rs logged) byModel(from, to time.Time, limit int, id int64) []store.ModelUsage {
	sums := map[string]store.Usage{}
	rs.in(from, to, id, func(r *store.RequestLog) { sums[r.Model] = add(sums[r.Model], r) })
	var out []store.ModelUsage
	for m, u := range sums {
		out = append(out, store.ModelUsage{Model: m, Usage: u})
	}
	slices.SortFunc(out, func(a, b store.ModelUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), strings.Compare(a.Model, b.Model))
	})
	if limit == 0 {
		limit = 50
	}
	return out[:min(len(out), limit)]
}

// accessKeyUsage is AccessKeyUsage.
func (rs logged) accessKeyUsage(from, to time.Time) []store.AccessKeyUsage {
	sums := map[int64]store.Usage{}
	limits := map[int64]map[string]int64{}
	rs.in(from, to, 0, func(r *store.RequestLog) {
		id := r.AccessKeyID
		if id == 0 {
			return
		}
		sums[id] = add(sums[id], r)
		if limits[id] == nil {
			limits[id] = map[string]int64{}
		}
		if r.LimitHit != "" {
			limits[id][r.LimitHit]++
		}
	})
	out := []store.AccessKeyUsage{}
	for id, u := range sums {
		a := store.AccessKeyUsage{AccessKeyID: id, Requests: u.Requests, Failures: u.Failures,
			PromptTokens: u.PromptTokens, CandidatesTokens: u.CandidatesTokens, TotalTokens: u.TotalTokens,
			LimitsHit: limits[id]}
		for _, n := range a.LimitsHit {
			a.Limited += n
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b store.AccessKeyUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.AccessKeyID, b.AccessKeyID))
	})
	return out
}

// unixMS converts t to unix milliseconds; the zero time becomes 0.
func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// offSlots returns b moved a minute later, off the slot starts, so that the store answers from
// the request rows.
func offSlots(b []time.Time) []time.Time {
	out := make([]time.Time, len(b))
	for i, x := range b {
		out[i] = x.Add(time.Minute)
	}
	return out
}

// CheckUsage fails t where UsageBuckets or UsageByModel (limits 0 and 2) answer other than the
// rows logged (rows) sum to, on each of sets (from the per-slot sums) and on each set moved off
// the slots (from the request rows).
func CheckUsage(t *testing.T, s store.Store, rows []store.RequestLog, sets [][]time.Time) {
	t.Helper()
	checkUsage(t, s, newLogged(rows), sets, 0, true)
}

// CheckUsageOf is CheckUsage for the requests of one access key: UsageBucketsOf and
// UsageByModelOf.
func CheckUsageOf(t *testing.T, s store.Store, rows []store.RequestLog, sets [][]time.Time, accessKeyID int64) {
	t.Helper()
	checkUsage(t, s, newLogged(rows), sets, accessKeyID, true)
}

// checkUsage is CheckUsage (id 0) or CheckUsageOf (id), on the per-slot sums only unless
// rowsToo.
func checkUsage(t *testing.T, s store.Store, rs logged, sets [][]time.Time, id int64, rowsToo bool) {
	t.Helper()
	ctx := context.Background()
	bad := 0
	check := func(b []time.Time) {
		t.Helper()
		from, to := b[0], b[len(b)-1]
		var got []store.Usage
		var err error
		if id == 0 {
			got, err = s.UsageBuckets(ctx, b)
		} else {
			got, err = s.UsageBucketsOf(ctx, id, b)
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := rs.buckets(b, id); !slices.Equal(got, want) {
			t.Errorf("access key %d, buckets %v..%v (%d): got %+v, want %+v", id, from, to, len(b)-1, got, want)
			bad++
		}
		for _, limit := range []int{0, 2} {
			var got []store.ModelUsage
			if id == 0 {
				got, err = s.UsageByModel(ctx, from, to, limit)
			} else {
				got, err = s.UsageByModelOf(ctx, id, from, to, limit)
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := rs.byModel(from, to, limit, id); !slices.Equal(got, want) {
				t.Errorf("access key %d, models %v..%v, limit %d: got %+v, want %+v", id, from, to, limit, got, want)
				bad++
			}
		}
		if bad > 5 {
			t.FailNow()
		}
	}
	for _, b := range sets {
		check(b)
		if rowsToo {
			check(offSlots(b))
		}
	}
}

// checkAccessKeyUsage fails t unless AccessKeyUsage(from, to) answers what rs sum to.
func checkAccessKeyUsage(t *testing.T, s store.Store, rs logged, from, to time.Time) {
	t.Helper()
	got, err := s.AccessKeyUsage(context.Background(), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if want := rs.accessKeyUsage(from, to); !sameAccessKeyUsage(got, want) {
		t.Errorf("AccessKeyUsage(%v, %v) = %+v\nwant %+v", from, to, got, want)
	}
}

// logRandom logs n rows made by row at random times (of which every hotEvery-th in one of a
// few hot slots, which many batches then add to) and returns them as logged.
func logRandom(s store.Store, rng *rand.Rand, n, hotSlots, hotEvery int,
	row func(*rand.Rand, time.Time) store.RequestLog) logged {
	hot := make([]int64, hotSlots)
	for i := range hot {
		hot[i] = store.SlotOf(RandomTime(rng).UnixMilli())
	}
	rows := make([]store.RequestLog, 0, n)
	for i := range n {
		at := RandomTime(rng)
		if i%hotEvery == 0 {
			at = time.UnixMilli(hot[rng.IntN(len(hot))] + rng.Int64N(store.SlotMS))
		}
		r := row(rng, at)
		s.LogRequest(r)
		rows = append(rows, r)
	}
	s.Flush()
	return newLogged(rows)
}

// newRand returns a generator seeded from the clock, the seed logged to replay a failure.
func newRand(t *testing.T, stream uint64) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, stream))
}

// testUsageFromSlotsMatchesRows logs random requests through the writer, in small batches so
// many slots are added to more than once, and checks UsageBuckets and UsageByModel against the
// rows logged, from the per-slot sums and from the request rows. Then it deletes the request
// rows: the answers from the sums stay.
func testUsageFromSlotsMatchesRows(t *testing.T, o opener) {
	rng := newRand(t, 7)
	s := o.openWith(t, Options{BatchSize: 97})
	rs := logRandom(s, rng, 6000, 40, 2, RandomRequest)

	// Everything, in one bucket on slot starts and in one off them.
	ctx := context.Background()
	day := 24 * time.Hour
	from, to := UsageWindows[0][0].Add(-day), UsageWindows[1][1].Add(day)
	var want store.Usage
	for i := range rs {
		want = add(want, &rs[i])
	}
	for _, b := range [][]time.Time{{from, to}, {from.Add(-time.Millisecond), to.Add(time.Millisecond)}} {
		got, err := s.UsageBuckets(ctx, b)
		if err != nil || len(got) != 1 || got[0] != want {
			t.Errorf("UsageBuckets(%v) = %+v, %v; want %+v", b, got, err, want)
		}
	}

	sets := BoundSets(t, rng)
	checkUsage(t, s, rs, sets, 0, true)

	// The sums outlive the request rows.
	if _, err := s.PurgeRequestLogs(ctx, to); err != nil {
		t.Fatal(err)
	}
	if n := countRequests(t, s); n != 0 {
		t.Fatalf("%d request rows left", n)
	}
	checkUsage(t, s, rs, sets, 0, false)
}

// testAccessKeyUsageFromSlotsMatchesRows logs random requests of several access keys, some
// refused by a limit, in small batches so many slots are added to more than once: the limit hit
// is logged and read back, and AccessKeyUsage, UsageBucketsOf and UsageByModelOf answer what the
// rows logged sum to, from the per-slot sums and from the request rows. The sums outlive the
// request rows.
func testAccessKeyUsageFromSlotsMatchesRows(t *testing.T, o opener) {
	rng := newRand(t, 14)
	s := o.openWith(t, Options{BatchSize: 89})
	ctx := context.Background()
	rs := logRandom(s, rng, 5000, 2, 3, RandomKeyRequest)

	// The limit hit is written and read back, and the access key filter holds.
	limited, err := s.RecentRequests(ctx, store.LogQuery{AccessKeyID: 2, Status: 429, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, r := range limited {
		if r.AccessKeyID != 2 {
			t.Fatalf("filtered row of access key %d", r.AccessKeyID)
		}
		if r.LimitHit != "" {
			n++
			if !slices.Contains(usageLimits, r.LimitHit) {
				t.Fatalf("limit hit read back as %q", r.LimitHit)
			}
		}
	}
	if n == 0 {
		t.Fatal("no limited row of access key 2 read back")
	}

	// AccessKeyUsage over everything, on slot starts and off them, and over the ranges of
	// many bound sets.
	day := 24 * time.Hour
	from, to := UsageWindows[0][0].Add(-day), UsageWindows[1][1].Add(day)
	checkAccessKeyUsage(t, s, rs, from, to)
	checkAccessKeyUsage(t, s, rs, from.Add(time.Millisecond), to.Add(-time.Millisecond))
	sets := BoundSets(t, rng)
	for _, b := range sets[:30] {
		checkAccessKeyUsage(t, s, rs, b[0], b[len(b)-1])
		checkAccessKeyUsage(t, s, rs, b[0].Add(time.Minute), b[len(b)-1].Add(time.Minute))
	}
	seen := map[int64]bool{}
	for _, r := range rs {
		if r.AccessKeyID != 0 {
			seen[r.AccessKeyID] = true
		}
	}
	ids := slices.Sorted(maps.Keys(seen))
	if len(ids) < 2 {
		t.Fatalf("access keys %v: the check proves little", ids)
	}
	for _, id := range ids {
		checkUsage(t, s, rs, sets, id, true)
	}

	// The sums outlive the request rows.
	if _, err := s.PurgeRequestLogs(ctx, to); err != nil {
		t.Fatal(err)
	}
	if n := countRequests(t, s); n != 0 {
		t.Fatalf("%d request rows left", n)
	}
	for _, id := range ids {
		checkUsage(t, s, rs, sets, id, false)
	}
	checkAccessKeyUsage(t, s, rs, from, to)
}

// testUsageBefore1970: slots round down before the epoch too, in the writer's sums as in the
// queries over the rows.
func testUsageBefore1970(t *testing.T, o opener) {
	s := o.open(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var rows []store.RequestLog
	for _, ms := range []int64{-1, -store.SlotMS, -store.SlotMS - 1, 1} {
		r := RandomRequest(rng, time.UnixMilli(ms))
		s.LogRequest(r)
		rows = append(rows, r)
	}
	s.Flush()
	rs := newLogged(rows)
	early := []time.Time{time.UnixMilli(-2 * store.SlotMS), time.UnixMilli(-store.SlotMS), time.UnixMilli(0), time.UnixMilli(store.SlotMS)}
	checkUsage(t, s, rs, [][]time.Time{early}, 0, true)
	if got, _ := s.UsageBuckets(context.Background(), early); got[0].Requests != 1 || got[1].Requests != 2 || got[2].Requests != 1 {
		t.Errorf("slots around 1970: %+v; want 1, 2 and 1 requests", got)
	}
}
