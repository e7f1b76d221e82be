package geminisynapse

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// provision provisions a as caddy would, without starting it; the caller cleans up.
func provision(t *testing.T, a *App) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return a.Provision(ctx)
}

// TestDatabaseURLFromEnvironment: `database {env.DATABASE_URL}` takes the URL at provision;
// the core is kept under the URL itself (two configs naming it share one), and nothing is
// opened before Start.
func TestDatabaseURLFromEnvironment(t *testing.T) {
	const url = "postgres://synapse:s3cret-pw@127.0.0.1:1/gw?sslmode=disable"
	t.Setenv("SYNAPSE_TEST_DATABASE_URL", url)
	d := caddyfile.NewTestDispenser(`gemini_synapse {
		database {env.SYNAPSE_TEST_DATABASE_URL}
	}`)
	a, b := new(App), new(App)
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if a.Database != "{env.SYNAPSE_TEST_DATABASE_URL}" {
		t.Fatalf("the Caddyfile kept %q, want the placeholder (the password stays out of the config)", a.Database)
	}
	b.Database = url
	for _, app := range []*App{a, b} {
		if err := provision(t, app); err != nil {
			t.Fatal(err)
		}
	}
	defer b.Cleanup()
	defer a.Cleanup()
	if a.dbPath != url {
		t.Errorf("core key %q, want the URL", a.dbPath)
	}
	if n, ok := cores.References(url); !ok || n != 2 {
		t.Errorf("references of the URL's core: %d %v, want 2", n, ok)
	}
	if a.core != b.core {
		t.Error("two configs naming one URL have two cores")
	}
}

// TestDatabaseSchemes: postgres:// and postgresql:// URLs are used as they are; anything else
// is a SQLite path, made absolute.
func TestDatabaseSchemes(t *testing.T) {
	for db, url := range map[string]bool{
		"postgres://u@127.0.0.1:1/a":   true,
		"postgresql://u@127.0.0.1:1/b": true,
		"POSTGRES://u@127.0.0.1:1/c":   true,
		"relative/data.db":             false,
		"/abs/data.db":                 false,
	} {
		a := &App{Database: db}
		if err := provision(t, a); err != nil {
			t.Fatal(err)
		}
		if url && a.dbPath != db {
			t.Errorf("%s: key %q", db, a.dbPath)
		}
		if !url && (a.dbPath == db && !strings.HasPrefix(db, "/") || !strings.HasPrefix(a.dbPath, "/")) {
			t.Errorf("%s: key %q, want an absolute path", db, a.dbPath)
		}
		if err := a.Cleanup(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUnsetDatabaseVariableIsRefused: a placeholder that resolves to nothing is an error, not
// a silent fall back to a local SQLite file (an instance of a cluster would run alone).
func TestUnsetDatabaseVariableIsRefused(t *testing.T) {
	a := &App{Database: "{env.SYNAPSE_TEST_UNSET_DATABASE_URL}"}
	err := provision(t, a)
	if err == nil {
		_ = a.Cleanup()
		t.Fatal("an unset database variable was accepted")
	}
	if !strings.Contains(err.Error(), "empty") {
		t.Errorf("error %q", err)
	}
}
