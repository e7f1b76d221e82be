package transfer_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
	"github.com/geminisynapse/caddy-gemini-synapse/store/transfer"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newSQLite creates a gateway database at a temporary path with keys and n request rows, an
// hour apart from t0, and closes it.
func newSQLite(t testing.TB, keys, requests, errs int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.db")
	s, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fill(t, s, keys, requests, errs)
	return path
}

var t0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// fill adds keys, an access key and log rows to s and waits for them to be written.
func fill(t testing.TB, s store.Store, keys, requests, errs int) {
	t.Helper()
	ctx := context.Background()
	secrets := make([]string, keys)
	for i := range secrets {
		secrets[i] = fmt.Sprintf("AIzaSy-transfer-%d", i)
	}
	if _, err := s.AddKeys(ctx, secrets); err != nil {
		t.Fatal(err)
	}
	ak, err := s.AddAccessKey(ctx, "sk-transfer", "t", `{"rpm":10}`)
	if err != nil {
		t.Fatal(err)
	}
	for i := range requests {
		s.LogRequest(store.RequestLog{
			Time: t0.Add(time.Duration(i) * time.Second), AccessKeyID: ak * int64(i%2), KeyID: int64(i%keys + 1),
			Method: "POST", Path: "/v1beta/models/gemini-2.5-flash:generateContent", Model: "gemini-2.5-flash",
			Status: []int{200, 200, 429}[i%3], Attempts: 1, Latency: time.Millisecond, PromptTokens: 10,
			CandidatesTokens: 20, TotalTokens: 30,
		})
		if i%10000 == 9999 {
			s.Flush() // the writer's queue holds 65536 rows
		}
	}
	for i := range errs {
		s.LogError(store.ErrorLog{Time: t0.Add(time.Duration(i) * time.Second), KeyID: int64(i%keys + 1),
			Model: "gemini-2.5-flash", Status: 429, Message: "quota"})
		if i%10000 == 9999 {
			s.Flush()
		}
	}
	s.Flush()
	if d := s.Dropped(); d != 0 {
		t.Fatalf("the SQLite writer dropped %d rows", d)
	}
}

// rawSQLite opens path for statements the store would not make (foreign keys off).
func rawSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_foreign_keys=off")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func exec(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// pgCount counts the rows of table in the database at url (-1 when the table is missing).
func pgCount(t *testing.T, url, table string) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		return -1
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func tableResult(t *testing.T, r *transfer.Result, table string) transfer.TableResult {
	t.Helper()
	for _, tr := range r.Tables {
		if tr.Table == table {
			return tr
		}
	}
	t.Fatalf("no result for table %s in %+v", table, r.Tables)
	return transfer.TableResult{}
}

