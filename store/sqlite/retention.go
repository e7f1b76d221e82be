package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// PurgeRequestLogs deletes the request log rows older than before (a row at exactly before is
// kept) and returns how many it deleted. It deletes in small transactions with a pause between
// them, so the log writer is never blocked for long; when ctx ends it stops between two
// batches and returns what it deleted so far with ctx's error.
func (s *Store) PurgeRequestLogs(ctx context.Context, before time.Time) (int64, error) {
	return s.purge(ctx, "request logs",
		`DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs WHERE time < ? LIMIT ?)`,
		toMS(before))
}

// PurgeErrorLogs deletes the error log rows older than before, as PurgeRequestLogs does.
func (s *Store) PurgeErrorLogs(ctx context.Context, before time.Time) (int64, error) {
	return s.purge(ctx, "error logs",
		`DELETE FROM error_logs WHERE id IN (SELECT id FROM error_logs WHERE time < ? LIMIT ?)`,
		toMS(before))
}

// PurgeSessions deletes the admin sessions expired at now (expiry at or before now), in
// batches as PurgeRequestLogs does, and returns how many it deleted.
func (s *Store) PurgeSessions(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "sessions",
		`DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at <= ? LIMIT ?)`,
		toMS(now))
}

// PurgeCooldowns deletes the cooldowns over at now (until at or before now), in batches as
// PurgeRequestLogs does, and returns how many it deleted. They no longer hold a key back, and
// a key that cools down again gets a new row.
func (s *Store) PurgeCooldowns(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "cooldowns",
		`DELETE FROM cooldowns WHERE (key_id, model) IN (SELECT key_id, model FROM cooldowns WHERE until <= ? LIMIT ?)`,
		toMS(now))
}

const _ = uint64(store.UsageRetention - store.BudgetHistory) // does not compile if UsageRetention < budgetHistory

// PurgeUsage deletes the per-slot sums of the request log (the totals per model and those per
// access key) whose quarter hour ended at or before before (one straddling it is kept), in
// batches as PurgeRequestLogs does, and returns how many rows it deleted. Callers pass at least
// UsageRetention back from now.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int64, error) {
	cutoff := toMS(before) - store.SlotMS
	n, err := s.purge(ctx, "usage",
		`DELETE FROM request_usage WHERE (slot, model) IN (SELECT slot, model FROM request_usage WHERE slot <= ? LIMIT ?)`,
		cutoff)
	if err != nil {
		return n, err
	}
	m, err := s.purge(ctx, "access key usage",
		`DELETE FROM access_key_usage WHERE (slot, access_key_id, model, limit_hit) IN
			(SELECT slot, access_key_id, model, limit_hit FROM access_key_usage WHERE slot <= ? LIMIT ?)`,
		cutoff)
	return n + m, err
}

// purge runs query (a DELETE of at most a batch of rows with a cutoff, bound in that order)
// in transactions of s.o.purge's size until one deletes fewer, pausing between them (see
// sqlkit.Purge).
func (s *Store) purge(ctx context.Context, what, query string, cutoff int64) (int64, error) {
	n, err := s.o.purge.Run(ctx, func(ctx context.Context, batch int) (int64, error) {
		res, err := s.db.ExecContext(ctx, query, cutoff, batch)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	})
	if err != nil {
		return n, fmt.Errorf("store: purge %s: %w", what, err)
	}
	return n, nil
}
