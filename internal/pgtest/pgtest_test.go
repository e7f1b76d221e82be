package pgtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestURLGivesFreshDatabases: two URLs name two empty databases of one loopback server, and
// what one test writes the other does not see.
func TestURLGivesFreshDatabases(t *testing.T) {
	ctx := context.Background()
	a, b := URL(t), URL(t)
	if a == b {
		t.Fatalf("the same URL twice: %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(ctx, `CREATE TABLE x (i int); INSERT INTO x VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(ctx, `SELECT COUNT(*) FROM pg_tables WHERE tablename = 'x'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the second database sees the first's table: %d, %v", n, err)
	}
	var addr string
	if err := ca.QueryRow(ctx, `SELECT host(inet_server_addr())`).Scan(&addr); err != nil || addr != "127.0.0.1" {
		t.Errorf("server address %q, %v; want 127.0.0.1", addr, err)
	}
	var sockets string
	if err := ca.QueryRow(ctx, `SHOW unix_socket_directories`).Scan(&sockets); err != nil || sockets != "" {
		t.Errorf("unix_socket_directories = %q, %v; want none", sockets, err)
	}
	if shared.asPG {
		var who string
		if err := ca.QueryRow(ctx, `SELECT current_user`).Scan(&who); err != nil || who != "postgres" {
			t.Errorf("current_user = %q, %v", who, err)
		}
	}
}

// TestServerStopAndStart: a server of the test's own stops (connections fail) and starts
// again on the same port with its data; at the test's end its directory is removed.
func TestServerStopAndStart(t *testing.T) {
	ctx := context.Background()
	var dir string
	t.Run("run", func(t *testing.T) {
		s := NewServer(t)
		dir = s.dir
		url := s.URL(t)
		c := connect(t, url)
		if _, err := c.Exec(ctx, `CREATE TABLE kept (i int); INSERT INTO kept VALUES (7)`); err != nil {
			t.Fatal(err)
		}
		s.Stop(t)
		if _, err := c.Exec(ctx, `SELECT 1`); err == nil {
			t.Fatal("a query succeeded on a stopped server")
		}
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := pgx.Connect(short, url); err == nil {
			t.Fatal("connected to a stopped server")
		}
		s.Start(t)
		c2 := connect(t, url)
		var i int
		if err := c2.QueryRow(ctx, `SELECT i FROM kept`).Scan(&i); err != nil || i != 7 {
			t.Fatalf("after a restart: %d, %v", i, err)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("server directory %s left behind: %v", dir, err)
	}
}

// TestBinDirPicksTheHighestVersion: of the versions with initdb and pg_ctl, the highest by
// number (16 above 9.6); none is a reason to skip.
func TestBinDirPicksTheHighestVersion(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "16", "17"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		programs := []string{"initdb", "pg_ctl"}
		if v == "17" {
			programs = programs[:1] // a partial install does not count
		}
		for _, p := range programs {
			if err := os.WriteFile(filepath.Join(bin, p), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "not-a-version", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if dir, skip := binDirIn(root); skip != "" || dir != filepath.Join(root, "16", "bin") {
		t.Errorf("binDirIn = %q, %q; want version 16", dir, skip)
	}
	if dir, skip := binDirIn(t.TempDir()); dir != "" || !strings.Contains(skip, "no initdb and pg_ctl") {
		t.Errorf("an empty root: %q, %q", dir, skip)
	}
	if dir, skip := binDirIn(filepath.Join(root, "missing")); dir != "" || !strings.Contains(skip, "no PostgreSQL under") {
		t.Errorf("a missing root: %q, %q", dir, skip)
	}
}

// recorder is a testing.TB that records a skip or a failure instead of ending the test.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

// TestMissingPostgresSkipsUnlessRequired: without PostgreSQL a test is skipped, unless
// SYNAPSE_REQUIRE_POSTGRES is set (as CI sets it): then it fails, naming the package to install.
func TestMissingPostgresSkipsUnlessRequired(t *testing.T) {
	t.Setenv(RequireEnv, "")
	r := &recorder{TB: t}
	skipOrFail(r, "pgtest: no PostgreSQL under /nowhere")
	if r.failed != "" || !strings.Contains(r.skipped, RequireEnv) {
		t.Errorf("without %s: skipped %q, failed %q; want a skip naming it", RequireEnv, r.skipped, r.failed)
	}
	t.Setenv(RequireEnv, "1")
	r = &recorder{TB: t}
	skipOrFail(r, "pgtest: no PostgreSQL under /nowhere")
	if r.skipped != "" || !strings.Contains(r.failed, "install the postgresql package") {
		t.Errorf("with %s: skipped %q, failed %q; want a failure", RequireEnv, r.skipped, r.failed)
	}
}

// helperEnv makes the test binary, run again by TestServerGoesWithItsBinary, start a server
// and wait to be killed.
const helperEnv = "PGTEST_HELPER_HOLD_SERVER"

func TestHelperHoldServer(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("run by TestServerGoesWithItsBinary")
	}
	URL(t)
	fmt.Printf("server %s %d\n", shared.dir, shared.port)
	time.Sleep(time.Minute)
}

// TestServerGoesWithItsBinary kills a test binary holding a server, with SIGKILL (the watchdog
// stops the server) and SIGTERM (Main's signal handler does): the server stops and its
// directory goes.
func TestServerGoesWithItsBinary(t *testing.T) {
	if _, skip := binDir(); skip != "" {
		skipOrFail(t, skip)
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldServer$", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"=1")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var dir string
			var port int
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if n, _ := fmt.Sscanf(sc.Text(), "server %s %d", &dir, &port); n == 2 {
					break
				}
			}
			if dir == "" {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatal("the helper did not report its server")
			}
			go func() { _, _ = io.Copy(io.Discard, out) }()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, statErr := os.Stat(dir)
				c, dialErr := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
				if dialErr == nil {
					_ = c.Close()
				}
				if os.IsNotExist(statErr) && dialErr != nil {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("30 s after %v: directory %s: %v; port %d: %v", sig, dir, statErr, port, dialErr)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}
