package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// usageZones are the zones whose calendars the stats tests follow: DST in both hemispheres and
// both directions, a half-hour DST shift (Lord Howe), and offsets of +05:30, +05:45 and -09:30.
var usageZones = []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
	"Australia/Lord_Howe", "Pacific/Marquesas", "Pacific/Chatham"}

func loadZone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// usageWindows are the stretches the random rows fall in: spring and autumn 2026, with the DST
// changes of Europe, North America and Lord Howe.
var usageWindows = [][2]time.Time{
	{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 12, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 9, 25, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 8, 0, 0, 0, 0, time.UTC)},
}

// randomTime is a random millisecond in one of usageWindows; some land on a slot's first or
// last millisecond or the one before it.
func randomTime(rng *rand.Rand) time.Time {
	w := usageWindows[rng.IntN(len(usageWindows))]
	ms := toMS(w[0]) + rng.Int64N(w[1].Sub(w[0]).Milliseconds())
	switch rng.IntN(8) {
	case 0:
		ms = slotOf(ms)
	case 1:
		ms = slotOf(ms) - 1
	case 2:
		ms = slotOf(ms) + slotMS - 1
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

// usageBoundSets returns many bound sets on slot starts: the dashboard's three ranges in every
// zone of usageZones at random nows, and random sorted quarter hours.
func usageBoundSets(t *testing.T, rng *rand.Rand) [][]time.Time {
	t.Helper()
	var sets [][]time.Time
	for _, name := range usageZones {
		loc := loadZone(t, name)
		for range 12 {
			sets = append(sets, calendarBounds(randomTime(rng), loc)...)
		}
	}
	for range 40 {
		n := 2 + rng.IntN(40)
		var b []time.Time
		for range n {
			b = append(b, time.UnixMilli(slotOf(toMS(randomTime(rng)))))
		}
		slices.SortFunc(b, func(x, y time.Time) int { return x.Compare(y) })
		b = slices.CompactFunc(b, func(x, y time.Time) bool { return x.Equal(y) })
		if len(b) >= 2 {
			sets = append(sets, b)
		}
	}
	for _, b := range sets {
		for _, x := range b {
			if !onSlot(x) {
				t.Fatalf("bound %v (%s) is not on a slot start", x, x.Location())
			}
		}
	}
	return sets
}

// usageAnswers is what the stats queries answer for a list of bound sets.
type usageAnswers struct {
	buckets [][]Usage
	models  [][]ModelUsage // per set: limit 0, then limit 2
}

// answerUsage asks UsageBuckets and UsageByModel, or, with raw, the queries over request_logs.
func answerUsage(t *testing.T, s *Store, sets [][]time.Time, raw bool) usageAnswers {
	t.Helper()
	ctx := context.Background()
	var a usageAnswers
	for _, b := range sets {
		from, to := b[0], b[len(b)-1]
		var buckets []Usage
		var err error
		if raw {
			buckets, err = s.usageBuckets(ctx, b, allUsage.rawBuckets)
		} else {
			buckets, err = s.UsageBuckets(ctx, b)
		}
		if err != nil {
			t.Fatal(err)
		}
		a.buckets = append(a.buckets, buckets)
		for _, limit := range []int{0, 2} {
			var models []ModelUsage
			if raw {
				models, err = s.usageByModel(ctx, from, to, limit, allUsage.rawByModel)
			} else {
				models, err = s.UsageByModel(ctx, from, to, limit)
			}
			if err != nil {
				t.Fatal(err)
			}
			a.models = append(a.models, models)
		}
	}
	return a
}

// sameUsage fails the test where got and want differ, naming the bound set.
func sameUsage(t *testing.T, sets [][]time.Time, got, want usageAnswers) {
	t.Helper()
	bad := 0
	for i, b := range sets {
		if !slices.Equal(got.buckets[i], want.buckets[i]) {
			t.Errorf("buckets %v..%v (%d): got %+v, want %+v", b[0], b[len(b)-1], len(b)-1, got.buckets[i], want.buckets[i])
			bad++
		}
		for j := 2 * i; j < 2*i+2; j++ {
			if !slices.Equal(got.models[j], want.models[j]) {
				t.Errorf("models %v..%v: got %+v, want %+v", b[0], b[len(b)-1], got.models[j], want.models[j])
				bad++
			}
		}
		if bad > 5 {
			t.FailNow()
		}
	}
}

var (
	usageModels   = []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "", "Gemini-2.5-flash", "embedding-001"}
	usageStatuses = []int{0, 100, 199, 200, 200, 200, 204, 301, 399, 400, 429, 429, 499, 500, 503}
)

// randomRequest is a request row with a random model, status and token counts.
func randomRequest(rng *rand.Rand, at time.Time) RequestLog {
	p, c := rng.Int64N(5000), rng.Int64N(2000)
	if rng.IntN(5) == 0 {
		p, c = 0, 0
	}
	return RequestLog{
		Time: at, Model: usageModels[rng.IntN(len(usageModels))], Status: usageStatuses[rng.IntN(len(usageStatuses))],
		Path: "/v1beta/models/x:generateContent", PromptTokens: p, CandidatesTokens: c, ThoughtsTokens: rng.Int64N(100),
		TotalTokens: p + c + rng.Int64N(50),
	}
}

// TestUsageFromSlotsMatchesRows logs random requests through the writer, in small batches so
// many slots are added to more than once, and checks that the answers from the per-slot sums
// equal the queries over the request rows for the dashboard's ranges in many zones and for
// random quarter-hour bounds. Then it deletes the request rows: the answers stay.
func TestUsageFromSlotsMatchesRows(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.batchSize = 97 })

	// Half the rows in a few hot slots (each added to by many batches), half anywhere.
	hot := make([]int64, 40)
	for i := range hot {
		hot[i] = slotOf(toMS(randomTime(rng)))
	}
	const rows = 6000
	var want Usage
	keys := map[slotKey]bool{}
	for i := range rows {
		at := randomTime(rng)
		if i%2 == 0 {
			at = time.UnixMilli(hot[rng.IntN(len(hot))] + rng.Int64N(slotMS))
		}
		r := randomRequest(rng, at)
		s.LogRequest(r)
		keys[slotKey{slotOf(toMS(at)), r.Model}] = true
		want.Requests++
		if r.Status < 200 || r.Status > 399 {
			want.Failures++
		}
		want.PromptTokens += r.PromptTokens
		want.CandidatesTokens += r.CandidatesTokens
		want.TotalTokens += r.TotalTokens
	}
	s.Flush()
	if n := countRows(t, s, "request_usage"); n != int64(len(keys)) {
		t.Errorf("%d slot rows, want one per slot and model: %d", n, len(keys))
	}

	// Everything, in one bucket on slot starts and in one off them.
	ctx := context.Background()
	day := 24 * time.Hour
	all := [][]time.Time{
		{usageWindows[0][0].Add(-day), usageWindows[1][1].Add(day)},
		{usageWindows[0][0].Add(-day - time.Millisecond), usageWindows[1][1].Add(day + time.Millisecond)},
	}
	for _, b := range all {
		got, err := s.UsageBuckets(ctx, b)
		if err != nil || len(got) != 1 || got[0] != want {
			t.Errorf("UsageBuckets(%v) = %+v, %v; want %+v", b, got, err, want)
		}
	}

	sets := usageBoundSets(t, rng)
	fromSlots := answerUsage(t, s, sets, false)
	sameUsage(t, sets, fromSlots, answerUsage(t, s, sets, true))

	// Off slot starts the answers come from the request rows.
	var odd [][]time.Time
	for _, b := range sets[:20] {
		odd = append(odd, []time.Time{b[0].Add(time.Minute), b[len(b)-1].Add(-time.Millisecond)})
	}
	sameUsage(t, odd, answerUsage(t, s, odd, false), answerUsage(t, s, odd, true))

	// The sums outlive the request rows.
	if _, err := s.PurgeRequestLogs(ctx, usageWindows[1][1].Add(day)); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s, "request_logs"); n != 0 {
		t.Fatalf("%d request rows left", n)
	}
	sameUsage(t, sets, answerUsage(t, s, sets, false), fromSlots)
}

