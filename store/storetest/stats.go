package storetest

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// logRequest logs one request row of tokens prompt tokens, twice as many candidates tokens
// and three times as many in all; the caller flushes.
func logRequest(s store.Store, at time.Time, model string, status int, keyID, accessID int64, tokens int64) {
	s.LogRequest(store.RequestLog{Time: at, Model: model, Status: status, KeyID: keyID, AccessKeyID: accessID,
		PromptTokens: tokens, CandidatesTokens: 2 * tokens, TotalTokens: 3 * tokens})
}

func testUsageBuckets(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	t0 := time.UnixMilli(1_750_000_000_000)
	h := time.Hour
	logRequest(s, t0.Add(-time.Millisecond), "m", 200, 1, 1, 1)   // before the first bucket
	logRequest(s, t0, "m", 200, 1, 1, 1)                          // bucket 0, at its start
	logRequest(s, t0.Add(h-time.Millisecond), "m", 500, 1, 1, 10) // bucket 0, at its end
	logRequest(s, t0.Add(h), "n", 429, 1, 1, 100)                 // bucket 1
	logRequest(s, t0.Add(h+1), "n", 301, 1, 1, 0)                 // bucket 1: 3xx succeeds
	logRequest(s, t0.Add(3*h), "n", 200, 1, 1, 5)                 // after the last bucket
	s.Flush()
	// Bucket 1 is 2 h long: bounds need not be evenly spaced (DST days are not).
	got, err := s.UsageBuckets(ctx, []time.Time{t0, t0.Add(h), t0.Add(3 * h)})
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Usage{
		{Requests: 2, Failures: 1, PromptTokens: 11, CandidatesTokens: 22, TotalTokens: 33},
		{Requests: 2, Failures: 1, PromptTokens: 100, CandidatesTokens: 200, TotalTokens: 300},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("buckets = %+v, want %+v", got, want)
	}
	// An empty bucket is all zeros.
	got, err = s.UsageBuckets(ctx, []time.Time{t0.Add(10 * h), t0.Add(11 * h)})
	if err != nil || len(got) != 1 || got[0] != (store.Usage{}) {
		t.Errorf("empty bucket = %+v, %v", got, err)
	}
	for _, bad := range [][]time.Time{{t0}, {t0, t0}, {t0.Add(h), t0}} {
		if _, err := s.UsageBuckets(ctx, bad); err == nil {
			t.Errorf("bounds %v accepted", bad)
		}
	}

	models, err := s.UsageByModel(ctx, t0, t0.Add(3*h), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(models) != 2 || models[0].Model != "m" || models[0].Requests != 2 || models[0].Failures != 1 ||
		models[0].TotalTokens != 33 || models[1].Model != "n" || models[1].Requests != 2 {
		t.Errorf("by model = %+v", models)
	}
	if models, _ := s.UsageByModel(ctx, t0, t0.Add(3*h), 1); len(models) != 1 {
		t.Errorf("limit 1 gave %d models", len(models))
	}
}

func testPurgeUsageKeepsSlotsEndingAfterTheCutoff(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	slot := time.UnixMilli(store.SlotOf(1_750_000_000_000))
	q := store.UsageSlot
	for _, at := range []time.Time{slot.Add(-2 * q), slot.Add(-q), slot.Add(-time.Millisecond), slot, slot.Add(q / 2), slot.Add(q)} {
		s.LogRequest(store.RequestLog{Time: at, Model: "m", Status: 200})
	}
	s.Flush()
	// The slot before cutoff ends at the cutoff and goes; the one holding it stays.
	for _, tc := range []struct {
		cutoff time.Time
		purged int64
	}{{slot, 2}, {slot.Add(q / 2), 0}, {slot.Add(q), 1}, {slot.Add(q), 0}} {
		if n, err := s.PurgeUsage(ctx, tc.cutoff); err != nil || n != tc.purged {
			t.Errorf("PurgeUsage(%v) = %d, %v; want %d", tc.cutoff, n, err, tc.purged)
		}
	}
	got, err := s.UsageBuckets(ctx, []time.Time{slot.Add(-2 * q), slot.Add(q), slot.Add(2 * q)})
	if err != nil || got[0].Requests != 0 || got[1].Requests != 1 {
		t.Errorf("after purge: %+v, %v; want only the slot from %v", got, err, slot.Add(q))
	}
}

// testAccessKeyUsageFigures checks AccessKeyUsage, UsageBucketsOf and UsageByModelOf on a few
// rows with known answers.
func testAccessKeyUsageFigures(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	t0 := time.UnixMilli(store.SlotOf(1_750_000_000_000))
	h := time.Hour
	for _, r := range []store.RequestLog{
		{Time: t0.Add(-time.Millisecond), AccessKeyID: 1, Model: "m", Status: 200, TotalTokens: 1000}, // before
		{Time: t0, AccessKeyID: 1, Model: "m", Status: 200, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3},
		{Time: t0.Add(h), AccessKeyID: 1, Model: "n", Status: 500, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30},
		{Time: t0.Add(h), AccessKeyID: 1, Model: "m", Status: 429, LimitHit: "rpm"},
		{Time: t0.Add(2 * h), AccessKeyID: 1, Model: "m", Status: 429, LimitHit: "rpm"},
		{Time: t0.Add(2 * h), AccessKeyID: 1, Model: "x", Status: 403, LimitHit: "models"},
		{Time: t0.Add(h), AccessKeyID: 2, Model: "m", Status: 200, TotalTokens: 7},
		{Time: t0.Add(h), AccessKeyID: 3, Model: "m", Status: 204, TotalTokens: 8},
		{Time: t0.Add(h), Model: "m", Status: 200, TotalTokens: 9},                                        // no access key
		{Time: t0.Add(3 * h), AccessKeyID: 2, Model: "m", Status: 200, TotalTokens: 1000},                 // at the end: out
		{Time: t0.Add(2 * h), AccessKeyID: 4, Model: "m", Status: 429, LimitHit: strings.Repeat("x", 40)}, // truncated
	} {
		s.LogRequest(r)
	}
	s.Flush()

	got, err := s.AccessKeyUsage(ctx, t0, t0.Add(3*h))
	if err != nil {
		t.Fatal(err)
	}
	want := []store.AccessKeyUsage{
		{AccessKeyID: 1, Requests: 5, Failures: 4, PromptTokens: 11, CandidatesTokens: 22, TotalTokens: 33, Limited: 3,
			LimitsHit: map[string]int64{"rpm": 2, "models": 1}},
		{AccessKeyID: 2, Requests: 1, TotalTokens: 7, LimitsHit: map[string]int64{}},
		{AccessKeyID: 3, Requests: 1, TotalTokens: 8, LimitsHit: map[string]int64{}},
		{AccessKeyID: 4, Requests: 1, Failures: 1, Limited: 1, LimitsHit: map[string]int64{strings.Repeat("x", 32): 1}},
	}
	if !sameAccessKeyUsage(got, want) {
		t.Errorf("AccessKeyUsage = %+v\nwant %+v", got, want)
	}
	// Off slot starts the rows answer: an hour and a millisecond less leaves key 1's first row out.
	got, err = s.AccessKeyUsage(ctx, t0.Add(time.Millisecond), t0.Add(3*h))
	if err != nil || len(got) != 4 || got[0].Requests != 4 || got[0].TotalTokens != 30 {
		t.Errorf("AccessKeyUsage off slots = %+v, %v", got, err)
	}
	if got, err := s.AccessKeyUsage(ctx, t0.Add(10*h), t0.Add(11*h)); err != nil || len(got) != 0 {
		t.Errorf("AccessKeyUsage of an empty range = %+v, %v", got, err)
	}

	buckets, err := s.UsageBucketsOf(ctx, 1, []time.Time{t0, t0.Add(h), t0.Add(3 * h)})
	if err != nil {
		t.Fatal(err)
	}
	wantBuckets := []store.Usage{
		{Requests: 1, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3},
		{Requests: 4, Failures: 4, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30},
	}
	if !slices.Equal(buckets, wantBuckets) {
		t.Errorf("UsageBucketsOf = %+v, want %+v", buckets, wantBuckets)
	}
	models, err := s.UsageByModelOf(ctx, 1, t0, t0.Add(3*h), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantModels := []store.ModelUsage{
		{Model: "m", Usage: store.Usage{Requests: 3, Failures: 2, PromptTokens: 1, CandidatesTokens: 2, TotalTokens: 3}},
		{Model: "n", Usage: store.Usage{Requests: 1, Failures: 1, PromptTokens: 10, CandidatesTokens: 20, TotalTokens: 30}},
		{Model: "x", Usage: store.Usage{Requests: 1, Failures: 1}},
	}
	if !slices.Equal(models, wantModels) {
		t.Errorf("UsageByModelOf = %+v, want %+v", models, wantModels)
	}
	if models, _ := s.UsageByModelOf(ctx, 1, t0, t0.Add(3*h), 1); len(models) != 1 {
		t.Errorf("limit 1 gave %d models", len(models))
	}
	if b, err := s.UsageBucketsOf(ctx, 99, []time.Time{t0, t0.Add(3 * h)}); err != nil || b[0] != (store.Usage{}) {
		t.Errorf("UsageBucketsOf(unknown) = %+v, %v; want zeros", b, err)
	}
	if _, err := s.UsageBucketsOf(ctx, 0, []time.Time{t0, t0.Add(h)}); err == nil {
		t.Error("UsageBucketsOf(0) answered")
	}
	if _, err := s.UsageByModelOf(ctx, 0, t0, t0.Add(h), 0); err == nil {
		t.Error("UsageByModelOf(0) answered")
	}
	for _, bad := range [][]time.Time{{t0}, {t0, t0}, {t0.Add(h), t0}} {
		if _, err := s.UsageBucketsOf(ctx, 1, bad); err == nil {
			t.Errorf("bounds %v accepted", bad)
		}
	}
}

// testAccessKeyCounts: what a start restores, requests not refused by a limit and tokens since
// a local midnight, read back after a restart.
func testAccessKeyCounts(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	loc := loadZone(t, "Asia/Kathmandu") // +05:45
	midnight := time.Date(2026, 3, 10, 0, 0, 0, 0, loc)
	for _, r := range []store.RequestLog{
		{Time: midnight.Add(-time.Millisecond), AccessKeyID: 1, Status: 200, TotalTokens: 1000}, // the day before
		{Time: midnight, AccessKeyID: 1, Status: 200, TotalTokens: 10},
		{Time: midnight.Add(5 * time.Hour), AccessKeyID: 1, Status: 500, TotalTokens: 0},
		{Time: midnight.Add(6 * time.Hour), AccessKeyID: 1, Status: 429, LimitHit: "rpm"},
		{Time: midnight.Add(7 * time.Hour), AccessKeyID: 1, Status: 429, LimitHit: "token_budget"},
		{Time: midnight.Add(7 * time.Hour), AccessKeyID: 2, Status: 200, TotalTokens: 5},
		{Time: midnight.Add(8 * time.Hour), AccessKeyID: 2, Status: 200, TotalTokens: 6},
		{Time: midnight.Add(8 * time.Hour), AccessKeyID: 3, Status: 403, LimitHit: "models"},
		{Time: midnight.Add(-time.Hour), AccessKeyID: 4, Status: 200, TotalTokens: 99}, // only before
		{Time: midnight.Add(time.Hour), Status: 200, TotalTokens: 77},                  // no access key
	} {
		s.LogRequest(r)
	}
	if err := s.Close(); err != nil { // a stop writes what is queued
		t.Fatal(err)
	}
	s = o.open(t)
	got, err := s.AccessKeyCounts(ctx, midnight)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]store.Counts{1: {Requests: 2, Tokens: 10}, 2: {Requests: 2, Tokens: 11}, 3: {Requests: 0, Tokens: 0}}
	if !maps.Equal(got, want) {
		t.Errorf("AccessKeyCounts(midnight) = %v, want %v", got, want)
	}
	// Off a slot start, the slot holding since counts whole.
	got, err = s.AccessKeyCounts(ctx, midnight.Add(time.Minute))
	if err != nil || !maps.Equal(got, want) {
		t.Errorf("AccessKeyCounts(00:01) = %v, %v; want %v", got, err, want)
	}
	got, err = s.AccessKeyCounts(ctx, midnight.Add(-24*time.Hour))
	if err != nil || got[1] != (store.Counts{Requests: 3, Tokens: 1010}) || got[4] != (store.Counts{Requests: 1, Tokens: 99}) {
		t.Errorf("AccessKeyCounts(the day before) = %v, %v", got, err)
	}
	if got, err := s.AccessKeyCounts(ctx, midnight.Add(24*time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("AccessKeyCounts(tomorrow) = %v, %v; want none", got, err)
	}
}

// testPurgeUsagePurgesAccessKeySums: the per-access-key sums go with the others, by the same
// cutoff, and AccessKeyCounts no longer sees them.
func testPurgeUsagePurgesAccessKeySums(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	slot := time.UnixMilli(store.SlotOf(1_750_000_000_000))
	q := store.UsageSlot
	for _, at := range []time.Time{slot.Add(-2 * q), slot.Add(-time.Millisecond), slot, slot.Add(q)} {
		s.LogRequest(store.RequestLog{Time: at, AccessKeyID: 5, Model: "m", Status: 200, TotalTokens: 1})
		s.LogRequest(store.RequestLog{Time: at, AccessKeyID: 5, Model: "m", Status: 429, LimitHit: "rpm"})
	}
	s.Flush()
	// Two slots end at or before the cutoff: 2 sums per slot and model, 4 per slot, access key,
	// model and limit hit.
	if n, err := s.PurgeUsage(ctx, slot); err != nil || n != 6 {
		t.Fatalf("PurgeUsage = %d, %v; want 6", n, err)
	}
	if b, err := s.UsageBucketsOf(ctx, 5, []time.Time{slot.Add(-2 * q), slot, slot.Add(2 * q)}); err != nil ||
		len(b) != 2 || b[0].Requests != 0 || b[1].Requests != 4 {
		t.Errorf("per-access-key sums after the purge = %+v, %v; want none before the cutoff, 4 requests after", b, err)
	}
	got, err := s.AccessKeyCounts(ctx, slot.Add(-24*time.Hour))
	if err != nil || got[5] != (store.Counts{Requests: 2, Tokens: 2}) {
		t.Errorf("AccessKeyCounts after the purge = %v, %v; want 2 requests and 2 tokens", got, err)
	}
	if n := countRequests(t, s); n != 8 {
		t.Errorf("PurgeUsage touched request rows: %d left", n)
	}
}

func loadZone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func sameAccessKeyUsage(a, b []store.AccessKeyUsage) bool {
	return slices.EqualFunc(a, b, func(x, y store.AccessKeyUsage) bool {
		return x.AccessKeyID == y.AccessKeyID && x.Requests == y.Requests && x.Failures == y.Failures &&
			x.PromptTokens == y.PromptTokens && x.CandidatesTokens == y.CandidatesTokens &&
			x.TotalTokens == y.TotalTokens && x.Limited == y.Limited && x.LimitsHit != nil && y.LimitsHit != nil &&
			maps.Equal(x.LimitsHit, y.LimitsHit)
	})
}
