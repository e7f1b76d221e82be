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
	sums := map[accessSlotKey]store.Usage{}
	for rows.Next() {
		var at int64
		var k accessSlotKey
		var e entry
		if err := rows.Scan(&at, &k.accessKeyID, &k.model, &k.limitHit, &e.status, &e.prompt, &e.candidates, &e.total); err != nil {
			t.Fatal(err)
		}
		k.slot = store.SlotOf(at)
		sums[k] = e.addTo(sums[k])
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var want []rollupRow
	for _, k := range slices.SortedFunc(maps.Keys(sums), func(a, b accessSlotKey) int {
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

var usageLimits = []string{"rpm", "rpd", "tpm", "token_budget", "concurrency", "models", "expired"}

// randomKeyRequest is randomRequest by access key 0 to 4; about one in five of those with a key
// is refused by a limit (no tokens, a 429, 403 or 401).
func randomKeyRequest(rng *rand.Rand, at time.Time) store.RequestLog {
	r := randomRequest(rng, at)
	r.AccessKeyID = rng.Int64N(5)
	if r.AccessKeyID != 0 && rng.IntN(5) == 0 {
		r.LimitHit = usageLimits[rng.IntN(len(usageLimits))]
		r.Status = []int{429, 403, 401}[rng.IntN(3)]
		r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens = 0, 0, 0, 0
	}
	return r
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
	for range logged {
		r := randomRequest(rng, randomTime(rng))
		exec(`INSERT INTO request_logs (time, access_key_id, key_id, model, status, prompt_tokens, candidates_tokens,
			thoughts_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, toMS(r.Time), []int64{0, 1, 3, 7}[rng.IntN(4)],
			1, r.Model, r.Status, r.PromptTokens, r.CandidatesTokens, r.ThoughtsTokens, r.TotalTokens)
	}
	for _, ms := range []int64{-1, -store.SlotMS - 1} { // slots round down before 1970 too
		exec(`INSERT INTO request_logs (time, access_key_id, status, total_tokens) VALUES (?, 1, 200, 5)`, ms)
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
	// The per-slot sums of step 4 are untouched by the step; the new ones answer as the rows do.
	sets := usageBoundSets(t, rng)
	sameUsage(t, sets, answerUsage(t, s, sets, false), answerUsage(t, s, sets, true))
	for _, id := range []int64{1, 3, 7} {
		sameUsage(t, sets, answerUsageOf(t, s, sets, false, id), answerUsageOf(t, s, sets, true, id))
	}

	// Ids continue above every id still named: 9 in the error rows.
	id, err := s.AddAccessKey(ctx, "sk-new", "", "")
	if err != nil || id != 10 {
		t.Errorf("new access key id %d, %v; want 10", id, err)
	}

	for range 1000 {
		s.LogRequest(randomKeyRequest(rng, randomTime(rng)))
	}
	s.Flush()
	checkRollup(t, s.db)
}

// TestWriterFillsAccessKeyUsage logs random requests of several access keys, some refused by a
// limit, in small batches so many slots are added to more than once: the per-access-key sums
// equal the request rows', the limit hit is logged and read back, and the per-access-key
// statistics from the sums equal the queries over the rows, for the dashboard's ranges in many
// zones. The sums outlive the request rows.
func TestWriterFillsAccessKeyUsage(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 14))
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, func(o *options) { o.batchSize = 89 })
	ctx := context.Background()

	const rows = 5000
	want := map[int64]*store.AccessKeyUsage{}
	hot := []int64{store.SlotOf(toMS(randomTime(rng))), store.SlotOf(toMS(randomTime(rng)))}
	for i := range rows {
		at := randomTime(rng)
		if i%3 == 0 {
			at = time.UnixMilli(hot[rng.IntN(len(hot))] + rng.Int64N(store.SlotMS))
		}
		r := randomKeyRequest(rng, at)
		s.LogRequest(r)
		if r.AccessKeyID == 0 {
			continue
		}
		w := want[r.AccessKeyID]
		if w == nil {
			w = &store.AccessKeyUsage{AccessKeyID: r.AccessKeyID, LimitsHit: map[string]int64{}}
			want[r.AccessKeyID] = w
		}
		w.Requests++
		if r.Status < 200 || r.Status > 399 {
			w.Failures++
		}
		w.PromptTokens += r.PromptTokens
		w.CandidatesTokens += r.CandidatesTokens
		w.TotalTokens += r.TotalTokens
		if r.LimitHit != "" {
			w.Limited++
			w.LimitsHit[r.LimitHit]++
		}
	}
	s.Flush()
	checkRollup(t, s.db)

	// The limit hit is written and read back, and the access key filter holds.
	limited, err := s.RecentRequests(ctx, store.LogQuery{AccessKeyID: 2, Status: 429, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, r := range limited {
		if r.AccessKeyID != 2 {
			t.Fatalf("filtered row of access key %d", r.AccessKeyID)
		}
		if r.LimitHit != "" {
			n++
			if !slices.Contains(usageLimits, r.LimitHit) {
				t.Fatalf("limit hit read back as %q", r.LimitHit)
			}
		}
	}
	if n == 0 {
		t.Fatal("no limited row of access key 2 read back")
	}

	// AccessKeyUsage over everything, on slot starts and off them, equals the rows logged.
	day := 24 * time.Hour
	from, to := usageWindows[0][0].Add(-day), usageWindows[1][1].Add(day)
	var wantList []store.AccessKeyUsage
	for _, w := range want {
		wantList = append(wantList, *w)
	}
	slices.SortFunc(wantList, func(a, b store.AccessKeyUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.AccessKeyID, b.AccessKeyID))
	})
	for _, b := range [][2]time.Time{{from, to}, {from.Add(time.Millisecond), to.Add(-time.Millisecond)}} {
		got, err := s.AccessKeyUsage(ctx, b[0], b[1])
		if err != nil {
			t.Fatal(err)
		}
		if !sameAccessKeyUsage(got, wantList) {
			t.Errorf("AccessKeyUsage(%v, %v) = %+v; want %+v", b[0], b[1], got, wantList)
		}
	}

	// Per access key, the dashboard's figures from the sums equal those from the rows.
	sets := usageBoundSets(t, rng)
	fromSlots := map[int64]usageAnswers{}
	for id := range want {
		fromSlots[id] = answerUsageOf(t, s, sets, false, id)
		sameUsage(t, sets, fromSlots[id], answerUsageOf(t, s, sets, true, id))
	}
	// And AccessKeyUsage over a range equals the sum of its buckets.
	for i, b := range sets[:30] {
		got, err := s.AccessKeyUsage(ctx, b[0], b[len(b)-1])
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			var sum store.Usage
			for _, u := range fromSlots[a.AccessKeyID].buckets[i] {
				sum.Requests += u.Requests
				sum.TotalTokens += u.TotalTokens
			}
			if sum.Requests != a.Requests || sum.TotalTokens != a.TotalTokens {
				t.Errorf("access key %d in %v..%v: %+v, buckets sum to %+v", a.AccessKeyID, b[0], b[len(b)-1], a, sum)
			}
		}
	}

	// The sums outlive the request rows.
	if _, err := s.PurgeRequestLogs(ctx, to); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s, "request_logs"); n != 0 {
		t.Fatalf("%d request rows left", n)
	}
	for id := range want {
		sameUsage(t, sets, answerUsageOf(t, s, sets, false, id), fromSlots[id])
	}
	if got, err := s.AccessKeyUsage(ctx, from, to); err != nil || !sameAccessKeyUsage(got, wantList) {
		t.Errorf("AccessKeyUsage after the rows were purged = %+v, %v", got, err)
	}
}

func sameAccessKeyUsage(a, b []store.AccessKeyUsage) bool {
	return slices.EqualFunc(a, b, func(x, y store.AccessKeyUsage) bool {
		return x.AccessKeyID == y.AccessKeyID && x.Requests == y.Requests && x.Failures == y.Failures &&
			x.PromptTokens == y.PromptTokens && x.CandidatesTokens == y.CandidatesTokens &&
			x.TotalTokens == y.TotalTokens && x.Limited == y.Limited && x.LimitsHit != nil && y.LimitsHit != nil &&
			maps.Equal(x.LimitsHit, y.LimitsHit)
	})
}

// answerUsageOf is answerUsage for one access key: UsageBucketsOf and UsageByModelOf, or, with
// raw, the queries over the request rows.
func answerUsageOf(t *testing.T, s *Store, sets [][]time.Time, raw bool, id int64) usageAnswers {
	t.Helper()
	ctx := context.Background()
	var a usageAnswers
	for _, b := range sets {
		var buckets []store.Usage
		var err error
		if raw {
			buckets, err = s.usageBuckets(ctx, b, accessKeyUsageOf.rawBuckets, id)
		} else {
			buckets, err = s.UsageBucketsOf(ctx, id, b)
		}
		if err != nil {
			t.Fatal(err)
		}
		a.buckets = append(a.buckets, buckets)
		for _, limit := range []int{0, 2} {
			var models []store.ModelUsage
			if raw {
				models, err = s.usageByModel(ctx, b[0], b[len(b)-1], limit, accessKeyUsageOf.rawByModel, id)
			} else {
				models, err = s.UsageByModelOf(ctx, id, b[0], b[len(b)-1], limit)
			}
			if err != nil {
				t.Fatal(err)
			}
			a.models = append(a.models, models)
		}
	}
	return a
}
