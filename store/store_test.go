package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
)

// openTest opens a store at path with default options adjusted by opt, closed at test end.
func openTest(t testing.TB, path string, logger *zap.Logger, opt func(*options)) *Store {
	t.Helper()
	o := defaultOptions()
	if opt != nil {
		opt(&o)
	}
	s, err := open(path, logger, o)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rawDB opens the file with plain database/sql, bypassing the store.
func rawDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	dsn, err := dsnFor(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func userVersion(t testing.TB, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenCreatesPrivateFilesInWALMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "gemini")
	path := filepath.Join(dir, "data.db")
	s := openTest(t, path, nil, nil)

	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("directory not created: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o700 {
		t.Errorf("directory mode = %o, want 700", got)
	}
	st, err = os.Stat(path)
	if err != nil {
		t.Fatalf("database not created: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("database mode = %o, want 600", got)
	}

	ctx := context.Background()
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Errorf("journal_mode = %q, want wal", mode)
	}
	var fk, busy, sync int
	if err := s.db.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&busy); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil {
		t.Fatal(err)
	}
	if fk != 1 || busy != 5000 || sync != 1 {
		t.Errorf("foreign_keys=%d busy_timeout=%d synchronous=%d, want 1 5000 1 (NORMAL)", fk, busy, sync)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}

	// The WAL file SQLite creates next to the database inherits the private mode.
	if _, err := s.AddKeys(ctx, []string{"k"}); err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(path + "-wal")
	if err != nil {
		t.Fatalf("no WAL file: %v", err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("WAL file mode = %o, want 600", got)
	}
}

func TestOpenAgainKeepsDataAndSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	ctx := context.Background()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddKeys(ctx, []string{"key-1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s = openTest(t, path, nil, nil)
	keys, err := s.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Secret != "key-1" {
		t.Fatalf("keys after reopen = %+v", keys)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}
}

// TestMigrateFromOlderVersion builds a version-1 database by hand, then migrates it with the
// real steps plus a later one, as a future release would.
func TestMigrateFromOlderVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	ctx := context.Background()
	db := rawDB(t, path)
	if _, err := db.Exec(migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 1; INSERT INTO keys (secret, created_at) VALUES ('old-key', 1)`); err != nil {
		t.Fatal(err)
	}

	steps := slices.Clone(migrations)
	steps = append(steps, `ALTER TABLE keys ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'`)
	if err := migrate(ctx, db, steps); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if v := userVersion(t, db); v != len(steps) {
		t.Fatalf("user_version = %d, want %d", v, len(steps))
	}
	var note string
	if err := db.QueryRow(`SELECT note FROM keys WHERE secret = 'old-key'`).Scan(&note); err != nil {
		t.Fatal(err)
	}
	if note != "migrated" {
		t.Errorf("note = %q", note)
	}
	// Running again applies nothing (the ALTER would fail if it ran twice).
	if err := migrate(ctx, db, steps); err != nil {
		t.Fatalf("second migrate: %v", err)
	}

	// A failing step is rolled back as a whole and leaves the version alone.
	bad := append(slices.Clone(steps), `CREATE TABLE half_done (x); SELECT no_such_function()`)
	if err := migrate(ctx, db, bad); err == nil {
		t.Fatal("failing step: no error")
	}
	if v := userVersion(t, db); v != len(steps) {
		t.Errorf("user_version after failed step = %d, want %d", v, len(steps))
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("table of the failed step exists")
	}
}

func TestOpenMigratesFreshAndVersionOneFiles(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	// An empty file someone created beforehand.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, empty, nil, nil)
	if _, err := s.Keys(ctx); err != nil {
		t.Fatal(err)
	}

	// A database at version 1 written by hand.
	v1 := filepath.Join(dir, "v1.db")
	db := rawDB(t, v1)
	if _, err := db.Exec(migrations[0] + `; PRAGMA user_version = 1; INSERT INTO keys (secret, created_at) VALUES ('k', 1)`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s = openTest(t, v1, nil, nil)
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys = %+v, %v", keys, err)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	db := rawDB(t, path)
	if _, err := db.Exec(`PRAGMA user_version = 999`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s, err := Open(path, nil)
	if err == nil {
		_ = s.Close()
		t.Fatal("opened a database from a newer version")
	}
}

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
		if k.Status != StatusActive || k.CreatedAt.IsZero() || !k.LastUsedAt.IsZero() || k.Failures != 0 {
			t.Errorf("new key %+v", k)
		}
	}
	if !slices.Equal(secrets, []string{"alpha", "beta", "gamma"}) {
		t.Errorf("secrets = %q", secrets)
	}
	if !slices.IsSortedFunc(keys, func(a, b Key) int { return int(a.ID - b.ID) }) {
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
	s.SaveCooldown(Cooldown{KeyID: a, Model: "m", Until: now.Add(time.Hour)})
	s.SaveCooldown(Cooldown{KeyID: b, Model: "m", Until: now.Add(time.Hour)})
	s.SaveKeyState(KeyState{KeyID: b, Failures: 4, LastError: "429"})
	s.Flush()

	// Disabling by hand.
	if err := s.SetKeyStatus(ctx, b, StatusDisabled, "leaked", true); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.Keys(ctx)
	if k := keys[1]; k.Status != StatusDisabled || k.DisabledReason != "leaked" || !k.ManualDisabled || k.Failures != 4 {
		t.Errorf("after disable: %+v", k)
	}
	// Enabling resets the manual flag, reason, failures and cooldowns.
	if err := s.SetKeyStatus(ctx, b, StatusActive, "", false); err != nil {
		t.Fatal(err)
	}
	keys, _ = s.Keys(ctx)
	if k := keys[1]; k.Status != StatusActive || k.DisabledReason != "" || k.ManualDisabled || k.Failures != 0 {
		t.Errorf("after enable: %+v", k)
	}
	cds, _ := s.Cooldowns(ctx, now)
	if len(cds) != 1 || cds[0].KeyID != a {
		t.Errorf("cooldowns after enabling b = %+v, want only a's", cds)
	}

	if err := s.SetKeyStatus(ctx, a, "paused", "", false); err == nil {
		t.Error("invalid status accepted")
	}
	if err := s.SetKeyStatus(ctx, 9999, StatusDisabled, "", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetKeyStatus(missing) = %v, want ErrNotFound", err)
	}

	// Deleting cascades to cooldowns.
	if err := s.DeleteKey(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteKey = %v, want ErrNotFound", err)
	}
	cds, _ = s.Cooldowns(ctx, now)
	if len(cds) != 0 {
		t.Errorf("cooldowns of a deleted key remain: %+v", cds)
	}
}

func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.db")
	ctx := context.Background()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const secret1, secret2 = "sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"

	id, err := s.AddAccessKey(ctx, secret1, "alice")
	if err != nil || id == 0 {
		t.Fatalf("AddAccessKey = %d, %v", id, err)
	}
	if _, err := s.AddAccessKey(ctx, " "+secret1+" ", "again"); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate AddAccessKey = %v, want ErrDuplicate", err)
	}
	if _, err := s.AddAccessKey(ctx, " ", "blank"); err == nil {
		t.Error("empty access key accepted")
	}
	added, _, err := s.EnsureAccessKeys(ctx, []string{secret1, "", secret2, secret2}, "caddyfile")
	if err != nil || added != 1 {
		t.Fatalf("EnsureAccessKeys = %d, %v; want 1", added, err)
	}
	s.LogRequest(RequestLog{Time: time.UnixMilli(1_700_000_000_123), AccessKeyID: id, Status: 200})
	s.Flush()

	list, err := s.AccessKeys(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("AccessKeys = %+v, %v", list, err)
	}
	if list[0].ID != id || list[0].Hash != HashSecret(secret1) || list[0].Label != "alice" || !list[0].Enabled {
		t.Errorf("first access key = %+v", list[0])
	}
	if !list[0].LastUsedAt.Equal(time.UnixMilli(1_700_000_000_123)) {
		t.Errorf("LastUsedAt = %v", list[0].LastUsedAt)
	}
	if list[1].Hash != HashSecret(secret2) || list[1].Label != "caddyfile" || !list[1].LastUsedAt.IsZero() {
		t.Errorf("second access key = %+v", list[1])
	}

	if err := s.SetAccessKeyEnabled(ctx, list[1].ID, false); err != nil {
		t.Fatal(err)
	}
	list, _ = s.AccessKeys(ctx)
	if list[1].Enabled {
		t.Error("access key still enabled")
	}
	if err := s.SetAccessKeyEnabled(ctx, 9999, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetAccessKeyEnabled(missing) = %v", err)
	}
	if err := s.DeleteAccessKey(ctx, 9999); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteAccessKey(missing) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// No file the database left behind holds a secret, while the hash is there.
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
	for _, secret := range []string{secret1, secret2} {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("secret %q found in the database files", secret)
		}
	}
	h := HashSecret(secret2)
	if !bytes.Contains(all, h[:]) {
		t.Error("hash not found in the database files; the scan proves nothing")
	}
}

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

