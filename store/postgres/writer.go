package postgres

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
)

// Log rows and runtime key state go through the batched writer of store/internal/batch; this
// file is its PostgreSQL side: the options, which errors pass, and one batch's transaction
// (the rows with COPY, their sums and the key state in one batch of statements).

// maxAttempts bounds retries of a batch failing for a reason that is not transient (see
// transient); such a failure is unlikely to heal and must not stall logging forever. A
// transient failure (the server is down or unreachable) is retried for as long as it lasts.
const maxAttempts = 10

// retryLogEvery is how often a batch that keeps failing is logged again after its first failure.
const retryLogEvery = 30 * time.Second

// committer writes the writer's batches to pool.
type committer struct {
	pool    *pgxpool.Pool
	timeout time.Duration // longest one batch transaction may take before it counts as failed
}

// Transient is transient.
func (c *committer) Transient(err error) bool { return transient(err) }

// The columns COPY fills, in the order of batch.RequestValues and batch.ErrorValues.
var (
	requestColumns = []string{"time", "access_key_id", "key_id", "method", "path", "model", "stream",
		"status", "attempts", "latency_us", "ttfb_us", "prompt_tokens", "candidates_tokens", "thoughts_tokens",
		"total_tokens", "error", "limit_hit"}
	errorColumns = []string{"time", "key_id", "access_key_id", "model", "path", "status", "message"}
)

// The statements adding a batch to the rollups and to the keys' state, each taking its rows
// as arrays (one round trip whatever their number). Rows are sorted by their key, so that two
// instances writing the same rows lock them in the same order.
const (
	sqlSlotUsage = `
		INSERT INTO request_usage (slot, model, requests, failures, prompt_tokens, candidates_tokens, total_tokens)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
		ON CONFLICT (slot, model) DO UPDATE SET requests = request_usage.requests + excluded.requests,
			failures = request_usage.failures + excluded.failures,
			prompt_tokens = request_usage.prompt_tokens + excluded.prompt_tokens,
			candidates_tokens = request_usage.candidates_tokens + excluded.candidates_tokens,
			total_tokens = request_usage.total_tokens + excluded.total_tokens`
	sqlAccessSlotUsage = `
		INSERT INTO access_key_usage (slot, access_key_id, model, limit_hit, requests, failures, prompt_tokens,
			candidates_tokens, total_tokens)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
			$7::bigint[], $8::bigint[], $9::bigint[])
		ON CONFLICT (slot, access_key_id, model, limit_hit) DO UPDATE SET
			requests = access_key_usage.requests + excluded.requests,
			failures = access_key_usage.failures + excluded.failures,
			prompt_tokens = access_key_usage.prompt_tokens + excluded.prompt_tokens,
			candidates_tokens = access_key_usage.candidates_tokens + excluded.candidates_tokens,
			total_tokens = access_key_usage.total_tokens + excluded.total_tokens`
	sqlKeyUsage = `
		UPDATE keys k SET requests = k.requests + u.requests, failed_requests = k.failed_requests + u.failed,
			last_used_at = GREATEST(k.last_used_at, u.last)
		FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u (id, requests, failed, last)
		WHERE k.id = u.id`
	sqlAccessKeyUsed = `
		UPDATE access_keys a SET last_used_at = GREATEST(a.last_used_at, u.last)
		FROM unnest($1::bigint[], $2::bigint[]) AS u (id, last) WHERE a.id = u.id`
	// The pool never overrides an operator: a manually disabled key keeps status and reason.
	sqlKeyState = `
		UPDATE keys k SET
			status = CASE WHEN k.manual_disabled THEN k.status WHEN u.disabled THEN 'disabled' ELSE 'active' END,
			disabled_reason = CASE WHEN k.manual_disabled THEN k.disabled_reason WHEN u.disabled THEN u.reason ELSE '' END,
			failure_count = u.failures, last_error = u.last_error
		FROM unnest($1::bigint[], $2::boolean[], $3::text[], $4::int[], $5::text[])
			AS u (id, disabled, reason, failures, last_error)
		WHERE k.id = u.id`
	// A cooldown of a key deleted meanwhile is skipped rather than failing the batch on the
	// foreign key.
	sqlCooldown = `
		INSERT INTO cooldowns (key_id, model, until)
		SELECT u.key_id, u.model, u.until FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u (key_id, model, until)
		WHERE EXISTS (SELECT 1 FROM keys WHERE id = u.key_id)
		ON CONFLICT (key_id, model) DO UPDATE SET until = excluded.until`
	// A learned project label fills an empty one only: an operator's label always wins.
	sqlLearnedProject = `
		UPDATE keys k SET project = u.project FROM unnest($1::bigint[], $2::text[]) AS u (id, project)
		WHERE k.id = u.id AND k.project = ''`
)

// Commit writes b in one transaction: the rows with COPY, then their sums and the saved key
// state in one batch of statements.
func (c *committer) Commit(b *batch.Batch) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.Background())
		}
	}()
	if len(b.Requests) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"request_logs"}, requestColumns,
			&copySource{rows: b.Requests, row: batch.RequestValues}); err != nil {
			return fmt.Errorf("copy request rows: %w", err)
		}
	}
	if len(b.Errors) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"error_logs"}, errorColumns,
			&copySource{rows: b.Errors, row: batch.ErrorValues}); err != nil {
			return fmt.Errorf("copy error rows: %w", err)
		}
	}

	var q pgx.Batch
	queueSums(&q, b)
	queueKeyState(&q, b)
	if q.Len() > 0 {
		if err := tx.SendBatch(ctx, &q).Close(); err != nil {
			return fmt.Errorf("sums and key state: %w", err)
		}
	}
	if err = tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// queueSums queues the statements adding the batch's sums to request_usage, access_key_usage,
