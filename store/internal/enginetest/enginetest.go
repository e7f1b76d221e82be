// Package enginetest is what the SQL engines' own tests share beyond the conformance suite:
// running store/storetest on an engine's settings, and the benchmarks of the log writer and
// the statistics. Only tests import it.
package enginetest

import (
	"cmp"
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

// Conformance runs the conformance suite (storetest.Run) on an engine. fresh returns a new
// database (a file's path, a URL) for a subtest, the first time the subtest opens a store; open
// opens a store on db, logging to logger (nil: nowhere), with the engine's default settings
// changed by tune, which sets on the writer's and retention's settings what the subtest asks.
func Conformance(t *testing.T, fresh func(t *testing.T) string,
	open func(t *testing.T, db string, logger *zap.Logger, tune func(*batch.Options, *sqlkit.Purge)) store.Store) {
	var mu sync.Mutex
	dbs := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T, k storetest.Options) store.Store {
		t.Helper()
		mu.Lock()
		db, ok := dbs[t]
		if !ok {
			db = fresh(t)
			dbs[t] = db
		}
		mu.Unlock()
		return open(t, db, k.Logger, func(w *batch.Options, p *sqlkit.Purge) {
			w.QueueSize = cmp.Or(k.QueueSize, w.QueueSize)
			w.BatchSize = cmp.Or(k.BatchSize, w.BatchSize)
			w.Interval = cmp.Or(k.Interval, w.Interval)
			w.Hold = k.Hold
			p.Batch = cmp.Or(k.PurgeBatch, p.Batch)
			p.Pause = cmp.Or(k.PurgePause, p.Pause)
		})
	})
}

// BenchmarkLogRequest measures the sustained rate of s's log writer: rowsPerOp request rows
// (of 20 upstream keys and accessKeys access keys) queued and committed per operation,
// reported in rows per second. s's queue must hold rowsPerOp rows, or the benchmark fails on
// the rows it drops.
func BenchmarkLogRequest(b *testing.B, s store.Store, rowsPerOp, accessKeys int) {
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
			r.AccessKeyID = int64(1 + i%accessKeys)
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

// BenchmarkUsageBuckets measures the dashboard's 30d view (30 daily buckets from start, and the
// models of [start, end)) over the rows request rows of 7 models the engine stored with their
// per-slot sums, answered from the rows (rawBuckets, rawModels: the engine's queries over the
// request rows) and from the sums (s's UsageBuckets and UsageByModel).
func BenchmarkUsageBuckets(b *testing.B, s store.Store, start, end time.Time, rows int64,
	rawBuckets func(ctx context.Context, bounds []time.Time) ([]store.Usage, error),
	rawModels func(ctx context.Context, from, to time.Time, limit int) ([]store.ModelUsage, error)) {
	bounds := make([]time.Time, 31)
	for i := range bounds {
		bounds[i] = start.Add(time.Duration(i) * 24 * time.Hour)
	}
	ctx := context.Background()
	for _, raw := range []bool{true, false} {
		b.Run(map[bool]string{true: "rows", false: "slots"}[raw], func(b *testing.B) {
			for b.Loop() {
				var got []store.Usage
				var err error
				if raw {
					got, err = rawBuckets(ctx, bounds)
				} else {
					got, err = s.UsageBuckets(ctx, bounds)
				}
				if err != nil {
					b.Fatal(err)
				}
				var n int64
				for _, u := range got {
					n += u.Requests
				}
				if n != rows {
					b.Fatalf("%d rows counted, want %d", n, rows)
				}
				var models []store.ModelUsage
				if raw {
					models, err = rawModels(ctx, start, end, 50)
				} else {
					models, err = s.UsageByModel(ctx, start, end, 50)
				}
				if err != nil || len(models) != 7 {
					b.Fatalf("%d models, %v; want 7", len(models), err)
				}
			}
		})
	}
}

// StoreAccessKeys adds an access key by hand and two from the config (one of them the same),
// then closes s, and returns the two secrets: an engine's test then looks for them in what the
// database left behind, where only their hashes may be.
func StoreAccessKeys(t *testing.T, s store.Store) []string {
	t.Helper()
	ctx := context.Background()
	secrets := []string{"sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"}
	if _, err := s.AddAccessKey(ctx, secrets[0], "alice", ""); err != nil {
		t.Fatal(err)
	}
	if added, _, err := s.EnsureAccessKeys(ctx, secrets, "caddyfile"); err != nil || added != 1 {
		t.Fatalf("EnsureAccessKeys = %d, %v; want 1", added, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return secrets
}
