package storetest

import (
	"context"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func testSettingsNewerEditWins(t *testing.T, o opener) {
	ctx := context.Background()
	s := o.open(t)
	setting := func(s store.Store) string {
		t.Helper()
		m, err := s.Settings(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m["max_retries"]
	}
	apply := func(s store.Store, v string, want bool) {
		t.Helper()
		applied, err := s.ApplyConfigSetting(ctx, "max_retries", v)
		if err != nil {
			t.Fatal(err)
		}
		if applied != want {
			t.Errorf("ApplyConfigSetting(%q) applied = %v, want %v", v, applied, want)
		}
	}

	apply(s, "A", true)
	if got := setting(s); got != "A" {
		t.Fatalf("after Caddyfile A: %q", got)
	}
	apply(s, "A", false) // a reload with the same Caddyfile
	if err := s.SetSetting(ctx, "max_retries", "B"); err != nil {
		t.Fatal(err)
	}
	if got := setting(s); got != "B" {
		t.Fatalf("after admin B: %q", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = o.open(t)
	apply(s, "A", false)
	if got := setting(s); got != "B" {
		t.Fatalf("restart with unchanged Caddyfile A: %q, want the admin's B", got)
	}
	apply(s, "C", true)
	if got := setting(s); got != "C" {
		t.Fatalf("after Caddyfile C: %q", got)
	}

	// A setting only ever edited in the panel is taken over by a first Caddyfile value.
	if err := s.SetSetting(ctx, "panel_only", "x"); err != nil {
		t.Fatal(err)
	}
	if applied, err := s.ApplyConfigSetting(ctx, "panel_only", "x"); err != nil || !applied {
		t.Errorf("first Caddyfile value of a panel setting: applied=%v err=%v", applied, err)
	}
	m, _ := s.Settings(ctx)
	if len(m) != 2 || m["panel_only"] != "x" {
		t.Errorf("settings = %v", m)
	}
}

func testSetSettingsIsAPanelEdit(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	if _, err := s.ApplyConfigSetting(ctx, "max_retries", "3"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSettings(ctx, map[string]string{"max_retries": "5", "timezone": "Europe/Berlin"}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Settings(ctx)
	if err != nil || all["max_retries"] != "5" || all["timezone"] != "Europe/Berlin" {
		t.Fatalf("settings = %v, %v", all, err)
	}
	// The same Caddyfile value again keeps the panel's edit; a new one wins.
	if applied, _ := s.ApplyConfigSetting(ctx, "max_retries", "3"); applied {
		t.Error("an unchanged Caddyfile value overrode the panel's edit")
	}
	if applied, _ := s.ApplyConfigSetting(ctx, "max_retries", "4"); !applied {
		t.Error("a changed Caddyfile value did not win")
	}
	if all, _ := s.Settings(ctx); all["max_retries"] != "4" {
		t.Errorf("max_retries = %q, want 4", all["max_retries"])
	}
}
