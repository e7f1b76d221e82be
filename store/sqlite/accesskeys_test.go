package sqlite

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// TestAccessKeysAreStoredOnlyAsHashes: no file the database leaves behind holds an access key's
// secret, while its hash is there. (What the store answers about access keys is checked by
// storetest.)
func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.db")
	ctx := context.Background()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const secret1, secret2 = "sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"
	if _, err := s.AddAccessKey(ctx, secret1, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if added, _, err := s.EnsureAccessKeys(ctx, []string{secret1, secret2}, "caddyfile"); err != nil || added != 1 {
		t.Fatalf("EnsureAccessKeys = %d, %v; want 1", added, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

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
