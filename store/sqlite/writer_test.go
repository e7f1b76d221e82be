package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
)

func countRequests(t testing.TB, s *Store) int64 {
	t.Helper()
	n, err := s.CountRequestLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestBusyDatabaseIsRetried holds the write lock from another connection for a second, longer
// than the busy timeout, and checks that the writer retries and loses nothing.
func TestBusyDatabaseIsRetried(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	path := filepath.Join(t.TempDir(), "d.db")
	s := openTest(t, path, zap.New(core), func(o *options) { o.busyTimeout = 100 * time.Millisecond })

	other := rawDB(t, path)
	tx, err := other.Begin() // BEGIN IMMEDIATE: takes the write lock
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO settings (name, value, updated_at) VALUES ('lock', '1', 0)`); err != nil {
		t.Fatal(err)
	}
	const hold = time.Second
	start := time.Now()
	for range 500 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	}
	flushed := make(chan time.Duration)
	go func() {
		s.Flush()
		flushed <- time.Since(start)
	}()
	time.Sleep(hold)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	took := <-flushed
	if took < hold {
		t.Errorf("Flush returned after %v while the database was locked for %v", took, hold)
	}
	if n := countRequests(t, s); n != 500 {
		t.Fatalf("%d rows after the lock was released, want 500", n)
	}
	if s.Dropped() != 0 {
		t.Errorf("dropped %d", s.Dropped())
	}
	if s.w.FailedAttempts() == 0 {
		t.Error("no failed attempt recorded: the lock did not bite")
	}
	if logs.FilterMessage("writing a batch of logs failed, will retry").Len() == 0 {
		t.Error("retries were not logged")
	}
}

// TestCloseGivesUpOnALockedDatabase: Close does not hang forever when another process never
// lets go; what could not be written is counted as dropped.
func TestCloseGivesUpOnALockedDatabase(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	path := filepath.Join(t.TempDir(), "d.db")
	s := openTest(t, path, zap.New(core), func(o *options) {
		o.busyTimeout = 20 * time.Millisecond
		o.writer.CloseTimeout = 200 * time.Millisecond
	})
	other := rawDB(t, path)
	tx, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`INSERT INTO settings (name, value, updated_at) VALUES ('lock', '1', 0)`); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close took %v", took)
	}
	if got := s.Dropped(); got != 10 {
		t.Errorf("Dropped() = %d, want 10", got)
	}
	if got := s.Written(); got != 0 {
		t.Errorf("Written() = %d, want 0", got)
	}
	if logs.FilterMessage("giving up writing a batch of logs").Len() == 0 {
		t.Error("giving up was not logged")
	}
}

// BenchmarkLogRequest measures the writer's sustained rate: rows queued and committed to a real
// file per second.
func BenchmarkLogRequest(b *testing.B) {
	s := openTest(b, filepath.Join(b.TempDir(), "bench.db"), nil, nil)
	enginetest.BenchmarkLogRequest(b, s, 50000, 1)
}
