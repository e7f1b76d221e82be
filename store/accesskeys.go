package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// AccessKey is a client credential. Only the SHA-256 of the secret is stored.
type AccessKey struct {
	ID         int64
	Hash       [32]byte
	Label      string
	Enabled    bool
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
}

// HashSecret returns the SHA-256 of secret, the form in which access keys are stored and looked
// up.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// AddAccessKey stores the hash of secret (trimmed of white space) under label and returns its id,
// clearing a tombstone of it: a key added by hand is wanted, even if the config lists it too.
// It returns ErrDuplicate if that hash is already stored.
func (s *Store) AddAccessKey(ctx context.Context, secret, label string) (int64, error) {
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
		res, err := tx.ExecContext(ctx, `INSERT INTO access_keys (hash, label, created_at) VALUES (?, ?, ?)`,
			h[:], label, toMS(time.Now()))
		if err != nil {
			if isUniqueViolation(err) {
				return ErrDuplicate
			}
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	if errors.Is(err, ErrDuplicate) {
		return 0, ErrDuplicate
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

// AccessKeys returns all access keys ordered by id.
func (s *Store) AccessKeys(ctx context.Context) ([]AccessKey, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, hash, label, enabled, created_at, last_used_at FROM access_keys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: access keys: %w", err)
	}
	defer rows.Close()
	var out []AccessKey
	for rows.Next() {
		var k AccessKey
		var hash []byte
		var created, lastUsed int64
		if err := rows.Scan(&k.ID, &hash, &k.Label, &k.Enabled, &created, &lastUsed); err != nil {
			return nil, fmt.Errorf("store: access keys: %w", err)
		}
		if len(hash) != len(k.Hash) {
			return nil, fmt.Errorf("store: access key %d: hash has %d bytes", k.ID, len(hash))
		}
		copy(k.Hash[:], hash)
		k.CreatedAt, k.LastUsedAt = fromMS(created), fromMS(lastUsed)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
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
			return ErrNotFound
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
