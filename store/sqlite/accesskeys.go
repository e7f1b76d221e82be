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

// AddAccessKey stores the hash of secret (trimmed of white space) under label, with policy (JSON;
// empty for none), and returns its id, clearing a tombstone of it: a key added by hand is wanted,
// even if the config lists it too. It returns ErrDuplicate if that hash is already stored.
// Ids are never reused, not even those of deleted keys.
func (s *Store) AddAccessKey(ctx context.Context, secret, label, policy string) (int64, error) {
	secret = strings.TrimSpace(secret)
	if secret == "" {
		return 0, errors.New("store: empty access key")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var id int64
	// Added by hand (not from the config): a tombstone from an earlier delete no longer applies.
	_, err = insertSecrets(ctx, tx, tombAccessKey, []string{secret}, false, func(_ int, _ string, h [32]byte) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO access_keys (hash, label, policy, created_at) VALUES (?, ?, ?, ?)`,
			h[:], label, policy, toMS(time.Now()))
		if err != nil {
			if isUniqueViolation(err) {
				return store.ErrDuplicate
			}
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	if errors.Is(err, store.ErrDuplicate) {
		return 0, store.ErrDuplicate
	}
	if err != nil {
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	return id, nil
}

// EnsureAccessKeys stores the hashes of the config's secrets (trimmed of white space) that are
// not stored yet, labelled label, in one transaction. Empty secrets are skipped, and so are the
// ones deleted in the admin panel (a tombstone is stored). It returns how many were added and
// how many were skipped as deleted.
func (s *Store) EnsureAccessKeys(ctx context.Context, secrets []string, label string) (added, skipped int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO access_keys (hash, label, created_at) VALUES (?, ?, ?)`)
	if err != nil {
		return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
	}
	now := toMS(time.Now())
	skipped, err = insertSecrets(ctx, tx, tombAccessKey, secrets, true, func(_ int, _ string, h [32]byte) error {
		res, err := stmt.ExecContext(ctx, h[:], label, now)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		added += int(n)
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
	}
	return added, skipped, nil
}

// ApplyConfigAccessKeys records the Caddyfile's access_key entries, seen at a start or reload,
// in one transaction, and returns how many keys it added and how many it skipped as deleted.
// Secrets are trimmed of white space; empty ones are skipped, and so are the ones deleted in
// the admin panel (a tombstone is stored), as in EnsureAccessKeys. A key not stored yet is
// added with the entry's label and policy. For a stored key the newer edit wins, as in
// ApplyConfigSetting, for the label and the policy each: if the entry's value differs from the
// one the config gave last time (or the config never gave one), it becomes the key's value;
// otherwise the key keeps its value, which may have been edited in the admin panel since. A
// secret listed twice ends with its later entry.
func (s *Store) ApplyConfigAccessKeys(ctx context.Context, keys []store.ConfigAccessKey) (added, skipped int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("store: apply config access keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	insert, err := tx.PrepareContext(ctx, `
		INSERT OR IGNORE INTO access_keys (hash, label, policy, config_label, config_policy, created_at)
		VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return 0, 0, fmt.Errorf("store: apply config access keys: %w", err)
	}
	defer insert.Close()
	// IS NOT compares NULL (never set by the config) as a value unlike any string.
	update, err := tx.PrepareContext(ctx, `
		UPDATE access_keys SET
			label = CASE WHEN config_label IS NOT ?1 THEN ?1 ELSE label END, config_label = ?1,
			policy = CASE WHEN config_policy IS NOT ?2 THEN ?2 ELSE policy END, config_policy = ?2
		WHERE hash = ?3`)
	if err != nil {
		return 0, 0, fmt.Errorf("store: apply config access keys: %w", err)
	}
	defer update.Close()
	secrets := make([]string, len(keys))
	for i, k := range keys {
		secrets[i] = k.Secret
	}
	now := toMS(time.Now())
	skipped, err = insertSecrets(ctx, tx, tombAccessKey, secrets, true, func(i int, _ string, h [32]byte) error {
		k := keys[i]
		res, err := insert.ExecContext(ctx, h[:], k.Label, k.Policy, k.Label, k.Policy, now)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			added++
			return nil
		}
		_, err = update.ExecContext(ctx, k.Label, k.Policy, h[:])
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("store: apply config access keys: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("store: apply config access keys: %w", err)
	}
	return added, skipped, nil
}

// UpdateAccessKey applies u to the access key id, or returns ErrNotFound. It is an edit made in
// the admin panel: the values the Caddyfile gave last are kept, so a config load with the same
// entry keeps this edit (see ApplyConfigAccessKeys).
func (s *Store) UpdateAccessKey(ctx context.Context, id int64, u store.AccessKeyUpdate) error {
	res, err := s.db.ExecContext(ctx, `
		UPDATE access_keys SET label = COALESCE(?, label), policy = COALESCE(?, policy) WHERE id = ?`,
		u.Label, u.Policy, id)
	if err != nil {
		return fmt.Errorf("store: update access key: %w", err)
	}
	return mustAffect(res)
}

// AccessKeys returns all access keys ordered by id.
func (s *Store) AccessKeys(ctx context.Context) ([]store.AccessKey, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, hash, label, enabled, created_at, last_used_at, policy FROM access_keys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: access keys: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.AccessKeys(rows)
	if err != nil {
		return nil, fmt.Errorf("store: access keys: %w", err)
	}
	return out, nil
}

// SetAccessKeyEnabled enables or disables an access key.
func (s *Store) SetAccessKeyEnabled(ctx context.Context, id int64, enabled bool) error {
	res, err := s.db.ExecContext(ctx, `UPDATE access_keys SET enabled = ? WHERE id = ?`, enabled, id)
	if err != nil {
		return fmt.Errorf("store: set access key enabled: %w", err)
	}
	return mustAffect(res)
}

// DeleteAccessKey deletes an access key; its log rows stay.
func (s *Store) DeleteAccessKey(ctx context.Context, id int64) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: delete access key: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var hash []byte
	if err := tx.QueryRowContext(ctx, `DELETE FROM access_keys WHERE id = ? RETURNING hash`, id).Scan(&hash); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return fmt.Errorf("store: delete access key: %w", err)
	}
	var h [32]byte
	copy(h[:], hash)
	if err := addTombstone(ctx, tx, tombAccessKey, h); err != nil {
		return fmt.Errorf("store: delete access key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: delete access key: %w", err)
	}
	return nil
}
