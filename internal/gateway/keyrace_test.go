package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// TestDeleteDuringReloadStaysDeleted races admin deletes, enables and disables against reloads
// that add new keys (which reload the pool from the store): a deleted key must never be put
// back into the live pool, and the pool must hold exactly the stored keys at the end.
func TestDeleteDuringReloadStaysDeleted(t *testing.T) {
	e := newAdminEnv(t, 0)
	ctx := context.Background()
	b := adminBackend{e.c}
	for round := range 30 {
		fresh := make([]string, 20)
		for i := range fresh {
			fresh[i] = fmt.Sprintf("AIzaSyRACE%03d%03d%s", round, i, strings.Repeat("r", 23))
		}
		if _, err := b.AddKeys(ctx, fresh); err != nil {
			t.Fatal(err)
		}
		keys, err := e.c.store.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i, k := range keys {
				if i%3 == 1 {
					_ = b.SetKeyEnabled(ctx, k.ID, i%2 == 0)
				}
				if err := b.DeleteKey(ctx, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Error(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range 10 {
				more := []string{fmt.Sprintf("AIzaSyRELOAD%03d%03d%s", round, i, strings.Repeat("n", 21))}
				if err := e.c.Apply(ctx, &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: more, AdminKey: testAdminKey}); err != nil {
					t.Error(err)
				}
			}
		}()
		wg.Wait()
		stored, err := e.c.store.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := make(map[int64]bool, len(stored))
		for _, k := range stored {
			ids[k.ID] = true
		}
		for _, k := range e.c.pool.Keys(time.Now()) {
			if !ids[k.ID] {
				t.Fatalf("round %d: key %d was deleted but is back in the live pool", round, k.ID)
			}
		}
		if n := e.c.pool.Len(); n != len(stored) {
			t.Fatalf("round %d: %d keys in the pool, %d stored", round, n, len(stored))
		}
	}
}
