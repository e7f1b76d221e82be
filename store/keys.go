package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Key statuses.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
)

// Key is an upstream Google API key of the pool.
type Key struct {
	ID             int64
	Secret         string
	Project        string // Google Cloud project label, "" when unknown (see CheckProject)
	Status         string // StatusActive or StatusDisabled
	DisabledReason string
	ManualDisabled bool // disabled by an operator, not by the pool
	Failures       int  // consecutive failures
	LastError      string
	LastUsedAt     time.Time // zero if never used
	Requests       int64     // attempts sent with this key
	FailedRequests int64     // attempts that failed
	CreatedAt      time.Time
}

// AddKeys adds upstream keys in one transaction, as an operator's explicit add: a key deleted
// before (see DeleteKey) is added again and its tombstone cleared. Secrets are trimmed of
// white space; empty ones and ones already stored are skipped. It returns how many were added.
// It is AddLabeledKeys without labels.
func (s *Store) AddKeys(ctx context.Context, secrets []string) (added int, err error) {
	res, err := s.AddLabeledKeys(ctx, newKeys(secrets))
	return res.Added, err
}

// AddConfigKeys adds the upstream keys of the config as AddKeys does, but skips the ones
// deleted in the admin panel (a tombstone is stored): it returns how many were added and how
// many were skipped for that reason.
func (s *Store) AddConfigKeys(ctx context.Context, secrets []string) (added, skipped int, err error) {
	res, skipped, err := s.addKeys(ctx, newKeys(secrets), true)
	return res.Added, skipped, err
}

// newKeys turns secrets into unlabelled NewKeys.
func newKeys(secrets []string) []NewKey {
	keys := make([]NewKey, len(secrets))
	for i, secret := range secrets {
		keys[i] = NewKey{Secret: secret}
	}
	return keys
}

// addKeys adds keys in one transaction. From the config, a tombstoned secret is skipped (and
// counted); else its tombstone is cleared (see insertSecrets). A non-empty label of a key
// already stored replaces its label. Labels are checked before anything is written.
func (s *Store) addKeys(ctx context.Context, keys []NewKey, fromConfig bool) (res AddResult, skipped int, err error) {
	for i := range keys {
		if err := CheckProject(strings.TrimSpace(keys[i].Project)); err != nil {
			return AddResult{}, 0, fmt.Errorf("store: add keys: project of key %d: %w", i+1, err)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO keys (secret, project, created_at) VALUES (?, ?, ?)`)
	if err != nil {
		return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	relabel, err := tx.PrepareContext(ctx, `UPDATE keys SET project = ? WHERE secret = ? AND project <> ? RETURNING id`)
	if err != nil {
		return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
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
			res.Relabeled = append(res.Relabeled, KeyProject{KeyID: id, Project: project})
		}
		return nil
	})
	if err != nil {
		return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
	}
	return res, skipped, nil
}

// Keys returns all upstream keys ordered by id.
func (s *Store) Keys(ctx context.Context) ([]Key, error) {
	rows, err := s.db.QueryContext(ctx, `
		SELECT id, secret, project, status, disabled_reason, manual_disabled, failure_count, last_error,
		       last_used_at, requests, failed_requests, created_at
		FROM keys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: keys: %w", err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		var k Key
		var lastUsed, created int64
		if err := rows.Scan(&k.ID, &k.Secret, &k.Project, &k.Status, &k.DisabledReason, &k.ManualDisabled,
			&k.Failures, &k.LastError, &lastUsed, &k.Requests, &k.FailedRequests, &created); err != nil {
			return nil, fmt.Errorf("store: keys: %w", err)
		}
		k.LastUsedAt, k.CreatedAt = fromMS(lastUsed), fromMS(created)
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: keys: %w", err)
	}
	return keys, nil
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
			return ErrNotFound
		}
		return fmt.Errorf("store: delete key: %w", err)
	}
	if err := addTombstone(ctx, tx, tombKey, HashSecret(secret)); err != nil {
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
	case StatusActive:
		query = `UPDATE keys SET status = 'active', disabled_reason = '', manual_disabled = 0, failure_count = 0 WHERE id = ?`
		args = []any{id}
	case StatusDisabled:
		query = `UPDATE keys SET status = 'disabled', disabled_reason = ?, manual_disabled = ? WHERE id = ?`
		args = []any{reason, manual, id}
	default:
		return fmt.Errorf("store: invalid key status %q", status)
	}
	return s.setKeyStatus(ctx, id, query, args, status == StatusActive)
}

// ReviveKey puts back into service a key that validation found working, as SetKeyStatus does
// with StatusActive, unless an operator disabled it by hand (or deleted it) while it was being
// checked: then it changes nothing and reports false.
func (s *Store) ReviveKey(ctx context.Context, id int64) (bool, error) {
	err := s.setKeyStatus(ctx, id,
		`UPDATE keys SET status = 'active', disabled_reason = '', failure_count = 0 WHERE id = ? AND manual_disabled = 0`,
		[]any{id}, true)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// setKeyStatus runs query (an UPDATE of key id) in a transaction that holds off the log writer;
// active also deletes the key's cooldowns. ErrNotFound when no row changed.
func (s *Store) setKeyStatus(ctx context.Context, id int64, query string, args []any, active bool) error {
	// Hold off the writer so a batch in flight cannot land after this write.
	unlock := s.w.exclude(id, active)
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

// Cooldown keeps a key off one model until a time.
type Cooldown struct {
	KeyID int64
	Model string
	Until time.Time
}

// Cooldowns returns the cooldowns still running at now.
func (s *Store) Cooldowns(ctx context.Context, now time.Time) ([]Cooldown, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT key_id, model, until FROM cooldowns WHERE until > ? ORDER BY key_id, model`, toMS(now))
	if err != nil {
		return nil, fmt.Errorf("store: cooldowns: %w", err)
	}
	defer rows.Close()
	var out []Cooldown
	for rows.Next() {
		var c Cooldown
		var until int64
		if err := rows.Scan(&c.KeyID, &c.Model, &until); err != nil {
			return nil, fmt.Errorf("store: cooldowns: %w", err)
		}
		c.Until = fromMS(until)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: cooldowns: %w", err)
	}
	return out, nil
}
