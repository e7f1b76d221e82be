package postgres

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// TestAccessKeysAreStoredOnlyAsHashes: no row of any table holds an access key's secret, while
// its hash is there. (What the store answers about access keys is checked by storetest.)
func TestAccessKeysAreStoredOnlyAsHashes(t *testing.T) {
	path := pgtest.URL(t)
	ctx := context.Background()
	s, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const secret1, secret2 = "sk-client-one-0123456789abcdef", "sk-client-two-fedcba9876543210"
	if _, err := s.AddAccessKey(ctx, secret1, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if added, _, err := s.EnsureAccessKeys(ctx, []string{secret1, secret2}, "caddyfile"); err != nil || added != 1 {
		t.Fatalf("EnsureAccessKeys = %d, %v; want 1", added, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

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
