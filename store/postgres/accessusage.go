package postgres

import (
	"context"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// The usage of each access key is summed per 15-minute slot, model and limit hit (table
// access_key_usage) by the log writer, in the transaction that inserts the request rows, as the
// per-slot sums of UsageBuckets are. Request rows without an access key are not summed there.
// The sums are purged with the others (PurgeUsage).

// AccessKeyUsage adds up the request log in [from, to) per access key, for every access key
// with a request in it, the most requested first (ties by id). Bounds on store.UsageSlot are
// answered from the per-slot sums, which outlive the request rows; others from the request
// rows.
func (s *Store) AccessKeyUsage(ctx context.Context, from, to time.Time) ([]store.AccessKeyUsage, error) {
	query := `
		SELECT access_key_id, limit_hit, SUM(requests)::bigint, SUM(failures)::bigint, SUM(prompt_tokens)::bigint,
		       SUM(candidates_tokens)::bigint, SUM(total_tokens)::bigint
		FROM access_key_usage WHERE slot >= $1 AND slot < $2
		GROUP BY access_key_id, limit_hit`
	if !onSlot(from) || !onSlot(to) {
		query = `
		SELECT access_key_id, limit_hit, COUNT(*), COUNT(*) FILTER (WHERE status NOT BETWEEN 200 AND 399),
		       SUM(prompt_tokens)::bigint, SUM(candidates_tokens)::bigint, SUM(total_tokens)::bigint
		FROM request_logs WHERE time >= $1 AND time < $2 AND access_key_id <> 0
		GROUP BY access_key_id, limit_hit`
	}
	rows, err := s.pool.Query(ctx, query, toMS(from), toMS(to))
	if err != nil {
		return nil, wrap("access key usage", err)
	}
	defer rows.Close()
	out, err := sqlkit.AccessKeyUsage(rows)
	if err != nil {
		return nil, wrap("access key usage", err)
	}
	return out, nil
}

// UsageBucketsOf is UsageBuckets for the requests of one access key (not 0, else
// store.ErrNoAccessKey): same bounds,
// limits and answers, from that key's per-slot sums when every bound is on store.UsageSlot.
func (s *Store) UsageBucketsOf(ctx context.Context, accessKeyID int64, bounds []time.Time) ([]store.Usage, error) {
	if accessKeyID == 0 {
		return nil, store.ErrNoAccessKey
	}
	return s.bucketsFrom(ctx, bounds, accessKeyUsageOf, accessKeyID)
}

// UsageByModelOf is UsageByModel for the requests of one access key (not 0, else
// store.ErrNoAccessKey).
func (s *Store) UsageByModelOf(ctx context.Context, accessKeyID int64, from, to time.Time, limit int) ([]store.ModelUsage, error) {
	if accessKeyID == 0 {
		return nil, store.ErrNoAccessKey
	}
	return s.byModelFrom(ctx, from, to, limit, accessKeyUsageOf, accessKeyID)
}

// AccessKeyCounts returns, per access key with a request since since, the requests that no
// limit refused and the total tokens, read from the per-slot sums, so that a start can restore
// the daily request count and the token budget. since should start a slot (a local midnight
// does, in every time zone in use); otherwise its slot is counted whole, which counts more,
// never less.
//
// The sums are written in the transaction that writes the request rows, so they hold every
// request logged before a stop or a crash. Only rows still in the log writer's queue at a
// crash are lost (a stop writes them).
func (s *Store) AccessKeyCounts(ctx context.Context, since time.Time) (map[int64]store.Counts, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT access_key_id, SUM(CASE WHEN limit_hit = '' THEN requests ELSE 0 END)::bigint, SUM(total_tokens)::bigint
		FROM access_key_usage WHERE slot >= $1 GROUP BY access_key_id`, slotOf(toMS(since)))
	if err != nil {
		return nil, wrap("access key counts", err)
	}
	defer rows.Close()
	out, err := sqlkit.Counts(rows)
	if err != nil {
		return nil, wrap("access key counts", err)
	}
	return out, nil
}
