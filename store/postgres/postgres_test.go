package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The store's types and names these tests use, as short names.
type (
	Key        = store.Key
	KeyState   = store.KeyState
	Cooldown   = store.Cooldown
	RequestLog = store.RequestLog
	ErrorLog   = store.ErrorLog
	LogQuery   = store.LogQuery
)

const StatusDisabled = store.StatusDisabled

var HashSecret = store.HashSecret

// openTest opens a store on the database at url with default options adjusted by opt, closed
// at test end.
func openTest(t testing.TB, url string, logger *zap.Logger, opt func(*options)) *Store {
	t.Helper()
	o := defaultOptions()
	if opt != nil {
		opt(&o)
	}
	s, err := open(context.Background(), url, logger, o)
	if err != nil {
		t.Fatalf("open %s: %v", MaskURL(url), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newStore opens a store on a fresh database.
func newStore(t testing.TB, opt func(*options)) *Store {
	t.Helper()
	return openTest(t, pgtest.URL(t), nil, opt)
}

// rawPool connects to the database at url bypassing the store.
func rawPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// exec runs sql on the store's database, failing the test on an error.
func exec(t testing.TB, s *Store, sql string, args ...any) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}

func countRows(t testing.TB, s *Store, table string) int64 {
	t.Helper()
	var n int64
	if err := s.pool.QueryRow(context.Background(), `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func dbVersion(t testing.TB, p *pgxpool.Pool) int {
	t.Helper()
	v, err := schemaVersion(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMaskURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://synapse:s3cr%40t@db.example:5432/gw?sslmode=require",
			"postgres://synapse:xxxxx@db.example:5432/gw?sslmode=require"},
		{"postgresql://synapse@db/gw", "postgresql://synapse@db/gw"},
		{"postgres://db/gw?user=u&password=hunter2&sslmode=disable", "postgres://db/gw?password=xxxxx&sslmode=disable&user=u"},
		{"host=db user=u password=hunter2 dbname=gw", "host=db user=u password=xxxxx dbname=gw"},
		{"host=db password='a b\\' c' dbname=gw", "host=db password=xxxxx dbname=gw"},
	} {
		if got := MaskURL(c.in); got != c.want {
			t.Errorf("MaskURL(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(MaskURL(c.in), "hunter2") || strings.Contains(MaskURL(c.in), "s3cr") {
			t.Errorf("MaskURL(%q) shows the password", c.in)
		}
	}
}

func TestOpenMigratesAndPathIsMasked(t *testing.T) {
	url := pgtest.URL(t)
	withPassword := strings.Replace(url, "postgres@", "postgres:not-checked@", 1) // trust auth ignores it
	s := openTest(t, withPassword, nil, nil)
	if got := s.Path(); strings.Contains(got, "not-checked") || !strings.Contains(got, "postgres:xxxxx@127.0.0.1") {
		t.Errorf("Path() = %q, want the URL with its password masked", got)
	}
	if v := dbVersion(t, s.pool); v != len(migrations) {
		t.Errorf("schema version %d, want %d", v, len(migrations))
	}
	if _, err := Open(context.Background(), "", nil); err == nil {
		t.Error("an empty URL opened")
	}
	if _, err := Open(context.Background(), "postgres://u:topsecret@127.0.0.1:1/x?connect_timeout=2", nil); err == nil ||
		strings.Contains(err.Error(), "topsecret") {
		t.Errorf("open of an unreachable server = %v; want an error without the password", err)
	}
}

// TestMigrateFromOlderVersion migrates a database of version 1 with the real steps plus a
// later one, as a future release would; a failing step is rolled back whole.
func TestMigrateFromOlderVersion(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	db := rawPool(t, url)
	log := zap.NewNop()
	if err := migrate(ctx, db, migrations[:1], log); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO keys (secret, created_at) VALUES ('old-key', 1)`); err != nil {
		t.Fatal(err)
	}
	steps := slices.Clone(migrations)
	steps = append(steps, `ALTER TABLE keys ADD COLUMN note text NOT NULL DEFAULT 'migrated'`)
	if err := migrate(ctx, db, steps, log); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if v := dbVersion(t, db); v != len(steps) {
		t.Fatalf("schema version = %d, want %d", v, len(steps))
	}
	var note string
	if err := db.QueryRow(ctx, `SELECT note FROM keys WHERE secret = 'old-key'`).Scan(&note); err != nil || note != "migrated" {
		t.Errorf("note = %q, %v", note, err)
	}
	// Running again applies nothing (the ALTER would fail if it ran twice).
	if err := migrate(ctx, db, steps, log); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	// A failing step is rolled back as a whole and leaves the version alone.
	bad := append(slices.Clone(steps), `CREATE TABLE half_done (x int); SELECT no_such_function()`)
	if err := migrate(ctx, db, bad, log); err == nil {
		t.Fatal("failing step: no error")
	}
	if v := dbVersion(t, db); v != len(steps) {
		t.Errorf("schema version after a failed step = %d, want %d", v, len(steps))
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM pg_tables WHERE tablename = 'half_done'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("table of the failed step: %d, %v", n, err)
	}
	// The schema lock was released every time: it can be taken at once.
	var got bool
	if err := db.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, schemaLockKey).Scan(&got); err != nil || !got {
		t.Errorf("schema lock still held: %v, %v", got, err)
	}
}

// TestOpenWithoutCreatePrivilege: an instance whose role may read and write the tables but not
// create any (PostgreSQL 15 no longer lets every role create in schema public) opens a
// database migrated by its owner, and works.
func TestOpenWithoutCreatePrivilege(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	owner := openTest(t, url, nil, nil)
	role := fmt.Sprintf("app_%d", time.Now().UnixNano())
	exec(t, owner, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() {
		_, _ = owner.pool.Exec(context.Background(), `DROP OWNED BY `+role)
		_, _ = owner.pool.Exec(context.Background(), `DROP ROLE `+role)
	})
	exec(t, owner, `REVOKE CREATE ON SCHEMA public FROM PUBLIC`)
	exec(t, owner, `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO `+role)
	exec(t, owner, `GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO `+role)
	app := openTest(t, strings.Replace(url, "postgres@", role+"@", 1), nil, nil)
	if _, err := app.AddKeys(ctx, []string{"k"}); err != nil {
		t.Fatal(err)
	}
	app.LogRequest(RequestLog{Time: time.Now(), KeyID: 1, Status: 200})
	app.Flush()
	if n := countRows(t, owner, "request_logs"); n != 1 || app.Written() != 1 {
		t.Errorf("%d rows written by the role without CREATE, Written() = %d", n, app.Written())
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	s := openTest(t, url, nil, nil)
	exec(t, s, `UPDATE schema_version SET version = 999`)
	if s2, err := Open(ctx, url, nil); err == nil {
		_ = s2.Close()
		t.Fatal("opened a database from a newer version")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error %v does not say the schema is newer", err)
	}
}

// TestConcurrentOpenMigratesOnce opens a fresh database from three goroutines at once, as
// three instances starting together would: all open, one applies each step, and the schema is
// whole.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	url := pgtest.URL(t)
	core, logs := observer.New(zapcore.InfoLevel)
	var wg sync.WaitGroup
	stores := make([]*Store, 3)
	errs := make([]error, 3)
	start := make(chan struct{})
	for i := range stores {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = Open(context.Background(), url, zap.New(core).With(zap.Int("instance", i)))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
			continue
		}
		t.Cleanup(func() { _ = stores[i].Close() })
	}
	if t.Failed() {
		t.FailNow()
	}
	applied := logs.FilterMessage("database schema migrated").All()
	if len(applied) != len(migrations) {
		t.Errorf("%d steps applied, want each of the %d once", len(applied), len(migrations))
	}
	ctx := context.Background()
	for i, s := range stores {
		if _, err := s.AddKeys(ctx, []string{fmt.Sprint("key-", i)}); err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	keys, err := stores[0].Keys(ctx)
	if err != nil || len(keys) != 3 {
		t.Errorf("keys seen by instance 0: %+v, %v", keys, err)
	}
}

// TestConnectionErrorsAreTransient: what the writer retries for as long as it takes.
func TestConnectionErrorsAreTransient(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, nil)
	_, err := s.pool.Exec(ctx, `INSERT INTO keys (secret, created_at) VALUES (NULL, 0)`)
	if err == nil || transient(err) {
		t.Errorf("a NOT NULL violation: %v, transient %v", err, transient(err))
	}
	_, err = s.pool.Exec(ctx, `SELECT 1/0`)
	if err == nil || transient(err) {
		t.Errorf("a division by zero: %v, transient %v", err, transient(err))
	}
	p, err := pgxpool.New(ctx, "postgres://u@127.0.0.1:1/x?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.Exec(ctx, `SELECT 1`)
	if err == nil || !transient(err) {
		t.Errorf("a refused connection: %v, transient %v", err, transient(err))
	}
	if !transient(context.DeadlineExceeded) || !transient(errors.New("unexpected EOF")) {
		t.Error("errors without an answer from the server are not transient")
	}
}

func TestCleanText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":           "plain",
		"nul\x00byte":     "nul\uFFFDbyte",
		"bad\xffutf8":     "bad\uFFFDutf8",
		"é ok":            "é ok",
		"\x00\xfe\x00end": "\uFFFD\uFFFD\uFFFDend",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
