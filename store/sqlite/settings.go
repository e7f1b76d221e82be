package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Settings returns the effective value of every stored setting.
func (s *Store) Settings(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, value FROM settings`)
	if err != nil {
		return nil, fmt.Errorf("store: settings: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.Settings(rows)
	if err != nil {
		return nil, fmt.Errorf("store: settings: %w", err)
	}
	return out, nil
}

// SetSetting records an edit made in the admin panel; it becomes the effective value until the
// Caddyfile's value for name changes.
func (s *Store) SetSetting(ctx context.Context, name, value string) error {
	_, err := s.db.ExecContext(ctx, `
		INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		name, value, toMS(time.Now()))
	if err != nil {
		return fmt.Errorf("store: set setting %s: %w", name, err)
	}
	return nil
}

// ApplyConfigSetting records value as the Caddyfile's value for name, seen at a start or reload.
// The newer edit wins: if value differs from the Caddyfile value recorded last time (or none was
// recorded), it becomes the effective value and applied is true. Otherwise the effective value,
// which may have been edited in the admin panel since, is kept and applied is false.
func (s *Store) ApplyConfigSetting(ctx context.Context, name, value string) (applied bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("store: apply setting %s: %w", name, err)
	}
	defer func() { _ = tx.Rollback() }()
	var last sql.NullString
	err = tx.QueryRowContext(ctx, `SELECT config_value FROM settings WHERE name = ?`, name).Scan(&last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("store: apply setting %s: %w", name, err)
	}
	if last.Valid && last.String == value {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO settings (name, value, config_value, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, config_value = excluded.config_value,
			updated_at = excluded.updated_at`,
		name, value, value, toMS(time.Now())); err != nil {
		return false, fmt.Errorf("store: apply setting %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: apply setting %s: %w", name, err)
	}
	return true, nil
}

// SetSettings records several admin-panel edits (see SetSetting) in one transaction: all of
// them are stored or none.
func (s *Store) SetSettings(ctx context.Context, values map[string]string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: set settings: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	now := toMS(time.Now())
	for name, value := range values {
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
			name, value, now); err != nil {
			return fmt.Errorf("store: set setting %s: %w", name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: set settings: %w", err)
	}
	return nil
}
