// Package transfer copies a gateway's SQLite database (store/sqlite's schema) into a
// PostgreSQL database (store/postgres's schema), for an operator moving from one engine to the
// other: `caddy gemini-synapse migrate` runs Copy.
//
// Every table of the SQLite file is copied, row for row, ids kept: PostgreSQL's schema mirrors
// SQLite's version 6 (unix-ms BIGINT times, bytea hashes), so a row moves unchanged but for its
// flags (SQLite INTEGER 0/1 becomes boolean) and text PostgreSQL cannot hold (a NUL byte or
// invalid UTF-8, replaced with U+FFFD as the PostgreSQL engine does). A table or a column the
// PostgreSQL schema lacks makes Copy refuse before it writes anything, so nothing is left
// behind silently.
//
// Copy is idempotent: rows go in with INSERT ... ON CONFLICT DO NOTHING on every primary and
// unique key, so a second run copies nothing and changes nothing, and a run after the SQLite
// file got more rows copies only those. Rows travel in batches: COPY into a temporary table,
// then one INSERT ... SELECT per batch. Everything happens in one PostgreSQL transaction, under
// the advisory lock of the schema migrations: it is committed whole or not at all, and an
// instance opening the database meanwhile waits for it. Then every identity sequence is moved
// above the ids copied (and above the ids of upstream and access keys the logs still name),
// so a row created later never reuses an id.
//
// The SQLite file is opened read-only and read in one transaction: a consistent snapshot,
// even while a gateway runs on it (whatever it writes afterwards is not copied; stop it first).
// The file of a stopped gateway (no -wal file) is opened immutable, so that no -wal or -shm
// file is created beside it.
package transfer

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
)

// MinSQLiteVersion is the oldest SQLite schema version (PRAGMA user_version) Copy reads: the
// version whose tables PostgreSQL's schema mirrors. An older file is brought up to date by
// starting the gateway on it once.
const MinSQLiteVersion = 6

// DefaultBatchSize is how many rows one COPY sends when Options.BatchSize is 0.
const DefaultBatchSize = 10000

// Options tune Copy. The zero value is ready to use.
type Options struct {
	// BatchSize is how many rows go to PostgreSQL in one COPY (then one INSERT); 0 means
	// DefaultBatchSize.
	BatchSize int
	// Logger receives postgres.Open's messages (its schema migration); nil for none.
	Logger *zap.Logger
	// Progress, when not nil, gets a line after each batch of a table that needs more than
	// one (the table and the rows read so far), for long copies.
	Progress io.Writer
}

// Result is what Copy did.
type Result struct {
	// From is the SQLite file's path.
	From string
	// To is the PostgreSQL URL, its password masked.
	To string
	// SQLiteVersion and PostgresVersion are the schema versions of the two databases.
	SQLiteVersion, PostgresVersion int
	// Tables holds one entry per table copied, in the order copied.
	Tables []TableResult
	// Sequences holds one entry per identity column of the tables copied.
	Sequences []SequenceResult
	// Duration is how long Copy took, the commit included.
	Duration time.Duration
}

// TableResult is what Copy did with one table.
type TableResult struct {
	// Table is the table's name (the same in both databases).
	Table string
	// Read is how many rows the SQLite table holds.
	Read int64
	// Copied is how many of them were inserted into PostgreSQL.
	Copied int64
	// Present is how many were not inserted because PostgreSQL already holds a row with the
	// same primary or unique key (Differing of them with other values: PostgreSQL's are
	// kept).
	Present int64
	// Differing is how many of the Present rows differ from PostgreSQL's row with the same
	// primary key, which is left as it is (say, a key's counters after the gateway ran on
	// PostgreSQL).
	Differing int64
	// Orphans is how many rows were skipped because they name a parent row that does not
	// exist (a foreign key SQLite did not enforce).
	Orphans int64
	// Cleaned is how many text values held a NUL byte or invalid UTF-8 and were stored with
	// U+FFFD in their place.
	Cleaned int64
}

// SequenceResult is the identity sequence of one table after Copy.
type SequenceResult struct {
	// Table and Column name the identity column.
	Table, Column string
	// Next is the id the sequence hands out next.
	Next int64
	// Moved tells whether Copy moved the sequence (it only ever moves one up).
	Moved bool
}

// Copied returns the rows copied over every table.
func (r *Result) Copied() int64 {
	var n int64
	for _, t := range r.Tables {
		n += t.Copied
	}
	return n
}

