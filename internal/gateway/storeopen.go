package gateway

import (
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
)

// openStore opens the database named by path with the engine it calls for. It is the one place
// that chooses an engine: today every path is a SQLite file (store/sqlite).
func openStore(path string, logger *zap.Logger) (store.Store, error) {
	return sqlite.Open(path, logger)
}
