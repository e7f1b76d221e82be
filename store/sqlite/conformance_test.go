package sqlite

import (
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/batch"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// TestConformance runs the store conformance suite on SQLite: each subtest gets a file of its
// own, opened again at the same path when the subtest reopens its store.
func TestConformance(t *testing.T) {
	enginetest.Conformance(t, func(t *testing.T) string { return filepath.Join(t.TempDir(), "data.db") },
		func(t *testing.T, path string, logger *zap.Logger, tune func(*batch.Options, *sqlkit.Purge)) store.Store {
			return openTest(t, path, logger, func(o *options) { tune(&o.writer, &o.purge) })
		})
}