// TestUsageBefore1970: slots round down before the epoch too, in the writer's sums as in the
// queries over the rows.
func TestUsageBefore1970(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, ms := range []int64{-1, -slotMS, -slotMS - 1, 1} {
		s.LogRequest(randomRequest(rng, time.UnixMilli(ms)))
	}
	s.Flush()
	early := [][]time.Time{{time.UnixMilli(-2 * slotMS), time.UnixMilli(-slotMS), time.UnixMilli(0), time.UnixMilli(slotMS)}}
	sameUsage(t, early, answerUsage(t, s, early, false), answerUsage(t, s, early, true))
	if got, _ := s.UsageBuckets(ctx, early[0]); got[0].Requests != 1 || got[1].Requests != 2 || got[2].Requests != 1 {
		t.Errorf("slots around 1970: %+v; want 1, 2 and 1 requests", got)
	}
}

// BenchmarkUsageBuckets answers the dashboard's 30d view (30 daily buckets and the models)
// over 300000 request rows spread across 30 days, from the request rows and from the per-slot
// sums.
func BenchmarkUsageBuckets(b *testing.B) {
	s := openTest(b, pgtest.URL(b), nil, nil)
	end := time.UnixMilli(slotOf(1_750_000_000_000))
	start := end.Add(-30 * 24 * time.Hour)
	const rows = 300000
	step := end.Sub(start).Milliseconds() / rows
	exec(b, s, `INSERT INTO request_logs (time, model, status, total_tokens)
		SELECT $2::bigint + i * $3::bigint, 'm' || (i % 7), CASE WHEN i % 10 = 0 THEN 500 ELSE 200 END, 42 FROM generate_series(0, $1 - 1) i`,
		rows, toMS(start), step)
	// The sums as the writer makes them (all times are after 1970: % rounds down).
	exec(b, s, `INSERT INTO request_usage SELECT time - time % 900000 AS slot, model, COUNT(*),
		COUNT(*) FILTER (WHERE status NOT BETWEEN 200 AND 399), SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
		FROM request_logs GROUP BY slot, model`)
	exec(b, s, `ANALYZE`)
	bounds := make([]time.Time, 31)
	for i := range bounds {
		bounds[i] = start.Add(time.Duration(i) * 24 * time.Hour)
	}
	ctx := context.Background()
	for _, raw := range []bool{true, false} {
		b.Run(map[bool]string{true: "rows", false: "slots"}[raw], func(b *testing.B) {
			for b.Loop() {
				var got []Usage
				var err error
				if raw {
					got, err = s.usageBuckets(ctx, bounds, allUsage.rawBuckets)
				} else {
					got, err = s.UsageBuckets(ctx, bounds)
				}
				if err != nil {
					b.Fatal(err)
				}
				var n int64
				for _, u := range got {
					n += u.Requests
				}
				if n != rows {
					b.Fatalf("%d rows counted, want %d", n, rows)
				}
				var models []ModelUsage
				if raw {
					models, err = s.usageByModel(ctx, start, end, 50, allUsage.rawByModel)
				} else {
					models, err = s.UsageByModel(ctx, start, end, 50)
				}
				if err != nil || len(models) != 7 {
					b.Fatal(fmt.Sprint(len(models), err))
				}
			}
		})
	}
}
