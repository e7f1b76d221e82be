package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
)

// Log rows and runtime key state go through the batched writer of store/internal/batch; this
// file is its SQLite side: the options and one batch's transaction.

// maxAttempts bounds retries of a batch failing for a reason other than a busy database; such a
// failure is unlikely to heal and must not stall logging forever.
const maxAttempts = 10

// committer writes the writer's batches to db.
type committer struct {
	db   *sql.DB
	args []any // reused by insertRows
}

// Transient reports whether err means another connection holds the lock: worth retrying.
func (c *committer) Transient(err error) bool { return isBusy(err) }

const (
	// Row inserts; insertRows appends one "(?, ...)" group per row.
	sqlInsertRequest = `INSERT INTO request_logs (time, access_key_id, key_id, method, path, model, stream,
		status, attempts, latency_us, ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens,
		total_tokens, error, limit_hit) VALUES `
	requestColumns = 17
	sqlInsertError = `INSERT INTO error_logs (time, key_id, access_key_id, model, path, status, message) VALUES `
	errorColumns   = 7
	sqlKeyUsage    = `UPDATE keys SET requests = requests + ?, failed_requests = failed_requests + ?,
		last_used_at = MAX(last_used_at, ?) WHERE id = ?`
	sqlAccessKeyUsed = `UPDATE access_keys SET last_used_at = MAX(last_used_at, ?) WHERE id = ?`
	sqlSlotUsage     = `INSERT INTO request_usage (slot, model, requests, failures, prompt_tokens,
		candidates_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (slot, model) DO UPDATE SET requests = requests + excluded.requests,
		failures = failures + excluded.failures, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
		candidates_tokens = candidates_tokens + excluded.candidates_tokens,
		total_tokens = total_tokens + excluded.total_tokens`
	sqlAccessSlotUsage = `INSERT INTO access_key_usage (slot, access_key_id, model, limit_hit, requests,
		failures, prompt_tokens, candidates_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (slot, access_key_id, model, limit_hit) DO UPDATE SET requests = requests + excluded.requests,
		failures = failures + excluded.failures, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
		candidates_tokens = candidates_tokens + excluded.candidates_tokens,
		total_tokens = total_tokens + excluded.total_tokens`
	// The pool never overrides an operator: a manually disabled key keeps status and reason.
	sqlKeyState = `UPDATE keys SET
		status = CASE WHEN manual_disabled THEN status WHEN ? THEN 'disabled' ELSE 'active' END,
		disabled_reason = CASE WHEN manual_disabled THEN disabled_reason WHEN ? THEN ? ELSE '' END,
		failure_count = ?, last_error = ? WHERE id = ?`
	// A cooldown of a key deleted meanwhile is skipped rather than failing the batch on the
	// foreign key.
	sqlCooldown = `INSERT INTO cooldowns (key_id, model, until)
		SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?)
		ON CONFLICT (key_id, model) DO UPDATE SET until = excluded.until`
	// A learned project label fills an empty one only: an operator's label always wins.
	sqlLearnedProject = `UPDATE keys SET project = ? WHERE id = ? AND project = ''`
)

// Commit writes b in one transaction.
func (c *committer) Commit(b *batch.Batch) (err error) {
	ctx := context.Background()
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	// Rows go in multi-row INSERTs of up to rowsPerInsert rows: SQLite's per-statement overhead
	// (and database/sql's) dominates single-row inserts.
	if err := c.insertRows(ctx, tx, sqlInsertRequest, requestColumns, b.Requests, batch.RequestValues); err != nil {
		return err
	}
	if err := c.insertRows(ctx, tx, sqlInsertError, errorColumns, b.Errors, batch.ErrorValues); err != nil {
		return err
	}
	// The request rows' sums per slot and model go in with them (schema step 4), and per slot,
	// access key, model and limit hit (step 6).
	if len(b.Slots) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlSlotUsage)
		if err != nil {
			return err
		}
		for k, u := range b.Slots {
			if _, err := stmt.ExecContext(ctx, k.Slot, k.Model, u.Requests, u.Failures,
				u.PromptTokens, u.CandidatesTokens, u.TotalTokens); err != nil {
				return err
			}
		}
	}
	if len(b.AccessSlots) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlAccessSlotUsage)
		if err != nil {
			return err
		}
		for k, u := range b.AccessSlots {
			if _, err := stmt.ExecContext(ctx, k.Slot, k.AccessKeyID, k.Model, k.LimitHit, u.Requests,
				u.Failures, u.PromptTokens, u.CandidatesTokens, u.TotalTokens); err != nil {
				return err
			}
		}
	}
	if len(b.KeyUsage) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlKeyUsage)
		if err != nil {
			return err
		}
		for id, u := range b.KeyUsage {
			if _, err := stmt.ExecContext(ctx, u.Requests, u.Failed, u.LastUsed, id); err != nil {
				return err
			}
		}
	}
	if len(b.AccessUse) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlAccessKeyUsed)
		if err != nil {
			return err
		}
		for id, last := range b.AccessUse {
			if _, err := stmt.ExecContext(ctx, last, id); err != nil {
				return err
			}
		}
	}
	if len(b.States) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlKeyState)
		if err != nil {
			return err
		}
		for _, k := range b.States {
			if _, err := stmt.ExecContext(ctx, k.Disabled, k.Disabled, k.Reason, k.Failures, k.LastError, k.KeyID); err != nil {
				return err
			}
		}
	}
	if len(b.Cooldowns) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlCooldown)
		if err != nil {
			return err
		}
		for _, cd := range b.Cooldowns {
			if _, err := stmt.ExecContext(ctx, cd.KeyID, cd.Model, cd.Until, cd.KeyID); err != nil {
				return err
			}
		}
	}
	if len(b.Projects) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlLearnedProject)
		if err != nil {
			return err
		}
		for _, p := range b.Projects {
			if _, err := stmt.ExecContext(ctx, p.Project, p.KeyID); err != nil {
				return err
			}
		}
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rowsPerInsert is the number of rows of one INSERT statement (times 17 columns, well under
// SQLite's limit of 32766 bound parameters).
const rowsPerInsert = 64

// insertRows inserts rows with the INSERT prefix, rowsPerInsert rows per statement.
func (c *committer) insertRows(ctx context.Context, tx *sql.Tx, prefix string, columns int,
	rows []*batch.Entry, appendArgs func([]any, *batch.Entry) []any) error {
	var full *sql.Stmt
	for len(rows) > 0 {
		n := min(len(rows), rowsPerInsert)
		var stmt *sql.Stmt
		var err error
		if n == rowsPerInsert && full != nil {
			stmt = full
		} else {
			stmt, err = tx.PrepareContext(ctx, insertSQL(prefix, columns, n))
			if err != nil {
				return err
			}
			if n == rowsPerInsert {
				full = stmt
			}
		}
		args := c.args[:0]
		for _, e := range rows[:n] {
			args = appendArgs(args, e)
		}
		_, err = stmt.ExecContext(ctx, args...)
		clear(args)
		c.args = args[:0]
		if err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// insertSQL returns prefix followed by n groups of columns placeholders.
func insertSQL(prefix string, columns, n int) string {
	group := "(" + strings.Repeat("?, ", columns-1) + "?)"
	var b strings.Builder
	b.Grow(len(prefix) + n*(len(group)+2))
	b.WriteString(prefix)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(group)
	}
	return b.String()
}
