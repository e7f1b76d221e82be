package sqlkit

import (
	"context"
	"time"
)

// Purge are the settings of retention's deletes: small transactions with a break between
// them, so that a large purge never holds the database (or the log writer) for long.
type Purge struct {
	Batch int           // rows one transaction deletes at most
	Pause time.Duration // the break between two transactions
}

// Run calls del, which deletes at most p.Batch rows in a transaction of its own and returns
// how many, until it deletes fewer than p.Batch, pausing p.Pause between calls. It returns the
// rows deleted in all; the first error of del, or ctx's when it ends during a pause, comes with
// what was deleted until then.
func (p Purge) Run(ctx context.Context, del func(ctx context.Context, batch int) (int64, error)) (int64, error) {
	var total int64
	for {
		n, err := del(ctx, p.Batch)
		if err != nil {
			return total, err
		}
		total += n
		if n < int64(p.Batch) {
			return total, nil
		}
		t := time.NewTimer(p.Pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return total, ctx.Err()
		case <-t.C:
		}
	}
}
