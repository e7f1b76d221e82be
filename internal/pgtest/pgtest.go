// Package pgtest runs real PostgreSQL servers for tests, from the Debian package's binaries
// (/usr/lib/postgresql/<version>/bin, the highest version present).
//
// A test binary shares one server, started lazily by the first URL call; each URL call creates
// a fresh database on it (dropped when the test ends), so tests are isolated and may run in
// parallel. The server listens on 127.0.0.1 only, on a free port, with trust authentication
// and no Unix socket, in a temporary directory; it runs with fsync off (a test server keeps
// nothing worth a disk flush) unless the environment variable SYNAPSE_PGTEST_DURABLE is set
// (for benchmarks: then it flushes as a production server does). NewServer starts a server of
// a test's own, for tests that stop and start it.
//
// The test binary's TestMain must call Main (or Run), which stops every server when the tests
// end or a signal (SIGINT, SIGTERM, SIGHUP) arrives. Each server also has a watchdog process that stops
// it and removes its directory when the test binary dies without doing so (a timeout's panic,
// SIGKILL).
//
// initdb refuses to run as root: as root, every PostgreSQL program runs as the postgres user
// (runuser -u postgres), which the Debian package creates.
//
// Without the binaries a test calling URL or NewServer is skipped, unless the environment
// variable SYNAPSE_REQUIRE_POSTGRES is set (CI sets it): then it fails.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// RequireEnv names the environment variable that turns a missing PostgreSQL into a failure.
const RequireEnv = "SYNAPSE_REQUIRE_POSTGRES"

// DurableEnv names the environment variable that makes the servers flush to disk at every
// commit (fsync, synchronous_commit and full_page_writes on, as by default).
const DurableEnv = "SYNAPSE_PGTEST_DURABLE"

// Root is where Debian's postgresql packages install their versions.
const Root = "/usr/lib/postgresql"

var (
	mainCalled bool // set by Main; URL and NewServer refuse to start a server without it

	sharedOnce   sync.Once
	shared       *Server
	sharedErr    error
	sharedSkip   string // why no server can run here, when the binaries are absent
	serversMu    sync.Mutex
	servers      []*Server // every server started, for Main and the signal handler to stop
	stoppingAll  bool
	signalOnce   sync.Once
	adminTimeout = 30 * time.Second
)

// Main runs the tests of m and stops every server started meanwhile, then exits with the
// tests' status. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main without the exit, for a TestMain with work of its own to do after the tests
// (removing what it built): it runs the tests of m, stops every server started meanwhile and
// returns the tests' status for the caller to exit with.
func Run(m *testing.M) int {
	mainCalled = true
	signalOnce.Do(watchSignals)
	code := m.Run()
	stopAll()
	return code
}

// watchSignals stops every server when the test binary is interrupted, then lets the signal
// end the process as it would have.
func watchSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-ch
		stopAll()
		signal.Reset(sig)
		if s, ok := sig.(syscall.Signal); ok {
			_ = syscall.Kill(os.Getpid(), s)
		}
		os.Exit(2)
	}()
}

// stopAll stops every server started, the shared one included.
func stopAll() {
	serversMu.Lock()
	stoppingAll = true
	all := slices.Clone(servers)
	serversMu.Unlock()
	for _, s := range all {
		s.shutdown()
	}
}

// URL returns the postgres:// URL of a fresh, empty database on the test binary's shared
// server, starting the server first if needed. The database is dropped when t ends (after
// the cleanups t registers later, such as closing a store). It skips or fails t when
// PostgreSQL is not installed (see the package doc).
func URL(t testing.TB) string {
	t.Helper()
	sharedOnce.Do(func() {
		if !mainCalled {
			sharedErr = errors.New("pgtest: the test binary's TestMain must call pgtest.Main(m)")
			return
		}
		var bin string
		bin, sharedSkip = binDir()
		if sharedSkip != "" {
			return
		}
		shared, sharedErr = start(bin)
	})
	if sharedSkip != "" {
		skipOrFail(t, sharedSkip)
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared.URL(t)
}

// NewServer starts a PostgreSQL server of t's own, stopped and removed when t ends; it skips
// or fails t as URL does. Use it for tests that stop and start the server (Stop, Start).
func NewServer(t testing.TB) *Server {
	t.Helper()
	if !mainCalled {
		t.Fatal("pgtest: the test binary's TestMain must call pgtest.Main(m)")
	}
	bin, skip := binDir()
	if skip != "" {
		skipOrFail(t, skip)
	}
	s, err := start(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.shutdown)
	return s
}

func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s, and %s is set: install the postgresql package", why, RequireEnv)
		return
	}
	t.Skipf("%s: skipping (install the postgresql package, or set %s to make this a failure)", why, RequireEnv)
}

