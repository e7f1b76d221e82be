package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

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
	if keys, err = s.Keys(ctx); err != nil || keys[0].Project != "proj-a" || keys[1].Project != "" {
		t.Errorf("labels after SetKeysProject: %+v, %v; want proj-a on old-a only", keys, err)
	}
}
