package sqlite

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestUploadSessionsAndResources(t *testing.T) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, "key-a", "key-b")
	a, b := ids[0], ids[1]
	now := time.Now()

	// Upload sessions: found while live, gone once expired, cancelled or purged.
	if err := s.AddUploadSession(ctx, store.UploadSession{ID: "up1", KeyID: a, UpstreamURI: "/upload/v1beta/files?upload_id=up1",
		AccessKeyID: 7, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddUploadSession(ctx, store.UploadSession{ID: "old", KeyID: b, UpstreamURI: "/x", CreatedAt: now.Add(-2 * time.Hour),
		ExpiresAt: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	u, err := s.UploadSessionByID(ctx, "up1", now)
	if err != nil || u.KeyID != a || u.UpstreamURI != "/upload/v1beta/files?upload_id=up1" || u.AccessKeyID != 7 {
		t.Fatalf("session = %+v, %v", u, err)
	}
	if _, err := s.UploadSessionByID(ctx, "old", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired session: %v, want ErrNotFound", err)
	}
	if _, err := s.UploadSessionByID(ctx, "forged", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown session: %v, want ErrNotFound", err)
	}
	if n, err := s.PurgeUploadSessions(ctx, now); err != nil || n != 1 {
		t.Errorf("purged %d sessions, %v; want 1", n, err)
	}

	// Resources: owners of live names only; counts per key; purge of expired rows.
	err = s.AddResources(ctx,
		store.Resource{Name: "files/a1", KeyID: a, ExpiresAt: now.Add(48 * time.Hour)},
		store.Resource{Name: "files/a2", KeyID: a, ExpiresAt: now.Add(-time.Minute)},
		store.Resource{Name: "cachedContents/b1", KeyID: b, ExpiresAt: now.Add(time.Hour)},
		store.Resource{Name: "tunedModels/b2", KeyID: b},
	)
	if err != nil {
		t.Fatal(err)
	}
	owners, err := s.ResourceOwners(ctx, []string{"files/a1", "files/a2", "cachedContents/b1", "tunedModels/b2", "files/unknown"}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"files/a1": a, "cachedContents/b1": b, "tunedModels/b2": b}
	if len(owners) != len(want) {
		t.Errorf("owners = %v, want %v", owners, want)
	}
	for n, id := range want {
		if owners[n] != (store.Owner{KeyID: id}) {
			t.Errorf("owner of %s = %+v, want key %d and no access key", n, owners[n], id)
		}
	}
	counts, err := s.OwnedResourceCounts(ctx, now)
	if err != nil || counts[a] != 1 || counts[b] != 2 {
		t.Errorf("counts = %v, %v; want %d:1 %d:2", counts, err, a, b)
	}
	if n, err := s.PurgeResources(ctx, now); err != nil || n != 1 {
		t.Errorf("purged %d resources, %v; want 1", n, err)
	}
	if err := s.DeleteResource(ctx, "files/a1"); err != nil {
		t.Fatal(err)
	}
	// Deleting a key takes its resources and sessions with it.
	if err := s.DeleteKey(ctx, b); err != nil {
		t.Fatal(err)
	}
	counts, err = s.OwnedResourceCounts(ctx, now)
	if err != nil || len(counts) != 0 {
		t.Errorf("counts after deletes = %v, %v; want none", counts, err)
	}
}

// A lookup of more names than SQLite binds in one statement still answers (in chunks).
func TestResourceOwnersManyNames(t *testing.T) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, "key-a")
	var names []string
	for i := range 40000 {
		names = append(names, fmt.Sprintf("files/f%d", i))
	}
	if err := s.AddResources(ctx, store.Resource{Name: names[39999], KeyID: ids[0]}, store.Resource{Name: names[0], KeyID: ids[0]}); err != nil {
		t.Fatal(err)
	}
	owners, err := s.ResourceOwners(ctx, names, time.Now())
	if err != nil || len(owners) != 2 || owners[names[39999]].KeyID != ids[0] || owners[names[0]].KeyID != ids[0] {
		t.Fatalf("owners of 40000 names: %v, %v", owners, err)
	}
}

// storeWithKeys opens a store in a new file holding the given upstream keys, and returns it
// with their ids in the same order.
func storeWithKeys(t *testing.T, secrets ...string) (*Store, []int64) {
	t.Helper()
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "r.db"), nil, nil)
	if _, err := s.AddKeys(ctx, secrets); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != len(secrets) {
		t.Fatalf("keys %v, %v", keys, err)
	}
	ids := make([]int64, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return s, ids
}
