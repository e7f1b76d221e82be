package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
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

func TestCheckProject(t *testing.T) {
	for _, good := range []string{"", "my-project", "proj_1.eu:2", "578829824020", strings.Repeat("a", store.MaxProjectLen)} {
		if err := store.CheckProject(good); err != nil {
			t.Errorf("CheckProject(%q) = %v, want nil", good, err)
		}
	}
	for _, c := range []struct {
		label string
		want  error
	}{
		{strings.Repeat("a", store.MaxProjectLen+1), store.ErrProjectTooLong},
		{"my project", store.ErrProjectChars},
		{" padded", store.ErrProjectChars},
		{"proj/1", store.ErrProjectChars},
		{"projé", store.ErrProjectChars},
		{"a\nb", store.ErrProjectChars},
		{"<script>", store.ErrProjectChars},
	} {
		if err := store.CheckProject(c.label); !errors.Is(err, c.want) {
			t.Errorf("CheckProject(%q) = %v, want %v", c.label, err, c.want)
		}
	}
}

// TestMigrationFiveKeepsKeysUnlabelled opens a version-4 database holding keys and checks that
// they are all still there, without a label, and that labels then work.
func TestMigrationFiveKeepsKeysUnlabelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v4.db")
	ctx := context.Background()
	db := rawDB(t, path)
	if err := migrate(ctx, db, migrations[:4]); err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, db); v != 4 {
		t.Fatalf("user_version = %d, want 4", v)
	}
	if _, err := db.Exec(`INSERT INTO keys (secret, status, disabled_reason, failure_count, created_at)
		VALUES ('old-a', 'active', '', 2, 1), ('old-b', 'disabled', 'leaked', 0, 2)`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path, nil, nil)
	if v := userVersion(t, s.db); v != len(migrations) || v < 5 {
		t.Errorf("user_version = %d, want %d (at least 5)", v, len(migrations))
	}
	keys, err := s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("keys after migration: %+v", keys)
	}
	if k := keys[0]; k.Secret != "old-a" || k.Project != "" || k.Failures != 2 || k.Status != store.StatusActive {
		t.Errorf("first key after migration: %+v", k)
	}
	if k := keys[1]; k.Secret != "old-b" || k.Project != "" || k.Status != store.StatusDisabled || k.DisabledReason != "leaked" {
		t.Errorf("second key after migration: %+v", k)
	}
	var index string
	if err := s.db.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'keys_project'`).Scan(&index); err != nil {
		t.Fatalf("no index on keys.project: %v", err)
	}
	if !strings.Contains(index, "WHERE project <> ''") {
		t.Errorf("index = %s, want a partial index of labelled keys", index)
	}
	if n, err := s.SetKeysProject(ctx, []int64{keys[0].ID}, "proj-a"); err != nil || n != 1 {
		t.Fatalf("SetKeysProject after migration = %d, %v", n, err)
	}
	sameProjects(t, projects(t, s), map[string]string{"old-a": "proj-a", "old-b": ""})
}

func TestAddLabeledKeys(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()

	res, err := s.AddLabeledKeys(ctx, []store.NewKey{
		{Secret: " alpha ", Project: " proj-a "},
		{Secret: "beta"},
		{Secret: "gamma", Project: "proj-g"},
		{Secret: "  "},
	})
	if err != nil || res.Added != 3 {
		t.Fatalf("AddLabeledKeys = %+v, %v; want 3 added", res, err)
	}
	if len(res.Relabeled) != 0 {
		t.Errorf("new keys reported as relabeled: %+v", res.Relabeled)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "", "gamma": "proj-g"})

	// Pasting keys again: a label given sets it, none leaves the old one, the same one is no
	// change; nothing is added twice.
	res, err = s.AddLabeledKeys(ctx, []store.NewKey{
		{Secret: "alpha"},                    // keeps proj-a
		{Secret: "beta", Project: "proj-b"},  // labelled now
		{Secret: "gamma", Project: "proj-g"}, // unchanged
		{Secret: "delta", Project: "proj-b"}, // new
	})
	if err != nil || res.Added != 1 {
		t.Fatalf("second AddLabeledKeys = %+v, %v; want 1 added", res, err)
	}
	keys, _ := s.Keys(ctx)
	if want := []store.KeyProject{{keys[1].ID, "proj-b"}}; !slices.Equal(res.Relabeled, want) {
		t.Errorf("Relabeled = %+v, want %+v", res.Relabeled, want)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-b"})

	// One bad label: nothing is written.
	_, err = s.AddLabeledKeys(ctx, []store.NewKey{{Secret: "epsilon", Project: "ok"}, {Secret: "alpha", Project: "bad label"}})
	if !errors.Is(err, store.ErrProjectChars) {
		t.Fatalf("bad label: err = %v, want ErrProjectChars", err)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-b"})

	// An operator's add clears a tombstone; the config's add skips it. AddKeys still works.
	if err := s.DeleteKey(ctx, keys[3].ID); err != nil {
		t.Fatal(err)
	}
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"delta", "zeta"}); err != nil || added != 1 || skipped != 1 {
		t.Fatalf("AddConfigKeys = %d, %d, %v; want 1 added, 1 skipped", added, skipped, err)
	}
	res, err = s.AddLabeledKeys(ctx, []store.NewKey{{Secret: "delta", Project: "proj-d"}})
	if err != nil || res.Added != 1 {
		t.Fatalf("re-adding a deleted key = %+v, %v", res, err)
	}
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"delta"}); err != nil || added != 0 || skipped != 0 {
		t.Errorf("AddConfigKeys after the operator's add = %d, %d, %v; want the tombstone gone", added, skipped, err)
	}
	if added, err := s.AddKeys(ctx, []string{"eta", "alpha"}); err != nil || added != 1 {
		t.Fatalf("AddKeys = %d, %v; want 1", added, err)
	}
	sameProjects(t, projects(t, s), map[string]string{
		"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-d", "zeta": "", "eta": "",
	})
}

func TestSetKeysProject(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b", "c")
	a, b, c := keys[0].ID, keys[1].ID, keys[2].ID

	n, err := s.SetKeysProject(ctx, []int64{a, b, 9999}, " shared ")
	if err != nil || n != 2 {
		t.Fatalf("SetKeysProject = %d, %v; want 2 changed", n, err)
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "shared", "c": ""})

	n, err = s.SetKeysProject(ctx, []int64{a, b, c}, "shared")
	if err != nil || n != 1 {
		t.Errorf("SetKeysProject with two already labelled = %d, %v; want 1", n, err)
	}

	for _, bad := range []string{"two words", strings.Repeat("x", 65), "a/b"} {
		if _, err := s.SetKeysProject(ctx, []int64{a}, bad); err == nil {
			t.Errorf("SetKeysProject(%q) accepted", bad)
		}
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "shared", "c": "shared"})

	n, err = s.SetKeysProject(ctx, []int64{b}, "")
	if err != nil || n != 1 {
		t.Fatalf("clearing = %d, %v", n, err)
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "", "c": "shared"})
	if n, err := s.SetKeysProject(ctx, nil, "x"); err != nil || n != 0 {
		t.Errorf("SetKeysProject(no ids) = %d, %v", n, err)
	}
}

// TestSaveKeyProjectFillsOnlyEmptyLabels: the gateway's learned labels are written by the
// background writer, newest first, never over an operator's label, and survive a restart.
func TestSaveKeyProjectFillsOnlyEmptyLabels(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	s := openTest(t, path, nil, nil)
	ctx := context.Background()
	keys := addKeys(t, s, "operator", "learned", "cleared")
	op, learned, cleared := keys[0].ID, keys[1].ID, keys[2].ID
	if _, err := s.SetKeysProject(ctx, []int64{op}, "by-hand"); err != nil {
		t.Fatal(err)
	}

	s.SaveKeyProject(op, "guess")
	s.SaveKeyProject(learned, "first-guess")
	s.SaveKeyProject(learned, " projects-578829824020 ") // newest wins, trimmed
	s.SaveKeyProject(cleared, "bad label")               // ignored
	s.SaveKeyProject(9999, "gone")                       // a deleted key fails nothing
	s.LogRequest(store.RequestLog{Status: 200})
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": ""})
	if n := countRequests(t, s); n != 1 {
		t.Errorf("the batch with labels lost its log row: %d rows", n)
	}

	// Once labelled, a later guess changes nothing either.
	s.SaveKeyProject(learned, "another")
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": ""})

	// Written at close, and kept.
	s.SaveKeyProject(cleared, "late")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, nil, nil)
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": "late"})
}

// TestOperatorLabelDiscardsPendingGuess: a learned label still queued when an operator sets or
// clears the label is dropped, so it cannot fill a label the operator just cleared.
func TestOperatorLabelDiscardsPendingGuess(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, func(o *options) { o.paused = true })
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
