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
