package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func countRequests(t testing.TB, s *Store) int64 {
	t.Helper()
	n, err := s.CountRequestLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func addKeys(t testing.TB, s *Store, secrets ...string) []Key {
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
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.interval = time.Hour })
	for range 3 {
		s.LogRequest(RequestLog{Time: time.Now(), Status: 200})
	}
	s.LogError(ErrorLog{Time: time.Now(), Status: 500})
	time.Sleep(50 * time.Millisecond)
	if n := countRequests(t, s); n != 0 {
		t.Fatalf("%d rows visible before Flush with an hour-long interval", n)
	}
	s.Flush()
	if n := countRequests(t, s); n != 3 {
		t.Fatalf("%d rows after Flush, want 3", n)
	}
	errs, err := s.RecentErrors(context.Background(), LogQuery{})
	if err != nil || len(errs) != 1 {
		t.Fatalf("errors after Flush = %v, %v", errs, err)
	}
	s.Flush() // nothing pending: returns
}

func TestKeyStatesAreCoalesced(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.paused = true })
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	for i := range 100 {
		s.SaveKeyState(KeyState{KeyID: a, Disabled: i%2 == 1, Reason: fmt.Sprint("reason ", i), Failures: i, LastError: fmt.Sprint("error ", i)})
	}
	s.SaveKeyState(KeyState{KeyID: b, Disabled: false, Reason: "ignored when enabled", Failures: 1, LastError: "503"})
	s.w.stateMu.Lock()
	pending := len(s.w.states)
	s.w.stateMu.Unlock()
	if pending != 2 {
		t.Errorf("%d pending states, want 2 (one per key)", pending)
	}
	s.w.resume()
	s.Flush()

	keys, _ = s.Keys(context.Background())
	if k := keys[0]; k.Status != StatusDisabled || k.DisabledReason != "reason 99" || k.Failures != 99 || k.LastError != "error 99" || k.ManualDisabled {
		t.Errorf("key a = %+v, want the 100th state", k)
	}
	if k := keys[1]; k.Status != StatusActive || k.DisabledReason != "" || k.Failures != 1 || k.LastError != "503" {
		t.Errorf("key b = %+v", k)
	}

	// The pool re-enables a key it had disabled itself; the reason goes.
	s.SaveKeyState(KeyState{KeyID: a, Disabled: false, Reason: "stale", Failures: 0})
	s.Flush()
	keys, _ = s.Keys(context.Background())
	if k := keys[0]; k.Status != StatusActive || k.DisabledReason != "" || k.Failures != 0 {
		t.Errorf("key a after re-enable = %+v", k)
	}
}

func TestManualDisableIsNotOverwrittenByThePool(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.paused = true })
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID

	// Pool state saved before an operator's decision and not yet written does not undo it.
	s.SaveKeyState(KeyState{KeyID: b, Disabled: true, Reason: "invalid key", Failures: 3})
	s.SaveCooldown(Cooldown{KeyID: b, Model: "m", Until: time.Now().Add(time.Hour)})
	if err := s.SetKeyStatus(ctx, b, StatusActive, "", false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyStatus(ctx, a, StatusDisabled, "operator", true); err != nil {
		t.Fatal(err)
	}
	s.w.resume()
	// Pool state saved after it: counters move, status and reason stay.
	s.SaveKeyState(KeyState{KeyID: a, Disabled: false, Failures: 2, LastError: "timeout"})
	s.Flush()

	keys, _ = s.Keys(ctx)
	if k := keys[0]; k.Status != StatusDisabled || k.DisabledReason != "operator" || !k.ManualDisabled || k.Failures != 2 || k.LastError != "timeout" {
		t.Errorf("manually disabled key = %+v", k)
	}
	if k := keys[1]; k.Status != StatusActive || k.Failures != 0 {
		t.Errorf("key enabled by the operator = %+v", k)
	}
	if cds, _ := s.Cooldowns(ctx, time.Now()); len(cds) != 0 {
		t.Errorf("cooldowns of the enabled key = %+v", cds)
	}
}

func TestFullQueueDropsAndCounts(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	path := pgtest.URL(t)
	s := openTest(t, path, zap.New(core), func(o *options) {
		o.queueSize = 4
		o.paused = true
	})
	for range 10 {
		s.LogRequest(RequestLog{Time: time.Now(), Status: 200})
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
	s.LogError(ErrorLog{Time: time.Now(), Status: 500})
	s.Flush()
	if got := s.Written(); got != 5 {
		t.Errorf("Written() = %d after an error row, want 5", got)
	}
}

// TestRowsAfterCloseAreCounted: a row logged after Close cannot be written; it is counted as
// dropped (as a row the full queue refused is) and a warning says so, at most once a second.
func TestRowsAfterCloseAreCounted(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := openTest(t, pgtest.URL(t), zap.New(core), nil)
	s.LogRequest(RequestLog{Time: time.Now(), Status: 200})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Dropped(); got != 0 {
		t.Fatalf("Dropped() = %d before any row after Close", got)
	}
	for range 5 {
		s.LogRequest(RequestLog{Time: time.Now(), Status: 200})
	}
	s.LogError(ErrorLog{Time: time.Now(), Status: 500})
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
