// Package sqlkit is what the SQL engines (store/sqlite, store/postgres) share around their
// SQL, which stays theirs: the times they store, the decoding of the rows their queries answer
// (the column order of each decoder is the contract), the log filters where only the
// placeholders differ, the batched purge loop, the tombstone rules of adding secrets, and the
// settings of retention.
package sqlkit

import (
	"time"
)

// Rows are the rows of a query as both drivers answer them (*sql.Rows, pgx.Rows). The caller
// closes them.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ToMS converts t to unix milliseconds, as both engines store times; the zero time becomes 0.
func ToMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// FromMS converts unix milliseconds to a UTC time; 0 becomes the zero time.
func FromMS(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// collect returns what row makes of each of rows, in order, then rows' error.
func collect[T any](rows Rows, row func(Rows) (T, error)) ([]T, error) {
	var out []T
	for rows.Next() {
		v, err := row(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
