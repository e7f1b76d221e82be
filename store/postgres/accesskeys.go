package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// AddAccessKey stores the hash of secret (trimmed of white space) under label, with policy (JSON;
// empty for none), and returns its id, clearing a tombstone of it: a key added by hand is wanted,
// even if the config lists it too. It returns store.ErrDuplicate if that hash is already
// stored. Ids are never reused, not even those of deleted keys.
func (s *Store) AddAccessKey(ctx context.Context, secret, label, policy string) (int64, error) {
	secret = strings.TrimSpace(secret)
	if secret == "" {
		return 0, errors.New("postgres: empty access key")
	}
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Added by hand (not from the config): a tombstone from an earlier delete no longer applies.
		_, err := insertSecrets(ctx, tx, tombAccessKey, []string{secret}, false, func(_ int, _ string, h [32]byte) error {
			err := tx.QueryRow(ctx, `INSERT INTO access_keys (hash, label, policy, created_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT (hash) DO NOTHING RETURNING id`, h[:], label, policy, toMS(time.Now())).Scan(&id)
			if errors.Is(err, pgx.ErrNoRows) {
				return store.ErrDuplicate
			}
			return err
		})
		return err
	})
	if err != nil {
		return 0, wrap("add access key", err)
	}
	return id, nil
}

// EnsureAccessKeys stores the hashes of the config's secrets (trimmed of white space) that are
// not stored yet, labelled label, in one transaction. Empty secrets are skipped, and so are the
// ones deleted in the admin panel (a tombstone is stored). It returns how many were added and
// how many were skipped as deleted.
func (s *Store) EnsureAccessKeys(ctx context.Context, secrets []string, label string) (added, skipped int, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := toMS(time.Now())
		skipped, err = insertSecrets(ctx, tx, tombAccessKey, secrets, true, func(_ int, _ string, h [32]byte) error {
			tag, err := tx.Exec(ctx, `INSERT INTO access_keys (hash, label, created_at) VALUES ($1, $2, $3)
				ON CONFLICT (hash) DO NOTHING`, h[:], label, now)
			added += int(tag.RowsAffected())
			return err
		})
		return err
	})
	if err != nil {
		return 0, 0, wrap("ensure access keys", err)
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
	secrets := make([]string, len(keys))
	for i, k := range keys {
		secrets[i] = k.Secret
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := toMS(time.Now())
		skipped, err = insertSecrets(ctx, tx, tombAccessKey, secrets, true, func(i int, _ string, h [32]byte) error {
			k := keys[i]
			tag, err := tx.Exec(ctx, `
				INSERT INTO access_keys (hash, label, policy, config_label, config_policy, created_at)
				VALUES ($1, $2, $3, $2, $3, $4) ON CONFLICT (hash) DO NOTHING`, h[:], k.Label, k.Policy, now)
			if err != nil {
				return err
			}
			if tag.RowsAffected() > 0 {
				added++
				return nil
			}
			// IS DISTINCT FROM compares NULL (never set by the config) as a value unlike any string.
			_, err = tx.Exec(ctx, `
				UPDATE access_keys SET
					label = CASE WHEN config_label IS DISTINCT FROM $1 THEN $1 ELSE label END, config_label = $1,
					policy = CASE WHEN config_policy IS DISTINCT FROM $2 THEN $2 ELSE policy END, config_policy = $2
				WHERE hash = $3`, k.Label, k.Policy, h[:])
			return err
		})
		return err
	})
	if err != nil {
		return 0, 0, wrap("apply config access keys", err)
	}
	return added, skipped, nil
}

// UpdateAccessKey applies u to the access key id, or returns store.ErrNotFound. It is an edit
// made in the admin panel: the values the Caddyfile gave last are kept, so a config load with
// the same entry keeps this edit (see ApplyConfigAccessKeys).
func (s *Store) UpdateAccessKey(ctx context.Context, id int64, u store.AccessKeyUpdate) error {
	return wrap("update access key", mustAffect(s.pool.Exec(ctx, `
		UPDATE access_keys SET label = COALESCE($1::text, label), policy = COALESCE($2::text, policy) WHERE id = $3`,
		u.Label, u.Policy, id)))
}

// AccessKeys returns all access keys ordered by id.
func (s *Store) AccessKeys(ctx context.Context) ([]store.AccessKey, error) {
	rows, err := s.pool.Query(ctx,
		`SELECT id, hash, label, enabled, created_at, last_used_at, policy FROM access_keys ORDER BY id`)
	if err != nil {
		return nil, wrap("access keys", err)
	}
	defer rows.Close()
	out, err := sqlkit.AccessKeys(rows)
	if err != nil {
		return nil, wrap("access keys", err)
	}
	return out, nil
}

// SetAccessKeyEnabled enables or disables an access key, or returns store.ErrNotFound.
func (s *Store) SetAccessKeyEnabled(ctx context.Context, id int64, enabled bool) error {
	return wrap("set access key enabled",
		mustAffect(s.pool.Exec(ctx, `UPDATE access_keys SET enabled = $1 WHERE id = $2`, enabled, id)))
}

// DeleteAccessKey deletes an access key, or returns store.ErrNotFound; its log rows stay. A
// tombstone keeps the config from adding it again.
func (s *Store) DeleteAccessKey(ctx context.Context, id int64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var hash []byte
		if err := tx.QueryRow(ctx, `DELETE FROM access_keys WHERE id = $1 RETURNING hash`, id).Scan(&hash); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		var h [32]byte
		copy(h[:], hash)
		return addTombstone(ctx, tx, tombAccessKey, h)
	})
	return wrap("delete access key", err)
}