func TestRecentLogsFilterAndOrder(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	for i := range 10 {
		model := "gemini-2.5-flash"
		if i%2 == 1 {
			model = "gemini-2.5-pro"
		}
		s.LogRequest(RequestLog{Time: t0.Add(time.Duration(i) * time.Second), KeyID: int64(1 + i%3), Model: model, Status: 200 + i%2*229})
		s.LogError(ErrorLog{Time: t0.Add(time.Duration(i) * time.Second), KeyID: int64(1 + i%3), Model: model, Status: 429 + i%2, Message: "e"})
	}
	want := RequestLog{
		Time: t0.Add(time.Hour), AccessKeyID: 7, KeyID: 3, Method: "POST",
		Path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent", Model: "gemini-2.5-pro", Stream: true,
		Status: 200, Attempts: 2, Latency: 1234567 * time.Microsecond, TTFB: 456 * time.Microsecond,
		PromptTokens: 11, CandidatesTokens: 22, ThoughtsTokens: 33, TotalTokens: 66, Error: "first attempt: 429",
	}
	s.LogRequest(want)
	s.Flush()

	got, err := s.RecentRequests(ctx, LogQuery{Limit: 1})
	if err != nil || len(got) != 1 {
		t.Fatalf("RecentRequests = %v, %v", got, err)
	}
	if got[0] != want {
		t.Errorf("round trip:\n got %+v\nwant %+v", got[0], want)
	}

	got, err = s.RecentRequests(ctx, LogQuery{Model: "gemini-2.5-flash"})
	if err != nil || len(got) != 5 {
		t.Fatalf("by model: %d rows, %v", len(got), err)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Model != "gemini-2.5-flash" || !got[i].Time.Before(got[i-1].Time) {
			t.Errorf("row %d: %+v not newest first / wrong model", i, got[i])
		}
	}
	got, _ = s.RecentRequests(ctx, LogQuery{KeyID: 1, Status: 200})
	if len(got) != 2 { // i = 0, 6
		t.Errorf("key 1, status 200: %d rows, want 2", len(got))
	}
	errs, err := s.RecentErrors(ctx, LogQuery{Status: 430, Limit: 3})
	if err != nil || len(errs) != 3 {
		t.Fatalf("RecentErrors = %v, %v", errs, err)
	}
	if errs[0].Time != t0.Add(9*time.Second) || errs[0].Model != "gemini-2.5-pro" || errs[0].Message != "e" {
		t.Errorf("newest error = %+v", errs[0])
	}
	n, err := s.CountRequestLogs(ctx)
	if err != nil || n != 11 {
		t.Errorf("CountRequestLogs = %d, %v", n, err)
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
	if err := s.SetKeyStatus(ctx, auto, StatusDisabled, "5 failures in a row", false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyStatus(ctx, manual, StatusDisabled, "disabled by the operator", true); err != nil {
		t.Fatal(err)
	}
	s.SaveCooldown(Cooldown{KeyID: auto, Model: "m", Until: time.Now().Add(time.Hour)})
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
			if k.Status != StatusActive || k.DisabledReason != "" {
				t.Errorf("auto-disabled key after revive: %+v", k)
			}
		case manual:
			if k.Status != StatusDisabled || !k.ManualDisabled || k.DisabledReason != "disabled by the operator" {
				t.Errorf("hand-disabled key changed: %+v", k)
			}
		}
	}
	if cds, _ := s.Cooldowns(ctx, time.Now()); len(cds) != 0 {
		t.Errorf("revived key keeps cooldowns: %+v", cds)
	}
}
