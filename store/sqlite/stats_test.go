package sqlite

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

// TestMigrationSumsLoggedRows builds a version-3 database holding request rows (some before
// 1970, so slots round down there too), opens it, and checks that step 4's sums answer what the
// rows sum to (as the rows do), before and after the writer adds to the same slots.
func TestMigrationSumsLoggedRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v3.db")
	ctx := context.Background()
	db := rawDB(t, path)
	if err := migrate(ctx, db, migrations[:3]); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var rows []store.RequestLog
	insert := func(r store.RequestLog) {
		t.Helper()
		if _, err := db.Exec(`INSERT INTO request_logs (time, model, status, prompt_tokens, candidates_tokens,
			thoughts_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)`, toMS(r.Time), r.Model, r.Status,
			r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	for range 3000 {
		insert(storetest.RandomRequest(rng, storetest.RandomTime(rng)))
	}
	for _, ms := range []int64{-1, -store.SlotMS, -store.SlotMS - 1, 1} {
		insert(storetest.RandomRequest(rng, time.UnixMilli(ms)))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path, nil, nil)
	sets := storetest.BoundSets(t, rng)
	early := []time.Time{time.UnixMilli(-2 * store.SlotMS), time.UnixMilli(-store.SlotMS), time.UnixMilli(0), time.UnixMilli(store.SlotMS)}
	sets = append(sets, early)
	storetest.CheckUsage(t, s, rows, sets)
	if got, _ := s.UsageBuckets(ctx, early); got[0].Requests != 1 || got[1].Requests != 2 || got[2].Requests != 1 {
		t.Errorf("slots around 1970: %+v; want 1, 2 and 1 requests", got)
	}

	for range 2000 {
		r := storetest.RandomRequest(rng, storetest.RandomTime(rng))
		s.LogRequest(r)
		rows = append(rows, r)
	}
	s.Flush()
	storetest.CheckUsage(t, s, rows, sets)
}

// BenchmarkUsageBuckets answers the dashboard's 30d view (30 daily buckets and the models)
// over 300000 request rows spread across 30 days, from the request rows and from the per-slot
// sums.
func BenchmarkUsageBuckets(b *testing.B) {
	s := openTest(b, filepath.Join(b.TempDir(), "d.db"), nil, nil)
	end := time.UnixMilli(store.SlotOf(1_750_000_000_000))
	start := end.Add(-30 * 24 * time.Hour)
	const rows = 300000
	step := end.Sub(start).Milliseconds() / rows
	if _, err := s.db.Exec(`WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < ? - 1)
		INSERT INTO request_logs (time, model, status, total_tokens) SELECT ? + i * ?, 'm' || (i % 7), 200 + (i % 10 = 0) * 300, 42 FROM seq`,
		rows, toMS(start), step); err != nil {
		b.Fatal(err)
	}
	// The sums as schema step 4 makes them from logged rows.
	if _, err := s.db.Exec(`INSERT INTO request_usage SELECT time - time % 900000 AS slot, model, COUNT(*),
		SUM(status NOT BETWEEN 200 AND 399), SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
		FROM request_logs GROUP BY slot, model`); err != nil {
		b.Fatal(err)
	}
	enginetest.BenchmarkUsageBuckets(b, s, start, end, rows,
		func(ctx context.Context, bounds []time.Time) ([]store.Usage, error) {
			return s.usageBuckets(ctx, bounds, allUsage.RawBuckets)
		},
		func(ctx context.Context, from, to time.Time, limit int) ([]store.ModelUsage, error) {
			return s.usageByModel(ctx, from, to, limit, allUsage.RawByModel)
		})
}
