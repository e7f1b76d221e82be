package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	path := pgtest.URL(t)
	ctx := context.Background()
	s, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const secret1, secret2 = "sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"

	id, err := s.AddAccessKey(ctx, secret1, "alice", "")
	if err != nil || id == 0 {
		t.Fatalf("AddAccessKey = %d, %v", id, err)
	}
	if _, err := s.AddAccessKey(ctx, " "+secret1+" ", "again", ""); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate AddAccessKey = %v, want ErrDuplicate", err)
	}
	if _, err := s.AddAccessKey(ctx, " ", "blank", ""); err == nil {
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

	// No row of any table holds a secret, while the hash is there.
	db := rawPool(t, path)
	tables, err := db.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(tables, pgx.RowTo[string])
	if err != nil || len(names) < 10 {
		t.Fatalf("tables %v, %v", names, err)
	}
	var all strings.Builder
	for _, name := range names {
		var text string
		if err := db.QueryRow(ctx, `SELECT COALESCE(string_agg(t::text, ' '), '') FROM `+name+` t`).Scan(&text); err != nil {
			t.Fatal(err)
		}
		all.WriteString(text)
	}
	for _, secret := range []string{secret1, secret2} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("secret %q found in the database", secret)
		}
	}
	h := HashSecret(secret2)
	if !strings.Contains(all.String(), hex.EncodeToString(h[:])) {
		t.Error("hash not found in the database; the scan proves nothing")
	}
}
