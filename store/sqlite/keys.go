package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// AddKeys adds upstream keys in one transaction, as an operator's explicit add: a key deleted
// before (see DeleteKey) is added again and its tombstone cleared. Secrets are trimmed of
// white space; empty ones and ones already stored are skipped. It returns how many were added.
// It is AddLabeledKeys without labels.
func (s *Store) AddKeys(ctx context.Context, secrets []string) (added int, err error) {
	res, err := s.AddLabeledKeys(ctx, store.NewKeys(secrets))
	return res.Added, err
}

// AddConfigKeys adds the upstream keys of the config as AddKeys does, but skips the ones
// deleted in the admin panel (a tombstone is stored): it returns how many were added and how
// many were skipped for that reason.
func (s *Store) AddConfigKeys(ctx context.Context, secrets []string) (added, skipped int, err error) {
	res, skipped, err := s.addKeys(ctx, store.NewKeys(secrets), true)
	return res.Added, skipped, err
}

// addKeys adds keys in one transaction. From the config, a tombstoned secret is skipped (and
// counted); else its tombstone is cleared (see insertSecrets). A non-empty label of a key
// already stored replaces its label. Labels are checked before anything is written.
func (s *Store) addKeys(ctx context.Context, keys []store.NewKey, fromConfig bool) (res store.AddResult, skipped int, err error) {
	for i := range keys {
		if err := store.CheckProject(strings.TrimSpace(keys[i].Project)); err != nil {
			return store.AddResult{}, 0, fmt.Errorf("store: add keys: project of key %d: %w", i+1, err)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return store.AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO keys (secret, project, created_at) VALUES (?, ?, ?)`)
	if err != nil {
		return store.AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	relabel, err := tx.PrepareContext(ctx, `UPDATE keys SET project = ? WHERE secret = ? AND project <> ? RETURNING id`)
	if err != nil {
		return store.AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	now := toMS(time.Now())
	secrets := make([]string, len(keys))
	for i, k := range keys {
		secrets[i] = k.Secret
	}
	skipped, err = insertSecrets(ctx, tx, tombKey, secrets, fromConfig, func(i int, secret string, _ [32]byte) error {
		project := strings.TrimSpace(keys[i].Project)
		r, err := stmt.ExecContext(ctx, secret, project, now)
		if err != nil {
			return err
		}
		if n, _ := r.RowsAffected(); n > 0 {
			res.Added++
			return nil
		}
		if project == "" {
			return nil // already stored; no label given, so its own stays
		}
		var id int64
		switch err := relabel.QueryRowContext(ctx, project, secret, project).Scan(&id); {
		case errors.Is(err, sql.ErrNoRows): // it has this label already
		case err != nil:
			return err
		default:
			res.Relabeled = append(res.Relabeled, store.KeyProject{KeyID: id, Project: project})
		}
		return nil
	})
	if err != nil {
		return store.AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return store.AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	return res, skipped, nil
}

// Keys returns all upstream keys ordered by id.
func (s *Store) Keys(ctx context.Context) ([]store.Key, error) {
	rows, err := s.db.QueryContext(ctx, `
		SELECT id, secret, project, status, disabled_reason, manual_disabled, failure_count, last_error,
		       last_used_at, requests, failed_requests, created_at
		FROM keys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: keys: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.Keys(rows)
	if err != nil {
		return nil, fmt.Errorf("store: keys: %w", err)
	}
	return out, nil
}

// DeleteKey deletes an upstream key and its cooldowns; its log rows stay.
func (s *Store) DeleteKey(ctx context.Context, id int64) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: delete key: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var secret string
	if err := tx.QueryRowContext(ctx, `DELETE FROM keys WHERE id = ? RETURNING secret`, id).Scan(&secret); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return fmt.Errorf("store: delete key: %w", err)
	}
	if err := addTombstone(ctx, tx, tombKey, store.HashSecret(secret)); err != nil {
		return fmt.Errorf("store: delete key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: delete key: %w", err)
	}
	return nil
}

// SetKeyStatus is an operator's enable or disable. Disabling records reason and whether it was
// manual (a pool state saved later does not re-enable a manually disabled key). Enabling clears
// the manual flag, the reason and the failure count, and deletes the key's cooldowns. Key state
// saved with SaveKeyState before the call and not yet written is discarded, so it cannot
// overwrite this decision.
func (s *Store) SetKeyStatus(ctx context.Context, id int64, status, reason string, manual bool) error {
	var query string
	var args []any
	switch status {
	case store.StatusActive:
		query = `UPDATE keys SET status = 'active', disabled_reason = '', manual_disabled = 0, failure_count = 0 WHERE id = ?`
		args = []any{id}
	case store.StatusDisabled:
		query = `UPDATE keys SET status = 'disabled', disabled_reason = ?, manual_disabled = ? WHERE id = ?`
		args = []any{reason, manual, id}
	default:
		return fmt.Errorf("store: invalid key status %q", status)
	}
	return s.setKeyStatus(ctx, id, query, args, status == store.StatusActive)
}

// ReviveKey puts back into service a key that validation found working, as SetKeyStatus does
// with StatusActive, unless an operator disabled it by hand (or deleted it) while it was being
// checked: then it changes nothing and reports false.
func (s *Store) ReviveKey(ctx context.Context, id int64) (bool, error) {
	err := s.setKeyStatus(ctx, id,
		`UPDATE keys SET status = 'active', disabled_reason = '', failure_count = 0 WHERE id = ? AND manual_disabled = 0`,
		[]any{id}, true)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// setKeyStatus runs query (an UPDATE of key id) in a transaction that holds off the log writer;
// active also deletes the key's cooldowns. ErrNotFound when no row changed.
func (s *Store) setKeyStatus(ctx context.Context, id int64, query string, args []any, active bool) error {
	// Hold off the writer so a batch in flight cannot land after this write.
	unlock := s.w.Exclude(id, active)
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: set key status: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("store: set key status: %w", err)
	}
	if err := mustAffect(res); err != nil {
		return err
	}
	if active {
		if _, err := tx.ExecContext(ctx, `DELETE FROM cooldowns WHERE key_id = ?`, id); err != nil {
			return fmt.Errorf("store: set key status: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: set key status: %w", err)
	}
	return nil
}

// Cooldowns returns the cooldowns still running at now.
func (s *Store) Cooldowns(ctx context.Context, now time.Time) ([]store.Cooldown, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT key_id, model, until FROM cooldowns WHERE until > ? ORDER BY key_id, model`, toMS(now))
	if err != nil {
		return nil, fmt.Errorf("store: cooldowns: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.Cooldowns(rows)
	if err != nil {
		return nil, fmt.Errorf("store: cooldowns: %w", err)
	}
	return out, nil
}
