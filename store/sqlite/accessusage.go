package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// The usage of each access key is summed per 15-minute slot, model and limit hit (table
// access_key_usage, schema step 6) by the log writer, in the transaction that inserts the
// request rows, as the per-slot sums of UsageBuckets are. Request rows without an access key
// are not summed there. The sums are purged with the others (PurgeUsage).

// AccessKeyUsage adds up the request log in [from, to) per access key, for every access key
// with a request in it, the most requested first (ties by id). Bounds on UsageSlot are answered
// from the per-slot sums, which outlive the request rows; others from the request rows.
func (s *Store) AccessKeyUsage(ctx context.Context, from, to time.Time) ([]store.AccessKeyUsage, error) {
	query := `
		SELECT access_key_id, limit_hit, SUM(requests), SUM(failures), SUM(prompt_tokens),
		       SUM(candidates_tokens), SUM(total_tokens)
		FROM access_key_usage WHERE slot >= ? AND slot < ?
		GROUP BY access_key_id, limit_hit`
	if !store.OnSlot(from) || !store.OnSlot(to) {
		query = `
		SELECT access_key_id, limit_hit, COUNT(*), SUM(status NOT BETWEEN 200 AND 399), SUM(prompt_tokens),
		       SUM(candidates_tokens), SUM(total_tokens)
		FROM request_logs WHERE time >= ? AND time < ? AND access_key_id <> 0
		GROUP BY access_key_id, limit_hit`
	}
	rows, err := s.db.QueryContext(ctx, query, toMS(from), toMS(to))
	if err != nil {
		return nil, fmt.Errorf("store: access key usage: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.AccessKeyUsage(rows)
	if err != nil {
		return nil, fmt.Errorf("store: access key usage: %w", err)
	}
	return out, nil
}

// UsageBucketsOf is UsageBuckets for the requests of one access key (not 0): same bounds,
// limits and answers, from that key's per-slot sums when every bound is on UsageSlot.
func (s *Store) UsageBucketsOf(ctx context.Context, accessKeyID int64, bounds []time.Time) ([]store.Usage, error) {
	if accessKeyID == 0 {
		return nil, store.ErrNoAccessKey
	}
	return s.bucketsFrom(ctx, bounds, accessKeyUsageOf, accessKeyID)
}

// UsageByModelOf is UsageByModel for the requests of one access key (not 0).
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
	rows, err := s.db.QueryContext(ctx, `
		SELECT access_key_id, SUM(CASE WHEN limit_hit = '' THEN requests ELSE 0 END), SUM(total_tokens)
		FROM access_key_usage WHERE slot >= ? GROUP BY access_key_id`, store.SlotOf(toMS(since)))
	if err != nil {
		return nil, fmt.Errorf("store: access key counts: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.Counts(rows)
	if err != nil {
		return nil, fmt.Errorf("store: access key counts: %w", err)
	}
	return out, nil
}
