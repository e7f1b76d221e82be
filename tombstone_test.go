package geminisynapse

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// TestDeletedCaddyfileKeysStayDeleted: a Caddyfile key (upstream or access) deleted in the
// admin panel is not added back by a reload of the same config, nor by a restart; adding the
// upstream key again through the admin API brings it back for good.
func TestDeletedCaddyfileKeysStayDeleted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts caddy in-process")
	}
	fake := fakegemini.New()
	up := httptest.NewServer(fake)
	defer up.Close()
	db := filepath.Join(t.TempDir(), "data.db")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := caddyConfig(t, db, up.URL, addr, "access-one", "access-two")
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	ctx := context.Background()
	c := currentCore(t, db)
	b := c.AdminBackend()
	secrets := func() []string {
		out, err := b.KeySecrets(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	const deleted = "AIzaSyLIFE-key-one-aaaaaaaaaaaaaaaaaaaa"
	if got := secrets(); len(got) != 2 || got[0] != deleted {
		t.Fatalf("keys at start: %q", got)
	}
	if err := b.DeleteKey(ctx, 1); err != nil {
		t.Fatal(err)
	}
	aks, err := b.AccessKeys(ctx)
	if err != nil || len(aks) != 2 {
		t.Fatalf("access keys %v %v", aks, err)
	}
	if err := b.DeleteAccessKey(ctx, aks[0].ID); err != nil {
		t.Fatal(err)
	}
	status := func(accessKey string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1beta/models", nil)
		req.Header.Set("x-goog-api-key", accessKey)
		for try := 0; ; try++ { // a connection reset by the previous server's shutdown: retry
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				return resp.StatusCode
			}
			if try == 3 {
				t.Fatal(err)
			}
		}
	}
	check := func(when string) {
		t.Helper()
		if got := secrets(); slices.Contains(got, deleted) || len(got) != 1 {
			t.Errorf("%s: keys %q: the deleted key came back", when, got)
		}
		if n := currentCore(t, db).Pool().Len(); n != 1 {
			t.Errorf("%s: %d keys in the pool, want 1", when, n)
		}
		if s := status("access-one"); s != http.StatusUnauthorized {
			t.Errorf("%s: the deleted access key gets %d, want 401", when, s)
		}
		if s := status("access-two"); s != http.StatusOK {
			t.Errorf("%s: the kept access key gets %d", when, s)
		}
	}
	check("after the delete")
	// A reload of the same config.
	if err := caddy.Load(caddyConfig(t, db, up.URL, addr, "access-one", "access-two", "access-three"), true); err != nil {
		t.Fatal(err)
	}
	check("after a reload")
	// A restart: the last config stops, the core is closed, a new one opens the file.
	caddy.Stop()
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	c = currentCore(t, db)
	b = c.AdminBackend()
	check("after a restart")

	// Adding it again in the admin panel clears the tombstone; a reload keeps it.
	if added, _, err := b.AddLabeledKeys(ctx, []store.NewKey{{Secret: deleted}}); err != nil || added != 1 {
		t.Fatalf("adding the deleted key again: %d, %v", added, err)
	}
	if err := caddy.Load(caddyConfig(t, db, up.URL, addr, "access-two"), true); err != nil {
		t.Fatal(err)
	}
	if got := secrets(); len(got) != 2 || !slices.Contains(got, deleted) {
		t.Errorf("keys after adding back and a reload: %q", got)
	}
	if n := currentCore(t, db).Pool().Len(); n != 2 {
		t.Errorf("%d keys in the pool after adding back, want 2", n)
	}
}
