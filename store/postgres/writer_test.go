package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

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

// TestWriterRidesOutAStoppedServer stops the server (pg_ctl stop) for a few seconds while the
// gateway keeps logging: logging never blocks, the writer keeps its batch and the queue (the
// rows beyond them are dropped and counted), retries with backoff, and writes everything it
// kept once the server is back, with the sums, counters and key state saved meanwhile.
func TestWriterRidesOutAStoppedServer(t *testing.T) {
	srv := pgtest.NewServer(t)
	url := srv.URL(t)
	core, logs := observer.New(zapcore.InfoLevel)
	const queue, batch = 1000, 100
	s := openTest(t, url, zap.New(core), func(o *options) {
		o.writer.QueueSize, o.writer.BatchSize = queue, batch
		o.writer.MaxBackoff = 200 * time.Millisecond
	})
	ctx := context.Background()
	keys := addKeys(t, s, "AIzaSyOUTAGE-key-a-aaaaaaaaaaaaaaaaaaaaa", "AIzaSyOUTAGE-key-b-bbbbbbbbbbbbbbbbbbbbb")
	a, b := keys[0].ID, keys[1].ID
	ak, err := s.AddAccessKey(ctx, "sk-outage", "", "")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_750_000_000_000)
	row := func(i int) RequestLog {
		return RequestLog{Time: t0.Add(time.Duration(i) * time.Millisecond), AccessKeyID: ak, KeyID: a, Model: "m",
			Status: 200, TotalTokens: 10, Path: fmt.Sprint("/r/", i)}
	}
	const before = 50
	for i := range before {
		s.LogRequest(row(i))
	}
	s.Flush()
	if w := s.Written(); w != before {
		t.Fatalf("Written() = %d before the outage, want %d", w, before)
	}

	srv.Stop(t)
	// The server starts again only after this: a call that waited for it would never return.
	const during = 3000
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		// A batch first, which the writer takes and then keeps retrying: from then on it
		// takes nothing from the queue, so the rows the full queue refuses are the newest.
		// (Were the writer still taking its batch when the queue filled, a later row could
		// take a place freed after an earlier one was refused.)
		for i := range batch {
			s.LogRequest(row(before + i))
		}
		for deadline := time.Now().Add(30 * time.Second); s.w.FailedAttempts() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		for i := batch; i < during; i++ {
			s.LogRequest(row(before + i))
		}
		s.LogError(ErrorLog{Time: t0, KeyID: b, AccessKeyID: ak, Status: 503, Message: "during the outage"})
		s.SaveKeyState(KeyState{KeyID: b, Disabled: true, Reason: "403 during the outage", Failures: 3, LastError: "403"})
		s.SaveCooldown(Cooldown{KeyID: a, Model: "m", Until: t0.Add(100 * 365 * 24 * time.Hour)})
	}()
	select {
	case <-logged:
	case <-time.After(time.Minute):
		t.Fatal("logging to a stopped server blocked the caller")
	}
	dropped := s.Dropped()
	kept := during + 1 - int(dropped)
	t.Logf("logged %d rows while the server was down: %d kept, %d dropped", during+1, kept, dropped)
	// The writer holds the queue and at most one batch: no row within that bound is lost.
	if dropped == 0 || kept < queue || kept > queue+batch {
		t.Errorf("dropped %d of %d rows: kept %d, want between the queue (%d) and the queue and a batch (%d)",
			dropped, during+1, kept, queue, queue+batch)
	}
	// A call that needs the database fails instead of hanging.
	short, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := s.Keys(short); err == nil {
		t.Error("Keys answered while the server was stopped")
	}

	time.Sleep(3 * time.Second) // down for a few seconds; the writer keeps retrying
	if s.w.FailedAttempts() == 0 {
		t.Error("no failed attempt while the server was down")
	}
	if w := s.Written(); w != before {
		t.Errorf("Written() = %d during the outage", w)
	}
	srv.Start(t)

	flushed := make(chan struct{})
	go func() {
		s.Flush()
		close(flushed)
	}()
	select {
	case <-flushed:
	case <-time.After(30 * time.Second):
		t.Fatal("Flush did not return 30 s after the server came back")
	}
	if w, d := s.Written(), s.Dropped(); w+d != before+during+1 || int(w) != before+kept {
		t.Errorf("written %d + dropped %d; want %d written of %d", w, d, before+kept, before+during+1)
	}
	if n := countRows(t, s, "request_logs") + countRows(t, s, "error_logs"); n != int64(s.Written()) {
		t.Errorf("%d rows in the database, Written() = %d", n, s.Written())
	}
	// The rows kept are the oldest ones: what the queue refused came last.
	var last int64
	if err := s.pool.QueryRow(ctx, `SELECT MAX(time) FROM request_logs`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s, "request_logs"); last != toMS(row(int(n)-1).Time) {
		t.Errorf("the newest row written is at %d, want the %dth at %d", last, n, toMS(row(int(n)-1).Time))
	}
	// The sums went in with the rows: those of the access key are those of the rows written.
	written := make([]RequestLog, countRows(t, s, "request_logs"))
	for i := range written {
		written[i] = row(i)
	}
	slot := time.UnixMilli(slotOf(toMS(t0)))
	storetest.CheckUsageOf(t, s, written, [][]time.Time{{slot, slot.Add(store.UsageSlot), slot.Add(2 * store.UsageSlot)}}, ak)
	keys, err = s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	requests := countRows(t, s, "request_logs")
	if k := keys[0]; k.Requests != requests || k.FailedRequests != 0 {
		t.Errorf("key a counts %d requests, %d failed; want %d, 0", k.Requests, k.FailedRequests, requests)
	}
	if k := keys[1]; k.Status != StatusDisabled || k.DisabledReason != "403 during the outage" || k.Failures != 3 {
		t.Errorf("key b after the outage = %+v, want the state saved meanwhile", k)
	}
	if cds, err := s.Cooldowns(ctx, t0); err != nil || len(cds) != 1 || cds[0].KeyID != a {
		t.Errorf("cooldowns after the outage = %+v, %v", cds, err)
	}
	if logs.FilterMessage("writing a batch of logs failed, will retry").Len() == 0 {
		t.Error("the failures were not logged")
	}
	if logs.FilterMessage("writing logs again after failures").Len() != 1 {
		t.Error("the recovery was not logged")
	}
	if logs.FilterMessage("log queue full, dropping rows").Len() == 0 {
		t.Error("the drops were not logged")
	}
}

