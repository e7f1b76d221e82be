package pgtest

import (
	"context"
	"os"
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
