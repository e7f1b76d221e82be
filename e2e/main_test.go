// Package e2e runs a real caddy binary that contains the gemini_synapse plugin against
// the fake Gemini upstream, and talks to it with the official Go SDK and raw net/http.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// caddyBin is the path of the caddy binary under test, set by TestMain.
var caddyBin string

const (
	caddyVersion  = "v2.11.9"
	xcaddyVersion = "v0.4.5"
	modulePath    = "github.com/geminisynapse/caddy-gemini-synapse"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipping e2e tests in -short mode")
		os.Exit(0)
	}
	if bin := os.Getenv("SYNAPSE_CADDY_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: SYNAPSE_CADDY_BIN:", err)
			os.Exit(1)
		}
		if _, err := os.Stat(abs); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: SYNAPSE_CADDY_BIN:", err)
			os.Exit(1)
		}
		caddyBin = abs
		os.Exit(pgtest.Run(m))
	}

	dir, err := os.MkdirTemp("", "synapse-e2e-caddy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	caddyBin = filepath.Join(dir, "caddy")
	if err := buildCaddy(caddyBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building caddy:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildCaddy builds a caddy binary with the plugin from this repository using xcaddy.
func buildCaddy(output string) error {
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	args := []string{"build", caddyVersion, "--output", output, "--with", modulePath + "=" + root}
	var cmd *exec.Cmd
	if path := findXcaddy(); path != "" {
		cmd = exec.Command(path, args...)
	} else {
		cmd = exec.Command("go", append([]string{"run", "github.com/caddyserver/xcaddy/cmd/xcaddy@" + xcaddyVersion}, args...)...)
	}
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=1",
		"GOPRIVATE="+modulePath,
		"GOVCS=github.com/geminisynapse:off",
	)
	cmd.Dir = os.TempDir()
	fmt.Fprintf(os.Stderr, "e2e: building caddy (%s)...\n", strings.Join(cmd.Args, " "))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "e2e: caddy built in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// findXcaddy returns xcaddy from PATH or from $GOPATH/bin, or "" when neither exists.
func findXcaddy() string {
	if path, err := exec.LookPath("xcaddy"); err == nil {
		return path
	}
	candidates := []string{}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, p := range filepath.SplitList(strings.TrimSpace(string(out))) {
			candidates = append(candidates, filepath.Join(p, "bin", "xcaddy"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, "go", "bin", "xcaddy"))
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	return ""
}
