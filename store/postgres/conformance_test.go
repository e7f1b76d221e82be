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
	storetest.Run(t, func(t *testing.T) store.Store {
		t.Helper()
		mu.Lock()
		url, ok := urls[t]
		if !ok {
			url = pgtest.URL(t)
			urls[t] = url
		}
		mu.Unlock()
		return openTest(t, url, nil, nil)
	})
}
