package sqlite

import (
	"context"
	"fmt"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// CountRequests returns how many request log rows match q's filters (Limit and Offset aside).
func (s *Store) CountRequests(ctx context.Context, q store.LogQuery) (int64, error) {
	return s.countLogs(ctx, "request_logs", q)
}

// CountErrors returns how many error log rows match q's filters (Limit and Offset aside).
func (s *Store) CountErrors(ctx context.Context, q store.LogQuery) (int64, error) {
	return s.countLogs(ctx, "error_logs", q)
}

func (s *Store) countLogs(ctx context.Context, table string, q store.LogQuery) (int64, error) {
	where, args := sqlkit.LogWhere(q, sqlkit.Question)
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` `+where, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count %s: %w", table, err)
	}
	return n, nil
}

// CountRequestLogs returns the number of stored request log rows.
func (s *Store) CountRequestLogs(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM request_logs`).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count request logs: %w", err)
	}
	return n, nil
}

// RecentRequests returns request log rows matching q, newest first.
func (s *Store) RecentRequests(ctx context.Context, q store.LogQuery) ([]store.RequestLog, error) {
	where, args := sqlkit.LogWhere(q, sqlkit.Question)
	page, args := sqlkit.LogPage(q, args, sqlkit.Question)
	rows, err := s.db.QueryContext(ctx, `
		SELECT time, access_key_id, key_id, method, path, model, stream, status, attempts, latency_us,
		       ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens, total_tokens, error, limit_hit
		FROM request_logs `+where+` ORDER BY time DESC, id DESC`+page, args...)
	if err != nil {
		return nil, fmt.Errorf("store: recent requests: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.RequestLogs(rows)
	if err != nil {
		return nil, fmt.Errorf("store: recent requests: %w", err)
	}
	return out, nil
}

// RecentErrors returns failed upstream attempts matching q, newest first.
func (s *Store) RecentErrors(ctx context.Context, q store.LogQuery) ([]store.ErrorLog, error) {
	where, args := sqlkit.LogWhere(q, sqlkit.Question)
	page, args := sqlkit.LogPage(q, args, sqlkit.Question)
	rows, err := s.db.QueryContext(ctx, `
		SELECT time, key_id, access_key_id, model, path, status, message
		FROM error_logs `+where+` ORDER BY time DESC, id DESC`+page, args...)
	if err != nil {
		return nil, fmt.Errorf("store: recent errors: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.ErrorLogs(rows)
	if err != nil {
		return nil, fmt.Errorf("store: recent errors: %w", err)
	}
	return out, nil
}
