package gateway

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
)

// Triggers that make every write of an owner record fail, as a broken database would.
var (
	failResourceWrites = []string{
		`CREATE TRIGGER fail_resources_insert BEFORE INSERT ON resources BEGIN SELECT RAISE(ABORT, 'forced failure'); END`,
		`CREATE TRIGGER fail_resources_update BEFORE UPDATE ON resources BEGIN SELECT RAISE(ABORT, 'forced failure'); END`,
	}
	allowResourceWrites = []string{`DROP TRIGGER fail_resources_insert`, `DROP TRIGGER fail_resources_update`}
)

// When the owner of a new file cannot be stored, the client still gets the file and every use
// of it still goes to its owner; the record reaches the store once the database recovers.
func TestProxyOwnerKeptWhenTheStoreFails(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	e.core.pendingRetry = 20 * time.Millisecond
	ctx := context.Background()
	e.sqlExec(failResourceWrites...)
	name, _ := e.upload("payload", "", 100)
	owner := e.fake.FileOwner(name)
	if owners, err := e.core.store.ResourceOwners(ctx, []string{name}, time.Now()); err != nil || len(owners) != 0 {
		t.Fatalf("stored despite the failing database: %v %v", owners, err)
	}
	for i := range 4 {
		n := len(e.fake.Calls())
		resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(name))
		if resp.StatusCode != 200 {
			t.Fatalf("generate %d: %d %s", i, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d went to another key", i)
		}
	}
	e.sqlExec(allowResourceWrites...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		owners, err := e.core.store.ResourceOwners(ctx, []string{name}, time.Now())
		if err == nil && owners[name].KeyID == e.ids[owner] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pending owner never reached the store: %v %v", owners, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.core.pending.mu.Lock()
	left := len(e.core.pending.rows)
	e.core.pending.mu.Unlock()
	if left != 0 {
		t.Errorf("%d records still pending after the write", left)
	}
}

// Destruct writes what is still pending before it closes the store.
func TestDestructFlushesPendingOwners(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	c := startCore(t, coreSetup{path: path}, &Config{GoogleAPIKeys: []string{"AIzaSyPENDINGTEST-0000000000000000000"}}).c
	ctx := context.Background()
	keys, err := c.store.Keys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys: %v %v", keys, err)
	}
	c.pendingRetry = time.Hour // only Destruct will retry
	sqlExec(t, path, failResourceWrites...)
	r := store.Resource{Name: "files/p1", Kind: "files", KeyID: keys[0].ID, CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	c.recordResources(ctx, []store.Resource{r})
	owners := map[string]store.Owner{}
	c.pending.owners([]string{"files/p1"}, time.Now(), owners)
	if owners["files/p1"].KeyID != keys[0].ID {
		t.Fatalf("not pending: %v", owners)
	}
	sqlExec(t, path, allowResourceWrites...)
	if err := c.Destruct(); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.ResourceOwners(ctx, []string{"files/p1"}, time.Now())
	if err != nil || got["files/p1"].KeyID != keys[0].ID {
		t.Errorf("after Destruct: %v %v, want files/p1 stored", got, err)
	}
}
