package storetest

import (
	"context"
	"errors"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// testTombstones: a deleted key or access key is skipped when the config adds it again, and
// survives reopening the file; an explicit AddKeys brings an upstream key back for good.
func testTombstones(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"key-a", "key-b"}); err != nil || added != 2 || skipped != 0 {
		t.Fatalf("AddConfigKeys = %d, %d, %v", added, skipped, err)
	}
	if added, skipped, err := s.EnsureAccessKeys(ctx, []string{"acc-a", "acc-b"}, "Caddyfile"); err != nil || added != 2 || skipped != 0 {
		t.Fatalf("EnsureAccessKeys = %d, %d, %v", added, skipped, err)
	}
	keys, _ := s.Keys(ctx)
	aks, _ := s.AccessKeys(ctx)
	if err := s.DeleteKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccessKey(ctx, aks[0].ID); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = o.open(t)
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"key-a", "key-b", "key-c"}); err != nil || added != 1 || skipped != 1 {
		t.Errorf("AddConfigKeys after a delete = %d added, %d skipped, %v; want 1, 1", added, skipped, err)
	}
	if added, skipped, err := s.EnsureAccessKeys(ctx, []string{"acc-a", "acc-b"}, "Caddyfile"); err != nil || added != 0 || skipped != 1 {
		t.Errorf("EnsureAccessKeys after a delete = %d added, %d skipped, %v; want 0, 1", added, skipped, err)
	}
	if aks, _ := s.AccessKeys(ctx); len(aks) != 1 || aks[0].Hash != store.HashSecret("acc-b") {
		t.Errorf("access keys %+v", aks)
	}
	if _, err := s.AddAccessKey(ctx, "acc-a", "panel", ""); err != nil {
		t.Fatalf("explicit AddAccessKey of a deleted key: %v", err)
	}
	if _, skipped, err := s.EnsureAccessKeys(ctx, []string{"acc-a", "acc-b"}, "Caddyfile"); err != nil || skipped != 0 {
		t.Errorf("the access key's tombstone outlived an explicit add: skipped %d, %v", skipped, err)
	}
	if added, err := s.AddKeys(ctx, []string{"key-a"}); err != nil || added != 1 {
		t.Fatalf("explicit AddKeys of a deleted key = %d, %v", added, err)
	}
	if _, skipped, err := s.AddConfigKeys(ctx, []string{"key-a"}); err != nil || skipped != 0 {
		t.Errorf("the tombstone outlived an explicit add: skipped %d, %v", skipped, err)
	}
	if keys, _ := s.Keys(ctx); len(keys) != 3 {
		t.Errorf("%d keys, want key-a, key-b and key-c", len(keys))
	}
}

// testTombstoneOfATrimmedSecret: a deletion is kept by the secret trimmed of white space, so
// the config's copy with spaces around it is skipped too, for both kinds; blank secrets are
// neither added nor counted as skipped.
func testTombstoneOfATrimmedSecret(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	if added, err := s.AddKeys(ctx, []string{"  key-a\t"}); err != nil || added != 1 {
		t.Fatalf("AddKeys = %d, %v", added, err)
	}
	if _, err := s.AddAccessKey(ctx, " acc-a ", "panel", ""); err != nil {
		t.Fatal(err)
	}
	keys, _ := s.Keys(ctx)
	aks, _ := s.AccessKeys(ctx)
	if err := s.DeleteKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccessKey(ctx, aks[0].ID); err != nil {
		t.Fatal(err)
	}
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"key-a ", " ", ""}); err != nil || added != 0 || skipped != 1 {
		t.Errorf("AddConfigKeys = %d added, %d skipped, %v; want 0, 1", added, skipped, err)
	}
	if added, skipped, err := s.EnsureAccessKeys(ctx, []string{"\nacc-a", "  "}, "Caddyfile"); err != nil || added != 0 || skipped != 1 {
		t.Errorf("EnsureAccessKeys = %d added, %d skipped, %v; want 0, 1", added, skipped, err)
	}
	if _, err := s.AddAccessKey(ctx, "acc-a", "panel", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddAccessKey(ctx, "acc-a ", "again", ""); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("second AddAccessKey = %v, want ErrDuplicate", err)
	}
	if added, skipped, err := s.EnsureAccessKeys(ctx, []string{"acc-a"}, "Caddyfile"); err != nil || added != 0 || skipped != 0 {
		t.Errorf("EnsureAccessKeys after an explicit add = %d added, %d skipped, %v; want 0, 0", added, skipped, err)
	}
}