// TestCopyInBatches copies in batches smaller than the tables, reports progress per batch,
// and copies only what is new when the SQLite file got rows since.
func TestCopyInBatches(t *testing.T) {
	ctx := context.Background()
	path := newSQLite(t, 3, 2500, 700)
	url := pgtest.URL(t)
	var progress bytes.Buffer
	r, err := transfer.Copy(ctx, path, url, transfer.Options{BatchSize: 1000, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if tr := tableResult(t, r, "request_logs"); tr.Read != 2500 || tr.Copied != 2500 {
		t.Errorf("request_logs: %+v", tr)
	}
	want := "request_logs: 1000 rows read so far\nrequest_logs: 2000 rows read so far\nrequest_logs: 2500 rows read so far\n"
	if !strings.Contains(progress.String(), want) || strings.Contains(progress.String(), "keys") {
		t.Errorf("progress:\n%s\nwant the request rows per batch, nothing of the small tables", progress.String())
	}

	// More rows in SQLite (the gateway ran on): only they are copied.
	s, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		s.LogRequest(store.RequestLog{Time: t0.Add(time.Duration(3000+i) * time.Second), KeyID: 1, Model: "m", Status: 200})
	}
	s.Flush()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = transfer.Copy(ctx, path, url, transfer.Options{BatchSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if tr := tableResult(t, r, "request_logs"); tr.Read != 2510 || tr.Copied != 10 || tr.Present != 2500 {
		t.Errorf("request_logs on the second run: %+v", tr)
	}
	if tr := tableResult(t, r, "keys"); tr.Copied != 0 || tr.Differing == 0 {
		// The keys' counters grew with the new rows: PostgreSQL's are kept, and said so.
		t.Errorf("keys on the second run: %+v, want none copied and the changed counters reported", tr)
	}
	if n := pgCount(t, url, "request_logs"); n != 2510 {
		t.Errorf("PostgreSQL holds %d request rows, want 2510", n)
	}
}

// TestCopyWhileTheGatewayWrites reads one snapshot of a file a gateway is writing to: the
// request rows copied and their per-slot sums agree.
func TestCopyWhileTheGatewayWrites(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "data.db")
	s, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fill(t, s, 2, 2000, 0)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var logged atomic.Int64
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			s.LogRequest(store.RequestLog{Time: t0.Add(time.Duration(i) * time.Minute), KeyID: 1, Model: "gemini-2.5-pro", Status: 200, TotalTokens: 5})
			logged.Add(1)
			if i%100 == 0 {
				s.Flush()
			}
		}
	})
	url := pgtest.URL(t)
	// Copy until at least one run overlapped the writes (the writer commits every 50 ms).
	var r *transfer.Result
	for {
		before := logged.Load()
		if r, err = transfer.Copy(ctx, path, url, transfer.Options{BatchSize: 500}); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatal(err)
		}
		if logged.Load() > before && before > 0 {
			break
		}
	}
	stop.Store(true)
	wg.Wait()

	dst, err := postgres.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	rows, err := dst.CountRequestLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := dst.UsageBuckets(ctx, []time.Time{t0.Add(-24 * time.Hour), t0.Add(10000 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if u[0].Requests != rows || rows < 2000 {
		t.Errorf("PostgreSQL holds %d request rows and sums of %d: not one snapshot (%+v)", rows, u[0].Requests, r.Tables)
	}
}

// TestCopyRefuses: an old SQLite file, a table or column PostgreSQL lacks, a PostgreSQL
// database holding other keys under the same ids, a PostgreSQL schema newer than the
// program's: each is refused, and nothing is written.
func TestCopyRefuses(t *testing.T) {
	ctx := context.Background()

	t.Run("old SQLite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "old.db")
		db := rawSQLite(t, path)
		exec(t, db, `CREATE TABLE keys (id INTEGER PRIMARY KEY, secret TEXT)`, `PRAGMA user_version = 5`)
		url := pgtest.URL(t)
		_, err := transfer.Copy(ctx, path, url, transfer.Options{})
		if err == nil || !strings.Contains(err.Error(), "older than 6") {
			t.Fatalf("Copy = %v, want the version refused", err)
		}
		if n := pgCount(t, url, "schema_version"); n != -1 {
			t.Errorf("PostgreSQL was touched: schema_version has %d rows", n)
		}
	})

	t.Run("not a gateway database", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "other.db")
		exec(t, rawSQLite(t, path), `CREATE TABLE things (id INTEGER PRIMARY KEY)`)
		if _, err := transfer.Copy(ctx, path, pgtest.URL(t), transfer.Options{}); err == nil || !strings.Contains(err.Error(), "not a gateway database") {
			t.Fatalf("Copy = %v", err)
		}
	})

	t.Run("unknown table and column", func(t *testing.T) {
		path := newSQLite(t, 2, 10, 0)
		exec(t, rawSQLite(t, path), `CREATE TABLE extra (id INTEGER PRIMARY KEY)`, `ALTER TABLE keys ADD COLUMN note TEXT`)
		url := pgtest.URL(t)
		_, err := transfer.Copy(ctx, path, url, transfer.Options{})
		if err == nil || !strings.Contains(err.Error(), "PostgreSQL has no table extra") ||
			!strings.Contains(err.Error(), "PostgreSQL's table keys has no column note") {
			t.Fatalf("Copy = %v", err)
		}
		if n := pgCount(t, url, "keys"); n != 0 {
			t.Errorf("PostgreSQL holds %d keys, want none", n)
		}
	})

	t.Run("another gateway's database", func(t *testing.T) {
		path := newSQLite(t, 2, 10, 0)
		url := pgtest.URL(t)
		other, err := postgres.Open(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.AddKeys(ctx, []string{"AIzaSy-another-gateway"}); err != nil {
			t.Fatal(err)
		}
		other.Close()
		_, err = transfer.Copy(ctx, path, url, transfer.Options{})
		if err == nil || !strings.Contains(err.Error(), "already holds 1 other rows") {
			t.Fatalf("Copy = %v, want the clash refused", err)
		}
		if strings.Contains(err.Error(), "AIzaSy") {
			t.Errorf("the error shows a key: %v", err)
		}
		if k, a := pgCount(t, url, "keys"), pgCount(t, url, "access_keys"); k != 1 || a != 0 {
			t.Errorf("PostgreSQL holds %d keys and %d access keys, want its own key only", k, a)
		}
	})

	t.Run("newer PostgreSQL schema", func(t *testing.T) {
		path := newSQLite(t, 1, 0, 0)
		url := pgtest.URL(t)
		s, err := postgres.Open(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `UPDATE schema_version SET version = $1`, postgres.SchemaVersion()+1); err != nil {
			t.Fatal(err)
		}
		if _, err := transfer.Copy(ctx, path, url, transfer.Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
			t.Fatalf("Copy = %v, want the newer schema refused", err)
		}
		if n := pgCount(t, url, "keys"); n != 0 {
			t.Errorf("PostgreSQL holds %d keys, want none", n)
		}
	})
}

