package admin

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Login throttling. An IPv4 client is one address, an IPv6 client both its /64 (one host
// usually holds a whole /64) and its /56 (what one customer is usually given: 256 /64s).
const (
	// networkFailuresAllowed is how many wrong admin keys in a row an IPv6 /56 may send, from
	// any of its /64s, before the whole /56 is locked out: four /64s' worth, so one host that
	// rotates its /64 through a /56 gets 20 guesses per lockout instead of 256 x 5 = 1280,
	// while an admin's own typos (which lock their /64 at loginFailuresAllowed) do not reach it.
	networkFailuresAllowed = 4 * loginFailuresAllowed
	// firstLockout is the lockout after the allowed failures; it doubles with every further
	// failure, up to maxLockout.
	firstLockout = 30 * time.Second
	maxLockout   = 15 * time.Minute
	// forgetFailuresAfter is how long after its last failure a network starts with a clean
	// slate. It is longer than maxLockout, so a forgotten record is never locked.
	forgetFailuresAfter = time.Hour
	// maxTracked bounds the number of networks tracked; past it the least recently active
	// records go first, lockouts included (an evicted network merely starts again with a clean
	// slate), so a new network always gets a record and a right key is never refused for lack
	// of room.
	maxTracked = 100000
	// sweepPerTry is how many forgotten records one try removes at most, oldest first: more
	// than a try adds (two), so forgotten records go away steadily without any try scanning
	// the whole table.
	sweepPerTry = 16
	// maxTryWait is how long a try waits for the tries of its network already in flight to
	// settle before it is refused.
	maxTryWait = 10 * time.Second
)

// Throttle counts wrong admin keys per client network and locks a network out after the
// failures it is allowed in a row (loginFailuresAllowed for an IPv4 address or an IPv6 /64,
// networkFailuresAllowed for the IPv6 /56 around a /64), for a time that doubles with every
// further failure. A client may try only while none of its networks is locked out.
//
// An attempt is reserved before the key is checked and settled after, so parallel requests
// cannot exceed the allowance: while a network has as many tries in flight as it has failures
// left, a further try waits until one of them settles (a right key frees its place at once, a
// wrong one counts). Only wrong keys count; a try in flight never does, so parallel calls with
// the right key are never refused.
//
// Records are kept in the order of their last activity: forgotten ones are removed a few per
// try from the oldest end, and when the table is full the least recently active records go,
// lockouts included, so a new network always gets its try. The zero value is ready to use and
// needs no Close (it runs no goroutine); the gateway keeps one for its whole life, so a config
// reload does not reset lockouts.
type Throttle struct {
	mu sync.Mutex
	m  map[string]*record
	// oldest and newest end the list of every record in m, ordered by last activity.
	oldest, newest *record
	// max bounds the number of tracked networks; 0 means maxTracked. Tests lower it.
	max int
}

// record is the count of wrong admin keys from one client network.
type record struct {
	key         string
	allowed     int       // failures in a row before a lockout
	n           int       // failures in a row
	pending     int       // tries reserved and not settled yet
	last        time.Time // of the last failure
	active      time.Time // of the last try or settling: the list's order
	lockedUntil time.Time
	// settled is closed (and cleared) when a try of this network settles; made by a try that
	// waits for one.
	settled    chan struct{}
	prev, next *record
}

// throttleKey is the network ip is counted in first: the address for IPv4, the /64 for IPv6;
// anything that does not parse is used as it is.
func throttleKey(ip string) string {
	own, _ := throttleKeys(ip)
	return own
}

// throttleKeys returns the networks ip is counted in: its own (see throttleKey) and, for an
// IPv6 address, the /56 around it ("" otherwise).
func throttleKeys(ip string) (own, wide string) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip, ""
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String(), ""
	}
	p64, err := a.Prefix(64)
	if err != nil {
		return a.String(), ""
	}
	p56, _ := a.Prefix(56)
	return p64.String(), p56.String()
}

// acquire reserves a try for client, waiting (up to maxTryWait, or until ctx is done) while
// its networks' tries in flight use up their allowance. When client may not try it returns how
// long to wait (at least a second) and false. clock is read at every attempt.
func (t *Throttle) acquire(ctx context.Context, client string, clock func() time.Time) (time.Duration, bool) {
	var timeout <-chan time.Time
	for {
		d, settled, ok := t.try(client, clock())
		if ok || settled == nil {
			return d, ok
		}
		if timeout == nil {
			timer := time.NewTimer(maxTryWait)
			defer timer.Stop()
			timeout = timer.C
		}
		select {
		case <-settled:
		case <-ctx.Done():
			return time.Second, false
		case <-timeout:
			return time.Second, false
		}
	}
}

// begin reserves a try for client at now without waiting: while its networks' tries in flight
// use up their allowance it is refused like a locked-out one, with a second to wait.
func (t *Throttle) begin(client string, now time.Time) (time.Duration, bool) {
	d, _, ok := t.try(client, now)
	return d, ok
}

