package store

import (
	"errors"
	"fmt"
	"time"
)

// Usage adds up request log rows. A request succeeded when its status is 2xx or 3xx.
type Usage struct {
	Requests         int64
	Failures         int64
	PromptTokens     int64
	CandidatesTokens int64
	TotalTokens      int64
}

// ModelUsage is the usage of one model.
type ModelUsage struct {
	Model string
	Usage
}

// AccessKeyUsage is the usage of one access key in a range.
type AccessKeyUsage struct {
	AccessKeyID      int64
	Requests         int64 // all of its requests, those refused by one of its limits included
	Failures         int64 // requests whose status was not 2xx or 3xx (refused ones included)
	PromptTokens     int64
	CandidatesTokens int64
	TotalTokens      int64
	Limited          int64            // requests refused by one of its limits
	LimitsHit        map[string]int64 // Limited by the limit that refused them (rpm, tpm, ...); never nil
}

// Counts is what an access key's limits have used since a time.
type Counts struct {
	Requests int64 // requests not refused by one of its limits
	Tokens   int64 // total tokens of its requests
}

// Failed reports whether a request with status failed: its status is not 2xx or 3xx.
func Failed(status int) bool { return status < 200 || status > 399 }

// UsageSlot is the step of the per-model sums of the request log that UsageBuckets and
// UsageByModel read when every bound they are given is a whole multiple of it since the Unix
// epoch. Local hours and midnights are, in every time zone in use (offsets are whole quarter
// hours: +05:30, +05:45 and +12:45 included). Other bounds are answered from the request rows;
// both give the same figures while the rows are kept.
const UsageSlot = 15 * time.Minute

// SlotMS is UsageSlot in milliseconds.
const SlotMS = int64(UsageSlot / time.Millisecond)

// SlotOf returns the start of the slot holding ms, unix milliseconds (rounding down, also
// before 1970).
func SlotOf(ms int64) int64 {
	r := ms % SlotMS
	if r < 0 {
		r += SlotMS
	}
	return ms - r
}

// OnSlot reports whether t, taken to the millisecond as every query does, starts a slot. The
// zero time counts as unix millisecond 0.
func OnSlot(t time.Time) bool {
	ms := unixMS(t)
	return SlotOf(ms) == ms
}

// unixMS converts t to unix milliseconds; the zero time becomes 0.
func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// MaxBuckets bounds the number of buckets one UsageBuckets call may ask for.
const MaxBuckets = 1000

// CheckBuckets checks the bounds of a UsageBuckets call: at least two, increasing, at most
// MaxBuckets buckets. onSlots reports whether every bound is on UsageSlot, so that the call
// may be answered from the per-slot sums.
func CheckBuckets(bounds []time.Time) (onSlots bool, err error) {
	n := len(bounds) - 1
	if n < 1 {
		return false, errors.New("store: usage buckets: need at least two bounds")
	}
	if n > MaxBuckets {
		return false, fmt.Errorf("store: usage buckets: %d buckets, at most %d", n, MaxBuckets)
	}
	slots := true
	for i := range n {
		if !bounds[i].Before(bounds[i+1]) {
			return false, fmt.Errorf("store: usage buckets: bound %d is not after bound %d", i+1, i)
		}
		slots = slots && OnSlot(bounds[i])
	}
	return slots && OnSlot(bounds[n]), nil
}

// UsageRetention is how long the per-slot sums of the request log (see UsageSlot) are kept at
// least: a year and a month, so the dashboard's figures outlive the request rows. They are
// small, a row per quarter hour and model used in it (and per access key, for the sums of
// each access key's usage).
const UsageRetention = 400 * 24 * time.Hour

// BudgetHistory is how far back AccessKeyCounts must see for a start to restore the longest
// token budget period, a month. The sums per access key are kept for UsageRetention (or
// longer, with a longer request_log_retention), which this checks at compile time: if
// UsageRetention were shorter, PurgeUsage would have to keep them for BudgetHistory.
const BudgetHistory = 32 * 24 * time.Hour

const _ = uint64(UsageRetention - BudgetHistory) // does not compile if UsageRetention < BudgetHistory
