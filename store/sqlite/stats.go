package sqlite

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// UsageBuckets adds up the request log in each interval [bounds[i], bounds[i+1]), so it
// returns len(bounds)-1 results. The caller chooses the bounds, which is how buckets follow a
// time zone's calendar (an hour or a day is not always 3600 or 86400 s there). Bounds must
// increase; at most 1000 buckets. Bounds on UsageSlot are answered from the per-slot sums,
// which outlive the request rows (see the package doc).
func (s *Store) UsageBuckets(ctx context.Context, bounds []time.Time) ([]store.Usage, error) {
	return s.bucketsFrom(ctx, bounds, allUsage)
}

// bucketsFrom checks bounds and answers UsageBuckets with q's queries, binding filter after
// the buckets.
func (s *Store) bucketsFrom(ctx context.Context, bounds []time.Time, q sqlkit.UsageQueries, filter ...any) ([]store.Usage, error) {
	query, err := q.Buckets(bounds)
	if err != nil {
		return nil, err
	}
	return s.usageBuckets(ctx, bounds, query, filter...)
}

// The statistics queries (sqlkit.UsageQueries) over one set of request rows, from the
// per-slot sums and from the rows themselves. The bucket queries read the buckets from a table
// b (i, lo, hi) and answer one row (i, requests, failures, prompt, candidates, total) per
// bucket that is not empty, binding the filter (if the set has one) after the buckets' values;
// the by-model queries bind the filter, then from, to and the limit.
var (
	// allUsage covers every request row.
	allUsage = newUsageQueries("request_usage", "")
	// accessKeyUsageOf covers the rows of the access key bound as the filter.
	accessKeyUsageOf = newUsageQueries("access_key_usage", "access_key_id")
)

// newUsageQueries returns the queries reading the per-slot sums from table and the request
// rows, narrowed to the value of column col when it is not empty (the rows' and the sums'
// column have the same name).
func newUsageQueries(table, col string) sqlkit.UsageQueries {
	on, where := "", ""
	if col != "" {
		on, where = " AND "+col+" = ?", col+" = ? AND "
	}
	return sqlkit.UsageQueries{
		SlotBuckets: `
			SELECT b.i, SUM(u.requests), SUM(u.failures), SUM(u.prompt_tokens),
			       SUM(u.candidates_tokens), SUM(u.total_tokens)
			FROM b JOIN ` + table + ` u ON u.slot >= b.lo AND u.slot < b.hi` + on + `
			GROUP BY b.i`,
		// One range scan of the time index per bucket.
		RawBuckets: `
			SELECT b.i, COUNT(*),
			       COALESCE(SUM(r.status NOT BETWEEN 200 AND 399), 0),
			       COALESCE(SUM(r.prompt_tokens), 0), COALESCE(SUM(r.candidates_tokens), 0),
			       COALESCE(SUM(r.total_tokens), 0)
			FROM b JOIN request_logs r ON r.time >= b.lo AND r.time < b.hi` + on + `
			GROUP BY b.i`,
		SlotByModel: `
			SELECT model, SUM(requests) AS n, SUM(failures), SUM(prompt_tokens),
			       SUM(candidates_tokens), SUM(total_tokens)
			FROM ` + table + ` WHERE ` + where + `slot >= ? AND slot < ?
			GROUP BY model ORDER BY n DESC, model LIMIT ?`,
		RawByModel: `
			SELECT model, COUNT(*) AS n, SUM(status NOT BETWEEN 200 AND 399),
			       SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
			FROM request_logs WHERE ` + where + `time >= ? AND time < ?
			GROUP BY model ORDER BY n DESC, model LIMIT ?`,
	}
}

// usageBuckets runs query (see usageQueries) with the buckets of bounds, then filter. The
// bounds are checked by the caller.
func (s *Store) usageBuckets(ctx context.Context, bounds []time.Time, query string, filter ...any) ([]store.Usage, error) {
	n := len(bounds) - 1
	values := make([]string, n)
	args := make([]any, 0, 3*n+len(filter))
	for i := range n {
		values[i] = "(?, ?, ?)"
		args = append(args, i, toMS(bounds[i]), toMS(bounds[i+1]))
	}
	args = append(args, filter...)
	rows, err := s.db.QueryContext(ctx, `WITH b (i, lo, hi) AS (VALUES `+strings.Join(values, ", ")+`)`+query, args...)
	if err != nil {
		return nil, fmt.Errorf("store: usage buckets: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.Buckets(rows, n)
	if err != nil {
		return nil, fmt.Errorf("store: usage buckets: %w", err)
	}
	return out, nil
}

// UsageByModel adds up the request log in [from, to) per model, the most requested first
// (ties by name), at most limit models (0 means 50). Bounds on UsageSlot are answered from the
// per-slot sums, as in UsageBuckets.
func (s *Store) UsageByModel(ctx context.Context, from, to time.Time, limit int) ([]store.ModelUsage, error) {
	return s.byModelFrom(ctx, from, to, limit, allUsage)
}

// byModelFrom answers UsageByModel with q's queries, binding filter first.
func (s *Store) byModelFrom(ctx context.Context, from, to time.Time, limit int, q sqlkit.UsageQueries, filter ...any) ([]store.ModelUsage, error) {
	return s.usageByModel(ctx, from, to, limit, q.ByModel(from, to), filter...)
}

// usageByModel runs query (see usageQueries) with filter, the bounds and the limit.
func (s *Store) usageByModel(ctx context.Context, from, to time.Time, limit int, query string, filter ...any) ([]store.ModelUsage, error) {
	if limit <= 0 {
		limit = 50
	}
	args := append(append(make([]any, 0, len(filter)+3), filter...), toMS(from), toMS(to), limit)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("store: usage by model: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.ModelUsage(rows)
	if err != nil {
		return nil, fmt.Errorf("store: usage by model: %w", err)
	}
	return out, nil
}
