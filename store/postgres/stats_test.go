package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
)

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
	enginetest.BenchmarkUsageBuckets(b, s, start, end, rows,
		func(ctx context.Context, bounds []time.Time) ([]store.Usage, error) {
			return s.usageBuckets(ctx, bounds, allUsage.RawBuckets)
		},
		func(ctx context.Context, from, to time.Time, limit int) ([]store.ModelUsage, error) {
			return s.usageByModel(ctx, from, to, limit, allUsage.RawByModel)
		})
}
