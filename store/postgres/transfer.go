package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// SchemaVersion returns the schema version of this program: the one Open brings a database to,
// and the only one its statements are written for. A tool that writes a database directly
// (store/transfer) works only on a database at this version.
func SchemaVersion() int { return len(migrations) }

// LockSchema takes, for the rest of tx, the advisory lock under which Open migrates, and returns
// the database's schema version. While tx lasts no program changes the schema: an instance
// opening the database meanwhile waits for tx to end. It is for tools that write a database
// directly (store/transfer).
func LockSchema(ctx context.Context, tx pgx.Tx) (int, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
		return 0, fmt.Errorf("postgres: take the schema lock: %w", err)
	}
	return schemaVersion(ctx, tx)
}
