package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// AddNewResources records unknown names and names whose row expired, and leaves a live
// owner (pool key, access key and expiry) alone, while AddResources replaces it.
func TestAddNewResourcesKeepsKnownOwners(t *testing.T) {
	ctx := context.Background()
	s, ids := storeWithKeys(t, "key-a", "key-b")
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
	want := map[string]store.Owner{"files/live": {a, 11}, "tunedModels/forever": {a, 0}, "files/expired": {b, 22}, "files/new": {b, 22}}
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
	if owners, err := s.ResourceOwners(ctx, []string{"files/live"}, now); err != nil || owners["files/live"] != (store.Owner{b, 22}) {
		t.Errorf("AddResources did not replace: %v, %v", owners, err)
	}
}
