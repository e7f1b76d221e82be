package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// testFlushCommitsWhatCameBefore: with an hour-long batch interval only Flush makes rows
// visible early.
func testFlushCommitsWhatCameBefore(t *testing.T, o opener) {
	s := o.openWith(t, Options{Interval: time.Hour})
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

// testKeyStatesAreCoalesced: of the states saved for a key before the writer runs, the newest
// is written; a key the pool enables again loses its reason.
func testKeyStatesAreCoalesced(t *testing.T, o opener) {
	hold := make(chan struct{})
	s := o.openWith(t, Options{Hold: hold})
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	for i := range 100 {
		s.SaveKeyState(store.KeyState{KeyID: a, Disabled: i%2 == 1, Reason: fmt.Sprint("reason ", i), Failures: i, LastError: fmt.Sprint("error ", i)})
	}
	s.SaveKeyState(store.KeyState{KeyID: b, Disabled: false, Reason: "ignored when enabled", Failures: 1, LastError: "503"})
	close(hold)
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

// testManualDisableIsNotOverwrittenByThePool: pool state saved before an operator's decision
// and not yet written does not undo it; pool state saved after it moves the counters only.
func testManualDisableIsNotOverwrittenByThePool(t *testing.T, o opener) {
	hold := make(chan struct{})
	s := o.openWith(t, Options{Hold: hold})
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID

	s.SaveKeyState(store.KeyState{KeyID: b, Disabled: true, Reason: "invalid key", Failures: 3})
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "m", Until: time.Now().Add(time.Hour)})
	if err := s.SetKeyStatus(ctx, b, store.StatusActive, "", false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyStatus(ctx, a, store.StatusDisabled, "operator", true); err != nil {
		t.Fatal(err)
	}
	close(hold)
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

// testOperatorLabelDiscardsPendingGuess: a learned label still queued when an operator sets or
// clears the label is dropped, so it cannot fill a label the operator just cleared.
func testOperatorLabelDiscardsPendingGuess(t *testing.T, o opener) {
	hold := make(chan struct{})
	s := o.openWith(t, Options{Hold: hold})
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	if _, err := s.SetKeysProject(ctx, []int64{a}, "wrong-guess"); err != nil {
		t.Fatal(err)
	}
	s.SaveKeyProject(a, "older-guess")
	s.SaveKeyProject(b, "kept-guess")
	if _, err := s.SetKeysProject(ctx, []int64{a}, ""); err != nil { // the operator clears a
		t.Fatal(err)
	}
	close(hold)
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"a": "", "b": "kept-guess"})
}

// testFullQueueDropsAndCounts: rows the full queue refuses are dropped and counted, with one
// warning for a burst; Written counts only the rows committed.
func testFullQueueDropsAndCounts(t *testing.T, o opener) {
	core, logs := observer.New(zapcore.WarnLevel)
	hold := make(chan struct{})
	s := o.openWith(t, Options{Logger: zap.New(core), QueueSize: 4, Hold: hold})
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
	close(hold)
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

// testRowsAfterCloseAreCounted: a row logged after Close cannot be written; it is counted as
// dropped (as a row the full queue refused is) and a warning says so, at most once a second.
func testRowsAfterCloseAreCounted(t *testing.T, o opener) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := o.openWith(t, Options{Logger: zap.New(core)})
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
