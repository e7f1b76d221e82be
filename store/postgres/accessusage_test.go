package postgres

import (
	"cmp"
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// rollupRow is one row of access_key_usage, or of the same sums computed from request_logs.
type rollupRow struct {
	slot, accessKeyID int64
	model, limitHit   string
	u                 Usage
}

func queryRollup(t testing.TB, s *Store, query string) []rollupRow {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []rollupRow
	for rows.Next() {
		var r rollupRow
		if err := rows.Scan(&r.slot, &r.accessKeyID, &r.model, &r.limitHit, &r.u.Requests, &r.u.Failures,
			&r.u.PromptTokens, &r.u.CandidatesTokens, &r.u.TotalTokens); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkRollup fails the test unless access_key_usage holds exactly the sums of the request
// rows with an access key, grouped by slot, access key, model and limit hit (slots computed
// in Go, so the table's own arithmetic is not what is checked against).
func checkRollup(t testing.TB, s *Store) {
	t.Helper()
	got := queryRollup(t, s, `SELECT slot, access_key_id, model, limit_hit, requests, failures, prompt_tokens,
		candidates_tokens, total_tokens FROM access_key_usage ORDER BY slot, access_key_id, model, limit_hit`)
	rows, err := s.pool.Query(context.Background(), `SELECT time, access_key_id, model, limit_hit, status, prompt_tokens, candidates_tokens,
		total_tokens FROM request_logs WHERE access_key_id <> 0`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	sums := map[accessSlotKey]Usage{}
	for rows.Next() {
		var at int64
		var k accessSlotKey
		var e entry
		if err := rows.Scan(&at, &k.accessKeyID, &k.model, &k.limitHit, &e.status, &e.prompt, &e.candidates, &e.total); err != nil {
			t.Fatal(err)
		}
		k.slot = slotOf(at)
		sums[k] = e.addTo(sums[k])
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var want []rollupRow
	for _, k := range slices.SortedFunc(maps.Keys(sums), func(a, b accessSlotKey) int {
		return cmp.Or(cmp.Compare(a.slot, b.slot), cmp.Compare(a.accessKeyID, b.accessKeyID),
			strings.Compare(a.model, b.model), strings.Compare(a.limitHit, b.limitHit))
	}) {
		want = append(want, rollupRow{k.slot, k.accessKeyID, k.model, k.limitHit, sums[k]})
	}
	if len(want) == 0 {
		t.Fatal("no request rows with an access key: the check proves nothing")
	}
	if !slices.Equal(got, want) {
		t.Errorf("access_key_usage has %d rows, the request rows sum to %d", len(got), len(want))
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("first difference at %d: got %+v, want %+v", i, got[i], want[i])
			}
		}
	}
}

var usageLimits = []string{"rpm", "rpd", "tpm", "token_budget", "concurrency", "models", "expired"}

// randomKeyRequest is randomRequest by access key 0 to 4; about one in five of those with a key
// is refused by a limit (no tokens, a 429, 403 or 401).
func randomKeyRequest(rng *rand.Rand, at time.Time) RequestLog {
	r := randomRequest(rng, at)
	r.AccessKeyID = rng.Int64N(5)
	if r.AccessKeyID != 0 && rng.IntN(5) == 0 {
		r.LimitHit = usageLimits[rng.IntN(len(usageLimits))]
		r.Status = []int{429, 403, 401}[rng.IntN(3)]
		r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens = 0, 0, 0, 0
	}
	return r
}

// TestWriterFillsAccessKeyUsage logs random requests of several access keys, some refused by a
// limit, in small batches so many slots are added to more than once: the per-access-key sums
// equal the request rows', the limit hit is logged and read back, and the per-access-key
// statistics from the sums equal the queries over the rows, for the dashboard's ranges in many
// zones. The sums outlive the request rows.
func TestWriterFillsAccessKeyUsage(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 14))
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.batchSize = 89 })
	ctx := context.Background()

	const rows = 5000
	want := map[int64]*AccessKeyUsage{}
	hot := []int64{slotOf(toMS(randomTime(rng))), slotOf(toMS(randomTime(rng)))}
	for i := range rows {
		at := randomTime(rng)
		if i%3 == 0 {
			at = time.UnixMilli(hot[rng.IntN(len(hot))] + rng.Int64N(slotMS))
		}
		r := randomKeyRequest(rng, at)
		s.LogRequest(r)
		if r.AccessKeyID == 0 {
			continue
		}
		w := want[r.AccessKeyID]
		if w == nil {
			w = &AccessKeyUsage{AccessKeyID: r.AccessKeyID, LimitsHit: map[string]int64{}}
			want[r.AccessKeyID] = w
		}
		w.Requests++
		if r.Status < 200 || r.Status > 399 {
			w.Failures++
		}
		w.PromptTokens += r.PromptTokens
		w.CandidatesTokens += r.CandidatesTokens
		w.TotalTokens += r.TotalTokens
		if r.LimitHit != "" {
			w.Limited++
			w.LimitsHit[r.LimitHit]++
		}
	}
	s.Flush()
	checkRollup(t, s)

	// The limit hit is written and read back, and the access key filter holds.
	limited, err := s.RecentRequests(ctx, LogQuery{AccessKeyID: 2, Status: 429, Limit: 10000})
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

	// AccessKeyUsage over everything, on slot starts and off them, equals the rows logged.
	day := 24 * time.Hour
	from, to := usageWindows[0][0].Add(-day), usageWindows[1][1].Add(day)
	var wantList []AccessKeyUsage
	for _, w := range want {
		wantList = append(wantList, *w)
	}
	slices.SortFunc(wantList, func(a, b AccessKeyUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.AccessKeyID, b.AccessKeyID))
	})
	for _, b := range [][2]time.Time{{from, to}, {from.Add(time.Millisecond), to.Add(-time.Millisecond)}} {
		got, err := s.AccessKeyUsage(ctx, b[0], b[1])
		if err != nil {
			t.Fatal(err)
		}
		if !sameAccessKeyUsage(got, wantList) {
			t.Errorf("AccessKeyUsage(%v, %v) = %+v; want %+v", b[0], b[1], got, wantList)
		}
	}

	// Per access key, the dashboard's figures from the sums equal those from the rows.
	sets := usageBoundSets(t, rng)
	fromSlots := map[int64]usageAnswers{}
	for id := range want {
		fromSlots[id] = answerUsageOf(t, s, sets, false, id)
		sameUsage(t, sets, fromSlots[id], answerUsageOf(t, s, sets, true, id))
	}
	// And AccessKeyUsage over a range equals the sum of its buckets.
	for i, b := range sets[:30] {
		got, err := s.AccessKeyUsage(ctx, b[0], b[len(b)-1])
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			var sum Usage
			for _, u := range fromSlots[a.AccessKeyID].buckets[i] {
				sum.Requests += u.Requests
				sum.TotalTokens += u.TotalTokens
			}
			if sum.Requests != a.Requests || sum.TotalTokens != a.TotalTokens {
				t.Errorf("access key %d in %v..%v: %+v, buckets sum to %+v", a.AccessKeyID, b[0], b[len(b)-1], a, sum)
			}
		}
	}

	// The sums outlive the request rows.
	if _, err := s.PurgeRequestLogs(ctx, to); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s, "request_logs"); n != 0 {
		t.Fatalf("%d request rows left", n)
	}
	for id := range want {
		sameUsage(t, sets, answerUsageOf(t, s, sets, false, id), fromSlots[id])
	}
	if got, err := s.AccessKeyUsage(ctx, from, to); err != nil || !sameAccessKeyUsage(got, wantList) {
		t.Errorf("AccessKeyUsage after the rows were purged = %+v, %v", got, err)
	}
}

