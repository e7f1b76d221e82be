package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowBackend holds every admin key check until release is closed, so requests overlap. The
// key is right when it equals right.
type slowBackend struct {
	Backend // only CheckAdminKey is called
	entered chan<- string
	release <-chan struct{}
	right   string
	checks  atomic.Int32
}

func (b *slowBackend) CheckAdminKey(key string) (bool, error) {
	b.checks.Add(1)
	b.entered <- "checked"
	<-b.release
	return b.right != "" && key == b.right, nil
}

// TestThrottleParallelGuesses: parallel wrong keys from one address get no more checks than
// the allowance; the rest wait for those to settle and are then refused with 429.
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
			codes <- rec.Code
		}()
	}
	// The allowance reaches the check; the others wait (or are refused). Only then are the
	// checks answered.
	for range loginFailuresAllowed {
		if e := <-events; e != "checked" {
			t.Fatal(e)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the rest arrive at the throttle
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

// TestThrottleParallelRightKeys: a script's many parallel Bearer calls with the right admin
// key are never refused: a try in flight is no wrong key. Those past the allowance wait for
// the checks in flight, which turn out right, and then go ahead.
func TestThrottleParallelRightKeys(t *testing.T) {
	const n = 4 * loginFailuresAllowed
	const key = "the-right-admin-key-0123"
	events := make(chan string, n)
	release := make(chan struct{})
	b := &slowBackend{entered: events, release: release, right: key}
	h := &Handler{Prefix: "/admin", Backend: b, ClientIP: func(*http.Request) string { return "203.0.113.9" }}
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest(http.MethodGet, "/admin/api/session", nil)
			req.Header.Set("Authorization", "Bearer "+key)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			codes <- rec.Code
		}()
	}
	for range loginFailuresAllowed {
		<-events
	}
	time.Sleep(50 * time.Millisecond) // let the rest arrive at the throttle
	close(release)
	wg.Wait()
	close(codes)
	status := map[int]int{}
	for c := range codes {
		status[c]++
	}
	if status[http.StatusOK] != n {
		t.Errorf("%d parallel calls with the right key: statuses %v, want %d x 200", n, status, n)
	}
	if got := b.checks.Load(); got != n {
		t.Errorf("%d checks, want %d", got, n)
	}
}

