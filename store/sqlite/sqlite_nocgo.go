//go:build !cgo

package sqlite

// Without cgo, mattn/go-sqlite3 is a stub whose Open fails with a message naming
// CGO_ENABLED=1; these exist so that such a binary still builds and says so at start.

func isUniqueViolation(error) bool { return false }

func isBusy(error) bool { return false }
