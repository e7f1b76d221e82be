package postgres

import (
	"sync"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

// TestConformance runs the store conformance suite on PostgreSQL: each subtest gets a fresh
// database of the shared test server, opened again at the same URL when the subtest reopens
// its store.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	urls := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T, k storetest.Options) store.Store {
		t.Helper()
		mu.Lock()
		url, ok := urls[t]
		if !ok {
			url = pgtest.URL(t)
			urls[t] = url
		}
		mu.Unlock()
		return openTest(t, url, k.Logger, func(o *options) {
			if k.QueueSize > 0 {
				o.queueSize = k.QueueSize
			}
			if k.BatchSize > 0 {
				o.batchSize = k.BatchSize
			}
			if k.Interval > 0 {
				o.interval = k.Interval
			}
			if k.PurgeBatch > 0 {
				o.purgeBatch = k.PurgeBatch
			}
			if k.PurgePause > 0 {
				o.purgePause = k.PurgePause
			}
			o.hold = k.Hold
		})
	})
}