// the keys' counters and the access keys' last use.
func queueSums(q *pgx.Batch, b *batch.Batch) {
	if n := len(b.Slots); n > 0 {
		keys := slices.SortedFunc(maps.Keys(b.Slots), func(x, y batch.SlotKey) int {
			return cmp.Or(cmp.Compare(x.Slot, y.Slot), strings.Compare(x.Model, y.Model))
		})
		slot, model := make([]int64, n), make([]string, n)
		var u usageArrays
		for i, k := range keys {
			slot[i], model[i] = k.Slot, k.Model
			u.add(b.Slots[k])
		}
		q.Queue(sqlSlotUsage, slot, model, u.requests, u.failures, u.prompt, u.candidates, u.total)
	}
	if n := len(b.AccessSlots); n > 0 {
		keys := slices.SortedFunc(maps.Keys(b.AccessSlots), func(x, y batch.AccessSlotKey) int {
			return cmp.Or(cmp.Compare(x.Slot, y.Slot), cmp.Compare(x.AccessKeyID, y.AccessKeyID),
				strings.Compare(x.Model, y.Model), strings.Compare(x.LimitHit, y.LimitHit))
		})
		slot, id, model, limit := make([]int64, n), make([]int64, n), make([]string, n), make([]string, n)
		var u usageArrays
		for i, k := range keys {
			slot[i], id[i], model[i], limit[i] = k.Slot, k.AccessKeyID, k.Model, k.LimitHit
			u.add(b.AccessSlots[k])
		}
		q.Queue(sqlAccessSlotUsage, slot, id, model, limit, u.requests, u.failures, u.prompt, u.candidates, u.total)
	}
	if n := len(b.KeyUsage); n > 0 {
		ids := slices.Sorted(maps.Keys(b.KeyUsage))
		requests, failed, last := make([]int64, n), make([]int64, n), make([]int64, n)
		for i, id := range ids {
			u := b.KeyUsage[id]
			requests[i], failed[i], last[i] = u.Requests, u.Failed, u.LastUsed
		}
		q.Queue(sqlKeyUsage, ids, requests, failed, last)
	}
	if n := len(b.AccessUse); n > 0 {
		ids := slices.Sorted(maps.Keys(b.AccessUse))
		last := make([]int64, n)
		for i, id := range ids {
			last[i] = b.AccessUse[id]
		}
		q.Queue(sqlAccessKeyUsed, ids, last)
	}
}

// queueKeyState queues the statements writing the saved key states, cooldowns and learned
// project labels.
func queueKeyState(q *pgx.Batch, b *batch.Batch) {
	if n := len(b.States); n > 0 {
		slices.SortFunc(b.States, func(x, y store.KeyState) int { return cmp.Compare(x.KeyID, y.KeyID) })
		ids, disabled, reason, failures, lastErr := make([]int64, n), make([]bool, n), make([]string, n),
			make([]int32, n), make([]string, n)
		for i, k := range b.States {
			ids[i], disabled[i], reason[i], failures[i], lastErr[i] = k.KeyID, k.Disabled, k.Reason, int32(k.Failures), k.LastError
		}
		q.Queue(sqlKeyState, ids, disabled, reason, failures, lastErr)
	}
	if n := len(b.Cooldowns); n > 0 {
		ids, model, until := make([]int64, n), make([]string, n), make([]int64, n)
		for i, cd := range b.Cooldowns {
			ids[i], model[i], until[i] = cd.KeyID, cd.Model, cd.Until
		}
		q.Queue(sqlCooldown, ids, model, until)
	}
	if n := len(b.Projects); n > 0 {
		ids, project := make([]int64, n), make([]string, n)
		for i, p := range b.Projects {
			ids[i], project[i] = p.KeyID, p.Project
		}
		q.Queue(sqlLearnedProject, ids, project)
	}
}

// usageArrays are the sums of several rollup rows, column by column.
type usageArrays struct {
	requests, failures, prompt, candidates, total []int64
}

func (a *usageArrays) add(u store.Usage) {
	a.requests = append(a.requests, u.Requests)
	a.failures = append(a.failures, u.Failures)
	a.prompt = append(a.prompt, u.PromptTokens)
	a.candidates = append(a.candidates, u.CandidatesTokens)
	a.total = append(a.total, u.TotalTokens)
}

// copySource feeds entries to CopyFrom, one reused slice of values per row (pgx encodes each
// row before asking for the next).
type copySource struct {
	rows   []*batch.Entry
	values []any
	row    func([]any, *batch.Entry) []any
	i      int
}

func (c *copySource) Next() bool {
	c.i++
	return c.i <= len(c.rows)
}

func (c *copySource) Values() ([]any, error) {
	c.values = c.row(c.values[:0], c.rows[c.i-1])
	return c.values, nil
}

func (c *copySource) Err() error { return nil }