func sameAccessKeyUsage(a, b []AccessKeyUsage) bool {
	return slices.EqualFunc(a, b, func(x, y AccessKeyUsage) bool {
		return x.AccessKeyID == y.AccessKeyID && x.Requests == y.Requests && x.Failures == y.Failures &&
			x.PromptTokens == y.PromptTokens && x.CandidatesTokens == y.CandidatesTokens &&
			x.TotalTokens == y.TotalTokens && x.Limited == y.Limited && x.LimitsHit != nil && y.LimitsHit != nil &&
			maps.Equal(x.LimitsHit, y.LimitsHit)
	})
}

// answerUsageOf is answerUsage for one access key: UsageBucketsOf and UsageByModelOf, or, with
// raw, the queries over the request rows.
func answerUsageOf(t *testing.T, s *Store, sets [][]time.Time, raw bool, id int64) usageAnswers {
	t.Helper()
	ctx := context.Background()
	var a usageAnswers
	for _, b := range sets {
		var buckets []Usage
		var err error
		if raw {
			buckets, err = s.usageBuckets(ctx, b, accessKeyUsageOf.rawBuckets, id)
		} else {
			buckets, err = s.UsageBucketsOf(ctx, id, b)
		}
		if err != nil {
			t.Fatal(err)
		}
		a.buckets = append(a.buckets, buckets)
		for _, limit := range []int{0, 2} {
			var models []ModelUsage
			if raw {
				models, err = s.usageByModel(ctx, b[0], b[len(b)-1], limit, accessKeyUsageOf.rawByModel, id)
			} else {
				models, err = s.UsageByModelOf(ctx, id, b[0], b[len(b)-1], limit)
			}
			if err != nil {
				t.Fatal(err)
			}
			a.models = append(a.models, models)
		}
	}
	return a
}

