package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Settings returns the effective value of every stored setting.
func (s *Store) Settings(ctx context.Context) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, value FROM settings`)
	if err != nil {
		return nil, wrap("settings", err)
	}
	defer rows.Close()
	out, err := sqlkit.Settings(rows)
	if err != nil {
		return nil, wrap("settings", err)
	}
	return out, nil
}

// sqlSetSetting records an admin-panel edit: the effective value, the config's value kept.
const sqlSetSetting = `
	INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
	ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`

// SetSetting records an edit made in the admin panel; it becomes the effective value until the
// Caddyfile's value for name changes.
func (s *Store) SetSetting(ctx context.Context, name, value string) error {
	if _, err := s.pool.Exec(ctx, sqlSetSetting, name, value, toMS(time.Now())); err != nil {
		return wrap("set setting "+name, err)
	}
	return nil
}

// ApplyConfigSetting records value as the Caddyfile's value for name, seen at a start or reload.
// The newer edit wins: if value differs from the Caddyfile value recorded last time (or none was
// recorded), it becomes the effective value and applied is true. Otherwise the effective value,
// which may have been edited in the admin panel since, is kept and applied is false. The
// comparison and the write are one statement, so instances loading the same config together
// cannot both see the old value.
func (s *Store) ApplyConfigSetting(ctx context.Context, name, value string) (applied bool, err error) {
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO settings (name, value, config_value, updated_at) VALUES ($1, $2, $2, $3)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, config_value = excluded.config_value,
			updated_at = excluded.updated_at
		WHERE settings.config_value IS DISTINCT FROM excluded.config_value`,
		name, value, toMS(time.Now()))
	if err != nil {
		return false, wrap("apply setting "+name, err)
	}
	return tag.RowsAffected() > 0, nil
}

// SetSettings records several admin-panel edits (see SetSetting) in one transaction: all of
// them are stored or none.
func (s *Store) SetSettings(ctx context.Context, values map[string]string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := toMS(time.Now())
		for name, value := range values {
			if _, err := tx.Exec(ctx, sqlSetSetting, name, value, now); err != nil {
				return fmt.Errorf("set setting %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return wrap("set settings", err)
	}
	return nil
}
