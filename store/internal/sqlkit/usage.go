package sqlkit

import (
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// UsageQueries are an engine's statistics queries over one set of request rows: from the
// per-slot sums (Slot…), which outlive the rows, and from the rows themselves (Raw…). The
// bucket queries answer rows for Buckets, the by-model queries rows for ModelUsage.
type UsageQueries struct {
	SlotBuckets, RawBuckets, SlotByModel, RawByModel string
}

// Buckets checks the bounds of a UsageBuckets call (see store.CheckBuckets) and returns the
// query that answers it: from the per-slot sums when every bound is on store.UsageSlot.
func (q UsageQueries) Buckets(bounds []time.Time) (string, error) {
	slots, err := store.CheckBuckets(bounds)
	if err != nil {
		return "", err
	}
	if slots {
		return q.SlotBuckets, nil
	}
	return q.RawBuckets, nil
}

// ByModel returns the query that answers a UsageByModel call over [from, to): from the
// per-slot sums when both are on store.UsageSlot.
func (q UsageQueries) ByModel(from, to time.Time) string {
	if store.OnSlot(from) && store.OnSlot(to) {
		return q.SlotByModel
	}
	return q.RawByModel
}
