package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func testAddKeysSkipsEmptyAndExisting(t *testing.T, o opener) {
	s := o.open(t)
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

func testDeleteKeyAndSetKeyStatus(t *testing.T, o opener) {
	s := o.open(t)
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

func testReviveKeyLeavesHandDisabledKeysAlone(t *testing.T, o opener) {
	s := o.open(t)
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

func testAddLabeledKeys(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()

	res, err := s.AddLabeledKeys(ctx, []store.NewKey{
		{Secret: " alpha ", Project: " proj-a "},
		{Secret: "beta"},
		{Secret: "gamma", Project: "proj-g"},
		{Secret: "  "},
	})
	if err != nil || res.Added != 3 {
		t.Fatalf("AddLabeledKeys = %+v, %v; want 3 added", res, err)
	}
	if len(res.Relabeled) != 0 {
		t.Errorf("new keys reported as relabeled: %+v", res.Relabeled)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "", "gamma": "proj-g"})

	// Pasting keys again: a label given sets it, none leaves the old one, the same one is no
	// change; nothing is added twice.
	res, err = s.AddLabeledKeys(ctx, []store.NewKey{
		{Secret: "alpha"},                    // keeps proj-a
		{Secret: "beta", Project: "proj-b"},  // labelled now
		{Secret: "gamma", Project: "proj-g"}, // unchanged
		{Secret: "delta", Project: "proj-b"}, // new
	})
	if err != nil || res.Added != 1 {
		t.Fatalf("second AddLabeledKeys = %+v, %v; want 1 added", res, err)
	}
	keys, _ := s.Keys(ctx)
	if want := []store.KeyProject{{KeyID: keys[1].ID, Project: "proj-b"}}; !slices.Equal(res.Relabeled, want) {
		t.Errorf("Relabeled = %+v, want %+v", res.Relabeled, want)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-b"})

	// One bad label: nothing is written.
	_, err = s.AddLabeledKeys(ctx, []store.NewKey{{Secret: "epsilon", Project: "ok"}, {Secret: "alpha", Project: "bad label"}})
	if !errors.Is(err, store.ErrProjectChars) {
		t.Fatalf("bad label: err = %v, want ErrProjectChars", err)
	}
	sameProjects(t, projects(t, s), map[string]string{"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-b"})

	// An operator's add clears a tombstone; the config's add skips it. AddKeys still works.
	if err := s.DeleteKey(ctx, keys[3].ID); err != nil {
		t.Fatal(err)
	}
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"delta", "zeta"}); err != nil || added != 1 || skipped != 1 {
		t.Fatalf("AddConfigKeys = %d, %d, %v; want 1 added, 1 skipped", added, skipped, err)
	}
	res, err = s.AddLabeledKeys(ctx, []store.NewKey{{Secret: "delta", Project: "proj-d"}})
	if err != nil || res.Added != 1 {
		t.Fatalf("re-adding a deleted key = %+v, %v", res, err)
	}
	if added, skipped, err := s.AddConfigKeys(ctx, []string{"delta"}); err != nil || added != 0 || skipped != 0 {
		t.Errorf("AddConfigKeys after the operator's add = %d, %d, %v; want the tombstone gone", added, skipped, err)
	}
	if added, err := s.AddKeys(ctx, []string{"eta", "alpha"}); err != nil || added != 1 {
		t.Fatalf("AddKeys = %d, %v; want 1", added, err)
	}
	sameProjects(t, projects(t, s), map[string]string{
		"alpha": "proj-a", "beta": "proj-b", "gamma": "proj-g", "delta": "proj-d", "zeta": "", "eta": "",
	})
}

func testSetKeysProject(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b", "c")
	a, b, c := keys[0].ID, keys[1].ID, keys[2].ID

	n, err := s.SetKeysProject(ctx, []int64{a, b, 9999}, " shared ")
	if err != nil || n != 2 {
		t.Fatalf("SetKeysProject = %d, %v; want 2 changed", n, err)
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "shared", "c": ""})

	n, err = s.SetKeysProject(ctx, []int64{a, b, c}, "shared")
	if err != nil || n != 1 {
		t.Errorf("SetKeysProject with two already labelled = %d, %v; want 1", n, err)
	}

	for _, bad := range []string{"two words", strings.Repeat("x", 65), "a/b"} {
		if _, err := s.SetKeysProject(ctx, []int64{a}, bad); err == nil {
			t.Errorf("SetKeysProject(%q) accepted", bad)
		}
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "shared", "c": "shared"})

	n, err = s.SetKeysProject(ctx, []int64{b}, "")
	if err != nil || n != 1 {
		t.Fatalf("clearing = %d, %v", n, err)
	}
	sameProjects(t, projects(t, s), map[string]string{"a": "shared", "b": "", "c": "shared"})
	if n, err := s.SetKeysProject(ctx, nil, "x"); err != nil || n != 0 {
		t.Errorf("SetKeysProject(no ids) = %d, %v", n, err)
	}
}

