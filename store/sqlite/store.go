// Package sqlite is the SQLite engine of package store, the embedded default: one database
// file, schema and migrations, every SQL statement, and the batched log writer. Open returns a
// *Store, which implements store.Store.
//
// Log rows and runtime key state are written asynchronously by one background writer in batched
// transactions, so the request path never waits on the database (see LogRequest). Everything
// else is synchronous.
//
// The writer also adds every request row to per-15-minute sums by model (table request_usage,
// see store.UsageSlot) in the same transaction, so the dashboard's statistics (UsageBuckets,
// UsageByModel) cost a few thousand rows whatever the traffic, and the rows of access keys to
// sums by access key, model and the limit that refused them (table access_key_usage), for the
// statistics of one access key (AccessKeyUsage, UsageBucketsOf, UsageByModelOf) and for the
// limiter's counts at a start (AccessKeyCounts). Retention deletes request rows after
// request_log_retention but keeps these sums for store.UsageRetention (400 days) or
// request_log_retention, whichever is longer: a few megabytes for a year of a dozen models.
package sqlite

import (
	"context"
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

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Store is an open SQLite database plus its background writer. It is safe for concurrent use.
type Store struct {
	path   string
	db     *sql.DB
	logger *zap.Logger
	o      options
	w      *batch.Writer
	// batchLog answers the log methods of store.Store (LogRequest, LogError, SaveKeyState,
	// SaveCooldown, SaveKeyProject, Flush, Dropped, Written) from w.
	batchLog

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// batchLog is batch.Log under a name that keeps the embedded field unexported.
type batchLog = batch.Log

// options are knobs for tests; Open uses defaultOptions.
type options struct {
	writer      batch.Options // the log writer (see writer.go)
	purge       sqlkit.Purge  // retention's transactions
	busyTimeout time.Duration // SQLite busy_timeout
}

func defaultOptions() options {
	return options{
		writer: batch.Options{
			QueueSize:    65536,
			BatchSize:    1000,
			Interval:     50 * time.Millisecond,
			CloseTimeout: 30 * time.Second,
			// Every failed attempt is logged, and a busy database is waited out (at Close for
			// CloseTimeout, then each batch left gets an attempt).
			MaxBackoff:  2 * time.Second,
			MaxAttempts: maxAttempts,
		},
		// Few enough rows that the log writer, waiting for the write lock meanwhile, is held up
		// for milliseconds only; the break is its turn.
		purge:       sqlkit.Purge{Batch: 5000, Pause: 20 * time.Millisecond},
		busyTimeout: 5 * time.Second,
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
	s := &Store{path: path, db: db, logger: logger, o: o}
	s.w = batch.New(&committer{db: db}, logger, o.writer)
	s.batchLog = s.w.Log()
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
		s.w.Close()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// ---- helpers

// toMS and fromMS convert times to and from unix milliseconds, as the tables hold them.
var toMS, fromMS = sqlkit.ToMS, sqlkit.FromMS

func mustAffect(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if n == 0 {
		return store.ErrNotFound
	}
	return nil
}
