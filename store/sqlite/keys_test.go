package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestAddKeysSkipsEmptyAndExisting(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()

	added, err := s.AddKeys(ctx, []string{" alpha ", "beta", "", "alpha", "  \t"})
	if err != nil || added != 2 {
		t.Fatalf("AddKeys = %d, %v; want 2", added, err)
	}
	added, err = s.AddKeys(ctx, []string{"beta", "gamma\n"})
	if err != nil || added != 1 {
		t.Fatalf("second AddKeys = %d, %v; want 1", added, err)
	}
	keys, err := s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, k := range keys {
		secrets = append(secrets, k.Secret)
		if k.Status != store.StatusActive || k.CreatedAt.IsZero() || !k.LastUsedAt.IsZero() || k.Failures != 0 {
			t.Errorf("new key %+v", k)
		}
	}
	if !slices.Equal(secrets, []string{"alpha", "beta", "gamma"}) {
		t.Errorf("secrets = %q", secrets)
	}
	if !slices.IsSortedFunc(keys, func(a, b store.Key) int { return int(a.ID - b.ID) }) {
		t.Error("keys not ordered by id")
	}
}

func TestDeleteKeyAndSetKeyStatus(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	if _, err := s.AddKeys(ctx, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	keys, _ := s.Keys(ctx)
	a, b := keys[0].ID, keys[1].ID
	now := time.Now()
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "m", Until: now.Add(time.Hour)})
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "m", Until: now.Add(time.Hour)})
	s.SaveKeyState(store.KeyState{KeyID: b, Failures: 4, LastError: "429"})
	s.Flush()

	// Disabling by hand.
	if err := s.SetKeyStatus(ctx, b, store.StatusDisabled, "leaked", true); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.Keys(ctx)
	if k := keys[1]; k.Status != store.StatusDisabled || k.DisabledReason != "leaked" || !k.ManualDisabled || k.Failures != 4 {
		t.Errorf("after disable: %+v", k)
	}
	// Enabling resets the manual flag, reason, failures and cooldowns.
	if err := s.SetKeyStatus(ctx, b, store.StatusActive, "", false); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.Keys(ctx)
	if k := keys[1]; k.Status != store.StatusActive || k.DisabledReason != "" || k.ManualDisabled || k.Failures != 0 {
		t.Errorf("after enable: %+v", k)
	}
	cds, _ := s.Cooldowns(ctx, now)
	if len(cds) != 1 || cds[0].KeyID != a {
		t.Errorf("cooldowns after enabling b = %+v, want only a's", cds)
	}

	if err := s.SetKeyStatus(ctx, a, "paused", "", false); err == nil {
		t.Error("invalid status accepted")
	}
	if err := s.SetKeyStatus(ctx, 9999, store.StatusDisabled, "", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetKeyStatus(missing) = %v, want ErrNotFound", err)
	}

	// Deleting cascades to cooldowns.
	if err := s.DeleteKey(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, a); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteKey = %v, want ErrNotFound", err)
	}
	cds, _ = s.Cooldowns(ctx, now)
	if len(cds) != 0 {
		t.Errorf("cooldowns of a deleted key remain: %+v", cds)
	}
}

func TestReviveKeyLeavesHandDisabledKeysAlone(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	if _, err := s.AddKeys(ctx, []string{"AIzaSyREVIVE-key-a-aaaaaaaaaaaaaaaaaaaaa", "AIzaSyREVIVE-key-b-bbbbbbbbbbbbbbbbbbbbb"}); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys: %v, %v", keys, err)
	}
	auto, manual := keys[0].ID, keys[1].ID
	if err := s.SetKeyStatus(ctx, auto, store.StatusDisabled, "5 failures in a row", false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyStatus(ctx, manual, store.StatusDisabled, "disabled by the operator", true); err != nil {
		t.Fatal(err)
	}
	s.SaveCooldown(store.Cooldown{KeyID: auto, Model: "m", Until: time.Now().Add(time.Hour)})
	s.Flush()

	if ok, err := s.ReviveKey(ctx, auto); err != nil || !ok {
		t.Fatalf("ReviveKey(auto-disabled) = %v, %v; want true", ok, err)
	}
	if ok, err := s.ReviveKey(ctx, manual); err != nil || ok {
		t.Fatalf("ReviveKey(hand-disabled) = %v, %v; want false", ok, err)
	}
	if ok, err := s.ReviveKey(ctx, 9999); err != nil || ok {
		t.Fatalf("ReviveKey(missing) = %v, %v; want false, no error", ok, err)
	}
	keys, _ = s.Keys(ctx)
	for _, k := range keys {
		switch k.ID {
		case auto:
			if k.Status != store.StatusActive || k.DisabledReason != "" {
				t.Errorf("auto-disabled key after revive: %+v", k)
			}
		case manual:
			if k.Status != store.StatusDisabled || !k.ManualDisabled || k.DisabledReason != "disabled by the operator" {
				t.Errorf("hand-disabled key changed: %+v", k)
			}
		}
	}
	if cds, _ := s.Cooldowns(ctx, time.Now()); len(cds) != 0 {
		t.Errorf("revived key keeps cooldowns: %+v", cds)
	}
}
