package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func testUploadSessionsAndResources(t *testing.T, o opener) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, o, "key-a", "key-b")
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

// A lookup of more names than a database binds in one statement still answers (in chunks).
func testResourceOwnersManyNames(t *testing.T, o opener) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, o, "key-a")
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

// AddNewResources records unknown names and names whose row expired, and leaves a live
// owner (pool key, access key and expiry) alone, while AddResources replaces it.
func testAddNewResourcesKeepsKnownOwners(t *testing.T, o opener) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, o, "key-a", "key-b")
	a, b := ids[0], ids[1]
	now := time.Now()
	live, forever := now.Add(time.Hour), time.Time{}
	if err := s.AddResources(ctx,
		store.Resource{Name: "files/live", KeyID: a, AccessKeyID: 11, ExpiresAt: live},
		store.Resource{Name: "tunedModels/forever", KeyID: a, ExpiresAt: forever},
		store.Resource{Name: "files/expired", KeyID: a, AccessKeyID: 11, CreatedAt: now.Add(-3 * time.Hour), ExpiresAt: now.Add(-time.Hour)},
	); err != nil {
		t.Fatal(err)
	}
	later := now.Add(48 * time.Hour)
	if err := s.AddNewResources(ctx, now,
		store.Resource{Name: "files/live", KeyID: b, AccessKeyID: 22, ExpiresAt: later},
		store.Resource{Name: "tunedModels/forever", KeyID: b, AccessKeyID: 22, ExpiresAt: later},
		store.Resource{Name: "files/expired", KeyID: b, AccessKeyID: 22, CreatedAt: now, ExpiresAt: later},
		store.Resource{Name: "files/new", KeyID: b, AccessKeyID: 22, ExpiresAt: later},
	); err != nil {
		t.Fatal(err)
	}
	names := []string{"files/live", "tunedModels/forever", "files/expired", "files/new"}
	owners, err := s.ResourceOwners(ctx, names, now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]store.Owner{"files/live": {KeyID: a, AccessKeyID: 11}, "tunedModels/forever": {KeyID: a, AccessKeyID: 0}, "files/expired": {KeyID: b, AccessKeyID: 22}, "files/new": {KeyID: b, AccessKeyID: 22}}
	for _, n := range names {
		if owners[n] != want[n] {
			t.Errorf("%s owned by %+v, want %+v", n, owners[n], want[n])
		}
	}
	// The live row kept its expiry: gone after it, not after the rejected one.
	if owners, err := s.ResourceOwners(ctx, []string{"files/live"}, live.Add(time.Minute)); err != nil || len(owners) != 0 {
		t.Errorf("files/live after its own expiry: %v, %v", owners, err)
	}
	if err := s.AddNewResources(ctx, now); err != nil {
		t.Errorf("no resources: %v", err)
	}
	// AddResources still replaces.
	if err := s.AddResources(ctx, store.Resource{Name: "files/live", KeyID: b, AccessKeyID: 22, ExpiresAt: later}); err != nil {
		t.Fatal(err)
	}
	if owners, err := s.ResourceOwners(ctx, []string{"files/live"}, now); err != nil || owners["files/live"] != (store.Owner{KeyID: b, AccessKeyID: 22}) {
		t.Errorf("AddResources did not replace: %v, %v", owners, err)
	}
}
