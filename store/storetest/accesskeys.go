package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// accessKeyBySecret returns the stored access key of secret, failing the test if there is none.
func accessKeyBySecret(t *testing.T, s store.Store, secret string) store.AccessKey {
	t.Helper()
	list, err := s.AccessKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range list {
		if k.Hash == store.HashSecret(secret) {
			return k
		}
	}
	t.Fatalf("access key %q not stored (have %+v)", secret, list)
	return store.AccessKey{}
}

// wantAccessKey fails the test unless secret's access key has label and policy.
func wantAccessKey(t *testing.T, s store.Store, secret, label, policy string) {
	t.Helper()
	k := accessKeyBySecret(t, s, secret)
	if k.Label != label || k.Policy != policy {
		t.Errorf("access key %q: label %q policy %q; want %q and %q", secret, k.Label, k.Policy, label, policy)
	}
}

func ptr(s string) *string { return &s }

func testAccessKeyPolicyAndPanelEdits(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	const p1, p2 = `{"rpm":60}`, `{"models":["gemini-2.5-*"],"token_budget":{"limit":1000,"period":"daily"}}`
	id, err := s.AddAccessKey(ctx, "sk-one", "alice", p1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.AddAccessKey(ctx, "sk-two", "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	wantAccessKey(t, s, "sk-one", "alice", p1)
	wantAccessKey(t, s, "sk-two", "bob", "")

	steps := []struct {
		u             store.AccessKeyUpdate
		label, policy string
	}{
		{store.AccessKeyUpdate{Policy: ptr(p2)}, "alice", p2},
		{store.AccessKeyUpdate{Label: ptr("alice (team)")}, "alice (team)", p2},
		{store.AccessKeyUpdate{}, "alice (team)", p2},
		{store.AccessKeyUpdate{Label: ptr(""), Policy: ptr("")}, "", ""},
		{store.AccessKeyUpdate{Label: ptr("al"), Policy: ptr(p1)}, "al", p1},
	}
	for _, st := range steps {
		if err := s.UpdateAccessKey(ctx, id, st.u); err != nil {
			t.Fatalf("UpdateAccessKey(%+v) = %v", st.u, err)
		}
		wantAccessKey(t, s, "sk-one", st.label, st.policy)
	}
	wantAccessKey(t, s, "sk-two", "bob", "") // the other key is untouched

	for _, u := range []store.AccessKeyUpdate{{}, {Label: ptr("x")}, {Policy: ptr(p1)}} {
		if err := s.UpdateAccessKey(ctx, other+100, u); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UpdateAccessKey(unknown id, %+v) = %v, want ErrNotFound", u, err)
		}
	}
	if err := s.DeleteAccessKey(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateAccessKey(ctx, other, store.AccessKeyUpdate{Label: ptr("x")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateAccessKey(deleted) = %v, want ErrNotFound", err)
	}

	// The policy survives a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = o.open(t)
	wantAccessKey(t, s, "sk-one", "al", p1)
}

// testApplyConfigAccessKeysNewerEditWins walks the life of a Caddyfile access_key entry: added
// from the config, edited in the panel, the same config loaded again (the edit stays), the
// config changed (the change wins, field by field), and deleted in the panel (it stays deleted).
func testApplyConfigAccessKeysNewerEditWins(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	const pA, pB, pC = `{"rpm":10}`, `{"rpm":20}`, `{"rpd":5}`
	apply := func(wantAdded, wantSkipped int, keys ...store.ConfigAccessKey) {
		t.Helper()
		added, skipped, err := s.ApplyConfigAccessKeys(ctx, keys)
		if err != nil || added != wantAdded || skipped != wantSkipped {
			t.Fatalf("ApplyConfigAccessKeys = %d added, %d skipped, %v; want %d, %d", added, skipped, err, wantAdded, wantSkipped)
		}
	}
	config := []store.ConfigAccessKey{{Secret: " sk-a\t", Label: "team-a", Policy: pA}, {Secret: "sk-b", Label: "team-b", Policy: ""}, {Secret: "  ", Label: "blank", Policy: pA}}
	apply(2, 0, config...)
	wantAccessKey(t, s, "sk-a", "team-a", pA)
	wantAccessKey(t, s, "sk-b", "team-b", "")

	a := accessKeyBySecret(t, s, "sk-a")
	if err := s.UpdateAccessKey(ctx, a.ID, store.AccessKeyUpdate{Label: ptr("panel-a"), Policy: ptr(pB)}); err != nil {
		t.Fatal(err)
	}
	// A reload (or restart) with the same Caddyfile keeps the panel's edit.
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "panel-a", pB)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = o.open(t)
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "panel-a", pB)

	// The Caddyfile's policy changes: it wins; its label did not change, so the panel's stays.
	config[0].Policy = pC
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "panel-a", pC)
	// Then its label changes: that wins too, and the policy stays.
	config[0].Label = "team-a2"
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "team-a2", pC)
	// Removing the policy from the Caddyfile is a change as well.
	config[0].Policy = ""
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "team-a2", "")
	// An edit in the panel after that is kept again.
	if err := s.UpdateAccessKey(ctx, a.ID, store.AccessKeyUpdate{Policy: ptr(pA)}); err != nil {
		t.Fatal(err)
	}
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-a", "team-a2", pA)
	if got := accessKeyBySecret(t, s, "sk-a"); got.ID != a.ID || got.CreatedAt != a.CreatedAt {
		t.Errorf("the key was replaced, not updated: %+v, was %+v", got, a)
	}

	// Keys stored by the panel or the plain access_keys list never had a config value: the
	// entry's label and policy apply.
	if _, err := s.AddAccessKey(ctx, "sk-c", "panel-c", pB); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnsureAccessKeys(ctx, []string{"sk-d"}, "Caddyfile"); err != nil {
		t.Fatal(err)
	}
	config = append(config, store.ConfigAccessKey{Secret: "sk-c", Label: "config-c", Policy: pC}, store.ConfigAccessKey{Secret: "sk-d", Label: "config-d", Policy: pA})
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-c", "config-c", pC)
	wantAccessKey(t, s, "sk-d", "config-d", pA)
	// The plain list does not touch them afterwards.
	if added, _, err := s.EnsureAccessKeys(ctx, []string{"sk-c", "sk-d"}, "Caddyfile"); err != nil || added != 0 {
		t.Fatalf("EnsureAccessKeys = %d, %v", added, err)
	}
	wantAccessKey(t, s, "sk-d", "config-d", pA)

	// A secret listed twice ends with its later entry.
	apply(1, 0, store.ConfigAccessKey{Secret: "sk-e", Label: "first", Policy: pA}, store.ConfigAccessKey{Secret: "sk-e", Label: "second", Policy: pB})
	wantAccessKey(t, s, "sk-e", "second", pB)

	// Deleted in the panel: skipped, with or without other changes, also after a restart.
	b := accessKeyBySecret(t, s, "sk-b")
	if err := s.DeleteAccessKey(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	apply(0, 1, config...)
	config[1].Policy = pA
	apply(0, 1, config...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = o.open(t)
	apply(0, 1, config...)
	if list, _ := s.AccessKeys(ctx); len(list) != 4 {
		t.Errorf("access keys %+v; want sk-a, sk-c, sk-d and sk-e", list)
	}
	// An explicit add brings it back; the config then applies again as to any key it never set.
	if _, err := s.AddAccessKey(ctx, "sk-b", "panel-b", ""); err != nil {
		t.Fatal(err)
	}
	apply(0, 0, config...)
	wantAccessKey(t, s, "sk-b", "team-b", pA)
	if aks, _ := s.AccessKeys(ctx); len(aks) != 5 {
		t.Errorf("%d access keys, want 5", len(aks))
	}
}

// testAccessKeyIDsAreNotReused: a key added after the one with the highest id was deleted gets
// a new id, so it inherits neither the deleted key's resources nor its usage.
func testAccessKeyIDsAreNotReused(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	first, err := s.AddAccessKey(ctx, "sk-1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	last, err := s.AddAccessKey(ctx, "sk-2", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccessKey(ctx, last); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = o.open(t)
	next, err := s.AddAccessKey(ctx, "sk-3", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if added, _, err := s.ApplyConfigAccessKeys(ctx, []store.ConfigAccessKey{{Secret: "sk-4", Label: "c", Policy: ""}}); err != nil || added != 1 {
		t.Fatalf("ApplyConfigAccessKeys = %d, %v", added, err)
	}
	fromConfig := accessKeyBySecret(t, s, "sk-4").ID
	if !(first < last && last < next && next < fromConfig) {
		t.Errorf("ids %d, %d (deleted), then %d and %d: an id was reused", first, last, next, fromConfig)
	}
}

// testAccessKeys: access keys are added by hand (once: ErrDuplicate after trimming) or from the
// config, stored by hash, listed in id order with the time of their last request, enabled and
// disabled; unknown ids are ErrNotFound.
func testAccessKeys(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
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
}
