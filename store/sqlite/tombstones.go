package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Kinds of tombstones: a secret deleted in the admin panel, kept as its SHA-256 so the
// Caddyfile's copy is not added again at the next start or reload.
const (
	tombKey       = "key"        // an upstream key
	tombAccessKey = "access_key" // an access key
)

// addTombstone records the deletion of a secret, in the caller's transaction.
func addTombstone(ctx context.Context, tx *sql.Tx, kind string, hash [32]byte) error {
	_, err := tx.ExecContext(ctx, `
		INSERT INTO deleted_secrets (kind, hash, deleted_at) VALUES (?, ?, ?)
		ON CONFLICT (kind, hash) DO UPDATE SET deleted_at = excluded.deleted_at`,
		kind, hash[:], toMS(time.Now()))
	return err
}

// clearTombstone forgets the deletion of a secret (it is being added explicitly again).
func clearTombstone(ctx context.Context, tx *sql.Tx, kind string, hash [32]byte) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM deleted_secrets WHERE kind = ? AND hash = ?`, kind, hash[:])
	return err
}

// tombstoned reports whether the secret was deleted in the admin panel.
func tombstoned(ctx context.Context, tx *sql.Tx, kind string, hash [32]byte) (bool, error) {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM deleted_secrets WHERE kind = ? AND hash = ?`, kind, hash[:]).Scan(&one)
	if err == sql.ErrNoRows {
		return false, nil
	}
	return err == nil, err
}

// insertSecrets adds secrets of kind in the caller's transaction tx, under the tombstone rules
// of sqlkit.InsertSecrets.
func insertSecrets(ctx context.Context, tx *sql.Tx, kind string, secrets []string, fromConfig bool,
	insert func(i int, secret string, hash [32]byte) error) (skipped int, err error) {
	return sqlkit.InsertSecrets(secrets, fromConfig, sqlkit.Tombstones{
		Has:   func(h [32]byte) (bool, error) { return tombstoned(ctx, tx, kind, h) },
		Clear: func(h [32]byte) error { return clearTombstone(ctx, tx, kind, h) },
	}, insert)
}
