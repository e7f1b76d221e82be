package geminisynapse

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyConfig is a whole in-process caddy config with the gateway on addr.
func caddyConfig(t *testing.T, db, upstream, addr string, accessKeys ...string) []byte {
	t.Helper()
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"apps": map[string]any{
			"gemini_synapse": map[string]any{
				"database":        db,
				"access_keys":     accessKeys,
				"google_api_keys": []string{"AIzaSyLIFE-key-one-aaaaaaaaaaaaaaaaaaaa", "AIzaSyLIFE-key-two-bbbbbbbbbbbbbbbbbbbb"},
				"upstream":        upstream,
				"admin_key":       "lifecycle-admin-key-0123",
			},
			"http": map[string]any{"servers": map[string]any{"s": map[string]any{
				"listen": []string{addr},
				"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "gemini_synapse"}}}},
			}}},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func coreCount() int {
	n := 0
	cores.Range(func(key, value any) bool { n++; return true })
	return n
}

// TestReloadSharesOneCore loads a config, reloads it several times and stops caddy: the core
// of the database is opened once, shared by every config, keeps the pool's state (a cooldown
// set before the reloads), and is closed with the last config, leaving no goroutines behind.
func TestReloadSharesOneCore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts caddy in-process")
	}
	fake := fakegemini.New()
	up := httptest.NewServer(fake)
	defer up.Close()
	db := filepath.Join(t.TempDir(), "nested", "dir", "data.db")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	before := runtime.NumGoroutine()
	if err := caddy.Load(caddyConfig(t, db, up.URL, addr, "k1"), true); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			caddy.Stop()
		}
	}()
	if st, err := os.Stat(db); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("database file: %v, mode %v", err, st.Mode().Perm())
	}
	if n, ok := cores.References(db); !ok || n != 1 {
		t.Fatalf("references after load: %d %v", n, ok)
	}
	first := currentCore(t, db)
	until := time.Now().Add(time.Hour)
	first.Pool().Report(1, "gemini-2.5-flash", quota(until), time.Now())

	for i := 0; i < 3; i++ {
		if err := caddy.Load(caddyConfig(t, db, up.URL, addr, "k1", fmt.Sprintf("k-reload-%d", i)), true); err != nil {
			t.Fatal(err)
		}
		if n, ok := cores.References(db); !ok || n != 1 {
			t.Fatalf("references after reload %d: %d %v", i, n, ok)
		}
		if c := currentCore(t, db); c != first {
			t.Fatalf("reload %d built a second core", i)
		}
	}
	// The cooldown set before the reloads still holds, and the reloads' access keys work.
	_, cooling, _ := first.Pool().Counts(time.Now())
	if cooling != 1 {
		t.Errorf("cooling keys after reloads: %d, want 1", cooling)
	}
	// The listener is shared across reloads; a connection the previous server accepted just
	// before it shut down is reset, which a client sees as a transport error: retry those.
	var resp *http.Response
	var err error
	for try := 0; try < 3; try++ {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1beta/models", nil)
		req.Header.Set("x-goog-api-key", "k-reload-2")
		if resp, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("access key added by a reload: status %d", resp.StatusCode)
	}

	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if n := coreCount(); n != 0 {
		t.Errorf("%d cores left after stop", n)
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines: %d before, %d after stop\n%s", before, after, filterStacks(string(buf[:n])))
	}
}

func currentCore(t *testing.T, db string) *gateway.Core {
	t.Helper()
	var c *gateway.Core
	cores.Range(func(key, value any) bool {
		if key == db {
			c = value.(*gateway.Core)
		}
		return true
	})
	if c == nil {
		t.Fatal("no core for", db)
	}
	return c
}

// filterStacks keeps the goroutines that mention this module, for a readable failure.
func filterStacks(all string) string {
	var out []string
	for _, g := range strings.Split(all, "\n\n") {
		if strings.Contains(g, "geminisynapse") || strings.Contains(g, "gocron") || strings.Contains(g, "sqlite") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestValidateOpensNothing provisions and cleans up a config as `caddy validate` does: no
// database file may appear.
func TestValidateOpensNothing(t *testing.T) {
	db := filepath.Join(t.TempDir(), "never", "data.db")
	if err := caddy.Validate(&caddy.Config{AppsRaw: caddy.ModuleMap{
		"gemini_synapse": json.RawMessage(fmt.Sprintf(`{"database":%q}`, db)),
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(db)); !os.IsNotExist(err) {
		t.Errorf("validate created %s (%v)", filepath.Dir(db), err)
	}
	if n := coreCount(); n != 0 {
		t.Errorf("%d cores left after validate", n)
	}
}

func quota(until time.Time) keypool.Outcome {
	return keypool.Outcome{Kind: keypool.Quota, Until: until}
}
