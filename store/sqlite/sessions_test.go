package sqlite

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"
)

func TestSessionsLifecycle(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
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
	if n := countRows(t, s, "sessions"); n != 0 {
		t.Errorf("%d sessions left", n)
	}
}
