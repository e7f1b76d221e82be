package postgres

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/enginetest"
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
	secrets := enginetest.StoreAccessKeys(t, s)

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
	for _, secret := range secrets {
		if strings.Contains(all.String(), secret) {
			t.Errorf("secret %q found in the database", secret)
		}
	}
	h := HashSecret(secrets[1])
	if !strings.Contains(all.String(), hex.EncodeToString(h[:])) {
		t.Error("hash not found in the database; the scan proves nothing")
	}
}
