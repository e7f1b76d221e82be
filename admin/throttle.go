package admin

import (
	"net/netip"
	"sync"
	"time"
)

// Throttle counts wrong admin keys per client network and locks a network out after
// loginFailuresAllowed of them in a row, for a time that doubles with every further failure.
// An IPv4 client is one address, an IPv6 client its /64 (one host usually holds a whole /64).
//
// An attempt is reserved before the key is checked and settled after, so parallel requests
// cannot exceed the allowance: while a network has failures+attempts in flight at the limit,
// its next attempt is refused. The zero value is ready to use; the gateway keeps one for its
// whole life, so a config reload does not reset lockouts.
type Throttle struct {
	mu sync.Mutex
	m  map[string]*failures
	// max bounds the number of tracked networks; 0 means maxTracked. Tests lower it.
	max int
}

// failures is the record of wrong admin keys from one client network.
type failures struct {
	n           int // in a row
	pending     int // attempts reserved and not settled yet
	last        time.Time
	lockedUntil time.Time
}

// throttleKey is the network ip belongs to for throttling: the address for IPv4, the /64 for
// IPv6; anything that does not parse is used as it is.
func throttleKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String()
	}
	p, err := a.Prefix(64)
	if err != nil {
		return a.String()
	}
	return p.String()
}

// begin reserves an attempt for client at now. When it may not try, it returns how long to
// wait (at least a second) and false.
func (t *Throttle) begin(client string, now time.Time) (time.Duration, bool) {
	k := throttleKey(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*failures)
	}
	f := t.m[k]
	if f == nil {
		limit := t.max
		if limit <= 0 {
			limit = maxTracked
		}
		if len(t.m) >= min(sweepAt, limit) {
			t.sweep(now, limit)
		}
		if len(t.m) >= limit {
			// Every tracked network is locked out or trying right now: an unknown one waits
			// rather than push a locked one out.
			return time.Minute, false
		}
		f = &failures{}
		t.m[k] = f
	}
	if d := f.lockedUntil.Sub(now); d > 0 {
		return max(d, time.Second), false
	}
	if f.pending == 0 && now.Sub(f.last) > forgetFailuresAfter {
		f.n = 0
	}
	// After a lockout one attempt at a time; before it, as many as failures are left.
	if f.pending >= max(loginFailuresAllowed-f.n, 1) {
		return time.Second, false
	}
	f.pending++
	return 0, true
}

// end settles an attempt begin reserved: a right key forgets the network's failures, a wrong
// one counts and may lock the network out.
func (t *Throttle) end(client string, now time.Time, right bool) {
	t.settle(client, now, right, false)
}

// cancel gives back a try reserved by begin whose key could not be checked: it counts neither
// way.
func (t *Throttle) cancel(client string) {
	t.settle(client, time.Time{}, false, true)
}

func (t *Throttle) settle(client string, now time.Time, right, void bool) {
	k := throttleKey(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[k]
	if f == nil {
		return
	}
	f.pending--
	if void {
		if f.pending <= 0 && f.n == 0 {
			delete(t.m, k)
		}
		return
	}
	if right {
		f.n, f.lockedUntil = 0, time.Time{}
		if f.pending <= 0 {
			delete(t.m, k)
		}
		return
	}
	f.n++
	f.last = now
	if over := f.n - loginFailuresAllowed; over >= 0 {
		lock := maxLockout
		if over < 16 {
			lock = min(firstLockout<<over, maxLockout)
		}
		f.lockedUntil = now.Add(lock)
	}
}

// lockedFor returns how long client must still wait before its next try (0 when it may try).
func (t *Throttle) lockedFor(client string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[throttleKey(client)]
	if f == nil {
		return 0
	}
	return max(f.lockedUntil.Sub(now), 0)
}

// sweep drops forgotten records, then, while the map is at limit, records that are neither
// locked out nor trying (an evicted network merely starts again with a clean slate). Locked
// records are never dropped. Called with t.mu held.
func (t *Throttle) sweep(now time.Time, limit int) {
	for k, f := range t.m {
		if f.pending == 0 && !f.lockedUntil.After(now) && now.Sub(f.last) > forgetFailuresAfter {
			delete(t.m, k)
		}
	}
	for k, f := range t.m {
		if len(t.m) < limit {
			break
		}
		if f.pending == 0 && !f.lockedUntil.After(now) {
			delete(t.m, k)
		}
	}
}
