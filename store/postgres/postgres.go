// Package postgres is the PostgreSQL engine of package store: *Store implements store.Store
// with the behaviour its contract documents (store/storetest checks it, as for store/sqlite),
// so that several gateway instances can share one database. The driver is
// github.com/jackc/pgx/v5 (pgxpool).
//
// The tables are those of store/sqlite's schema, adapted: times are BIGINT unix milliseconds (0 for
// never) as in SQLite, so rows compare one to one; ids are identity columns, never reused;
// hashes are bytea; flags are boolean. The schema is brought up to date by numbered migrations
// of this engine's own (see migrations), under a session advisory lock so that instances
// starting together do not race.
//
// Log rows (LogRequest, LogError) and runtime key state (SaveKeyState, SaveCooldown,
// SaveKeyProject) never block the caller: they go through a bounded queue to one background
// writer, which writes them in batches, the rows with COPY, and adds them to the rollups
// (request_usage, access_key_usage, the keys' counters and the access keys' last use) in the
// same transaction. While PostgreSQL is unreachable the writer keeps its batch and the queue
// (rows the full queue refuses are dropped and counted, see Dropped) and retries with backoff,
// catching up when the server is back. Everything else is synchronous.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Store is an open PostgreSQL database (a pgxpool pool) plus its background writer. It is safe
// for concurrent use. Its methods keep the contract documented on store.Store.
type Store struct {
	path   string // the URL, password masked
	pool   *pgxpool.Pool
	logger *zap.Logger
	o      options
	w      *batch.Writer
	// batchLog answers the log methods of store.Store (LogRequest, LogError, SaveKeyState,
	// SaveCooldown, SaveKeyProject, Flush, Dropped, Written) from w.
	batchLog
	cl *cluster // the Store as a store.Cluster (cluster.go)

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// batchLog is batch.Log under a name that keeps the embedded field unexported.
type batchLog = batch.Log

// options are knobs for tests; Open uses defaultOptions.
type options struct {
	writer        batch.Options // the log writer (see writer.go)
	purge         sqlkit.Purge  // retention's transactions
	commitTimeout time.Duration // longest one batch transaction may take before it counts as failed
	cluster       clusterOptions
}

func defaultOptions() options {
	return options{
		writer: batch.Options{
			QueueSize:    65536,
			BatchSize:    4096,
			Interval:     50 * time.Millisecond,
			CloseTimeout: 30 * time.Second,
			MaxBackoff:   2 * time.Second,
			MaxAttempts:  maxAttempts,
			// Text PostgreSQL cannot store (NUL bytes, invalid UTF-8) becomes U+FFFD; a failing
			// batch is logged every retryLogEvery; once Close has given up on a batch for an
			// unreachable server the rest is dropped without an attempt (each could wait a
			// connect timeout).
			Clean:                 clean,
			RetryLogEvery:         retryLogEvery,
			SkipAfterCloseTimeout: true,
		},
		// Few enough rows that a transaction stays short (PostgreSQL lets the log writer in
		// meanwhile, but a long delete holds back vacuum and replication).
		purge:         sqlkit.Purge{Batch: 5000, Pause: 20 * time.Millisecond},
		commitTimeout: 30 * time.Second,
		cluster:       defaultClusterOptions(),
	}
}

// defaultConnectTimeout bounds a connection attempt when the URL sets none (connect_timeout),
// so that an unreachable server fails a call instead of hanging it.
const defaultConnectTimeout = 10 * time.Second

// Open connects to the database at url (postgres://user:pass@host:5432/db?sslmode=..., or
// anything else pgx accepts, pool settings such as pool_max_conns included), brings the schema
// up to date (see migrations) and starts the background writer. A database whose schema is
// newer than this program's is refused. logger may be nil.
func Open(ctx context.Context, url string, logger *zap.Logger) (*Store, error) {
	return open(ctx, url, logger, defaultOptions())
}

func open(ctx context.Context, url string, logger *zap.Logger, o options) (*Store, error) {
	if url == "" {
		return nil, errors.New("postgres: empty database URL")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	masked := MaskURL(url)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse %s: %w", masked, err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open %s: %w", masked, err)
	}
	if err := migrate(ctx, pool, migrations, logger); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open %s: %w", masked, err)
	}
	s := &Store{path: masked, pool: pool, logger: logger, o: o, cl: newCluster(pool, logger, o.cluster)}
	s.w = batch.New(&committer{pool: pool, timeout: o.commitTimeout}, logger, o.writer)
	s.batchLog = s.w.Log()
	return s, nil
}

