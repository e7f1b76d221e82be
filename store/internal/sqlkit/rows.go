package sqlkit

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Each decoder reads rows of the columns its comment names, in that order, and returns the
// first error of a row or of rows as it is (the engine names the operation).

// Keys reads (id, secret, project, status, disabled_reason, manual_disabled, failure_count,
// last_error, last_used_at, requests, failed_requests, created_at).
func Keys(rows Rows) ([]store.Key, error) {
	return collect(rows, func(rows Rows) (store.Key, error) {
		var k store.Key
		var lastUsed, created int64
		err := rows.Scan(&k.ID, &k.Secret, &k.Project, &k.Status, &k.DisabledReason, &k.ManualDisabled,
			&k.Failures, &k.LastError, &lastUsed, &k.Requests, &k.FailedRequests, &created)
		k.LastUsedAt, k.CreatedAt = FromMS(lastUsed), FromMS(created)
		return k, err
	})
}

// Cooldowns reads (key_id, model, until).
func Cooldowns(rows Rows) ([]store.Cooldown, error) {
	return collect(rows, func(rows Rows) (store.Cooldown, error) {
		var c store.Cooldown
		var until int64
		err := rows.Scan(&c.KeyID, &c.Model, &until)
		c.Until = FromMS(until)
		return c, err
	})
}

// AccessKeys reads (id, hash, label, enabled, created_at, last_used_at, policy); a hash that
// is not a SHA-256 is an error.
func AccessKeys(rows Rows) ([]store.AccessKey, error) {
	return collect(rows, func(rows Rows) (store.AccessKey, error) {
		var k store.AccessKey
		var hash []byte
		var created, lastUsed int64
		if err := rows.Scan(&k.ID, &hash, &k.Label, &k.Enabled, &created, &lastUsed, &k.Policy); err != nil {
			return k, err
		}
		if len(hash) != len(k.Hash) {
			return k, fmt.Errorf("access key %d: hash has %d bytes", k.ID, len(hash))
		}
		copy(k.Hash[:], hash)
		k.CreatedAt, k.LastUsedAt = FromMS(created), FromMS(lastUsed)
		return k, nil
	})
}

// RequestLogs reads (time, access_key_id, key_id, method, path, model, stream, status,
// attempts, latency_us, ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens,
// total_tokens, error, limit_hit).
func RequestLogs(rows Rows) ([]store.RequestLog, error) {
	return collect(rows, func(rows Rows) (store.RequestLog, error) {
		var r store.RequestLog
		var t, latency, ttfb int64
		err := rows.Scan(&t, &r.AccessKeyID, &r.KeyID, &r.Method, &r.Path, &r.Model, &r.Stream,
			&r.Status, &r.Attempts, &latency, &ttfb, &r.PromptTokens, &r.CandidatesTokens,
			&r.ThoughtsTokens, &r.TotalTokens, &r.Error, &r.LimitHit)
		r.Time = FromMS(t)
		r.Latency = time.Duration(latency) * time.Microsecond
		r.TTFB = time.Duration(ttfb) * time.Microsecond
		return r, err
	})
}

// ErrorLogs reads (time, key_id, access_key_id, model, path, status, message).
func ErrorLogs(rows Rows) ([]store.ErrorLog, error) {
	return collect(rows, func(rows Rows) (store.ErrorLog, error) {
		var e store.ErrorLog
		var t int64
		err := rows.Scan(&t, &e.KeyID, &e.AccessKeyID, &e.Model, &e.Path, &e.Status, &e.Message)
		e.Time = FromMS(t)
		return e, err
	})
}

// Buckets reads (i, requests, failures, prompt_tokens, candidates_tokens, total_tokens), at
// most one row per bucket i of n: the usage of each bucket, zero where no row names it.
func Buckets(rows Rows, n int) ([]store.Usage, error) {
	out := make([]store.Usage, n)
	for rows.Next() {
		var i int
		var u store.Usage
		if err := rows.Scan(&i, &u.Requests, &u.Failures, &u.PromptTokens, &u.CandidatesTokens, &u.TotalTokens); err != nil {
			return nil, err
		}
		out[i] = u
	}
	return out, rows.Err()
}

// ModelUsage reads (model, requests, failures, prompt_tokens, candidates_tokens, total_tokens).
func ModelUsage(rows Rows) ([]store.ModelUsage, error) {
	return collect(rows, func(rows Rows) (store.ModelUsage, error) {
		var m store.ModelUsage
		err := rows.Scan(&m.Model, &m.Requests, &m.Failures, &m.PromptTokens, &m.CandidatesTokens, &m.TotalTokens)
		return m, err
	})
}

// AccessKeyUsage reads (access_key_id, limit_hit, requests, failures, prompt_tokens,
// candidates_tokens, total_tokens), a row per access key and limit hit, and adds them up per
// access key: what the limits refused ("" is none) counts in Limited and LimitsHit too. The
// most requested key comes first (ties by id).
func AccessKeyUsage(rows Rows) ([]store.AccessKeyUsage, error) {
	byID := make(map[int64]*store.AccessKeyUsage)
	for rows.Next() {
		var id int64
		var limit string
		var u store.Usage
		if err := rows.Scan(&id, &limit, &u.Requests, &u.Failures, &u.PromptTokens, &u.CandidatesTokens,
			&u.TotalTokens); err != nil {
			return nil, err
		}
		a := byID[id]
		if a == nil {
			a = &store.AccessKeyUsage{AccessKeyID: id, LimitsHit: make(map[string]int64)}
			byID[id] = a
		}
		a.Requests += u.Requests
		a.Failures += u.Failures
		a.PromptTokens += u.PromptTokens
		a.CandidatesTokens += u.CandidatesTokens
		a.TotalTokens += u.TotalTokens
		if limit != "" {
			a.Limited += u.Requests
			a.LimitsHit[limit] += u.Requests
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]store.AccessKeyUsage, 0, len(byID))
	for _, a := range byID {
		out = append(out, *a)
	}
	slices.SortFunc(out, func(a, b store.AccessKeyUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.AccessKeyID, b.AccessKeyID))
	})
	return out, nil
}

// Counts reads (access_key_id, requests, tokens).
func Counts(rows Rows) (map[int64]store.Counts, error) {
	out := make(map[int64]store.Counts)
	for rows.Next() {
		var id int64
		var c store.Counts
		if err := rows.Scan(&id, &c.Requests, &c.Tokens); err != nil {
			return nil, err
		}
		out[id] = c
	}
	return out, rows.Err()
}

// KeyCounts reads (key_id, count).
func KeyCounts(rows Rows) (map[int64]int, error) {
	out := make(map[int64]int)
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// Owners reads (name, key_id, access_key_id) into out.
func Owners(rows Rows, out map[string]store.Owner) error {
	for rows.Next() {
		var name string
		var o store.Owner
		if err := rows.Scan(&name, &o.KeyID, &o.AccessKeyID); err != nil {
			return err
		}
		out[name] = o
	}
	return rows.Err()
}

// Settings reads (name, value).
func Settings(rows Rows) (map[string]string, error) {
	out := make(map[string]string)
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, err
		}
		out[name] = value
	}
	return out, rows.Err()
}
