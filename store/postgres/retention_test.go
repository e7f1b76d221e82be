package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// fillRequests inserts n request rows stamped at, in one statement.
func fillRequests(t testing.TB, s *Store, n int, at time.Time) {
	t.Helper()
	exec(t, s, `INSERT INTO request_logs (time, path) SELECT $2, 'old' FROM generate_series(1, $1)`, n, toMS(at))
}

func TestPurgeWorksInBatches(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	ctx := context.Background()
	cutoff := time.UnixMilli(1_750_000_000_000)
	fillRequests(t, s, 1050, cutoff.Add(-time.Hour))
	fillRequests(t, s, 7, cutoff)
	n, err := s.purge(ctx, "request logs",
		`DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs WHERE time < $1 LIMIT $2)`,
		toMS(cutoff), 100, time.Millisecond)
	if err != nil || n != 1050 {
		t.Fatalf("purge in batches of 100 = %d, %v; want 1050", n, err)
	}
	if left := countRows(t, s, "request_logs"); left != 7 {
		t.Errorf("rows left: %d, want 7", left)
	}
	// Exactly a multiple of the batch: the last, empty batch ends the loop.
	fillRequests(t, s, 300, cutoff.Add(-time.Hour))
	if n, err := s.purge(ctx, "request logs",
		`DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs WHERE time < $1 LIMIT $2)`,
		toMS(cutoff), 100, time.Millisecond); err != nil || n != 300 {
		t.Errorf("purge of 300 = %d, %v", n, err)
	}
}

func TestPurgeStopsWhenContextEnds(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	cutoff := time.UnixMilli(1_750_000_000_000)
	fillRequests(t, s, 1000, cutoff.Add(-time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	n, err := s.purge(ctx, "request logs",
		`DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs WHERE time < $1 LIMIT $2)`,
		toMS(cutoff), 100, time.Hour)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if n%100 != 0 || n >= 1000 {
		t.Errorf("deleted %d rows before stopping, want whole batches and not all", n)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %v to notice the context", time.Since(start))
	}
	if left := countRows(t, s, "request_logs"); left != 1000-n {
		t.Errorf("rows left %d after deleting %d", left, n)
	}
}

// TestPurgeLetsTheLogWriterIn purges many rows while the proxy keeps logging: the writer's
// batches get in between the purge's, so a Flush completes long before the purge does.
func TestPurgeLetsTheLogWriterIn(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	ctx := context.Background()
	cutoff := time.Now().Add(-30 * 24 * time.Hour)
	const old = 30000
	fillRequests(t, s, old, cutoff.Add(-time.Hour))

	purged := make(chan int64, 1)
	go func() {
		n, err := s.purge(ctx, "request logs",
			`DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs WHERE time < $1 LIMIT $2)`,
			toMS(cutoff), 500, 10*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		purged <- n
	}()
	// Wait until the purge is under way.
	for deadline := time.Now().Add(10 * time.Second); countRows(t, s, "request_logs") == old; {
		if time.Now().After(deadline) {
			t.Fatal("the purge did not start")
		}
		time.Sleep(time.Millisecond)
	}
	s.LogRequest(RequestLog{Time: time.Now(), Path: "/during-purge"})
	s.Flush()
	select {
	case n := <-purged:
		t.Fatalf("the purge (%d rows) finished before the writer got in: it blocked the writer", n)
	default:
	}
	if n := <-purged; n != old {
		t.Errorf("purged %d rows, want %d", n, old)
	}
	got, err := s.RecentRequests(ctx, LogQuery{})
	if err != nil || len(got) != 1 || got[0].Path != "/during-purge" {
		t.Errorf("rows left: %+v, %v; want only the one logged during the purge", got, err)
	}
}