// TestAccessKeyUsageFigures checks AccessKeyUsage, UsageBucketsOf and UsageByModelOf on a few
// rows with known answers.
func TestAccessKeyUsageFigures(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(slotOf(1_750_000_000_000))
	h := time.Hour
	for _, r := range []RequestLog{
		{Time: t0.Add(-time.Millisecond), AccessKeyID: 1, Model: "m", Status: 200, TotalTokens: 1000}, // before
		{Time: t0, AccessKeyID: 1, Model: "m", Status: 200, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3},
		{Time: t0.Add(h), AccessKeyID: 1, Model: "n", Status: 500, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30},
		{Time: t0.Add(h), AccessKeyID: 1, Model: "m", Status: 429, LimitHit: "rpm"},
		{Time: t0.Add(2 * h), AccessKeyID: 1, Model: "m", Status: 429, LimitHit: "rpm"},
		{Time: t0.Add(2 * h), AccessKeyID: 1, Model: "x", Status: 403, LimitHit: "models"},
		{Time: t0.Add(h), AccessKeyID: 2, Model: "m", Status: 200, TotalTokens: 7},
		{Time: t0.Add(h), AccessKeyID: 3, Model: "m", Status: 204, TotalTokens: 8},
		{Time: t0.Add(h), Model: "m", Status: 200, TotalTokens: 9},                                        // no access key
		{Time: t0.Add(3 * h), AccessKeyID: 2, Model: "m", Status: 200, TotalTokens: 1000},                 // at the end: out
		{Time: t0.Add(2 * h), AccessKeyID: 4, Model: "m", Status: 429, LimitHit: strings.Repeat("x", 40)}, // truncated
	} {
		s.LogRequest(r)
	}
	s.Flush()

	got, err := s.AccessKeyUsage(ctx, t0, t0.Add(3*h))
	if err != nil {
		t.Fatal(err)
	}
	want := []AccessKeyUsage{
		{AccessKeyID: 1, Requests: 5, Failures: 4, PromptTokens: 11, CandidatesTokens: 22, TotalTokens: 33, Limited: 3,
			LimitsHit: map[string]int64{"rpm": 2, "models": 1}},
		{AccessKeyID: 2, Requests: 1, TotalTokens: 7, LimitsHit: map[string]int64{}},
		{AccessKeyID: 3, Requests: 1, TotalTokens: 8, LimitsHit: map[string]int64{}},
		{AccessKeyID: 4, Requests: 1, Failures: 1, Limited: 1, LimitsHit: map[string]int64{strings.Repeat("x", 32): 1}},
	}
	if !sameAccessKeyUsage(got, want) {
		t.Errorf("AccessKeyUsage = %+v\nwant %+v", got, want)
	}
	// Off slot starts the rows answer: an hour and a millisecond less leaves key 1's first row out.
	got, err = s.AccessKeyUsage(ctx, t0.Add(time.Millisecond), t0.Add(3*h))
	if err != nil || len(got) != 4 || got[0].Requests != 4 || got[0].TotalTokens != 30 {
		t.Errorf("AccessKeyUsage off slots = %+v, %v", got, err)
	}
	if got, err := s.AccessKeyUsage(ctx, t0.Add(10*h), t0.Add(11*h)); err != nil || len(got) != 0 {
		t.Errorf("AccessKeyUsage of an empty range = %+v, %v", got, err)
	}

	buckets, err := s.UsageBucketsOf(ctx, 1, []time.Time{t0, t0.Add(h), t0.Add(3 * h)})
	if err != nil {
		t.Fatal(err)
	}
	wantBuckets := []Usage{
		{Requests: 1, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3},
		{Requests: 4, Failures: 4, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30},
	}
	if !slices.Equal(buckets, wantBuckets) {
		t.Errorf("UsageBucketsOf = %+v, want %+v", buckets, wantBuckets)
	}
	models, err := s.UsageByModelOf(ctx, 1, t0, t0.Add(3*h), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantModels := []ModelUsage{
		{Model: "m", Usage: Usage{Requests: 3, Failures: 2, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3}},
		{Model: "n", Usage: Usage{Requests: 1, Failures: 1, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30}},
		{Model: "x", Usage: Usage{Requests: 1, Failures: 1}},
	}
	if !slices.Equal(models, wantModels) {
		t.Errorf("UsageByModelOf = %+v, want %+v", models, wantModels)
	}
	if models, _ := s.UsageByModelOf(ctx, 1, t0, t0.Add(3*h), 1); len(models) != 1 {
		t.Errorf("limit 1 gave %d models", len(models))
	}
	if b, err := s.UsageBucketsOf(ctx, 99, []time.Time{t0, t0.Add(3 * h)}); err != nil || b[0] != (Usage{}) {
		t.Errorf("UsageBucketsOf(unknown) = %+v, %v; want zeros", b, err)
	}
	if _, err := s.UsageBucketsOf(ctx, 0, []time.Time{t0, t0.Add(h)}); err == nil {
		t.Error("UsageBucketsOf(0) answered")
	}
	if _, err := s.UsageByModelOf(ctx, 0, t0, t0.Add(h), 0); err == nil {
		t.Error("UsageByModelOf(0) answered")
	}
	for _, bad := range [][]time.Time{{t0}, {t0, t0}, {t0.Add(h), t0}} {
		if _, err := s.UsageBucketsOf(ctx, 1, bad); err == nil {
			t.Errorf("bounds %v accepted", bad)
		}
	}
}

// TestAccessKeyCounts: what a start restores, requests not refused by a limit and tokens since
// a local midnight, read back after a restart.
func TestAccessKeyCounts(t *testing.T) {
	path := pgtest.URL(t)
	s := openTest(t, path, nil, nil)
	ctx := context.Background()
	loc := loadZone(t, "Asia/Kathmandu") // +05:45
	midnight := time.Date(2026, 3, 10, 0, 0, 0, 0, loc)
	for _, r := range []RequestLog{
		{Time: midnight.Add(-time.Millisecond), AccessKeyID: 1, Status: 200, TotalTokens: 1000}, // the day before
		{Time: midnight, AccessKeyID: 1, Status: 200, TotalTokens: 10},
		{Time: midnight.Add(5 * time.Hour), AccessKeyID: 1, Status: 500, TotalTokens: 0},
		{Time: midnight.Add(6 * time.Hour), AccessKeyID: 1, Status: 429, LimitHit: "rpm"},
		{Time: midnight.Add(7 * time.Hour), AccessKeyID: 1, Status: 429, LimitHit: "token_budget"},
		{Time: midnight.Add(7 * time.Hour), AccessKeyID: 2, Status: 200, TotalTokens: 5},
		{Time: midnight.Add(8 * time.Hour), AccessKeyID: 2, Status: 200, TotalTokens: 6},
		{Time: midnight.Add(8 * time.Hour), AccessKeyID: 3, Status: 403, LimitHit: "models"},
		{Time: midnight.Add(-time.Hour), AccessKeyID: 4, Status: 200, TotalTokens: 99}, // only before
		{Time: midnight.Add(time.Hour), Status: 200, TotalTokens: 77},                  // no access key
	} {
		s.LogRequest(r)
	}
	if err := s.Close(); err != nil { // a stop writes what is queued
		t.Fatal(err)
	}
	s = openTest(t, path, nil, nil)
	got, err := s.AccessKeyCounts(ctx, midnight)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]Counts{1: {Requests: 2, Tokens: 10}, 2: {Requests: 2, Tokens: 11}, 3: {}}
	if !maps.Equal(got, want) {
		t.Errorf("AccessKeyCounts(midnight) = %v, want %v", got, want)
	}
	// Off a slot start, the slot holding since counts whole.
	got, err = s.AccessKeyCounts(ctx, midnight.Add(time.Minute))
	if err != nil || !maps.Equal(got, want) {
		t.Errorf("AccessKeyCounts(00:01) = %v, %v; want %v", got, err, want)
	}
	got, err = s.AccessKeyCounts(ctx, midnight.Add(-24*time.Hour))
	if err != nil || got[1] != (Counts{Requests: 3, Tokens: 1010}) || got[4] != (Counts{Requests: 1, Tokens: 99}) {
		t.Errorf("AccessKeyCounts(the day before) = %v, %v", got, err)
	}
	if got, err := s.AccessKeyCounts(ctx, midnight.Add(24*time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("AccessKeyCounts(tomorrow) = %v, %v; want none", got, err)
	}
}

// TestPurgeUsagePurgesAccessKeySums: the per-access-key sums go with the others, by the same
// cutoff, and AccessKeyCounts no longer sees them.
func TestPurgeUsagePurgesAccessKeySums(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	ctx := context.Background()
	slot := time.UnixMilli(slotOf(1_750_000_000_000))
	q := UsageSlot
	for _, at := range []time.Time{slot.Add(-2 * q), slot.Add(-time.Millisecond), slot, slot.Add(q)} {
		s.LogRequest(RequestLog{Time: at, AccessKeyID: 5, Model: "m", Status: 200, TotalTokens: 1})
		s.LogRequest(RequestLog{Time: at, AccessKeyID: 5, Model: "m", Status: 429, LimitHit: "rpm"})
	}
	s.Flush()
	if n := countRows(t, s, "access_key_usage"); n != 8 {
		t.Fatalf("%d per-access-key rows, want 8", n)
	}
	// Two slots end at or before the cutoff: 2 rows of request_usage, 4 of access_key_usage.
	if n, err := s.PurgeUsage(ctx, slot); err != nil || n != 6 {
		t.Fatalf("PurgeUsage = %d, %v; want 6", n, err)
	}
	if n := countRows(t, s, "access_key_usage"); n != 4 {
		t.Errorf("%d per-access-key rows left, want 4", n)
	}
	got, err := s.AccessKeyCounts(ctx, slot.Add(-24*time.Hour))
	if err != nil || got[5] != (Counts{Requests: 2, Tokens: 2}) {
		t.Errorf("AccessKeyCounts after the purge = %v, %v; want 2 requests and 2 tokens", got, err)
	}
	if n := countRows(t, s, "request_logs"); n != 8 {
		t.Errorf("PurgeUsage touched request rows: %d left", n)
	}
}