// binDir returns the bin directory of the highest PostgreSQL version installed, or why there
// is none.
func binDir() (dir, skip string) { return binDirIn(Root) }

// binDirIn returns the bin directory of the highest version under root (root/<version>/bin
// with initdb and pg_ctl), or why there is none.
func binDirIn(root string) (dir, skip string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Sprintf("pgtest: no PostgreSQL under %s", root)
	}
	best, bestVersion := "", -1.0
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64) // "15", "16", or "9.6" of old
		if err != nil {
			continue
		}
		bin := filepath.Join(root, e.Name(), "bin")
		if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(bin, "pg_ctl")); err != nil {
			continue
		}
		if v > bestVersion {
			best, bestVersion = bin, v
		}
	}
	if best == "" {
		return "", fmt.Sprintf("pgtest: no initdb and pg_ctl under %s/<version>/bin", root)
	}
	return best, ""
}

// Server is a running PostgreSQL server in a temporary directory.
type Server struct {
	bin  string // the directory of initdb, pg_ctl, ...
	dir  string // the temporary directory: data/, server.log
	port int
	asPG bool // run programs as the postgres user (the test binary is root)

	mu       sync.Mutex
	admin    *pgx.Conn // to the postgres database, for CREATE and DROP DATABASE
	watchdog *exec.Cmd
	wdPipe   *os.File // the write end of the watchdog's stdin; closing it stops the server
	down     bool     // shut down for good
	stopped  bool     // stopped by Stop until Start
}

