package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowBackend holds every admin key check until release is closed, so requests overlap.
type slowBackend struct {
	Backend // only CheckAdminKey is called
	entered chan<- string
	release <-chan struct{}
	checks  atomic.Int32
}

func (b *slowBackend) CheckAdminKey(string) (bool, error) {
	b.checks.Add(1)
	b.entered <- "checked"
	<-b.release
	return false, nil
}

// TestThrottleParallelGuesses: parallel wrong keys from one address get no more checks than
// the allowance; the rest are refused with 429 at once.
func TestThrottleParallelGuesses(t *testing.T) {
	const n = 20
	events := make(chan string, n)
	release := make(chan struct{})
	b := &slowBackend{entered: events, release: release}
	h := &Handler{Prefix: "/admin", Backend: b, ClientIP: func(*http.Request) string { return "203.0.113.9" }}
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest("POST", "/admin/api/login", strings.NewReader(`{"admin_key":"guess-guess-guess"}`))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code == http.StatusTooManyRequests {
				events <- "refused"
			}
			codes <- rec.Code
		}()
	}
	// Every request either reached the check or was refused; only then are checks answered.
	for range n {
		<-events
	}
	close(release)
	wg.Wait()
	close(codes)
	var refused, wrong int
	for c := range codes {
		switch c {
		case http.StatusTooManyRequests:
			refused++
		case http.StatusUnauthorized:
			wrong++
		default:
			t.Errorf("status %d", c)
		}
	}
	if got := b.checks.Load(); got != loginFailuresAllowed || wrong != loginFailuresAllowed || refused != n-loginFailuresAllowed {
		t.Errorf("%d parallel guesses: %d checked, %d wrong, %d refused; want %d checked", n, got, wrong, refused, loginFailuresAllowed)
	}
}

// TestThrottleIPv6Network: an IPv6 client is throttled by its /64, so rotating addresses in
// it buys no guesses; another /64 and IPv4 clients are separate.
func TestThrottleIPv6Network(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	th := &Throttle{}
	for i := range loginFailuresAllowed {
		th.fail("2001:db8:1:2::"+string(rune('a'+i)), now)
	}
	if d := th.lockedFor("2001:db8:1:2:ffff::1", now); d != firstLockout {
		t.Errorf("another address in the /64: locked %v, want %v", d, firstLockout)
	}
	if _, ok := th.begin("2001:db8:1:2::beef", now); ok {
		t.Error("another address in the locked /64 may try")
	}
	if d := th.lockedFor("2001:db8:1:3::a", now); d != 0 {
		t.Errorf("the next /64 is locked: %v", d)
	}
	if d := th.lockedFor("::ffff:192.0.2.1", now); d != 0 {
		t.Errorf("an IPv4 client is locked: %v", d)
	}
	if throttleKey("::ffff:192.0.2.1") != "192.0.2.1" || throttleKey("fe80::1%eth0") != "fe80::/64" {
		t.Errorf("keys %q %q", throttleKey("::ffff:192.0.2.1"), throttleKey("fe80::1%eth0"))
	}
}

// TestThrottleNeverEvictsLockedOut: when the record is full, unlocked records go first; when
// every record is a lockout, an unknown client is refused rather than one lifted.
func TestThrottleNeverEvictsLockedOut(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	th := &Throttle{max: 3}
	lockOut := func(ip string) {
		for range loginFailuresAllowed {
			th.fail(ip, now)
		}
	}
	lockOut("192.0.2.1")
	lockOut("192.0.2.2")
	th.fail("192.0.2.3", now) // one failure: not locked
	if _, ok := th.begin("192.0.2.4", now); !ok {
		t.Fatal("a new client was refused though an unlocked record could go")
	}
	th.end("192.0.2.4", now, false)
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		if d := th.lockedFor(ip, now); d == 0 {
			t.Errorf("%s: the lockout was evicted", ip)
		}
	}
	lockOut("192.0.2.4")
	if d, ok := th.begin("192.0.2.5", now); ok || d <= 0 {
		t.Errorf("a new client with every record locked: %v %v, want refused", d, ok)
	}
	for _, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.4"} {
		if d := th.lockedFor(ip, now); d == 0 {
			t.Errorf("%s: the lockout was evicted", ip)
		}
	}
}

// failingBackend cannot check the admin key (its database is busy) until ok is set.
type failingBackend struct {
	Backend // only CheckAdminKey is called
	ok      atomic.Bool
}

func (b *failingBackend) CheckAdminKey(key string) (bool, error) {
	if !b.ok.Load() {
		return false, errors.New("database is locked")
	}
	return key == "the-right-admin-key-0123", nil
}

// TestThrottleStoreErrorIsNoWrongKey: when the key cannot be checked, the client gets 503 and
// no failure is counted, so a slow database never locks the real admin out.
func TestThrottleStoreErrorIsNoWrongKey(t *testing.T) {
	b := &failingBackend{}
	h := &Handler{Prefix: "/admin", Backend: b, ClientIP: func(*http.Request) string { return "203.0.113.7" }}
	login := func(key string) int {
		req := httptest.NewRequest(http.MethodGet, "/admin/api/session", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range loginFailuresAllowed * 3 {
		if code := login("the-right-admin-key-0123"); code != http.StatusServiceUnavailable {
			t.Fatalf("check %d with the database down: %d, want 503", i, code)
		}
	}
	b.ok.Store(true)
	if code := login("the-right-admin-key-0123"); code != http.StatusOK {
		t.Fatalf("right key once the database is back: %d, want 200 (no lockout)", code)
	}
}