// try reserves a try for client at now. When a network of client is locked out it returns how
// long to wait (at least a second) and false; when a network has as many tries in flight as
// it may, a channel closed when one of them settles, and false.
func (t *Throttle) try(client string, now time.Time) (time.Duration, <-chan struct{}, bool) {
	keys := [2]string{}
	keys[0], keys[1] = throttleKeys(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*record)
	}
	t.sweep(now)
	var recs [2]*record
	var locked time.Duration
	for i, k := range keys {
		if k == "" {
			continue
		}
		if r := t.m[k]; r != nil {
			recs[i] = r
			locked = max(locked, r.lockedUntil.Sub(now))
		}
	}
	if locked > 0 {
		return max(locked, time.Second), nil, false
	}
	for _, r := range recs {
		if r == nil {
			continue
		}
		if r.pending == 0 && now.Sub(r.last) > forgetFailuresAfter {
			r.n = 0
		}
		// After a lockout one try at a time; before it, as many as failures are left.
		if r.pending >= max(r.allowed-r.n, 1) {
			if r.settled == nil {
				r.settled = make(chan struct{})
			}
			return time.Second, r.settled, false
		}
	}
	for i, k := range keys {
		if k == "" {
			continue
		}
		r := recs[i]
		if r == nil {
			r = &record{key: k, allowed: loginFailuresAllowed}
			if i == 1 {
				r.allowed = networkFailuresAllowed
			}
			t.m[k] = r
		}
		r.pending++
		t.touch(r, now)
	}
	t.evict()
	return 0, nil, true
}

// end settles a try begin or acquire reserved: a right key forgets the failures of the
// client's own network (not of its /56), a wrong one counts in each of its networks and may
// lock them out.
func (t *Throttle) end(client string, now time.Time, right bool) {
	t.settle(client, now, right, false)
}

// cancel gives back a try reserved by begin or acquire whose key could not be checked: it
// counts neither way.
func (t *Throttle) cancel(client string) {
	t.settle(client, time.Time{}, false, true)
}

func (t *Throttle) settle(client string, now time.Time, right, void bool) {
	keys := [2]string{}
	keys[0], keys[1] = throttleKeys(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, k := range keys {
		r := t.m[k]
		if k == "" || r == nil {
			continue
		}
		r.pending = max(r.pending-1, 0)
		if r.settled != nil { // whoever waits for a place tries again
			close(r.settled)
			r.settled = nil
		}
		switch {
		case void:
		case right:
			if i == 0 {
				r.n, r.lockedUntil = 0, time.Time{}
			}
		default:
			r.n++
			r.last = now
			if over := r.n - r.allowed; over >= 0 {
				lock := maxLockout
				if over < 16 {
					lock = min(firstLockout<<over, maxLockout)
				}
				r.lockedUntil = now.Add(lock)
			}
		}
		if r.pending == 0 && r.n == 0 {
			t.remove(r)
		} else if !void {
			t.touch(r, now)
		}
	}
}

// lockedFor returns how long client must still wait before its next try (0 when it may try).
func (t *Throttle) lockedFor(client string, now time.Time) time.Duration {
	own, wide := throttleKeys(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	var d time.Duration
	for _, k := range []string{own, wide} {
		if r := t.m[k]; k != "" && r != nil {
			d = max(d, r.lockedUntil.Sub(now))
		}
	}
	return d
}

// touch marks r active at now: it moves to the newest end of the list (or joins it).
// Called with t.mu held, as are the other methods below.
func (t *Throttle) touch(r *record, now time.Time) {
	if now.After(r.active) {
		r.active = now
	}
	if t.newest == r {
		return
	}
	t.unlink(r)
	r.prev = t.newest
	if t.newest != nil {
		t.newest.next = r
	} else {
		t.oldest = r
	}
	t.newest = r
}

// unlink takes r out of the list, if it is in it.
func (t *Throttle) unlink(r *record) {
	if r.prev != nil {
		r.prev.next = r.next
	} else if t.oldest == r {
		t.oldest = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else if t.newest == r {
		t.newest = r.prev
	}
	r.prev, r.next = nil, nil
}

// remove forgets r.
func (t *Throttle) remove(r *record) {
	t.unlink(r)
	delete(t.m, r.key)
	if r.settled != nil {
		close(r.settled)
		r.settled = nil
	}
}

// sweep removes up to sweepPerTry forgotten records (no try in flight, no failure for
// forgetFailuresAfter, not locked) from the oldest end. The list is in the order of activity,
// so it stops at the first record that is not forgotten.
func (t *Throttle) sweep(now time.Time) {
	for range sweepPerTry {
		r := t.oldest
		if r == nil || r.pending > 0 || now.Sub(r.active) <= forgetFailuresAfter || r.lockedUntil.After(now) {
			return
		}
		t.remove(r)
	}
}

// evict removes the least recently active records, locked out or not, while the table holds
// more than its bound. Records with a try in flight stay (they are the newest anyway).
func (t *Throttle) evict() {
	limit := t.max
	if limit <= 0 {
		limit = maxTracked
	}
	for r := t.oldest; r != nil && len(t.m) > limit; {
		next := r.next
		if r.pending == 0 {
			t.remove(r)
		}
		r = next
	}
}