// start creates a cluster in a new temporary directory and starts it on a free loopback port.
func start(bin string) (*Server, error) {
	s := &Server{bin: bin, asPG: os.Geteuid() == 0}
	var uid, gid int
	if s.asPG {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root needs the postgres user to run initdb: %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	dir, err := os.MkdirTemp(tempBase(s.asPG), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s.dir = dir
	if s.asPG {
		if err := os.Chown(dir, uid, gid); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	if err := s.register(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := s.startWatchdog(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if out, err := s.run("initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8",
		"--locale=C", "--no-sync"); err != nil {
		s.shutdown()
		return nil, fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	conf := []string{
		"",
		"# pgtest",
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = ''",
		"max_connections = 300",
		"shared_buffers = 128MB",
		"log_min_messages = warning",
	}
	if os.Getenv(DurableEnv) == "" {
		conf = append(conf, "fsync = off", "synchronous_commit = off", "full_page_writes = off")
	}
	if err := s.appendConf(strings.Join(conf, "\n") + "\n"); err != nil {
		s.shutdown()
		return nil, err
	}
	if err := s.startOnFreePort(); err != nil {
		s.shutdown()
		return nil, err
	}
	return s, nil
}

// tempBase returns the directory to create the server's directory in: the usual temporary
// directory, unless the postgres user could not reach it (a root-only TMPDIR), then /tmp.
func tempBase(asPG bool) string {
	base := os.TempDir()
	if !asPG {
		return base
	}
	for d := base; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// register adds s to the servers Main stops, unless Main is stopping them already.
func (s *Server) register() error {
	serversMu.Lock()
	defer serversMu.Unlock()
	if stoppingAll {
		return errors.New("pgtest: the test binary is ending")
	}
	servers = append(servers, s)
	return nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }
func (s *Server) log() string  { return filepath.Join(s.dir, "server.log") }

// command returns the command running the PostgreSQL program name (from the bin directory,
// or a plain command such as sh) with args, as the postgres user when the test binary is root.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	if !strings.Contains(name, "/") && name != "sh" {
		name = filepath.Join(s.bin, name)
	}
	if s.asPG {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

// run runs a program to its end and returns its output.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	cmd := s.command(name, args...)
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// appendConf appends text to the cluster's postgresql.conf (later lines win).
func (s *Server) appendConf(text string) error {
	f, err := os.OpenFile(filepath.Join(s.data(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if _, err := io.WriteString(f, text); err != nil {
		_ = f.Close()
		return fmt.Errorf("pgtest: %w", err)
	}
	return f.Close()
}

// startWatchdog starts the process that stops the server and removes its directory once its
// standard input closes: when shutdown closes it, or when the test binary dies. It runs in a
// process group of its own, so a Ctrl-C meant for the tests does not kill it first.
func (s *Server) startWatchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	script := `read -r _ || true
if [ -f "$1/postmaster.pid" ]; then "$2" -D "$1" -m immediate -w stop >/dev/null 2>&1; fi
rm -rf "$3"`
	cmd := s.command("sh", "-c", script, "pgtest-watchdog", s.data(), filepath.Join(s.bin, "pg_ctl"), s.dir)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		return fmt.Errorf("pgtest: start watchdog: %w", err)
	}
	_ = r.Close()
	s.watchdog, s.wdPipe = cmd, w
	return nil
}

// startOnFreePort starts the server on a free loopback port, trying another port if one is
// taken between the probe and the start.
func (s *Server) startOnFreePort() error {
	var err error
	for range 5 {
		var port int
		if port, err = freePort(); err != nil {
			return err
		}
		if err = s.appendConf(fmt.Sprintf("port = %d\n", port)); err != nil {
			return err
		}
		s.port = port
		if err = s.pgStart(); err == nil {
			return nil
		}
	}
	return err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// pgStart runs pg_ctl start and waits until the server accepts connections.
func (s *Server) pgStart() error {
	if out, err := s.run("pg_ctl", "-D", s.data(), "-l", s.log(), "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl start: %v\n%s\n%s", err, out, s.logTail())
	}
	return nil
}

// logTail returns the end of the server's log, for error messages.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return "server log:\n" + string(b)
}

// Port returns the loopback port the server listens on.
func (s *Server) Port() int { return s.port }

// URL creates a fresh database on s and returns its postgres:// URL. The database is dropped
// when t ends.
func (s *Server) URL(t testing.TB) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if err := s.adminExec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		gone := s.down || s.stopped
		s.mu.Unlock()
		if gone {
			return // the server's directory goes at shutdown, with the database
		}
		if err := s.adminExec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Logf("pgtest: drop database %s: %v", name, err)
		}
	})
	return s.urlOf(name)
}

// urlOf returns the URL of database name on s.
func (s *Server) urlOf(name string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: fmt.Sprintf("127.0.0.1:%d", s.port),
		Path: "/" + name, RawQuery: "sslmode=disable"}
	return u.String()
}

// adminExec runs sql on the postgres database, over a connection kept for that purpose
// (opened again if the server was restarted).
func (s *Server) adminExec(sql string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return errors.New("pgtest: server shut down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if s.admin == nil {
			c, err := pgx.Connect(ctx, s.urlOf("postgres"))
			if err != nil {
				return err
			}
			s.admin = c
		}
		_, err := s.admin.Exec(ctx, sql)
		if err != nil && s.admin.IsClosed() && attempt == 0 {
			s.admin = nil // a restart closed it: connect again, once
			continue
		}
		return err
	}
}

// Stop stops the server (pg_ctl stop, fast mode) until Start; clients' connections break.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	if s.admin != nil {
		_ = s.admin.Close(context.Background())
		s.admin = nil
	}
	s.mu.Unlock()
	if out, err := s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("pgtest: pg_ctl stop: %v\n%s", err, out)
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// Start starts the server again after Stop, on the same port.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.pgStart(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.stopped = false
	s.mu.Unlock()
}

// shutdown stops the server for good and removes its directory, by closing the watchdog's
// input and waiting for it.
func (s *Server) shutdown() {
	s.mu.Lock()
	if s.down {
		s.mu.Unlock()
		return
	}
	s.down = true
	if s.admin != nil {
		_ = s.admin.Close(context.Background())
		s.admin = nil
	}
	s.mu.Unlock()
	if s.wdPipe != nil {
		_ = s.wdPipe.Close()
		_ = s.watchdog.Wait()
	}
	_ = os.RemoveAll(s.dir) // the watchdog did, unless it could not start
}
