package sqlite

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

// TestConformance runs the store conformance suite on SQLite: each subtest gets a file of its
// own, opened again at the same path when the subtest reopens its store.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	paths := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T, k storetest.Options) store.Store {
		t.Helper()
		mu.Lock()
		path, ok := paths[t]
		if !ok {
			path = filepath.Join(t.TempDir(), "data.db")
			paths[t] = path
		}
		mu.Unlock()
		return openTest(t, path, k.Logger, func(o *options) {
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
