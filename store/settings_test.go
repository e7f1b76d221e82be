package store

import (
	"context"
	"path/filepath"
	"testing"
)

func TestSettingsNewerEditWins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	ctx := context.Background()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	setting := func(s *Store) string {
		t.Helper()
		m, err := s.Settings(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m["max_retries"]
	}
	apply := func(s *Store, v string, want bool) {
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

	s = openTest(t, path, nil, nil)
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
