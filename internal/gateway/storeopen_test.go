package gateway

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestIsDatabaseURL(t *testing.T) {
	for v, want := range map[string]bool{
		"postgres://u:p@h:5432/db?sslmode=require": true,
		"postgresql://h/db":                        true,
		"PostgreSQL://h/db":                        true,
		"/var/lib/synapse/data.db":                 false,
		"data.db":                                  false,
		"postgres.db":                              false,
		"file:postgres://x":                        false,
		"mysql://h/db":                             false,
	} {
		if got := IsDatabaseURL(v); got != want {
			t.Errorf("IsDatabaseURL(%q) = %v", v, got)
		}
	}
}

// TestOpenUnreachableDatabaseMasksPassword: a PostgreSQL URL that cannot be reached fails the
// core's Open in bounded time, and neither the error nor a log line shows the password.
func TestOpenUnreachableDatabaseMasksPassword(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	const secret = "hunter2-S3cret"
	for _, u := range []string{
		fmt.Sprintf("postgres://synapse:%s@127.0.0.1:%d/gw?sslmode=disable&connect_timeout=2", secret, port),
		fmt.Sprintf("postgresql://synapse@127.0.0.1:%d/gw?sslmode=disable&connect_timeout=2&password=%s", port, secret),
	} {
		obs, logs := observer.New(zap.DebugLevel)
		c := New(u, zap.New(obs), Hooks{})
		err := c.Open()
		if err == nil {
			c.Destruct()
			t.Fatalf("%s: opened", storeName(u))
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "127.0.0.1") {
			t.Errorf("the error does not say where: %v", err)
		}
		for _, e := range logs.All() {
			if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), secret) {
				t.Errorf("a log line shows the password: %s %v", e.Message, e.ContextMap())
			}
		}
		if got := storeName(u); strings.Contains(got, secret) || !strings.Contains(got, "xxxxx") {
			t.Errorf("storeName(%q) = %q", u, got)
		}
		c.Destruct()
	}
	if got := maskPassword("auth failed for p%40ss and p@ss", "postgres://u:p%40ss@h/db"); strings.Contains(got, "p@ss") || strings.Contains(got, "p%40ss") {
		t.Errorf("maskPassword: %q", got)
	}
}
