package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// fillRequests logs n request rows stamped at and waits until they are written.
func fillRequests(s store.Store, n int, at time.Time) {
	for range n {
		s.LogRequest(store.RequestLog{Time: at, Path: "/old"})
	}
	s.Flush()
}

// testPurgeWorksInBatches: a purge deletes batch after batch until one is not full, also when
// the rows are a whole number of batches (the last, empty one ends it).
func testPurgeWorksInBatches(t *testing.T, o opener) {
	s := o.openWith(t, Options{PurgeBatch: 100, PurgePause: time.Millisecond})
	ctx := context.Background()
	cutoff := time.UnixMilli(1_750_000_000_000)
	fillRequests(s, 1050, cutoff.Add(-time.Hour))
	fillRequests(s, 7, cutoff)
	if n, err := s.PurgeRequestLogs(ctx, cutoff); err != nil || n != 1050 {
		t.Fatalf("purge in batches of 100 = %d, %v; want 1050", n, err)
	}
	if left := countRequests(t, s); left != 7 {
		t.Errorf("rows left: %d, want 7", left)
	}
	fillRequests(s, 300, cutoff.Add(-time.Hour))
	if n, err := s.PurgeRequestLogs(ctx, cutoff); err != nil || n != 300 {
		t.Errorf("purge of 300 = %d, %v", n, err)
	}
}

// testPurgeStopsWhenContextEnds: a purge whose context ends stops between two batches and
// answers what it deleted so far with the context's error.
func testPurgeStopsWhenContextEnds(t *testing.T, o opener) {
	s := o.openWith(t, Options{PurgeBatch: 100, PurgePause: time.Hour})
	cutoff := time.UnixMilli(1_750_000_000_000)
	fillRequests(s, 1000, cutoff.Add(-time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	n, err := s.PurgeRequestLogs(ctx, cutoff)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if n%100 != 0 || n >= 1000 {
		t.Errorf("deleted %d rows before stopping, want whole batches and not all", n)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %v to notice the context", time.Since(start))
	}
	if left := countRequests(t, s); left != 1000-n {
		t.Errorf("rows left %d after deleting %d", left, n)
	}
}

// testPurgeLetsTheLogWriterIn purges many rows while the proxy keeps logging: the writer's
// batches get in between the purge's, so a Flush completes long before the purge does.
func testPurgeLetsTheLogWriterIn(t *testing.T, o opener) {
	s := o.openWith(t, Options{PurgeBatch: 500, PurgePause: 10 * time.Millisecond})
	ctx := context.Background()
	cutoff := time.Now().Add(-30 * 24 * time.Hour)
	const old = 30000
	fillRequests(s, old, cutoff.Add(-time.Hour))

	purged := make(chan int64, 1)
	go func() {
		n, err := s.PurgeRequestLogs(ctx, cutoff)
		if err != nil {
			t.Error(err)
		}
		purged <- n
	}()
	// Wait until the purge is under way.
	for deadline := time.Now().Add(10 * time.Second); countRequests(t, s) == old; {
		if time.Now().After(deadline) {
			t.Fatal("the purge did not start")
		}
		time.Sleep(time.Millisecond)
	}
	s.LogRequest(store.RequestLog{Time: time.Now(), Path: "/during-purge"})
	s.Flush()
	select {
	case n := <-purged:
		t.Fatalf("the purge (%d rows) finished before the writer got in: it blocked the writer", n)
	default:
	}
	if n := <-purged; n != old {
		t.Errorf("purged %d rows, want %d", n, old)
	}
	got, err := s.RecentRequests(ctx, store.LogQuery{})
	if err != nil || len(got) != 1 || got[0].Path != "/during-purge" {
		t.Errorf("rows left: %+v, %v; want only the one logged during the purge", got, err)
	}
}
