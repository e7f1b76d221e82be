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
	storetest.Run(t, func(t *testing.T) store.Store {
		t.Helper()
		mu.Lock()
		path, ok := paths[t]
		if !ok {
			path = filepath.Join(t.TempDir(), "data.db")
			paths[t] = path
		}
		mu.Unlock()
		s, err := Open(path, nil)
		if err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		return s
	})
}
