package sqlite

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
)

// TestAccessKeysAreStoredOnlyAsHashes: no file the database leaves behind holds an access key's
// secret, while its hash is there. (What the store answers about access keys is checked by
// storetest.)
func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	secrets := enginetest.StoreAccessKeys(t, s)

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
	for _, secret := range secrets {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("secret %q found in the database files", secret)
		}
	}
	h := store.HashSecret(secrets[1])
	if !bytes.Contains(all, h[:]) {
		t.Error("hash not found in the database files; the scan proves nothing")
	}
}