// TestCloseGivesUpOnAStoppedServer: Close does not hang forever when the server never comes
// back; what could not be written is counted as dropped.
func TestCloseGivesUpOnAStoppedServer(t *testing.T) {
	srv := pgtest.NewServer(t)
	core, logs := observer.New(zapcore.ErrorLevel)
	hold := make(chan struct{})
	s := openTest(t, srv.URL(t), zap.New(core), func(o *options) {
		o.writer.CloseTimeout = 300 * time.Millisecond
		o.writer.BatchSize = 4 // three batches: the later ones are dropped without an attempt
		o.writer.Hold = hold
	})
	srv.Stop(t)
	close(hold)
	for range 10 {
		s.LogRequest(RequestLog{Time: time.Now(), Status: 200})
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("Close took %v with a close timeout of 300 ms", took)
	}
	if got := s.Dropped(); got != 10 {
		t.Errorf("Dropped() = %d, want 10", got)
	}
	if got := s.Written(); got != 0 {
		t.Errorf("Written() = %d, want 0", got)
	}
	if n := logs.FilterMessage("giving up writing a batch of logs").Len(); n != 1 {
		t.Errorf("giving up was logged %d times, want once", n)
	}
}

// TestTextPostgreSQLRefusesIsCleaned: a NUL byte or invalid UTF-8 in a log row (PostgreSQL's
// text holds neither) is stored as U+FFFD instead of failing the batch it is in.
func TestTextPostgreSQLRefusesIsCleaned(t *testing.T) {
	s := newStore(t, nil)
	keys := addKeys(t, s, "k")
	s.LogRequest(RequestLog{Time: time.Now(), Path: "/v1beta/models/a\x00b", Model: "m\xff", Error: "e\x00", Status: 200})
	s.LogRequest(RequestLog{Time: time.Now(), Path: "/fine", Status: 200})
	s.LogError(ErrorLog{Time: time.Now(), Message: "bad \xfe\xff bytes", Model: "\x00"})
	s.SaveKeyState(KeyState{KeyID: keys[0].ID, Failures: 1, LastError: "upstream said \x00"})
	s.Flush()
	ctx := context.Background()
	reqs, err := s.RecentRequests(ctx, LogQuery{})
	if err != nil || len(reqs) != 2 {
		t.Fatalf("request rows: %+v, %v", reqs, err)
	}
	if reqs[1].Path != "/v1beta/models/a\uFFFDb" || reqs[1].Model != "m\uFFFD" || reqs[1].Error != "e\uFFFD" {
		t.Errorf("cleaned row = %+v", reqs[1])
	}
	errs, err := s.RecentErrors(ctx, LogQuery{})
	if err != nil || len(errs) != 1 || errs[0].Message != "bad \uFFFD bytes" {
		t.Errorf("error rows: %+v, %v", errs, err)
	}
	if keys, _ := s.Keys(ctx); keys[0].LastError != "upstream said \uFFFD" {
		t.Errorf("key state = %+v", keys[0])
	}
	if d := s.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d", d)
	}
}

// BenchmarkLogRequest measures the writer's sustained rate: 100000 request rows queued and
// committed (with COPY, and their sums) per operation, in rows per second. The queue is made
// large enough to hold them all, so that nothing is dropped while the writer catches up.
func BenchmarkLogRequest(b *testing.B) {
	const rowsPerOp = 100000
	s := openTest(b, pgtest.URL(b), nil, func(o *options) { o.writer.QueueSize = rowsPerOp })
	enginetest.BenchmarkLogRequest(b, s, rowsPerOp, 50)
}
