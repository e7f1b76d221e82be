// Package store keeps the gateway's state in SQLite: upstream keys and their cooldowns, clients'
// access keys (as SHA-256 hashes only), settings, admin sessions, and the request and error logs.
// All SQL of the project lives here.
//
// Log rows and runtime key state are written asynchronously by one background writer in batched
// transactions, so the request path never waits on the database (see LogRequest). Everything
// else is synchronous.
//
// The writer also adds every request row to per-15-minute sums by model (table request_usage,
// see UsageSlot) in the same transaction, so the dashboard's statistics (UsageBuckets,
// UsageByModel) cost a few thousand rows whatever the traffic. Retention deletes request rows
// after request_log_retention but keeps these sums for UsageRetention (400 days) or
// request_log_retention, whichever is longer: a few megabytes for a year of a dozen models.
package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
	"go.uber.org/zap"
)

// Key statuses.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
)

// Errors returned by the store.
var (
	// ErrDuplicate is returned when adding something that already exists.
	ErrDuplicate = errors.New("store: already exists")
	// ErrNotFound is returned when updating or deleting an id that does not exist.
	ErrNotFound = errors.New("store: not found")
)

// Store is an open database plus its background writer. It is safe for concurrent use.
type Store struct {
	path   string
	db     *sql.DB
	logger *zap.Logger
	w      *writer

	closeOnce sync.Once
	closeErr  error
}

// options are knobs for tests; Open uses defaultOptions.
type options struct {
	queueSize    int           // capacity of the log queue
	batchSize    int           // rows per transaction
	interval     time.Duration // longest wait for a batch to fill
	busyTimeout  time.Duration // SQLite busy_timeout
	closeTimeout time.Duration // how long Close keeps retrying a failing batch
	paused       bool          // the writer waits for writer.resume before it starts
}

func defaultOptions() options {
	return options{
		queueSize:    65536,
		batchSize:    1000,
		interval:     50 * time.Millisecond,
		busyTimeout:  5 * time.Second,
		closeTimeout: 30 * time.Second,
	}
}

// Open opens the database at path, creating its directory (mode 0700) and the file (mode 0600)
// if missing. It turns on WAL, a 5 s busy timeout, foreign keys and synchronous=NORMAL, brings the
// schema up to date (one transaction per version step) and starts the background writer.
// logger may be nil.
func Open(path string, logger *zap.Logger) (*Store, error) {
	return open(path, logger, defaultOptions())
}

func open(path string, logger *zap.Logger, o options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty database path")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create database file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: create database file: %w", err)
	}
	dsn, err := dsnFor(path, o.busyTimeout)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(4)
	ctx := context.Background()
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: journal mode is %q, want wal", path, mode)
	}
	if err := migrate(ctx, db, migrations); err != nil {
		_ = db.Close()
		return nil, err
	}
	s := &Store{path: path, db: db, logger: logger}
	s.w = newWriter(db, logger, o)
	go s.w.run()
	return s, nil
}

// dsnFor builds a go-sqlite3 URI for path. The path is escaped, so names with '?', '#' or '%'
// work. Every pooled connection gets the same pragmas; write transactions BEGIN IMMEDIATE so they
// wait on busy_timeout up front instead of failing when a read lock is upgraded.
func dsnFor(path string, busy time.Duration) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	u := url.URL{Path: filepath.ToSlash(abs)}
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_busy_timeout", fmt.Sprint(busy.Milliseconds()))
	q.Set("_foreign_keys", "on")
	q.Set("_synchronous", "NORMAL")
	q.Set("_txlock", "immediate")
	return "file:" + u.EscapedPath() + "?" + q.Encode(), nil
}

// Path returns the path the store was opened with.
func (s *Store) Path() string { return s.path }

// Close writes everything still queued, stops the writer and closes the database. Calls after
// the first return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.w.close()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// ---- upstream keys

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
// counted); else its tombstone is cleared. A non-empty label of a key already stored replaces
// its label. Labels are checked before anything is written.
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
	for _, k := range keys {
		secret, project := strings.TrimSpace(k.Secret), strings.TrimSpace(k.Project)
		if secret == "" {
			continue
		}
		h := HashSecret(secret)
		if fromConfig {
			dead, err := tombstoned(ctx, tx, tombKey, h)
			if err != nil {
				return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
			}
			if dead {
				skipped++
				continue
			}
		} else if err := clearTombstone(ctx, tx, tombKey, h); err != nil {
			return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
		}
		r, err := stmt.ExecContext(ctx, secret, project, now)
		if err != nil {
			return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
		}
		if n, _ := r.RowsAffected(); n > 0 {
			res.Added++
			continue
		}
		if project == "" {
			continue // already stored; no label given, so its own stays
		}
		var id int64
		switch err := relabel.QueryRowContext(ctx, project, secret, project).Scan(&id); {
		case errors.Is(err, sql.ErrNoRows): // it has this label already
		case err != nil:
			return AddResult{}, 0, fmt.Errorf("store: add keys: %w", err)
		default:
			res.Relabeled = append(res.Relabeled, KeyProject{KeyID: id, Project: project})
		}
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

// ---- access keys

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
	h := HashSecret(secret)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, `INSERT INTO access_keys (hash, label, created_at) VALUES (?, ?, ?)`,
		h[:], label, toMS(time.Now()))
	if err != nil {
		if isUniqueViolation(err) {
			return 0, ErrDuplicate
		}
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	// Added by hand: a tombstone from an earlier delete no longer applies.
	if err := clearTombstone(ctx, tx, tombAccessKey, h); err != nil {
		return 0, fmt.Errorf("store: add access key: %w", err)
	}
	id, err := res.LastInsertId()
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
	for _, secret := range secrets {
		secret = strings.TrimSpace(secret)
		if secret == "" {
			continue
		}
		h := HashSecret(secret)
		dead, err := tombstoned(ctx, tx, tombAccessKey, h)
		if err != nil {
			return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
		}
		if dead {
			skipped++
			continue
		}
		res, err := stmt.ExecContext(ctx, h[:], label, now)
		if err != nil {
			return 0, 0, fmt.Errorf("store: ensure access keys: %w", err)
		}
		n, _ := res.RowsAffected()
		added += int(n)
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

// ---- settings

// Settings returns the effective value of every stored setting.
func (s *Store) Settings(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, value FROM settings`)
	if err != nil {
		return nil, fmt.Errorf("store: settings: %w", err)
	}
	defer rows.Close()
	out := make(map[string]string)
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, fmt.Errorf("store: settings: %w", err)
		}
		out[name] = value
	}
	if err := rows.Err(); err != nil {
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

// ---- helpers

// toMS converts t to unix milliseconds; the zero time becomes 0.
func toMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS converts unix milliseconds to a UTC time; 0 becomes the zero time.
func fromMS(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func mustAffect(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}
