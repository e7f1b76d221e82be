package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

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

// AddLabeledKeys adds upstream keys with their project labels in one transaction, as an
// operator's explicit add (AddKeys without labels): a key deleted before is added again and its
// tombstone cleared, empty secrets are skipped. A key already stored is not added again, but a
// non-empty label given with it becomes its label (so pasting "key project" again labels
// existing keys); an empty one leaves its label alone. Every label must pass
// store.CheckProject after trimming, else nothing is written.
func (s *Store) AddLabeledKeys(ctx context.Context, keys []store.NewKey) (store.AddResult, error) {
	res, _, err := s.addKeys(ctx, keys, false)
	return res, err
}

// addKeys adds keys in one transaction. From the config, a tombstoned secret is skipped (and
// counted); else its tombstone is cleared (see insertSecrets). A non-empty label of a key
// already stored replaces its label. Labels are checked before anything is written.
func (s *Store) addKeys(ctx context.Context, keys []store.NewKey, fromConfig bool) (res store.AddResult, skipped int, err error) {
	for i := range keys {
		if err := store.CheckProject(strings.TrimSpace(keys[i].Project)); err != nil {
			return store.AddResult{}, 0, fmt.Errorf("postgres: add keys: project of key %d: %w", i+1, err)
		}
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := toMS(time.Now())
		secrets := make([]string, len(keys))
		for i, k := range keys {
			secrets[i] = k.Secret
		}
		skipped, err = insertSecrets(ctx, tx, tombKey, secrets, fromConfig, func(i int, secret string, _ [32]byte) error {
			project := strings.TrimSpace(keys[i].Project)
			tag, err := tx.Exec(ctx, `INSERT INTO keys (secret, project, created_at) VALUES ($1, $2, $3)
				ON CONFLICT (secret) DO NOTHING`, secret, project, now)
			if err != nil {
				return err
			}
			if tag.RowsAffected() > 0 {
				res.Added++
				return nil
			}
			if project == "" {
				return nil // already stored; no label given, so its own stays
			}
			var id int64
			switch err := tx.QueryRow(ctx, `UPDATE keys SET project = $1 WHERE secret = $2 AND project <> $1 RETURNING id`,
				project, secret).Scan(&id); {
			case errors.Is(err, pgx.ErrNoRows): // it has this label already
			case err != nil:
				return err
			default:
				res.Relabeled = append(res.Relabeled, store.KeyProject{KeyID: id, Project: project})
			}
			return nil
		})
		return err
	})
	if err != nil {
		return store.AddResult{}, 0, wrap("add keys", err)
	}
	return res, skipped, nil
}

// Keys returns all upstream keys ordered by id.
func (s *Store) Keys(ctx context.Context) ([]store.Key, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, secret, project, status, disabled_reason, manual_disabled, failure_count, last_error,
		       last_used_at, requests, failed_requests, created_at
		FROM keys ORDER BY id`)
	if err != nil {
		return nil, wrap("keys", err)
	}
	defer rows.Close()
	out, err := sqlkit.Keys(rows)
	if err != nil {
		return nil, wrap("keys", err)
	}
	return out, nil
}

// DeleteKey deletes an upstream key and its cooldowns, resources and upload sessions; its log
// rows stay. A tombstone keeps the config from adding it again. store.ErrNotFound when there
// is no such key.
func (s *Store) DeleteKey(ctx context.Context, id int64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var secret string
		if err := tx.QueryRow(ctx, `DELETE FROM keys WHERE id = $1 RETURNING secret`, id).Scan(&secret); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		return addTombstone(ctx, tx, tombKey, store.HashSecret(secret))
	})
	return wrap("delete key", err)
}

// SetKeyStatus is an operator's enable or disable. Disabling records reason and whether it was
// manual (a pool state saved later does not re-enable a manually disabled key). Enabling clears
// the manual flag, the reason and the failure count, and deletes the key's cooldowns. Key state
// saved with SaveKeyState before the call and not yet written is discarded, so it cannot
// overwrite this decision. store.ErrNotFound when there is no such key.
func (s *Store) SetKeyStatus(ctx context.Context, id int64, status, reason string, manual bool) error {
	var query string
	var args []any
	switch status {
	case store.StatusActive:
		query = `UPDATE keys SET status = 'active', disabled_reason = '', manual_disabled = false, failure_count = 0 WHERE id = $1`
		args = []any{id}
	case store.StatusDisabled:
		query = `UPDATE keys SET status = 'disabled', disabled_reason = $2, manual_disabled = $3 WHERE id = $1`
		args = []any{id, reason, manual}
	default:
		return fmt.Errorf("postgres: invalid key status %q", status)
	}
	return s.setKeyStatus(ctx, id, query, args, status == store.StatusActive)
}

// ReviveKey puts back into service a key that validation found working, as SetKeyStatus does
// with store.StatusActive, unless an operator disabled it by hand (or deleted it) while it was
// being checked: then it changes nothing and reports false.
func (s *Store) ReviveKey(ctx context.Context, id int64) (bool, error) {
	err := s.setKeyStatus(ctx, id,
		`UPDATE keys SET status = 'active', disabled_reason = '', failure_count = 0 WHERE id = $1 AND NOT manual_disabled`,
		[]any{id}, true)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// setKeyStatus runs query (an UPDATE of key id) in a transaction that holds off the log writer;
// active also deletes the key's cooldowns. store.ErrNotFound when no row changed.
func (s *Store) setKeyStatus(ctx context.Context, id int64, query string, args []any, active bool) error {
	// Hold off the writer so a batch in flight cannot land after this write.
	unlock := s.w.Exclude(id, active)
	defer unlock()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := mustAffect(tx.Exec(ctx, query, args...)); err != nil {
			return err
		}
		if active {
			if _, err := tx.Exec(ctx, `DELETE FROM cooldowns WHERE key_id = $1`, id); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap("set key status", err)
}

// Cooldowns returns the cooldowns still running at now, ordered by key and model.
func (s *Store) Cooldowns(ctx context.Context, now time.Time) ([]store.Cooldown, error) {
	rows, err := s.pool.Query(ctx,
		`SELECT key_id, model, until FROM cooldowns WHERE until > $1 ORDER BY key_id, model COLLATE "C"`, toMS(now))
	if err != nil {
		return nil, wrap("cooldowns", err)
	}
	defer rows.Close()
	out, err := sqlkit.Cooldowns(rows)
	if err != nil {
		return nil, wrap("cooldowns", err)
	}
	return out, nil
}