// Read returns the rows read over every table.
func (r *Result) Read() int64 {
	var n int64
	for _, t := range r.Tables {
		n += t.Read
	}
	return n
}

// Write prints r for an operator: per table the rows read, copied and already present (and
// any differing, orphaned or cleaned), the next id of each sequence, and the rate. It prints
// no row's content.
func (r *Result) Write(w io.Writer) error {
	width := len("total")
	for _, t := range r.Tables {
		width = max(width, len(t.Table))
	}
	var b strings.Builder
	line := func(name string, read, copied, present any, notes string) {
		fmt.Fprintf(&b, "%-*s %10v %10v %16v", width, name, read, copied, present)
		if notes != "" {
			b.WriteString("  " + notes)
		}
		b.WriteByte('\n')
	}
	line("table", "in SQLite", "copied", "already present", "")
	var present int64
	for _, t := range r.Tables {
		line(t.Table, t.Read, t.Copied, t.Present, t.notes())
		present += t.Present
	}
	line("total", r.Read(), r.Copied(), present, "")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if len(r.Sequences) > 0 {
		parts := make([]string, 0, len(r.Sequences))
		for _, s := range r.Sequences {
			p := fmt.Sprintf("%s.%s %d", s.Table, s.Column, s.Next)
			if s.Moved {
				p += " (moved)"
			}
			parts = append(parts, p)
		}
		if _, err := fmt.Fprintf(w, "next ids: %s\n", strings.Join(parts, ", ")); err != nil {
			return err
		}
	}
	rate := ""
	if s := r.Duration.Seconds(); s > 0 {
		rate = fmt.Sprintf(" (%.0f rows/s read)", float64(r.Read())/s)
	}
	_, err := fmt.Fprintf(w, "%d rows copied, %d already present, in %s%s\n",
		r.Copied(), present, r.Duration.Round(time.Millisecond), rate)
	return err
}

// notes lists the unusual counts of t, empty when there are none.
func (t TableResult) notes() string {
	var n []string
	if t.Differing > 0 {
		n = append(n, fmt.Sprintf("%d differ (PostgreSQL's kept)", t.Differing))
	}
	if t.Orphans > 0 {
		n = append(n, fmt.Sprintf("%d skipped: their parent row is missing", t.Orphans))
	}
	if t.Cleaned > 0 {
		n = append(n, fmt.Sprintf("%d text values cleaned", t.Cleaned))
	}
	return strings.Join(n, "; ")
}

