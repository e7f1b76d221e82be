package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The official JS SDK (@google/genai 2.x, pinned in e2e/jsclient/package-lock.json) uploads a
// file through the gateway (files.upload with httpOptions.baseUrl) and then uses it in
// generateContent three times; every use must land on the key that owns the file. Node and npm
// are needed: the test is skipped without them, except in CI (CI set), where it fails.
func TestFilesJSSDKUploadThenGenerate(t *testing.T) {
	node, dir := jsClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	data := strings.Repeat("uploaded by the JS SDK\n", 50_000) // ~1.1 MiB
	path := filepath.Join(t.TempDir(), "upload.txt")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	before := len(fake.Calls())
	cmd := exec.CommandContext(ctx, node, "upload.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GATEWAY_URL="+g.URL, "ACCESS_KEY="+accessKey, "UPLOAD_PATH="+path, "MODEL="+modelFlash)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node upload.mjs: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var res struct {
		Name      string   `json:"name"`
		URI       string   `json:"uri"`
		SizeBytes string   `json:"sizeBytes"`
		Texts     []string `json:"texts"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil {
		t.Fatalf("script output: %v: %s", err, stdout.String())
	}
	if res.SizeBytes != strconv.Itoa(len(data)) || len(res.Texts) != 3 {
		t.Fatalf("script result: %+v", res)
	}
	for i, txt := range res.Texts {
		if !strings.Contains(txt, "hello") {
			t.Errorf("answer %d: %q", i, txt)
		}
	}
	owner := fake.FileOwner(res.Name)
	if owner == "" {
		t.Fatalf("no file %s upstream", res.Name)
	}
	calls := fake.Calls()[before:]
	uploads, generates := 0, 0
	for _, c := range calls {
		switch {
		case strings.HasPrefix(c.Path, "/upload/"):
			uploads++
		case strings.Contains(c.Path, ":generateContent"):
			generates++
		default:
			continue
		}
		if c.Key != owner {
			t.Errorf("%s %s went with another key than the file's owner", c.Method, c.Path)
		}
	}
	if uploads < 2 || generates != 3 {
		t.Errorf("%d upload calls and %d generate calls upstream, want >= 2 and 3", uploads, generates)
	}
	assertCleanUpstream(t, calls, pool, accessKey)
}

// jsInstall serialises `npm ci` between tests that run in parallel.
var jsInstall sync.Mutex

// jsClient returns node and the e2e/jsclient directory with the pinned JS SDK installed; without
// node the test is skipped, except in CI (CI set), where it fails.
func jsClient(t *testing.T) (node, dir string) {
	t.Helper()
	jsInstall.Lock()
	defer jsInstall.Unlock()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed, and CI needs this test: install nodejs and npm (Node 20+)")
		}
		t.Skip("node is not installed: the JS SDK test needs Node 20+ and npm")
	}
	dir, err = filepath.Abs("jsclient")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@google", "genai")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return node, dir
}
