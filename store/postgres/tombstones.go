package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Kinds of tombstones: a secret deleted in the admin panel, kept as its SHA-256 so the
// Caddyfile's copy is not added again at the next start or reload.
const (
	tombKey       = "key"        // an upstream key
	tombAccessKey = "access_key" // an access key
)

// addTombstone records the deletion of a secret, in the caller's transaction.
func addTombstone(ctx context.Context, tx pgx.Tx, kind string, hash [32]byte) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO deleted_secrets (kind, hash, deleted_at) VALUES ($1, $2, $3)
		ON CONFLICT (kind, hash) DO UPDATE SET deleted_at = excluded.deleted_at`,
		kind, hash[:], toMS(time.Now()))
	return err
}

// clearTombstone forgets the deletion of a secret (it is being added explicitly again).
func clearTombstone(ctx context.Context, tx pgx.Tx, kind string, hash [32]byte) error {
	_, err := tx.Exec(ctx, `DELETE FROM deleted_secrets WHERE kind = $1 AND hash = $2`, kind, hash[:])
	return err
}

// tombstoned reports whether the secret was deleted in the admin panel.
func tombstoned(ctx context.Context, tx pgx.Tx, kind string, hash [32]byte) (bool, error) {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM deleted_secrets WHERE kind = $1 AND hash = $2`, kind, hash[:]).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// insertSecrets is the one loop behind adding upstream keys and access keys, in the caller's
// transaction tx. Each secret is trimmed of white space; an empty one is skipped. A secret
// from the config (fromConfig) that was deleted in the admin panel (a tombstone of kind is
// stored) is skipped and counted in skipped; an operator's explicit add instead clears its
// tombstone, so it is wanted again. Then insert stores it, given its index in secrets, the
// trimmed secret and its SHA-256; an error from it ends the loop and is returned as it is.
func insertSecrets(ctx context.Context, tx pgx.Tx, kind string, secrets []string, fromConfig bool,
	insert func(i int, secret string, hash [32]byte) error) (skipped int, err error) {
	for i, secret := range secrets {
		secret = strings.TrimSpace(secret)
		if secret == "" {
			continue
		}
		h := store.HashSecret(secret)
		if fromConfig {
			dead, err := tombstoned(ctx, tx, kind, h)
			if err != nil {
				return skipped, err
			}
			if dead {
				skipped++
				continue
			}
		} else if err := clearTombstone(ctx, tx, kind, h); err != nil {
			return skipped, err
		}
		if err := insert(i, secret, h); err != nil {
			return skipped, err
		}
	}
	return skipped, nil
}
