package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// where returns the WHERE clause of q's filters (empty when none) and its arguments, numbered
// from $1.
func where(q store.LogQuery) (string, []any) {
	var conds []string
	var args []any
	add := func(col string, v any) {
		args = append(args, v)
		conds = append(conds, col+" = $"+strconv.Itoa(len(args)))
	}
	if q.Model != "" {
		add("model", q.Model)
	}
	if q.KeyID != 0 {
		add("key_id", q.KeyID)
	}
	if q.AccessKeyID != 0 {
		add("access_key_id", q.AccessKeyID)
	}
	if q.Status != 0 {
		add("status", q.Status)
	}
	if len(conds) == 0 {
		return "", args
	}
	return "WHERE " + strings.Join(conds, " AND "), args
}

// page appends q's LIMIT and OFFSET to args and returns the clause binding them: at most 10000
// rows, 100 when q says none.
func page(q store.LogQuery, args []any) (string, []any) {
	limit, offset := q.Page()
	args = append(args, limit, offset)
	n := len(args)
	return fmt.Sprintf(" LIMIT $%d OFFSET $%d", n-1, n), args
}

// CountRequests returns how many request log rows match q's filters (Limit and Offset aside).
func (s *Store) CountRequests(ctx context.Context, q store.LogQuery) (int64, error) {
	return s.countLogs(ctx, "request_logs", q)
}

// CountErrors returns how many error log rows match q's filters (Limit and Offset aside).
func (s *Store) CountErrors(ctx context.Context, q store.LogQuery) (int64, error) {
	return s.countLogs(ctx, "error_logs", q)
}

func (s *Store) countLogs(ctx context.Context, table string, q store.LogQuery) (int64, error) {
	w, args := where(q)
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM `+table+` `+w, args...).Scan(&n); err != nil {
		return 0, wrap("count "+table, err)
	}
	return n, nil
}

// CountRequestLogs returns the number of stored request log rows.
func (s *Store) CountRequestLogs(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM request_logs`).Scan(&n); err != nil {
		return 0, wrap("count request logs", err)
	}
	return n, nil
}

// RecentRequests returns request log rows matching q, newest first.
func (s *Store) RecentRequests(ctx context.Context, q store.LogQuery) ([]store.RequestLog, error) {
	w, args := where(q)
	p, args := page(q, args)
	rows, err := s.pool.Query(ctx, `
		SELECT time, access_key_id, key_id, method, path, model, stream, status, attempts, latency_us,
		       ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens, total_tokens, error, limit_hit
		FROM request_logs `+w+` ORDER BY time DESC, id DESC`+p, args...)
	if err != nil {
		return nil, wrap("recent requests", err)
	}
	defer rows.Close()
	var out []store.RequestLog
	for rows.Next() {
		var r store.RequestLog
		var t, latency, ttfb int64
		if err := rows.Scan(&t, &r.AccessKeyID, &r.KeyID, &r.Method, &r.Path, &r.Model, &r.Stream,
			&r.Status, &r.Attempts, &latency, &ttfb, &r.PromptTokens, &r.CandidatesTokens,
			&r.ThoughtsTokens, &r.TotalTokens, &r.Error, &r.LimitHit); err != nil {
			return nil, wrap("recent requests", err)
		}
		r.Time = fromMS(t)
		r.Latency = time.Duration(latency) * time.Microsecond
		r.TTFB = time.Duration(ttfb) * time.Microsecond
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("recent requests", err)
	}
	return out, nil
}

// RecentErrors returns failed upstream attempts matching q, newest first.
func (s *Store) RecentErrors(ctx context.Context, q store.LogQuery) ([]store.ErrorLog, error) {
	w, args := where(q)
	p, args := page(q, args)
	rows, err := s.pool.Query(ctx, `
		SELECT time, key_id, access_key_id, model, path, status, message
		FROM error_logs `+w+` ORDER BY time DESC, id DESC`+p, args...)
	if err != nil {
		return nil, wrap("recent errors", err)
	}
	defer rows.Close()
	var out []store.ErrorLog
	for rows.Next() {
		var e store.ErrorLog
		var t int64
		if err := rows.Scan(&t, &e.KeyID, &e.AccessKeyID, &e.Model, &e.Path, &e.Status, &e.Message); err != nil {
			return nil, wrap("recent errors", err)
		}
		e.Time = fromMS(t)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("recent errors", err)
	}
	return out, nil
}
