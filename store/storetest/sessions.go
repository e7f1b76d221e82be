package storetest

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"
)

func testSessionsLifecycle(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	now := time.UnixMilli(1_750_000_000_000)
	a, b, c := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b")), sha256.Sum256([]byte("c"))
	for _, h := range [][32]byte{a, b, c} {
		if err := s.CreateSession(ctx, h, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	exp, ok, err := s.SessionExpiry(ctx, a, now)
	if err != nil || !ok || !exp.Equal(now.Add(time.Hour)) {
		t.Fatalf("SessionExpiry(a) = %v %v %v", exp, ok, err)
	}
	// Expired at its expiry instant, and unknown tokens are not sessions.
	if _, ok, err := s.SessionExpiry(ctx, a, now.Add(time.Hour)); ok || err != nil {
		t.Errorf("session alive at its expiry: %v %v", ok, err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, sha256.Sum256([]byte("x")), now); ok {
		t.Error("unknown token accepted")
	}
	if err := s.DeleteSession(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, b, now); ok {
		t.Error("deleted session still valid")
	}
	if err := s.DeleteSession(ctx, b); err != nil {
		t.Errorf("deleting an unknown session: %v", err)
	}
	// Ending all but a leaves a only; the zero hash ends them all.
	if n, err := s.DeleteSessionsExcept(ctx, a); err != nil || n != 1 {
		t.Fatalf("DeleteSessionsExcept(a) = %d, %v; want 1 (c)", n, err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, a, now); !ok {
		t.Error("kept session ended")
	}
	if _, ok, _ := s.SessionExpiry(ctx, c, now); ok {
		t.Error("other session survived")
	}
	if n, err := s.DeleteSessionsExcept(ctx, [32]byte{}); err != nil || n != 1 {
		t.Fatalf("DeleteSessionsExcept(zero) = %d, %v; want 1", n, err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, a, now); ok {
		t.Error("a session survived the end of them all")
	}
}

func testPurgeSessionsDropsExpiredOnly(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	now := time.UnixMilli(1_750_000_000_000)
	var hashes [][32]byte
	for i, exp := range []time.Time{now.Add(-24 * time.Hour), now.Add(-time.Millisecond), now, now.Add(time.Millisecond), now.Add(time.Hour)} {
		h := sha256.Sum256([]byte{byte(i)})
		hashes = append(hashes, h)
		if err := s.CreateSession(ctx, h, exp); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PurgeSessions(ctx, now)
	if err != nil || n != 3 {
		t.Fatalf("PurgeSessions = %d, %v; want 3 (expired before or at now)", n, err)
	}
	// Asked as of two days earlier, when all were live: only the 2 not expired at now are left.
	for i, h := range hashes {
		if _, ok, err := s.SessionExpiry(ctx, h, now.Add(-48*time.Hour)); err != nil || ok != (i >= 3) {
			t.Errorf("session %d after the purge: stored %v, %v; want %v", i, ok, err, i >= 3)
		}
	}
}