// Copy copies every row of the SQLite database at sqlitePath into the PostgreSQL database at
// postgresURL (see the package doc), after bringing PostgreSQL's schema up to date with
// postgres.Open. It refuses a SQLite file older than MinSQLiteVersion, a PostgreSQL schema
// other than postgres.SchemaVersion, a table or column PostgreSQL lacks, and a PostgreSQL
// database that holds other rows under the same ids (another gateway's keys, say): then it
// writes no row (the schema migration of postgres.Open stays). Errors name tables and columns, never a row's values, and the URL only
// with its password masked.
func Copy(ctx context.Context, sqlitePath, postgresURL string, o Options) (res *Result, err error) {
	start := time.Now()
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	masked := postgres.MaskURL(postgresURL)
	res = &Result{From: sqlitePath, To: masked}

	src, err := openSource(ctx, sqlitePath)
	if err != nil {
		return nil, err
	}
	defer src.close()
	res.SQLiteVersion = src.version

	st, err := postgres.Open(ctx, postgresURL, o.Logger)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	if err := st.Close(); err != nil {
		return nil, fmt.Errorf("transfer: %s: %w", masked, err)
	}
	conn, err := connect(ctx, postgresURL)
	if err != nil {
		return nil, fmt.Errorf("transfer: connect to %s: %w", masked, safe(err))
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("transfer: %s: %w", masked, safe(err))
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	version, err := postgres.LockSchema(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("transfer: %s: %w", masked, safe(err))
	}
	if version != postgres.SchemaVersion() {
		return nil, fmt.Errorf("transfer: %s has schema version %d, this program knows version %d only",
			masked, version, postgres.SchemaVersion())
	}
	res.PostgresVersion = version

	dst, err := readTarget(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("transfer: read the schema of %s: %w", masked, safe(err))
	}
	plans, err := plan(src, dst)
	if err != nil {
		return nil, fmt.Errorf("transfer: %s into %s: %w", sqlitePath, masked, err)
	}
	if err := lockTables(ctx, tx, plans); err != nil {
		return nil, fmt.Errorf("transfer: %s: %w", masked, safe(err))
	}
	for _, p := range plans {
		tr, err := copyTable(ctx, src, tx, p, o)
		if err != nil {
			return nil, fmt.Errorf("transfer: table %s: %w", p.name, safe(err))
		}
		res.Tables = append(res.Tables, tr)
	}
	res.Sequences, err = moveSequences(ctx, tx, src, plans)
	if err != nil {
		return nil, fmt.Errorf("transfer: sequences: %w", safe(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("transfer: commit to %s: %w", masked, safe(err))
	}
	res.Duration = time.Since(start)
	return res, nil
}

// connect opens one connection to url, with a 10 s connect timeout unless url sets one. The
// URL is parsed as postgres.Open parses it, so that the pool's settings (pool_max_conns, ...)
// it may carry for the gateway are accepted here too (and not sent to the server).
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("cannot parse the URL") // pgx's message may quote it
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	return pgx.ConnectConfig(ctx, cfg.ConnConfig)
}

// safe returns err without the parts of a PostgreSQL error that may quote a row (its detail,
// such as "Failing row contains (...)", which could hold a key): the message, the code and the
// names of the table, column and constraint only.
func safe(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	msg := fmt.Sprintf("%s (SQLSTATE %s", pe.Message, pe.Code)
	for _, kv := range [][2]string{{"table", pe.TableName}, {"column", pe.ColumnName}, {"constraint", pe.ConstraintName}} {
		if kv[1] != "" {
			msg += ", " + kv[0] + " " + kv[1]
		}
	}
	return errors.New(msg + ")")
}

// ---- the SQLite side

// source is the SQLite file, read in one read transaction (one snapshot).
type source struct {
	db      *sql.DB
	tx      *sql.Tx
	version int
	tables  map[string][]string // table -> its columns, in order
	seqs    map[string]int64    // sqlite_sequence: the highest id an AUTOINCREMENT table gave
}

// openSource opens path read-only, starts the read transaction and reads the schema.
func openSource(ctx context.Context, path string) (_ *source, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("transfer: %s is not a file", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	u := url.URL{Path: filepath.ToSlash(abs)}
	// mode=ro: SQLite opens the file read-only; _query_only: no statement may write either.
	dsn := "file:" + u.EscapedPath() + "?mode=ro&_query_only=1&_busy_timeout=5000"
	if _, err := os.Stat(abs + "-wal"); errors.Is(err, fs.ErrNotExist) {
		// No write-ahead log: no program has the database open (the gateway keeps one while
		// it runs), and the file holds every committed row. immutable=1 reads it without the
		// -wal and -shm files a WAL reader creates otherwise, which would be left behind
		// owned by whoever ran this (root, say), where the gateway could not open them.
		dsn += "&immutable=1"
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("transfer: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &source{db: db, tables: map[string][]string{}, seqs: map[string]int64{}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.tx, err = db.BeginTx(ctx, nil); err != nil {
		return nil, fmt.Errorf("transfer: open %s: %w", path, err)
	}
	if err := s.tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&s.version); err != nil {
		return nil, fmt.Errorf("transfer: read %s: %w", path, err)
	}
	rows, err := s.tx.QueryContext(ctx,
		`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`)
	if err != nil {
		return nil, fmt.Errorf("transfer: read %s: %w", path, err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("transfer: read %s: %w", path, err)
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("transfer: read %s: %w", path, err)
	}
	if !slices.Contains(names, "keys") {
		return nil, fmt.Errorf("transfer: %s is not a gateway database (it has no keys table)", path)
	}
	if s.version < MinSQLiteVersion {
		return nil, fmt.Errorf("transfer: %s has schema version %d, older than %d: start the gateway on it once to upgrade it, then stop it and copy",
			path, s.version, MinSQLiteVersion)
	}
	for _, n := range names {
		cols, err := s.columns(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("transfer: read %s: %w", path, err)
		}
		s.tables[n] = cols
	}
	if err := s.readSequences(ctx); err != nil {
		return nil, fmt.Errorf("transfer: read %s: %w", path, err)
	}
	return s, nil
}

func (s *source) columns(ctx context.Context, table string) ([]string, error) {
	rows, err := s.tx.QueryContext(ctx, `SELECT name FROM pragma_table_info(?) ORDER BY cid`, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	return cols, rows.Err()
}

// readSequences reads sqlite_sequence, which exists once a table with AUTOINCREMENT does.
func (s *source) readSequences(ctx context.Context) error {
	var n int
	if err := s.tx.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'`).Scan(&n); err != nil || n == 0 {
		return err
	}
	rows, err := s.tx.QueryContext(ctx, `SELECT name, seq FROM sqlite_sequence`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var seq int64
		if err := rows.Scan(&name, &seq); err != nil {
			return err
		}
		s.seqs[name] = seq
	}
	return rows.Err()
}

func (s *source) close() {
	if s.tx != nil {
		_ = s.tx.Rollback()
	}
	_ = s.db.Close()
}

// ---- the PostgreSQL side

// kind is how a SQLite value is converted for a PostgreSQL column's type.
type kind int

const (
	kText kind = iota
	kInt
	kBool
	kBytes
	kFloat
)

// kinds maps the PostgreSQL types the gateway's schema uses (format_type's names) to a kind.
var kinds = map[string]kind{
	"text": kText, "character varying": kText,
	"bigint": kInt, "integer": kInt, "smallint": kInt,
	"boolean":          kBool,
	"bytea":            kBytes,
	"double precision": kFloat, "real": kFloat,
}

// column is a column of a PostgreSQL table.
type column struct {
	name     string
	typ      string // format_type, e.g. "bigint"
	identity bool
}

// foreignKey is a foreign key of a PostgreSQL table: cols reference parent's pcols.
type foreignKey struct {
	cols, pcols []string
	parent      string
}

// table is a PostgreSQL table of the current schema.
type table struct {
	name    string
	columns []column
	uniques [][]string // the primary key first (if any), then every other unique index's columns
	fks     []foreignKey
}

func (t *table) column(name string) (column, bool) {
	for _, c := range t.columns {
		if c.name == name {
			return c, true
		}
	}
	return column{}, false
}

// readTarget reads the tables of PostgreSQL's current schema: columns, unique keys and
// foreign keys.
func readTarget(ctx context.Context, tx pgx.Tx) (map[string]*table, error) {
	tables := map[string]*table{}
	rows, err := tx.Query(ctx, `
		SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> ''
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
		  AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY c.relname, a.attnum`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var tname string
		var c column
		if err := rows.Scan(&tname, &c.name, &c.typ, &c.identity); err != nil {
			rows.Close()
			return nil, err
		}
		t := tables[tname]
		if t == nil {
			t = &table{name: tname}
			tables[tname] = t
		}
		t.columns = append(t.columns, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	// Unique indexes over plain columns, without a predicate: the primary key first.
	rows, err = tx.Query(ctx, `
		SELECT c.relname, ARRAY(
			SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, ord)
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.num
			ORDER BY k.ord)
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND i.indisunique
		  AND i.indpred IS NULL AND i.indexprs IS NULL
		ORDER BY c.relname, i.indisprimary DESC, i.indexrelid`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var tname string
		var cols []string
		if err := rows.Scan(&tname, &cols); err != nil {
			rows.Close()
			return nil, err
		}
		if t := tables[tname]; t != nil {
			t.uniques = append(t.uniques, cols)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	rows, err = tx.Query(ctx, `
		SELECT cl.relname, pc.relname,
			ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord)
			      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.ord),
			ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord)
			      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.ord)
		FROM pg_constraint con
		JOIN pg_class cl ON cl.oid = con.conrelid
		JOIN pg_class pc ON pc.oid = con.confrelid
		JOIN pg_namespace n ON n.oid = cl.relnamespace
		WHERE con.contype = 'f' AND n.nspname = current_schema()
		ORDER BY cl.relname, con.conname`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var child string
		var fk foreignKey
		if err := rows.Scan(&child, &fk.parent, &fk.cols, &fk.pcols); err != nil {
			rows.Close()
			return nil, err
		}
		if t := tables[child]; t != nil {
			t.fks = append(t.fks, fk)
		}
	}
	rows.Close()
	return tables, rows.Err()
}

// tablePlan is how one table is copied.
type tablePlan struct {
	name  string
	cols  []string // the SQLite table's columns, all of which PostgreSQL's has
	kinds []kind   // per column
	t     *table
	fks   []foreignKey // the foreign keys over copied columns, to another table
}

// order ranks the gateway's tables: parents before the tables that reference them, small
// tables before the logs. Tables not named here come after, by name (and after their
// parents: plan sorts by foreign keys first).
var order = []string{
	"keys", "access_keys", "settings", "deleted_secrets", "sessions", "cooldowns",
	"upload_sessions", "resources", "request_usage", "access_key_usage", "request_logs", "error_logs",
}

// plan matches the SQLite tables with PostgreSQL's and orders them so that a table comes
// after the tables its foreign keys reference. It refuses a table or a column PostgreSQL
// lacks, a type it cannot convert to, and a table without a primary or unique key (a second
// run would copy its rows again).
func plan(src *source, dst map[string]*table) ([]*tablePlan, error) {
	var problems []string
	plans := map[string]*tablePlan{}
	for name, cols := range src.tables {
		t := dst[name]
		if t == nil {
			problems = append(problems, fmt.Sprintf("PostgreSQL has no table %s", name))
			continue
		}
		if len(t.uniques) == 0 {
			problems = append(problems, fmt.Sprintf("PostgreSQL's table %s has no primary or unique key", name))
			continue
		}
		p := &tablePlan{name: name, cols: cols, t: t}
		for _, c := range cols {
			pc, ok := t.column(c)
			if !ok {
				problems = append(problems, fmt.Sprintf("PostgreSQL's table %s has no column %s", name, c))
				continue
			}
			k, ok := kinds[pc.typ]
			if !ok {
				problems = append(problems, fmt.Sprintf("column %s.%s has type %s, which this program does not convert to", name, c, pc.typ))
				continue
			}
			p.kinds = append(p.kinds, k)
		}
		for _, u := range t.uniques {
			for _, c := range u {
				if !slices.Contains(cols, c) {
					problems = append(problems, fmt.Sprintf("SQLite's table %s lacks column %s of a PostgreSQL key", name, c))
				}
			}
		}
		for _, fk := range t.fks {
			if fk.parent == name || !containsAll(cols, fk.cols) {
				continue
			}
			p.fks = append(p.fks, fk)
		}
		plans[name] = p
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, fmt.Errorf("the schemas do not match (is this program older than the database?): %s", strings.Join(problems, "; "))
	}
	return sortPlans(plans)
}

func containsAll(set, sub []string) bool {
	for _, s := range sub {
		if !slices.Contains(set, s) {
			return false
		}
	}
	return true
}

// sortPlans orders plans parents first, by the rank of order, then by name.
func sortPlans(plans map[string]*tablePlan) ([]*tablePlan, error) {
	rank := func(name string) int {
		if i := slices.Index(order, name); i >= 0 {
			return i
		}
		return len(order)
	}
	pending := make([]*tablePlan, 0, len(plans))
	for _, p := range plans {
		pending = append(pending, p)
	}
	slices.SortFunc(pending, func(a, b *tablePlan) int {
		return cmp.Or(cmp.Compare(rank(a.name), rank(b.name)), cmp.Compare(a.name, b.name))
	})
	var out []*tablePlan
	done := map[string]bool{}
	for len(pending) > 0 {
		i := slices.IndexFunc(pending, func(p *tablePlan) bool {
			for _, fk := range p.fks {
				if plans[fk.parent] != nil && !done[fk.parent] {
					return false
				}
			}
			return true
		})
		if i < 0 {
			return nil, errors.New("the tables' foreign keys form a cycle")
		}
		done[pending[i].name] = true
		out = append(out, pending[i])
		pending = slices.Delete(pending, i, i+1)
	}
	return out, nil
}

// ---- copying one table

// lockTables locks the tables of plans against writes by others until the transaction ends
// (readers go on): no row can come in between a check and the insert it allows.
func lockTables(ctx context.Context, tx pgx.Tx, plans []*tablePlan) error {
	names := make([]string, len(plans))
	for i, p := range plans {
		names[i] = p.name
	}
	_, err := tx.Exec(ctx, `LOCK TABLE `+identList(names)+` IN SHARE ROW EXCLUSIVE MODE`)
	return err
}

// copyTable copies the rows of p's SQLite table in batches: COPY into a temporary table,
// refuse rows whose ids PostgreSQL holds for other rows, INSERT ... ON CONFLICT DO NOTHING
// the rest (those whose parent row exists), count what differs, empty the temporary table.
// Into an empty table without foreign keys (the logs, on a first run) the rows are copied
// directly, which is several times faster: nothing can conflict (SQLite's table has the same
// keys) and no parent can be missing.
func copyTable(ctx context.Context, src *source, tx pgx.Tx, p *tablePlan, o Options) (TableResult, error) {
	res := TableResult{Table: p.name}
	tgt := ident(p.name)
	rows, err := src.tx.QueryContext(ctx, fmt.Sprintf(`SELECT %s FROM %s`, identList(p.cols), ident(p.name)))
	if err != nil {
		return res, fmt.Errorf("read from SQLite: %w", err)
	}
	defer rows.Close()
	b := newBatchSource(rows, p, o.BatchSize)
	if len(p.fks) == 0 {
		var empty bool
		if err := tx.QueryRow(ctx, `SELECT NOT EXISTS (SELECT FROM `+tgt+`)`).Scan(&empty); err != nil {
			return res, err
		}
		if empty {
			return copyDirect(ctx, tx, p, b, o)
		}
	}
	tmp := ident("transfer_" + p.name)
	tcols := make([]string, len(p.cols))
	scols := make([]string, len(p.cols))
	for i, c := range p.cols {
		tcols[i] = "t." + ident(c)
		scols[i] = "s." + ident(c)
	}
	colList := identList(p.cols)
	if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA`,
		tmp, colList, tgt)); err != nil {
		return res, err
	}

	key := p.t.uniques[0]
	// Rows PostgreSQL holds under one of their keys but not the other: another database's
	// rows, whose ids the rows that reference them would mean differently.
	var clashes []string
	for _, u := range p.t.uniques[1:] {
		clashes = append(clashes,
			fmt.Sprintf(`SELECT count(*) FROM %s t JOIN %s s ON %s WHERE %s IS DISTINCT FROM %s`,
				tmp, tgt, match("s", "t", u), row("s", key), row("t", key)),
			fmt.Sprintf(`SELECT count(*) FROM %s t JOIN %s s ON %s WHERE %s IS DISTINCT FROM %s`,
				tmp, tgt, match("s", "t", key), row("s", u), row("t", u)))
	}
	parents := "true"
	if len(p.fks) > 0 {
		conds := make([]string, len(p.fks))
		for i, fk := range p.fks {
			var nulls []string
			for _, c := range fk.cols {
				nulls = append(nulls, "t."+ident(c)+" IS NULL")
			}
			var eq []string
			for j, c := range fk.cols {
				eq = append(eq, "p."+ident(fk.pcols[j])+" = t."+ident(c))
			}
			conds[i] = fmt.Sprintf("(%s OR EXISTS (SELECT 1 FROM %s p WHERE %s))",
				strings.Join(nulls, " OR "), ident(fk.parent), strings.Join(eq, " AND "))
		}
		parents = strings.Join(conds, " AND ")
	}
	overriding := ""
	for _, c := range p.t.columns {
		if c.identity {
			overriding = " OVERRIDING SYSTEM VALUE"
		}
	}
	insert := fmt.Sprintf(`INSERT INTO %s (%s)%s SELECT %s FROM %s t WHERE %s ON CONFLICT DO NOTHING`,
		tgt, colList, overriding, strings.Join(tcols, ", "), tmp, parents)
	orphans := fmt.Sprintf(`SELECT count(*) FROM %s t WHERE NOT (%s)`, tmp, parents)
	differing := fmt.Sprintf(`SELECT count(*) FROM %s t JOIN %s s ON %s WHERE ROW(%s) IS DISTINCT FROM ROW(%s)`,
		tmp, tgt, match("s", "t", key), strings.Join(tcols, ", "), strings.Join(scols, ", "))

	for batch := 1; !b.done; batch++ {
		b.n = 0
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"transfer_" + p.name}, p.cols, b)
		if b.err != nil {
			return res, b.err
		}
		if err != nil {
			return res, fmt.Errorf("copy: %w", err)
		}
		if n == 0 {
			break
		}
		res.Read += n
		for _, q := range clashes {
			var c int64
			if err := tx.QueryRow(ctx, q).Scan(&c); err != nil {
				return res, err
			}
			if c > 0 {
				return res, fmt.Errorf("PostgreSQL already holds %d other rows under the same keys (%s): "+
					"copy into an empty database, or one this command filled from the same file", c, strings.Join(key, ", "))
			}
		}
		if len(p.fks) > 0 {
			var c int64
			if err := tx.QueryRow(ctx, orphans).Scan(&c); err != nil {
				return res, err
			}
			res.Orphans += c
		}
		tag, err := tx.Exec(ctx, insert)
		if err != nil {
			return res, err
		}
		res.Copied += tag.RowsAffected()
		if res.Copied+res.Orphans < res.Read { // rows just inserted do not differ
			var d int64
			if err := tx.QueryRow(ctx, differing).Scan(&d); err != nil {
				return res, err
			}
			res.Differing += d
		}
		if _, err := tx.Exec(ctx, `TRUNCATE `+tmp); err != nil {
			return res, err
		}
		if batch > 1 || !b.done {
			fmt.Fprintf(o.Progress, "%s: %d rows read so far\n", p.name, res.Read)
		}
	}
	res.Present = res.Read - res.Copied - res.Orphans
	res.Cleaned = b.cleaned
	if _, err := tx.Exec(ctx, `DROP TABLE `+tmp); err != nil {
		return res, err
	}
	return res, nil
}

// copyDirect copies the rows of b into p's table, which is empty and has no foreign keys,
// with COPY in batches.
func copyDirect(ctx context.Context, tx pgx.Tx, p *tablePlan, b *batchSource, o Options) (TableResult, error) {
	res := TableResult{Table: p.name}
	for batch := 1; !b.done; batch++ {
		b.n = 0
		n, err := tx.CopyFrom(ctx, pgx.Identifier{p.name}, p.cols, b)
		if b.err != nil {
			return res, b.err
		}
		if err != nil {
			return res, fmt.Errorf("copy: %w", err)
		}
		res.Read += n
		res.Copied += n
		if n > 0 && (batch > 1 || !b.done) {
			fmt.Fprintf(o.Progress, "%s: %d rows read so far\n", p.name, res.Read)
		}
	}
	res.Cleaned = b.cleaned
	return res, nil
}

// ident quotes a name for PostgreSQL.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func identList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = ident(n)
	}
	return strings.Join(q, ", ")
}

// match is the join condition a.c = b.c over cols.
func match(a, b string, cols []string) string {
	eq := make([]string, len(cols))
	for i, c := range cols {
		eq[i] = a + "." + ident(c) + " = " + b + "." + ident(c)
	}
	return strings.Join(eq, " AND ")
}

// row is the row constructor ROW(alias.c, ...) over cols.
func row(alias string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = alias + "." + ident(c)
	}
	return "ROW(" + strings.Join(q, ", ") + ")"
}

// batchSource feeds COPY with up to limit rows of a SQLite query at a time, converted to the
// PostgreSQL columns' types (pgx.CopyFromSource).
type batchSource struct {
	rows    *sql.Rows
	p       *tablePlan
	raw     []any
	ptrs    []any
	vals    []any
	limit   int
	n       int   // rows given in this batch
	read    int64 // rows read so far
	done    bool  // the query has no more rows
	err     error
	cleaned int64
}

func newBatchSource(rows *sql.Rows, p *tablePlan, limit int) *batchSource {
	b := &batchSource{rows: rows, p: p, limit: limit,
		raw: make([]any, len(p.cols)), ptrs: make([]any, len(p.cols)), vals: make([]any, len(p.cols))}
	for i := range b.raw {
		b.ptrs[i] = &b.raw[i]
	}
	return b
}

// Next reads the next row, unless the batch is full or the rows are done.
func (b *batchSource) Next() bool {
	if b.n >= b.limit || b.done || b.err != nil {
		return false
	}
	if !b.rows.Next() {
		b.done = true
		if err := b.rows.Err(); err != nil {
			b.err = fmt.Errorf("read from SQLite: %w", err)
		}
		return false
	}
	b.read++
	if err := b.rows.Scan(b.ptrs...); err != nil {
		b.err = fmt.Errorf("read row %d from SQLite: %w", b.read, err)
		return false
	}
	for i, v := range b.raw {
		c, cleaned, err := convert(v, b.p.kinds[i])
		if err != nil {
			b.err = fmt.Errorf("row %d, column %s: %w", b.read, b.p.cols[i], err)
			return false
		}
		if cleaned {
			b.cleaned++
		}
		b.vals[i] = c
	}
	b.n++
	return true
}

// Values returns the row Next read; COPY encodes it before the next call.
func (b *batchSource) Values() ([]any, error) { return b.vals, nil }

// Err returns the error that stopped the rows, if any.
func (b *batchSource) Err() error { return b.err }

// convert turns a SQLite value into one for a PostgreSQL column of kind k. cleaned tells that
// text lost a NUL byte or invalid UTF-8. Errors do not quote the value.
func convert(v any, k kind) (_ any, cleaned bool, _ error) {
	if v == nil {
		return nil, false, nil
	}
	switch k {
	case kText:
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case []byte:
			s = string(x)
		case int64:
			s = strconv.FormatInt(x, 10)
		case float64:
			s = strconv.FormatFloat(x, 'g', -1, 64)
		default:
			return nil, false, fmt.Errorf("a %T where text belongs", v)
		}
		c := clean(s)
		return c, c != s, nil
	case kInt:
		switch x := v.(type) {
		case int64:
			return x, false, nil
		case float64:
			if x == math.Trunc(x) && x >= math.MinInt64 && x < math.MaxInt64 {
				return int64(x), false, nil
			}
		case string:
			if n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64); err == nil {
				return n, false, nil
			}
		case []byte:
			if n, err := strconv.ParseInt(strings.TrimSpace(string(x)), 10, 64); err == nil {
				return n, false, nil
			}
		case bool:
			if x {
				return int64(1), false, nil
			}
			return int64(0), false, nil
		}
		return nil, false, fmt.Errorf("a %T that is not an integer where an integer belongs", v)
	case kBool:
		switch x := v.(type) {
		case int64:
			return x != 0, false, nil
		case bool:
			return x, false, nil
		case float64:
			return x != 0, false, nil
		case string:
			if b, err := strconv.ParseBool(strings.TrimSpace(x)); err == nil {
				return b, false, nil
			}
		}
		return nil, false, fmt.Errorf("a %T that is not 0 or 1 where a flag belongs", v)
	case kBytes:
		switch x := v.(type) {
		case []byte:
			return x, false, nil
		case string:
			return []byte(x), false, nil
		}
		return nil, false, fmt.Errorf("a %T where bytes belong", v)
	case kFloat:
		switch x := v.(type) {
		case float64:
			return x, false, nil
		case int64:
			return float64(x), false, nil
		}
		return nil, false, fmt.Errorf("a %T where a number belongs", v)
	}
	return nil, false, fmt.Errorf("unknown kind %d", k)
}

// clean makes s storable as PostgreSQL text, which holds neither NUL bytes nor invalid UTF-8
// (SQLite keeps both): each is replaced with U+FFFD, as the PostgreSQL engine does.
func clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// ---- sequences

// moveSequences moves the identity sequence of every table copied above the highest id it
// holds, the highest id SQLite gave it (sqlite_sequence: an access key deleted since keeps its
// id) and the highest id other tables name in a column <singular>_id (key_id for keys,
// access_key_id for access_keys: the logs keep naming deleted keys), so that PostgreSQL never
// hands out an id a row already means. A sequence is only ever moved up.
func moveSequences(ctx context.Context, tx pgx.Tx, src *source, plans []*tablePlan) ([]SequenceResult, error) {
	var out []SequenceResult
	for _, p := range plans {
		for _, c := range p.t.columns {
			if !c.identity {
				continue
			}
			floor := src.seqs[p.name]
			queries := []string{fmt.Sprintf(`SELECT COALESCE(max(%s), 0) FROM %s`, ident(c.name), ident(p.name))}
			if c.name == "id" {
				ref := strings.TrimSuffix(p.name, "s") + "_id"
				for _, q := range plans {
					if col, ok := q.t.column(ref); ok && q.name != p.name && kinds[col.typ] == kInt {
						queries = append(queries, fmt.Sprintf(`SELECT COALESCE(max(%s), 0) FROM %s`, ident(ref), ident(q.name)))
					}
				}
			}
			for _, q := range queries {
				var m int64
				if err := tx.QueryRow(ctx, q).Scan(&m); err != nil {
					return nil, err
				}
				floor = max(floor, m)
			}
			var seq *string
			if err := tx.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, $2)`, ident(p.name), c.name).Scan(&seq); err != nil {
				return nil, err
			}
			if seq == nil {
				continue
			}
			var last *int64
			if err := tx.QueryRow(ctx, `SELECT pg_sequence_last_value($1::regclass)`, *seq).Scan(&last); err != nil {
				return nil, err
			}
			r := SequenceResult{Table: p.name, Column: c.name, Next: 1}
			if last != nil {
				r.Next = *last + 1
			}
			if floor > 0 && (last == nil || *last < floor) {
				if _, err := tx.Exec(ctx, `SELECT setval($1::regclass, $2)`, *seq, floor); err != nil {
					return nil, err
				}
				r.Next, r.Moved = floor+1, true
			}
			out = append(out, r)
		}
	}
	return out, nil
}