// Path returns the URL the store was opened with, its password masked.
func (s *Store) Path() string { return s.path }

// Close sends the announcements still queued and stops listening (Events' channel is
// closed), gives up the leadership, writes everything still queued (giving up on a failing
// batch after 30 s: what could not be written is counted as dropped), stops the writer and
// closes the pool. Calls after the first return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cl.close()
		s.w.Close()
		s.pool.Close()
	})
	return s.closeErr
}

// passwordParam matches a password in a keyword/value connection string or a URL's query.
var passwordParam = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)`)

// MaskURL returns a database URL (or keyword/value connection string) fit for logs: its
// password, in the user part or as a parameter, is replaced with "xxxxx".
func MaskURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" && u.Opaque == "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return passwordParam.ReplaceAllString(raw, "${1}xxxxx")
}

// ---- helpers

// toMS and fromMS convert times to and from unix milliseconds, as the tables hold them.
var toMS, fromMS = sqlkit.ToMS, sqlkit.FromMS

// mustAffect turns an UPDATE or DELETE that changed no row into store.ErrNotFound.
func mustAffect(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

// wrap names the operation what in err, except for nil and the store's own errors
// (store.ErrNotFound, store.ErrDuplicate), which callers compare against and are returned as
// they are. An error that means the server could not be reached also matches
// store.ErrUnavailable.
func wrap(what string, err error) error {
	if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrDuplicate) {
		return err
	}
	werr := fmt.Errorf("postgres: %s: %w", what, err)
	if !errors.Is(err, store.ErrUnavailable) && unreachable(err) {
		return unavailableError{werr}
	}
	return werr
}

// unavailableError is an error of a call that could not reach the server: it matches
// store.ErrUnavailable and unwraps to the driver's error.
type unavailableError struct{ error }

func (e unavailableError) Is(target error) bool { return target == store.ErrUnavailable }
func (e unavailableError) Unwrap() error        { return e.error }

// unreachable reports whether err means that the server could not be reached or is not
// serving: a connection that could not be made or broke, a network timeout, or the server's
// own word that it is shutting down, starting up or out of connections. An error of the
// statement itself is not, nor the caller's cancellation.
func unreachable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || // connection exception
			strings.HasPrefix(pe.Code, "57P") || // admin or crash shutdown, cannot connect now
			strings.HasPrefix(pe.Code, "53") // insufficient resources (too many connections)
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err)
}

// isUniqueViolation reports whether err is a UNIQUE or PRIMARY KEY constraint failure.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// transient reports whether err is worth retrying for as long as it takes: the server did not
// answer (it is down or unreachable, the connection broke), or it answered with a condition
// that passes (a shutdown, too many connections, a deadlock or serialization failure). An
// error the server raised for the statement itself (bad data, a constraint) is not.
func transient(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return true
	}
	switch {
	case strings.HasPrefix(pe.Code, "08"), // connection exception
		strings.HasPrefix(pe.Code, "53"),  // insufficient resources
		strings.HasPrefix(pe.Code, "57P"), // admin or crash shutdown, cannot connect now
		pe.Code == "40001",                // serialization failure
		pe.Code == "40P01",                // deadlock detected
		pe.Code == "55P03":                // lock not available
		return true
	}
	return false
}

// clean makes s storable as PostgreSQL text, which holds neither NUL bytes nor invalid UTF-8
// (SQLite keeps both): each is replaced with U+FFFD. Log text comes from clients and
// upstream answers; one such byte must not fail a whole batch.
func clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
