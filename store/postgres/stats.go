package postgres

import (
	"context"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// The statistics are answered as in the SQLite store: from the per-slot sums (request_usage,
// access_key_usage) when every bound is on store.UsageSlot, else from the request rows. Sums of
// bigint columns are numeric in PostgreSQL and are cast back to bigint; models tie in byte
// order (COLLATE "C"), as SQLite's BINARY collation orders them, whatever the database's locale.

const slotMS = store.SlotMS

// slotOf is store.SlotOf.
func slotOf(ms int64) int64 { return store.SlotOf(ms) }

// onSlot is store.OnSlot.
func onSlot(t time.Time) bool { return store.OnSlot(t) }

// UsageBuckets adds up the request log in each interval [bounds[i], bounds[i+1]), so it
// returns len(bounds)-1 results. The caller chooses the bounds, which is how buckets follow a
// time zone's calendar (an hour or a day is not always 3600 or 86400 s there). Bounds must
// increase; at most store.MaxBuckets buckets. Bounds on store.UsageSlot are answered from the
// per-slot sums, which outlive the request rows.
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
// per-slot sums and from the rows themselves. The bucket queries read the buckets from arrays bound
// as $1 (index), $2 (lower bound) and $3 (upper bound) and answer one row (i, requests,
// failures, prompt, candidates, total) per bucket that is not empty, binding the filter (if
// the set has one) as $4; the by-model queries bind from, to and the limit as $1 to $3, then
// the filter as $4.
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
		on, where = " AND "+col+" = $4", " AND "+col+" = $4"
	}
	const buckets = `WITH b (i, lo, hi) AS (SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[]))`
	return sqlkit.UsageQueries{
		SlotBuckets: buckets + `
			SELECT b.i, SUM(u.requests)::bigint, SUM(u.failures)::bigint, SUM(u.prompt_tokens)::bigint,
			       SUM(u.candidates_tokens)::bigint, SUM(u.total_tokens)::bigint
			FROM b JOIN ` + table + ` u ON u.slot >= b.lo AND u.slot < b.hi` + on + `
			GROUP BY b.i`,
		// One range scan of the time index per bucket.
		RawBuckets: buckets + `
			SELECT b.i, COUNT(*), COUNT(*) FILTER (WHERE r.status NOT BETWEEN 200 AND 399),
			       COALESCE(SUM(r.prompt_tokens), 0)::bigint, COALESCE(SUM(r.candidates_tokens), 0)::bigint,
			       COALESCE(SUM(r.total_tokens), 0)::bigint
			FROM b JOIN request_logs r ON r.time >= b.lo AND r.time < b.hi` + on + `
			GROUP BY b.i`,
		SlotByModel: `
			SELECT model, SUM(requests)::bigint AS n, SUM(failures)::bigint, SUM(prompt_tokens)::bigint,
			       SUM(candidates_tokens)::bigint, SUM(total_tokens)::bigint
			FROM ` + table + ` WHERE slot >= $1 AND slot < $2` + where + `
			GROUP BY model ORDER BY n DESC, model COLLATE "C" LIMIT $3`,
		RawByModel: `
			SELECT model, COUNT(*) AS n, COUNT(*) FILTER (WHERE status NOT BETWEEN 200 AND 399),
			       SUM(prompt_tokens)::bigint, SUM(candidates_tokens)::bigint, SUM(total_tokens)::bigint
			FROM request_logs WHERE time >= $1 AND time < $2` + where + `
			GROUP BY model ORDER BY n DESC, model COLLATE "C" LIMIT $3`,
	}
}

// usageBuckets runs query (see usageQueries) with the buckets of bounds, then filter. The
// bounds are checked by the caller.
func (s *Store) usageBuckets(ctx context.Context, bounds []time.Time, query string, filter ...any) ([]store.Usage, error) {
	n := len(bounds) - 1
	is, los, his := make([]int32, n), make([]int64, n), make([]int64, n)
	for i := range n {
		is[i], los[i], his[i] = int32(i), toMS(bounds[i]), toMS(bounds[i+1])
	}
	args := append([]any{is, los, his}, filter...)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, wrap("usage buckets", err)
	}
	defer rows.Close()
	out, err := sqlkit.Buckets(rows, n)
	if err != nil {
		return nil, wrap("usage buckets", err)
	}
	return out, nil
}

// UsageByModel adds up the request log in [from, to) per model, the most requested first
// (ties by name, in byte order), at most limit models (0 means 50). Bounds on store.UsageSlot
// are answered from the per-slot sums, as in UsageBuckets.
func (s *Store) UsageByModel(ctx context.Context, from, to time.Time, limit int) ([]store.ModelUsage, error) {
	return s.byModelFrom(ctx, from, to, limit, allUsage)
}

// byModelFrom answers UsageByModel with q's queries, binding filter last.
func (s *Store) byModelFrom(ctx context.Context, from, to time.Time, limit int, q sqlkit.UsageQueries, filter ...any) ([]store.ModelUsage, error) {
	return s.usageByModel(ctx, from, to, limit, q.ByModel(from, to), filter...)
}

// usageByModel runs query (see usageQueries) with the bounds, the limit and filter.
func (s *Store) usageByModel(ctx context.Context, from, to time.Time, limit int, query string, filter ...any) ([]store.ModelUsage, error) {
	if limit <= 0 {
		limit = 50
	}
	args := append([]any{toMS(from), toMS(to), limit}, filter...)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, wrap("usage by model", err)
	}
	defer rows.Close()
	out, err := sqlkit.ModelUsage(rows)
	if err != nil {
		return nil, wrap("usage by model", err)
	}
	return out, nil
}
