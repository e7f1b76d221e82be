package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Usage adds up request log rows. A request succeeded when its status is 2xx or 3xx.
type Usage struct {
	Requests         int64
	Failures         int64
	PromptTokens     int64
	CandidatesTokens int64
	TotalTokens      int64
}

// ModelUsage is the usage of one model.
type ModelUsage struct {
	Model string
	Usage
}

// maxBuckets bounds the number of buckets one UsageBuckets call may ask for.
const maxBuckets = 1000

// UsageBuckets adds up the request log rows in each interval [bounds[i], bounds[i+1]), so it
// returns len(bounds)-1 results. The caller chooses the bounds, which is how buckets follow a
// time zone's calendar (an hour or a day is not always 3600 or 86400 s there). Bounds must
// increase; at most 1000 buckets.
func (s *Store) UsageBuckets(ctx context.Context, bounds []time.Time) ([]Usage, error) {
	n := len(bounds) - 1
	if n < 1 {
		return nil, errors.New("store: usage buckets: need at least two bounds")
	}
	if n > maxBuckets {
		return nil, fmt.Errorf("store: usage buckets: %d buckets, at most %d", n, maxBuckets)
	}
	values := make([]string, n)
	args := make([]any, 0, 3*n)
	for i := range n {
		if !bounds[i].Before(bounds[i+1]) {
			return nil, fmt.Errorf("store: usage buckets: bound %d is not after bound %d", i+1, i)
		}
		values[i] = "(?, ?, ?)"
		args = append(args, i, toMS(bounds[i]), toMS(bounds[i+1]))
	}
	// Each bucket is one range scan of the time index.
	rows, err := s.db.QueryContext(ctx, `
		WITH b (i, lo, hi) AS (VALUES `+strings.Join(values, ", ")+`)
		SELECT b.i, COUNT(*),
		       COALESCE(SUM(r.status NOT BETWEEN 200 AND 399), 0),
		       COALESCE(SUM(r.prompt_tokens), 0), COALESCE(SUM(r.candidates_tokens), 0),
		       COALESCE(SUM(r.total_tokens), 0)
		FROM b JOIN request_logs r ON r.time >= b.lo AND r.time < b.hi
		GROUP BY b.i`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: usage buckets: %w", err)
	}
	defer rows.Close()
	out := make([]Usage, n)
	for rows.Next() {
		var i int
		var u Usage
		if err := rows.Scan(&i, &u.Requests, &u.Failures, &u.PromptTokens, &u.CandidatesTokens, &u.TotalTokens); err != nil {
			return nil, fmt.Errorf("store: usage buckets: %w", err)
		}
		out[i] = u
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: usage buckets: %w", err)
	}
	return out, nil
}

// UsageByModel adds up the request log rows in [from, to) per model, the most requested first
// (ties by name), at most limit models (0 means 50).
func (s *Store) UsageByModel(ctx context.Context, from, to time.Time, limit int) ([]ModelUsage, error) {
	if limit <= 0 {
		limit = 50
	}
	rows, err := s.db.QueryContext(ctx, `
		SELECT model, COUNT(*) AS n, SUM(status NOT BETWEEN 200 AND 399),
		       SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
		FROM request_logs WHERE time >= ? AND time < ?
		GROUP BY model ORDER BY n DESC, model LIMIT ?`, toMS(from), toMS(to), limit)
	if err != nil {
		return nil, fmt.Errorf("store: usage by model: %w", err)
	}
	defer rows.Close()
	var out []ModelUsage
	for rows.Next() {
		var m ModelUsage
		if err := rows.Scan(&m.Model, &m.Requests, &m.Failures, &m.PromptTokens, &m.CandidatesTokens, &m.TotalTokens); err != nil {
			return nil, fmt.Errorf("store: usage by model: %w", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: usage by model: %w", err)
	}
	return out, nil
}