// TestCopyOrphansAndText: a row whose parent SQLite did not keep (foreign keys were off) is
// skipped and counted, and text PostgreSQL cannot hold is cleaned and counted.
func TestCopyOrphansAndText(t *testing.T) {
	ctx := context.Background()
	path := newSQLite(t, 2, 0, 0)
	exec(t, rawSQLite(t, path),
		`INSERT INTO cooldowns (key_id, model, until) VALUES (1, 'm', 4102444800000), (99, 'm', 4102444800000)`,
		`INSERT INTO request_logs (time, key_id, model, status, error) VALUES (1767225600000, 1, 'm', 500, CAST(X'626164006279746580' AS TEXT))`)
	url := pgtest.URL(t)
	r, err := transfer.Copy(ctx, path, url, transfer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tr := tableResult(t, r, "cooldowns"); tr.Copied != 1 || tr.Orphans != 1 || tr.Present != 0 {
		t.Errorf("cooldowns: %+v, want 1 copied and 1 orphan", tr)
	}
	if tr := tableResult(t, r, "request_logs"); tr.Copied != 1 || tr.Cleaned != 1 {
		t.Errorf("request_logs: %+v, want 1 copied and cleaned", tr)
	}
	var out bytes.Buffer
	if err := r.Write(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 skipped: their parent row is missing", "1 text values cleaned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}
	dst, err := postgres.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	rows, err := dst.RecentRequests(ctx, store.LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Error != "bad\uFFFDbyte\uFFFD" {
		t.Errorf("request rows %+v, want the error text cleaned", rows)
	}
	// A second run finds the cleaned row equal, and skips the orphan again.
	r, err = transfer.Copy(ctx, path, url, transfer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range r.Tables {
		if tr.Copied != 0 || tr.Differing != 0 {
			t.Errorf("second run, %s: %+v", tr.Table, tr)
		}
	}
}

// BenchmarkCopy copies a SQLite file of 100k request rows (and 10k error rows): "empty" into
// a fresh PostgreSQL database per iteration (the logs go straight in with COPY), "again" into
// one that already holds every row (every batch goes through the temporary table and finds
// its rows present). rows/s counts every row read, the per-slot sums included.
func BenchmarkCopy(b *testing.B) {
	path := newSQLite(b, 20, 100_000, 10_000)
	ctx := context.Background()
	run := func(b *testing.B, url func() string, wantCopied bool) {
		var rows int64
		var spent time.Duration
		for b.Loop() {
			b.StopTimer()
			u := url()
			b.StartTimer()
			start := time.Now()
			r, err := transfer.Copy(ctx, path, u, transfer.Options{})
			if err != nil {
				b.Fatal(err)
			}
			spent += time.Since(start)
			rows += r.Read()
			if copied := r.Copied() == r.Read(); copied != wantCopied || r.Read() < 110_000 {
				b.Fatalf("copied %d of %d rows", r.Copied(), r.Read())
			}
		}
		b.ReportMetric(float64(rows)/spent.Seconds(), "rows/s")
	}
	b.Run("empty", func(b *testing.B) { run(b, func() string { return pgtest.URL(b) }, true) })
	b.Run("again", func(b *testing.B) {
		url := pgtest.URL(b)
		if _, err := transfer.Copy(ctx, path, url, transfer.Options{}); err != nil {
			b.Fatal(err)
		}
		run(b, func() string { return url }, false)
	})
}
