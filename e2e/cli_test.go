package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCaddyCmd runs a one-shot caddy subcommand with its environment in dir.
func runCaddyCmd(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(caddyBin, args...)
	cmd.Dir = dir
	cmd.Env = caddyEnv(dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestListModules(t *testing.T) {
	out, err := runCaddyCmd(t, t.TempDir(), "list-modules")
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, m := range []string{"gemini_synapse", "http.handlers.gemini_synapse", "http.handlers.gemini_synapse_admin"} {
		if !lines[m] {
			t.Errorf("caddy list-modules does not list %s:\n%s", m, out)
		}
	}
}

func TestAdaptRejectsUnknownSubdirective(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	// Line 6 holds the unknown subdirective.
	src := "{\n" +
		"\tadmin off\n" +
		"\tgemini_synapse {\n" +
		"\t\tdatabase " + filepath.Join(dir, "synapse.db") + "\n" +
		"\t\taccess_keys " + accessKey + "\n" +
		"\t\tfrobnicate_widgets 42\n" +
		"\t}\n" +
		"}\n" +
		"http://127.0.0.1:9 {\n" +
		"\tgemini_synapse\n" +
		"}\n"
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCaddyCmd(t, dir, "adapt", "--config", path, "--adapter", "caddyfile")
	if err == nil {
		t.Fatalf("caddy adapt accepted an unknown subdirective:\n%s", out)
	}
	if !strings.Contains(out, path+":6") {
		t.Errorf("adapt error does not name %s:6:\n%s", path, out)
	}
	if !strings.Contains(out, "frobnicate_widgets") {
		t.Errorf("adapt error does not name the unknown subdirective:\n%s", out)
	}
}

func TestAdaptAcceptsFullConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := gatewayConfig{
		Upstream:   "http://127.0.0.1:9",
		PoolKeys:   poolKeys(2),
		AccessKeys: []string{accessKey, accessKey2},
		Options:    []string{"max_failures 4", "max_retries 2", "max_request_body 1MiB"},
		Database:   filepath.Join(dir, "synapse.db"),
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg.caddyfile(freePort(t), freePort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCaddyCmd(t, dir, "adapt", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"gemini_synapse"`, `"handler":"gemini_synapse"`, `"handler":"gemini_synapse_admin"`} {
		if !strings.Contains(strings.ReplaceAll(out, " ", ""), want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, out)
		}
	}
}

func TestValidateDoesNotCreateDatabase(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "synapse.db")
	cfg := gatewayConfig{
		Upstream:   "http://127.0.0.1:9",
		PoolKeys:   poolKeys(2),
		AccessKeys: []string{accessKey},
		Database:   db,
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg.caddyfile(freePort(t), freePort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCaddyCmd(t, dir, "validate", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
	for _, f := range []string{db, db + "-wal", db + "-shm", db + "-journal"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("caddy validate created %s", f)
		}
	}
	for _, k := range cfg.PoolKeys {
		if strings.Contains(out, k) {
			t.Errorf("caddy validate printed the full pool key %s", mask(k))
		}
	}
}