// TestThrottleWaitEnds: a try that waits for its network's tries in flight gives up when its
// request is canceled, or after maxTryWait, and holds nothing afterwards.
func TestThrottleWaitEnds(t *testing.T) {
	th := &Throttle{}
	now := time.Unix(1_750_000_000, 0)
	clock := func() time.Time { return now }
	for range loginFailuresAllowed {
		if _, ok := th.begin("192.0.2.1", now); !ok {
			t.Fatal("a try within the allowance was refused")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() {
		_, ok := th.acquire(ctx, "192.0.2.1", clock)
		done <- ok
	}()
	select {
	case ok := <-done:
		t.Fatalf("a try past the allowance did not wait: ok %v", ok)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if ok := <-done; ok {
		t.Fatal("a canceled wait got a try")
	}
	for range loginFailuresAllowed {
		th.end("192.0.2.1", now, true)
	}
	if len(th.m) != 0 {
		t.Errorf("%d records left after right keys", len(th.m))
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

// TestThrottleFullOfLockoutsEvictsOldest: when the table is full of locked networks, a new
// network still gets its try (an attacker with many IPv6 /64s cannot lock the admin out): the
// least recently active records go first, the bound holds.
func TestThrottleFullOfLockoutsEvictsOldest(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	th := &Throttle{max: 3}
	lockOut := func(ip string) {
		for range loginFailuresAllowed {
			th.fail(ip, now)
		}
		if th.lockedFor(ip, now) == 0 {
			t.Fatalf("%s is not locked", ip)
		}
		now = now.Add(time.Second)
	}
	lockOut("192.0.2.1")
	lockOut("192.0.2.2")
	lockOut("192.0.2.3")
	if d, ok := th.begin("198.51.100.7", now); !ok {
		t.Fatalf("a new network with every record locked was refused (%v)", d)
	}
	th.end("198.51.100.7", now, true)
	if d := th.lockedFor("192.0.2.1", now); d != 0 {
		t.Errorf("the oldest lockout was kept (%v) and a newer one went", d)
	}
	for _, ip := range []string{"192.0.2.2", "192.0.2.3"} {
		if th.lockedFor(ip, now) == 0 {
			t.Errorf("%s: a newer lockout was evicted", ip)
		}
	}
	if len(th.m) > 3 {
		t.Errorf("%d records, bound 3", len(th.m))
	}
	// The right key left no record behind; wrong keys from new networks fill the free slot,
	// then push out the oldest again.
	th.fail("198.51.100.8", now)
	th.fail("198.51.100.9", now)
	if th.lockedFor("192.0.2.2", now) != 0 || th.lockedFor("192.0.2.3", now) == 0 || len(th.m) != 3 {
		t.Errorf("after two more networks: %d records, 192.0.2.2 locked %v, 192.0.2.3 locked %v",
			len(th.m), th.lockedFor("192.0.2.2", now), th.lockedFor("192.0.2.3", now))
	}
	for _, ip := range []string{"198.51.100.8", "198.51.100.9"} {
		if r := th.m[ip]; r == nil || r.n != 1 {
			t.Errorf("%s: record %+v, want one failure", ip, r)
		}
	}
}

// TestThrottleManyIPv6NetworksCannotLockOutAdmin: an attacker locks out as many /64s (in as
// many /56s) as the table holds; the admin, from elsewhere, still signs in with the right key.
func TestThrottleManyIPv6NetworksCannotLockOutAdmin(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	b := newFakeBackend("the-right-admin-key-0123")
	var client atomic.Value
	h := &Handler{Prefix: "/admin", Backend: b, Throttle: &Throttle{max: 64}, Now: func() time.Time { return now },
		ClientIP: func(*http.Request) string { return client.Load().(string) }}
	login := func(ip, key string) int {
		client.Store(ip)
		req := httptest.NewRequest("POST", "/admin/api/login", strings.NewReader(`{"admin_key":"`+key+`"}`))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 64 {
		ip := fmt.Sprintf("2001:db8:%x::1", i)
		for range loginFailuresAllowed {
			login(ip, "guess")
		}
		if code := login(ip, "guess"); code != http.StatusTooManyRequests {
			t.Fatalf("%s not locked out: %d", ip, code)
		}
	}
	if code := login("192.0.2.50", "the-right-admin-key-0123"); code != http.StatusOK {
		t.Errorf("the admin with the right key after 64 locked /64s: %d, want 200", code)
	}
	if code := login("2001:db8:ffff::1", "the-right-admin-key-0123"); code != http.StatusOK {
		t.Errorf("the admin from a new /64 with the right key: %d, want 200", code)
	}
}

// TestThrottleSweepIsBounded: forgotten records go a few per try, oldest first, so a try never
// scans the whole table however large it is; they do all go in the end.
func TestThrottleSweepIsBounded(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	th := &Throttle{}
	const n = 20000
	for i := range n {
		th.fail(fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), now)
	}
	if len(th.m) != n {
		t.Fatalf("%d records, want %d", len(th.m), n)
	}
	now = now.Add(forgetFailuresAfter + time.Minute)
	th.fail("198.51.100.1", now)
	if swept := n + 1 - len(th.m); swept > sweepPerTry {
		t.Errorf("one try swept %d records; want at most %d", swept, sweepPerTry)
	}
	for i := 0; len(th.m) > 1; i++ {
		if i > n { // each try removes up to sweepPerTry and adds at most one
			t.Fatalf("%d forgotten records left after %d tries", len(th.m)-1, i)
		}
		if _, ok := th.begin("198.51.100.2", now); ok {
			th.end("198.51.100.2", now, true)
		}
	}
	if th.lockedFor("198.51.100.1", now) != 0 || th.m[throttleKey("198.51.100.1")] == nil {
		t.Error("the recent failure was swept with the forgotten ones")
	}
}

// TestThrottleIPv6Slash56: wrong keys from many /64s of one /56 add up: at
// networkFailuresAllowed the whole /56 is locked out, a new /64 in it included; the next /56
// is not, and a right key in between forgets nothing of the /56.
func TestThrottleIPv6Slash56(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	th := &Throttle{}
	// 2001:db8:0:100::/56 holds the /64s 2001:db8:0:100:: to 2001:db8:0:1ff::.
	for i := range networkFailuresAllowed - 1 {
		th.fail(fmt.Sprintf("2001:db8:0:1%02x::1", i), now)
	}
	if d := th.lockedFor("2001:db8:0:1ff::1", now); d != 0 {
		t.Fatalf("the /56 is locked after %d wrong keys: %v", networkFailuresAllowed-1, d)
	}
	if _, ok := th.begin("2001:db8:0:1fe::1", now); !ok {
		t.Fatal("a right key from a new /64 was refused")
	}
	th.end("2001:db8:0:1fe::1", now, true)
	th.fail("2001:db8:0:1fd::1", now)
	if d := th.lockedFor("2001:db8:0:1ff::1", now); d != firstLockout {
		t.Errorf("a new /64 of the /56 after %d wrong keys from its /64s: locked %v, want %v", networkFailuresAllowed, d, firstLockout)
	}
	if d, ok := th.begin("2001:db8:0:1ff::1", now); ok || d != firstLockout {
		t.Errorf("a new /64 of the locked /56 may try: %v %v", d, ok)
	}
	for _, ip := range []string{"2001:db8:0:200::1", "2001:db8:0:ff::1", "192.0.2.1"} {
		if d := th.lockedFor(ip, now); d != 0 {
			t.Errorf("%s, outside the /56, is locked: %v", ip, d)
		}
	}
	// The lockout doubles with each further failure of the /56, as a /64's does.
	now = now.Add(firstLockout)
	th.fail("2001:db8:0:1aa::1", now)
	if d := th.lockedFor("2001:db8:0:1ab::1", now); d != 2*firstLockout {
		t.Errorf("second /56 lockout %v, want %v", d, 2*firstLockout)
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
