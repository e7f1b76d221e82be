//go:build cgo

package geminisynapse

// cgoEnabled tells whether this binary can use the SQLite driver (mattn/go-sqlite3 needs cgo).
const cgoEnabled = true
