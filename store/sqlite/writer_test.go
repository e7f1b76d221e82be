package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func countRequests(t testing.TB, s *Store) int64 {
	t.Helper()
	n, err := s.CountRequestLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func addKeys(t testing.TB, s *Store, secrets ...string) []store.Key {
	t.Helper()
	ctx := context.Background()
	if _, err := s.AddKeys(ctx, secrets); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestFlushCommitsWhatCameBefore(t *testing.T) {
	// With an hour-long batch interval only Flush makes rows visible early.
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, func(o *options) { o.interval = time.Hour })
	for range 3 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	}
	s.LogError(store.ErrorLog{Time: time.Now(), Status: 500})
	time.Sleep(50 * time.Millisecond)
	if n := countRequests(t, s); n != 0 {
		t.Fatalf("%d rows visible before Flush with an hour-long interval", n)
	}
	s.Flush()
	if n := countRequests(t, s); n != 3 {
		t.Fatalf("%d rows after Flush, want 3", n)
	}
	errs, err := s.RecentErrors(context.Background(), store.LogQuery{})
	if err != nil || len(errs) != 1 {
		t.Fatalf("errors after Flush = %v, %v", errs, err)
	}
	s.Flush() // nothing pending: returns
}

func TestKeyStatesAreCoalesced(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, func(o *options) { o.paused = true })
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	for i := range 100 {
		s.SaveKeyState(store.KeyState{KeyID: a, Disabled: i%2 == 1, Reason: fmt.Sprint("reason ", i), Failures: i, LastError: fmt.Sprint("error ", i)})
	}
	s.SaveKeyState(store.KeyState{KeyID: b, Disabled: false, Reason: "ignored when enabled", Failures: 1, LastError: "503"})
	s.w.stateMu.Lock()
	pending := len(s.w.states)
	s.w.stateMu.Unlock()
	if pending != 2 {
		t.Errorf("%d pending states, want 2 (one per key)", pending)
	}
	s.w.resume()
	s.Flush()

	keys, _ = s.Keys(context.Background())
	if k := keys[0]; k.Status != store.StatusDisabled || k.DisabledReason != "reason 99" || k.Failures != 99 || k.LastError != "error 99" || k.ManualDisabled {
		t.Errorf("key a = %+v, want the 100th state", k)
	}
	if k := keys[1]; k.Status != store.StatusActive || k.DisabledReason != "" || k.Failures != 1 || k.LastError != "503" {
		t.Errorf("key b = %+v", k)
	}

	// The pool re-enables a key it had disabled itself; the reason goes.
	s.SaveKeyState(store.KeyState{KeyID: a, Disabled: false, Reason: "stale", Failures: 0})
	s.Flush()
	keys, _ = s.Keys(context.Background())
	if k := keys[0]; k.Status != store.StatusActive || k.DisabledReason != "" || k.Failures != 0 {
		t.Errorf("key a after re-enable = %+v", k)
	}
}

func TestManualDisableIsNotOverwrittenByThePool(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, func(o *options) { o.paused = true })
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID

	// Pool state saved before an operator's decision and not yet written does not undo it.
	s.SaveKeyState(store.KeyState{KeyID: b, Disabled: true, Reason: "invalid key", Failures: 3})
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "m", Until: time.Now().Add(time.Hour)})
	if err := s.SetKeyStatus(ctx, b, store.StatusActive, "", false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyStatus(ctx, a, store.StatusDisabled, "operator", true); err != nil {
		t.Fatal(err)
	}
	s.w.resume()
	// Pool state saved after it: counters move, status and reason stay.
	s.SaveKeyState(store.KeyState{KeyID: a, Disabled: false, Failures: 2, LastError: "timeout"})
	s.Flush()

	keys, _ = s.Keys(ctx)
	if k := keys[0]; k.Status != store.StatusDisabled || k.DisabledReason != "operator" || !k.ManualDisabled || k.Failures != 2 || k.LastError != "timeout" {
		t.Errorf("manually disabled key = %+v", k)
	}
	if k := keys[1]; k.Status != store.StatusActive || k.Failures != 0 {
		t.Errorf("key enabled by the operator = %+v", k)
	}
	if cds, _ := s.Cooldowns(ctx, time.Now()); len(cds) != 0 {
		t.Errorf("cooldowns of the enabled key = %+v", cds)
	}
}

func TestFullQueueDropsAndCounts(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	path := filepath.Join(t.TempDir(), "d.db")
	s := openTest(t, path, zap.New(core), func(o *options) {
		o.queueSize = 4
		o.paused = true
	})
	for range 10 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	}
	if got := s.Dropped(); got != 6 {
		t.Fatalf("Dropped() = %d, want 6", got)
	}
	warns := logs.FilterMessage("log queue full, dropping rows").All()
	if len(warns) != 1 {
		t.Fatalf("%d drop warnings in a burst, want 1", len(warns))
	}
	if got := warns[0].ContextMap()["dropped_total"]; got != uint64(1) {
		t.Errorf("dropped_total = %v, want 1", got)
	}
	s.w.resume()
	s.Flush()
	if n := countRequests(t, s); n != 4 {
		t.Fatalf("%d rows written, want the 4 queued", n)
	}
	if got := s.Written(); got != 4 {
		t.Errorf("Written() = %d, want 4 (dropped rows are not written)", got)
	}
	s.LogError(store.ErrorLog{Time: time.Now(), Status: 500})
	s.Flush()
	if got := s.Written(); got != 5 {
		t.Errorf("Written() = %d after an error row, want 5", got)
	}
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
	if s.w.failedTxs.Load() == 0 {
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
		o.closeTimeout = 200 * time.Millisecond
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
	const rowsPerOp = 50000
	r := store.RequestLog{
		Method: "POST", Path: "/v1beta/models/gemini-2.5-flash:generateContent", Model: "gemini-2.5-flash",
		Status: 200, Attempts: 1, Latency: 850 * time.Millisecond, TTFB: 300 * time.Millisecond,
		PromptTokens: 120, CandidatesTokens: 480, TotalTokens: 600, KeyID: 1, AccessKeyID: 1,
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		for i := range rowsPerOp {
			r.Time = time.Now()
			r.KeyID = int64(1 + i%20)
			s.LogRequest(r)
		}
		s.Flush()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if d := s.Dropped(); d != 0 {
		b.Fatalf("dropped %d rows", d)
	}
	b.ReportMetric(float64(rowsPerOp*b.N)/elapsed.Seconds(), "rows/s")
}

// TestRowsAfterCloseAreCounted: a row logged after Close cannot be written; it is counted as
// dropped (as a row the full queue refused is) and a warning says so, at most once a second.
func TestRowsAfterCloseAreCounted(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), zap.New(core), nil)
	s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Dropped(); got != 0 {
		t.Fatalf("Dropped() = %d before any row after Close", got)
	}
	for range 5 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
	}
	s.LogError(store.ErrorLog{Time: time.Now(), Status: 500})
	if got := s.Dropped(); got != 6 {
		t.Errorf("Dropped() = %d after 6 rows logged to a closed store, want 6", got)
	}
	if got := s.Written(); got != 1 {
		t.Errorf("Written() = %d, want 1", got)
	}
	warns := logs.FilterMessage("log store closed, dropping rows").All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings for a burst of rows after Close, want 1", len(warns))
	}
	if got := warns[0].ContextMap()["dropped_total"]; got != uint64(1) {
		t.Errorf("dropped_total = %v, want 1", got)
	}
}
