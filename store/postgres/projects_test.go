package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// TestProjectIndexIsPartial: only labelled keys are in the index of project labels.
func TestProjectIndexIsPartial(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, nil)
	var index string
	if err := s.pool.QueryRow(context.Background(), `SELECT indexdef FROM pg_indexes WHERE indexname = 'keys_project'`).Scan(&index); err != nil {
		t.Fatalf("no index on keys.project: %v", err)
	}
	if !strings.Contains(index, "WHERE (project <> ''::text)") {
		t.Errorf("index = %s, want a partial index of labelled keys", index)
	}
}
