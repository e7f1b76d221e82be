package sqlite

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.db")
	ctx := context.Background()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const secret1, secret2 = "sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"

	id, err := s.AddAccessKey(ctx, secret1, "alice", "")
	if err != nil || id == 0 {
		t.Fatalf("AddAccessKey = %d, %v", id, err)
	}
	if _, err := s.AddAccessKey(ctx, " "+secret1+" ", "again", ""); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("duplicate AddAccessKey = %v, want ErrDuplicate", err)
	}
	if _, err := s.AddAccessKey(ctx, " ", "blank", ""); err == nil {
		t.Error("empty access key accepted")
	}
	added, _, err := s.EnsureAccessKeys(ctx, []string{secret1, "", secret2, secret2}, "caddyfile")
	if err != nil || added != 1 {
		t.Fatalf("EnsureAccessKeys = %d, %v; want 1", added, err)
	}
	s.LogRequest(store.RequestLog{Time: time.UnixMilli(1_700_000_000_123), AccessKeyID: id, Status: 200})
	s.Flush()

	list, err := s.AccessKeys(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("AccessKeys = %+v, %v", list, err)
	}
	if list[0].ID != id || list[0].Hash != store.HashSecret(secret1) || list[0].Label != "alice" || !list[0].Enabled {
		t.Errorf("first access key = %+v", list[0])
	}
	if !list[0].LastUsedAt.Equal(time.UnixMilli(1_700_000_000_123)) {
		t.Errorf("LastUsedAt = %v", list[0].LastUsedAt)
	}
	if list[1].Hash != store.HashSecret(secret2) || list[1].Label != "caddyfile" || !list[1].LastUsedAt.IsZero() {
		t.Errorf("second access key = %+v", list[1])
	}

	if err := s.SetAccessKeyEnabled(ctx, list[1].ID, false); err != nil {
		t.Fatal(err)
	}
	list, _ = s.AccessKeys(ctx)
	if list[1].Enabled {
		t.Error("access key still enabled")
	}
	if err := s.SetAccessKeyEnabled(ctx, 9999, true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetAccessKeyEnabled(missing) = %v", err)
	}
	if err := s.DeleteAccessKey(ctx, 9999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteAccessKey(missing) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// No file the database left behind holds a secret, while the hash is there.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	for _, secret := range []string{secret1, secret2} {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("secret %q found in the database files", secret)
		}
	}
	h := store.HashSecret(secret2)
	if !bytes.Contains(all, h[:]) {
		t.Error("hash not found in the database files; the scan proves nothing")
	}
}
