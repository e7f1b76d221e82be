package gateway

import (
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// TestMain stops the PostgreSQL servers the tests of the shared limits start.
func TestMain(m *testing.M) { pgtest.Main(m) }
