package postgres

import (
	"testing"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// TestConformance runs the store conformance suite on PostgreSQL: each subtest gets a fresh
// database of the shared test server, opened again at the same URL when the subtest reopens
// its store.
func TestConformance(t *testing.T) {
	enginetest.Conformance(t, func(t *testing.T) string { return pgtest.URL(t) },
		func(t *testing.T, url string, logger *zap.Logger, tune func(*batch.Options, *sqlkit.Purge)) store.Store {
			return openTest(t, url, logger, func(o *options) { tune(&o.writer, &o.purge) })
		})
}
