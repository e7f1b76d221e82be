package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// projects returns the label of every key by secret.
func projects(t testing.TB, s *Store) map[string]string {
	t.Helper()
	keys, err := s.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k.Secret] = k.Project
	}
	return out
}

func sameProjects(t testing.TB, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("labels = %v, want %v", got, want)
		return
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("labels = %v, want %v", got, want)
			return
		}
	}
}

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

// TestOperatorLabelDiscardsPendingGuess: a learned label still queued when an operator sets or
// clears the label is dropped, so it cannot fill a label the operator just cleared.
func TestOperatorLabelDiscardsPendingGuess(t *testing.T) {
	s := openTest(t, pgtest.URL(t), nil, func(o *options) { o.paused = true })
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	if _, err := s.SetKeysProject(ctx, []int64{a}, "wrong-guess"); err != nil {
		t.Fatal(err)
	}
	s.SaveKeyProject(a, "older-guess")
	s.SaveKeyProject(b, "kept-guess")
	if _, err := s.SetKeysProject(ctx, []int64{a}, ""); err != nil { // the operator clears a
		t.Fatal(err)
	}
	s.w.resume()
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"a": "", "b": "kept-guess"})
}
