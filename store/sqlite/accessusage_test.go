package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/storetest"
)

// rollupRow is one row of access_key_usage, or of the same sums computed from request_logs.
type rollupRow struct {
	slot, accessKeyID int64
	model, limitHit   string
	u                 store.Usage
}

func queryRollup(t testing.TB, db *sql.DB, query string) []rollupRow {
	t.Helper()
	rows, err := db.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []rollupRow
	for rows.Next() {
		var r rollupRow
		if err := rows.Scan(&r.slot, &r.accessKeyID, &r.model, &r.limitHit, &r.u.Requests, &r.u.Failures,
			&r.u.PromptTokens, &r.u.CandidatesTokens, &r.u.TotalTokens); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkRollup fails the test unless access_key_usage holds exactly the sums of the request
// rows with an access key, grouped by slot, access key, model and limit hit (slots computed
// in Go, so the table's own arithmetic is not what is checked against).
func checkRollup(t testing.TB, db *sql.DB) {
	t.Helper()
	got := queryRollup(t, db, `SELECT slot, access_key_id, model, limit_hit, requests, failures, prompt_tokens,
		candidates_tokens, total_tokens FROM access_key_usage ORDER BY slot, access_key_id, model, limit_hit`)
	rows, err := db.Query(`SELECT time, access_key_id, model, limit_hit, status, prompt_tokens, candidates_tokens,
		total_tokens FROM request_logs WHERE access_key_id <> 0`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type key struct {
		slot, accessKeyID int64
		model, limitHit   string
	}
	sums := map[key]store.Usage{}
	for rows.Next() {
		var at int64
		var k key
		var status int
		var prompt, candidates, total int64
		if err := rows.Scan(&at, &k.accessKeyID, &k.model, &k.limitHit, &status, &prompt, &candidates, &total); err != nil {
			t.Fatal(err)
		}
		k.slot = store.SlotOf(at)
		u := sums[k]
		u.Requests++
		if store.Failed(status) {
			u.Failures++
		}
		u.PromptTokens += prompt
		u.CandidatesTokens += candidates
		u.TotalTokens += total
		sums[k] = u
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var want []rollupRow
	for _, k := range slices.SortedFunc(maps.Keys(sums), func(a, b key) int {
		return cmp.Or(cmp.Compare(a.slot, b.slot), cmp.Compare(a.accessKeyID, b.accessKeyID),
			strings.Compare(a.model, b.model), strings.Compare(a.limitHit, b.limitHit))
	}) {
		want = append(want, rollupRow{k.slot, k.accessKeyID, k.model, k.limitHit, sums[k]})
	}
	if len(want) == 0 {
		t.Fatal("no request rows with an access key: the check proves nothing")
	}
	if !slices.Equal(got, want) {
		t.Errorf("access_key_usage has %d rows, the request rows sum to %d", len(got), len(want))
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("first difference at %d: got %+v, want %+v", i, got[i], want[i])
			}
		}
	}
}

// TestMigrationFromVersion5 builds a version-5 database with access keys, resources, upload
// sessions and request and error rows, opens it, and checks that the data is kept, the new
// columns have their defaults, the per-access-key sums match the request rows (before and
// after the writer adds to them), and new access keys get ids above every id the logs name.
func TestMigrationFromVersion5(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v5.db")
	ctx := context.Background()
	db := rawDB(t, path)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	// Request rows logged before step 4, so that request_usage holds their sums too.
	if err := migrate(ctx, db, migrations[:3]); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	const logged = 2000
	var rows []store.RequestLog
	for range logged {
		r := storetest.RandomRequest(rng, storetest.RandomTime(rng))
		r.AccessKeyID, r.KeyID = []int64{0, 1, 3, 7}[rng.IntN(4)], 1
		exec(`INSERT INTO request_logs (time, access_key_id, key_id, model, status, prompt_tokens, candidates_tokens,
			thoughts_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, toMS(r.Time), r.AccessKeyID,
			r.KeyID, r.Model, r.Status, r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens)
		rows = append(rows, r)
	}
	for _, ms := range []int64{-1, -store.SlotMS - 1} { // slots round down before 1970 too
		exec(`INSERT INTO request_logs (time, access_key_id, status, total_tokens) VALUES (?, 1, 200, 5)`, ms)
		rows = append(rows, store.RequestLog{Time: time.UnixMilli(ms), AccessKeyID: 1, Status: 200, TotalTokens: 5})
	}
	if err := migrate(ctx, db, migrations[:5]); err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO keys (id, secret, project, created_at) VALUES (1, 'AIza-one', 'p1', 1), (2, 'AIza-two', '', 2)`)
	h1, h3 := store.HashSecret("sk-one"), store.HashSecret("sk-three")
	exec(`INSERT INTO access_keys (id, hash, label, enabled, created_at, last_used_at) VALUES (1, ?, 'one', 1, 1000, 2000),
		(3, ?, 'three', 0, 3000, 0)`, h1[:], h3[:])
	exec(`INSERT INTO resources (name, kind, key_id, created_at, expires_at) VALUES ('files/f1', 'files', 1, 5, 0),
		('cachedContents/c2', 'cachedContents', 2, 6, 0)`)
	exec(`INSERT INTO upload_sessions (upload_id, key_id, upstream_uri, access_key_id, created_at, expires_at)
		VALUES ('up', 1, '/u', 3, 1, 9999999999999)`)
	exec(`INSERT INTO error_logs (time, key_id, access_key_id, status) VALUES (1, 1, 9, 500)`) // 9: a deleted key
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path, nil, nil)
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Fatalf("user_version = %d, want %d", v, len(migrations))
	}
	aks, err := s.AccessKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.AccessKey{
		{ID: 1, Hash: h1, Label: "one", Enabled: true, CreatedAt: fromMS(1000), LastUsedAt: fromMS(2000)},
		{ID: 3, Hash: h3, Label: "three", CreatedAt: fromMS(3000)},
	}
	if !slices.Equal(aks, want) {
		t.Errorf("access keys after migration: %+v; want %+v", aks, want)
	}
	owners, err := s.ResourceOwners(ctx, []string{"files/f1", "cachedContents/c2"}, time.Now())
	if err != nil || owners["files/f1"] != (store.Owner{KeyID: 1}) || owners["cachedContents/c2"] != (store.Owner{KeyID: 2}) {
		t.Errorf("owners after migration: %v, %v; want the keys and no access key", owners, err)
	}
	if u, err := s.UploadSessionByID(ctx, "up", time.Now()); err != nil || u.AccessKeyID != 3 {
		t.Errorf("upload session: %+v, %v", u, err)
	}
	reqs, err := s.RecentRequests(ctx, store.LogQuery{Limit: 10000})
	if err != nil || len(reqs) != logged+2 {
		t.Fatalf("%d request rows, %v; want %d", len(reqs), err, logged+2)
	}
	for _, r := range reqs {
		if r.LimitHit != "" {
			t.Fatalf("migrated row with a limit hit: %+v", r)
		}
	}
	checkRollup(t, s.db)
	if n := countRows(t, s, "access_key_usage"); n == 0 {
		t.Fatal("no per-access-key sums")
	}
	// The per-slot sums of step 4 are untouched by the step; the new ones answer what the rows
	// sum to.
	sets := storetest.BoundSets(t, rng)
	storetest.CheckUsage(t, s, rows, sets)
	for _, id := range []int64{1, 3, 7} {
		storetest.CheckUsageOf(t, s, rows, sets, id)
	}

	// Ids continue above every id still named: 9 in the error rows.
	id, err := s.AddAccessKey(ctx, "sk-new", "", "")
	if err != nil || id != 10 {
		t.Errorf("new access key id %d, %v; want 10", id, err)
	}

	for range 1000 {
		s.LogRequest(storetest.RandomKeyRequest(rng, storetest.RandomTime(rng)))
	}
	s.Flush()
	checkRollup(t, s.db)
}
