package sqlite

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
)

// openTest opens a store at path with default options adjusted by opt, closed at test end.
func openTest(t testing.TB, path string, logger *zap.Logger, opt func(*options)) *Store {
	t.Helper()
	o := defaultOptions()
	if opt != nil {
		opt(&o)
	}
	s, err := open(path, logger, o)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rawDB opens the file with plain database/sql, bypassing the store.
func rawDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	dsn, err := dsnFor(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func userVersion(t testing.TB, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenCreatesPrivateFilesInWALMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "gemini")
	path := filepath.Join(dir, "data.db")
	s := openTest(t, path, nil, nil)

	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("directory not created: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o700 {
		t.Errorf("directory mode = %o, want 700", got)
	}
	st, err = os.Stat(path)
	if err != nil {
		t.Fatalf("database not created: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("database mode = %o, want 600", got)
	}

	ctx := context.Background()
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Errorf("journal_mode = %q, want wal", mode)
	}
	var fk, busy, sync int
	if err := s.db.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&busy); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil {
		t.Fatal(err)
	}
	if fk != 1 || busy != 5000 || sync != 1 {
		t.Errorf("foreign_keys=%d busy_timeout=%d synchronous=%d, want 1 5000 1 (NORMAL)", fk, busy, sync)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}

	// The WAL file SQLite creates next to the database inherits the private mode.
	if _, err := s.AddKeys(ctx, []string{"k"}); err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(path + "-wal")
	if err != nil {
		t.Fatalf("no WAL file: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("WAL file mode = %o, want 600", got)
	}
}

// TestMigrateFromOlderVersion builds a version-1 database by hand, then migrates it with the
// real steps plus a later one, as a future release would.
func TestMigrateFromOlderVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	ctx := context.Background()
	db := rawDB(t, path)
	if _, err := db.Exec(migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 1; INSERT INTO keys (secret, created_at) VALUES ('old-key', 1)`); err != nil {
		t.Fatal(err)
	}

	steps := slices.Clone(migrations)
	steps = append(steps, `ALTER TABLE keys ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'`)
	if err := migrate(ctx, db, steps); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if v := userVersion(t, db); v != len(steps) {
		t.Fatalf("user_version = %d, want %d", v, len(steps))
	}
	var note string
	if err := db.QueryRow(`SELECT note FROM keys WHERE secret = 'old-key'`).Scan(&note); err != nil {
		t.Fatal(err)
	}
	if note != "migrated" {
		t.Errorf("note = %q", note)
	}
	// Running again applies nothing (the ALTER would fail if it ran twice).
	if err := migrate(ctx, db, steps); err != nil {
		t.Fatalf("second migrate: %v", err)
	}

	// A failing step is rolled back as a whole and leaves the version alone.
	bad := append(slices.Clone(steps), `CREATE TABLE half_done (x); SELECT no_such_function()`)
	if err := migrate(ctx, db, bad); err == nil {
		t.Fatal("failing step: no error")
	}
	if v := userVersion(t, db); v != len(steps) {
		t.Errorf("user_version after failed step = %d, want %d", v, len(steps))
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("table of the failed step exists")
	}
}

func TestOpenMigratesFreshAndVersionOneFiles(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	// An empty file someone created beforehand.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, empty, nil, nil)
	if _, err := s.Keys(ctx); err != nil {
		t.Fatal(err)
	}

	// A database at version 1 written by hand.
	v1 := filepath.Join(dir, "v1.db")
	db := rawDB(t, v1)
	if _, err := db.Exec(migrations[0] + `; PRAGMA user_version = 1; INSERT INTO keys (secret, created_at) VALUES ('k', 1)`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s = openTest(t, v1, nil, nil)
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys = %+v, %v", keys, err)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	db := rawDB(t, path)
	if _, err := db.Exec(`PRAGMA user_version = 999`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s, err := Open(path, nil)
	if err == nil {
		_ = s.Close()
		t.Fatal("opened a database from a newer version")
	}
}

func countRows(t testing.TB, s *Store, table string) int64 {
	t.Helper()
	var n int64
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