// testSaveKeyProjectFillsOnlyEmptyLabels: the gateway's learned labels are written by the
// background writer, newest first, never over an operator's label, and survive a restart.
func testSaveKeyProjectFillsOnlyEmptyLabels(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	keys := addKeys(t, s, "operator", "learned", "cleared")
	op, learned, cleared := keys[0].ID, keys[1].ID, keys[2].ID
	if _, err := s.SetKeysProject(ctx, []int64{op}, "by-hand"); err != nil {
		t.Fatal(err)
	}

	s.SaveKeyProject(op, "guess")
	s.SaveKeyProject(learned, "first-guess")
	s.SaveKeyProject(learned, " projects-578829824020 ") // newest wins, trimmed
	s.SaveKeyProject(cleared, "bad label")               // ignored
	s.SaveKeyProject(9999, "gone")                       // a deleted key fails nothing
	s.LogRequest(store.RequestLog{Status: 200})
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": ""})
	if n := countRequests(t, s); n != 1 {
		t.Errorf("the batch with labels lost its log row: %d rows", n)
	}

	// Once labelled, a later guess changes nothing either.
	s.SaveKeyProject(learned, "another")
	s.Flush()
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": ""})

	// Written at close, and kept.
	s.SaveKeyProject(cleared, "late")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = o.open(t)
	sameProjects(t, projects(t, s), map[string]string{"operator": "by-hand", "learned": "projects-578829824020", "cleared": "late"})
}

func testCooldownsPersist(t *testing.T, o opener) {
	s := o.open(t)
	keys := addKeys(t, s, "a", "b")
	a, b := keys[0].ID, keys[1].ID
	now := time.UnixMilli(time.Now().UnixMilli())
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "gemini-2.5-pro", Until: now.Add(time.Hour)})
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "gemini-2.5-flash", Until: now.Add(-time.Minute)}) // over
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "gemini-2.5-pro", Until: now.Add(time.Minute)})
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "gemini-2.5-pro", Until: now.Add(2 * time.Hour)}) // newer wins
	s.SaveCooldown(store.Cooldown{KeyID: 9999, Model: "gemini-2.5-pro", Until: now.Add(time.Hour)})  // deleted key
	s.LogRequest(store.RequestLog{Time: now, KeyID: a, Status: 200})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = o.open(t)
	cds, err := s.Cooldowns(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Cooldown{
		{KeyID: a, Model: "gemini-2.5-pro", Until: now.Add(time.Hour)},
		{KeyID: b, Model: "gemini-2.5-pro", Until: now.Add(2 * time.Hour)},
	}
	if len(cds) != len(want) {
		t.Fatalf("cooldowns = %+v, want %+v", cds, want)
	}
	for i := range want {
		if cds[i].KeyID != want[i].KeyID || cds[i].Model != want[i].Model || !cds[i].Until.Equal(want[i].Until) {
			t.Errorf("cooldown %d = %+v, want %+v", i, cds[i], want[i])
		}
	}
	if n := countRequests(t, s); n != 1 {
		t.Errorf("the batch with a deleted key's cooldown lost its log row: %d rows", n)
	}
}

func testPurgeCooldownsDropsOnlyThoseOver(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	if _, err := s.AddKeys(ctx, []string{"AIzaSyPURGE-key-a-aaaaaaaaaaaaaaaaaaaaaa", "AIzaSyPURGE-key-b-bbbbbbbbbbbbbbbbbbbbbb"}); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys: %v, %v", keys, err)
	}
	a, b := keys[0].ID, keys[1].ID
	now := time.UnixMilli(1_750_000_000_000)
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "m1", Until: now.Add(-time.Hour)})
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "m2", Until: now})
	s.SaveCooldown(store.Cooldown{KeyID: a, Model: "m3", Until: now.Add(time.Millisecond)})
	s.SaveCooldown(store.Cooldown{KeyID: b, Model: "m1", Until: now.Add(time.Hour)})
	s.Flush()
	n, err := s.PurgeCooldowns(ctx, now)
	if err != nil || n != 2 {
		t.Fatalf("PurgeCooldowns = %d, %v; want 2 (over before or at now)", n, err)
	}
	left, err := s.Cooldowns(ctx, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, c := range left {
		got[fmt.Sprintf("%d/%s", c.KeyID, c.Model)] = true
	}
	if len(got) != 2 || !got[fmt.Sprintf("%d/m3", a)] || !got[fmt.Sprintf("%d/m1", b)] {
		t.Errorf("cooldowns left: %v; want only %d/m3 and %d/m1", got, a, b)
	}
}

// projects returns the label of every key by secret.
func projects(t testing.TB, s store.Store) map[string]string {
	t.Helper()
	keys, err := s.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k.Secret] = k.Project
	}
	return out
}

func sameProjects(t testing.TB, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("labels = %v, want %v", got, want)
		return
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("labels = %v, want %v", got, want)
			return
		}
	}
}
