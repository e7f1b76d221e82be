package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func testRecentLogsFilterAndOrder(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	for i := range 10 {
		model := "gemini-2.5-flash"
		if i%2 == 1 {
			model = "gemini-2.5-pro"
		}
		s.LogRequest(store.RequestLog{Time: t0.Add(time.Duration(i) * time.Second), KeyID: int64(1 + i%3), Model: model, Status: 200 + i%2*229})
		s.LogError(store.ErrorLog{Time: t0.Add(time.Duration(i) * time.Second), KeyID: int64(1 + i%3), Model: model, Status: 429 + i%2, Message: "e"})
	}
	want := store.RequestLog{
		Time: t0.Add(time.Hour), AccessKeyID: 7, KeyID: 3, Method: "POST",
		Path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent", Model: "gemini-2.5-pro", Stream: true,
		Status: 200, Attempts: 2, Latency: 1234567 * time.Microsecond, TTFB: 456 * time.Microsecond,
		PromptTokens: 11, CandidatesTokens: 22, ThoughtsTokens: 33, TotalTokens: 66, Error: "first attempt: 429",
	}
	s.LogRequest(want)
	s.Flush()

	got, err := s.RecentRequests(ctx, store.LogQuery{Limit: 1})
	if err != nil || len(got) != 1 {
		t.Fatalf("RecentRequests = %v, %v", got, err)
	}
	if got[0] != want {
		t.Errorf("round trip:\n got %+v\nwant %+v", got[0], want)
	}

	got, err = s.RecentRequests(ctx, store.LogQuery{Model: "gemini-2.5-flash"})
	if err != nil || len(got) != 5 {
		t.Fatalf("by model: %d rows, %v", len(got), err)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Model != "gemini-2.5-flash" || !got[i].Time.Before(got[i-1].Time) {
			t.Errorf("row %d: %+v not newest first / wrong model", i, got[i])
		}
	}
	got, _ = s.RecentRequests(ctx, store.LogQuery{KeyID: 1, Status: 200})
	if len(got) != 2 { // i = 0, 6
		t.Errorf("key 1, status 200: %d rows, want 2", len(got))
	}
	errs, err := s.RecentErrors(ctx, store.LogQuery{Status: 430, Limit: 3})
	if err != nil || len(errs) != 3 {
		t.Fatalf("RecentErrors = %v, %v", errs, err)
	}
	if errs[0].Time != t0.Add(9*time.Second) || errs[0].Model != "gemini-2.5-pro" || errs[0].Message != "e" {
		t.Errorf("newest error = %+v", errs[0])
	}
	n, err := s.CountRequestLogs(ctx)
	if err != nil || n != 11 {
		t.Errorf("CountRequestLogs = %d, %v", n, err)
	}
}

func testLogPagingAndFilters(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	t0 := time.UnixMilli(1_750_000_000_000)
	for i := range 25 {
		logRequest(s, t0.Add(time.Duration(i)*time.Second), []string{"a", "b"}[i%2], 200+i%2*300, int64(1+i%3), int64(1+i%5), 1)
	}
	s.Flush()
	q := store.LogQuery{Limit: 10, Offset: 10}
	rows, err := s.RecentRequests(ctx, q)
	if err != nil || len(rows) != 10 {
		t.Fatalf("page 2 = %d rows, %v", len(rows), err)
	}
	// Newest first: row 24 is first on page 1, so page 2 starts with row 14.
	if !rows[0].Time.Equal(t0.Add(14*time.Second)) || !rows[9].Time.Equal(t0.Add(5*time.Second)) {
		t.Errorf("page 2 spans %v..%v", rows[0].Time, rows[9].Time)
	}
	if n, err := s.CountRequests(ctx, q); err != nil || n != 25 {
		t.Errorf("count = %d, %v; want 25", n, err)
	}
	if rows, _ := s.RecentRequests(ctx, store.LogQuery{Limit: 10, Offset: 20}); len(rows) != 5 {
		t.Errorf("last page has %d rows, want 5", len(rows))
	}
	f := store.LogQuery{Model: "b", Status: 500, KeyID: 2, AccessKeyID: 4}
	n, err := s.CountRequests(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = s.RecentRequests(ctx, f)
	var want int64
	for i := range 25 {
		if i%2 == 1 && 1+i%3 == 2 && 1+i%5 == 4 {
			want++
		}
	}
	if n != want || int64(len(rows)) != want || want == 0 {
		t.Fatalf("filtered: count %d, rows %d, want %d", n, len(rows), want)
	}
	for _, r := range rows {
		if r.Model != "b" || r.Status != 500 || r.KeyID != 2 || r.AccessKeyID != 4 {
			t.Errorf("row outside the filter: %+v", r)
		}
	}
	s.LogError(store.ErrorLog{Time: t0, KeyID: 7, Model: "a", Status: 503, Message: "x"})
	s.LogError(store.ErrorLog{Time: t0.Add(time.Second), KeyID: 8, Model: "a", Status: 503, Message: "y"})
	s.Flush()
	if n, _ := s.CountErrors(ctx, store.LogQuery{KeyID: 8}); n != 1 {
		t.Errorf("error count for key 8 = %d", n)
	}
	if errs, _ := s.RecentErrors(ctx, store.LogQuery{Limit: 1, Offset: 1}); len(errs) != 1 || errs[0].Message != "x" {
		t.Errorf("second error row = %+v", errs)
	}
}

func testCloseWritesEverythingQueued(t *testing.T, o opener) {
	s := o.open(t)
	for i := range 10000 {
		s.LogRequest(store.RequestLog{Time: time.Now(), Model: "m", Status: 200, Attempts: 1, Path: fmt.Sprint("/p/", i)})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if s.Dropped() != 0 {
		t.Fatalf("dropped %d rows", s.Dropped())
	}
	if s.Written() != 10000 {
		t.Fatalf("Written() = %d, want 10000", s.Written())
	}
	s.LogRequest(store.RequestLog{}) // after Close: ignored, no panic
	s.Flush()                        // after Close: returns

	s = o.open(t)
	if n := countRequests(t, s); n != 10000 {
		t.Fatalf("%d rows after Close, want 10000", n)
	}
}

// testLoggingDuringCloseLosesNothingUncounted: rows logged by many goroutines while the store
// closes are each either written or counted as dropped, none silently lost.
func testLoggingDuringCloseLosesNothingUncounted(t *testing.T, o opener) {
	s := o.open(t)
	const loggers, rows = 8, 2000
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range loggers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range rows {
				s.LogRequest(store.RequestLog{Time: time.Now(), Status: 200})
			}
		}()
	}
	close(start)
	time.Sleep(time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if w, d := s.Written(), s.Dropped(); w+d != loggers*rows {
		t.Errorf("written %d + dropped %d = %d, want %d rows accounted for", w, d, w+d, loggers*rows)
	}
}

func testUsageCountersAreAggregated(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	keys := addKeys(t, s, "a", "b", "c")
	a, b := keys[0].ID, keys[1].ID
	ak, err := s.AddAccessKey(ctx, "client", "", "")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.UnixMilli(1_700_000_000_000)

	// One request tried b twice (both failed) then succeeded on a; two more succeeded on a; one
	// had no upstream key at all.
	s.LogError(store.ErrorLog{Time: t0, KeyID: b, AccessKeyID: ak, Status: 429})
	s.LogError(store.ErrorLog{Time: t0.Add(time.Second), KeyID: b, AccessKeyID: ak, Status: 500})
	s.LogRequest(store.RequestLog{Time: t0.Add(5 * time.Second), KeyID: a, AccessKeyID: ak, Status: 200, Attempts: 3})
	s.LogRequest(store.RequestLog{Time: t0.Add(3 * time.Second), KeyID: a, Status: 200, Attempts: 1})
	s.LogRequest(store.RequestLog{Time: t0.Add(2 * time.Second), KeyID: a, Status: 200, Attempts: 1})
	s.LogRequest(store.RequestLog{Time: t0.Add(9 * time.Second), AccessKeyID: ak, Status: 401})
	s.Flush()
	// A later batch adds up; an older time does not move last_used_at back.
	s.LogRequest(store.RequestLog{Time: t0, KeyID: a, Status: 200, Attempts: 1})
	s.Flush()

	keys, _ = s.Keys(ctx)
	check := func(k store.Key, requests, failed int64, last time.Time) {
		t.Helper()
		if k.Requests != requests || k.FailedRequests != failed || !k.LastUsedAt.Equal(last) {
			t.Errorf("key %d: requests=%d failed=%d last=%v, want %d %d %v", k.ID, k.Requests, k.FailedRequests, k.LastUsedAt, requests, failed, last)
		}
	}
	check(keys[0], 4, 0, t0.Add(5*time.Second))
	check(keys[1], 2, 2, t0.Add(time.Second))
	check(keys[2], 0, 0, time.Time{})
	list, _ := s.AccessKeys(ctx)
	if !list[0].LastUsedAt.Equal(t0.Add(9 * time.Second)) {
		t.Errorf("access key last used %v, want %v", list[0].LastUsedAt, t0.Add(9*time.Second))
	}
}

func testLongTextIsTruncatedOnRuneBoundary(t *testing.T, o opener) {
	s := o.open(t)
	long := strings.Repeat("é", 3000) // 2 bytes each
	s.LogRequest(store.RequestLog{Time: time.Now(), Path: "/" + long, Error: "x" + long})
	s.LogError(store.ErrorLog{Time: time.Now(), Message: long})
	s.Flush()
	ctx := context.Background()
	reqs, _ := s.RecentRequests(ctx, store.LogQuery{})
	errs, _ := s.RecentErrors(ctx, store.LogQuery{})
	if len(reqs) != 1 || len(errs) != 1 {
		t.Fatalf("rows: %d requests, %d errors", len(reqs), len(errs))
	}
	for _, text := range []string{reqs[0].Path, reqs[0].Error, errs[0].Message} {
		if len(text) > 1000 || len(text) < 998 || !utf8.ValidString(text) {
			t.Errorf("stored %d bytes, valid UTF-8 %v", len(text), utf8.ValidString(text))
		}
	}
}

func testPurgeKeepsRowsAtAndAfterTheCutoff(t *testing.T, o opener) {
	s := o.open(t)
	ctx := context.Background()
	cutoff := time.UnixMilli(1_750_000_000_000).UTC()
	for _, at := range []time.Time{
		cutoff.Add(-40 * 24 * time.Hour), cutoff.Add(-time.Hour), cutoff.Add(-time.Millisecond), // old
		cutoff, cutoff.Add(time.Millisecond), cutoff.Add(time.Hour), // kept
	} {
		s.LogRequest(store.RequestLog{Time: at, Path: "/r"})
		s.LogError(store.ErrorLog{Time: at, Path: "/e", Message: "m"})
	}
	s.Flush()

	n, err := s.PurgeRequestLogs(ctx, cutoff)
	if err != nil || n != 3 {
		t.Fatalf("PurgeRequestLogs = %d, %v; want 3", n, err)
	}
	reqs, _ := s.RecentRequests(ctx, store.LogQuery{})
	if len(reqs) != 3 || reqs[2].Time != cutoff {
		t.Errorf("request rows left: %+v; want the 3 at or after %v", reqs, cutoff)
	}
	for _, r := range reqs {
		if r.Time.Before(cutoff) {
			t.Errorf("row at %v survived", r.Time)
		}
	}
	// Error rows have their own retention: a cutoff an hour earlier keeps one more row.
	n, err = s.PurgeErrorLogs(ctx, cutoff.Add(-time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("PurgeErrorLogs = %d, %v; want 1", n, err)
	}
	errs, _ := s.RecentErrors(ctx, store.LogQuery{})
	if len(errs) != 5 || errs[4].Time != cutoff.Add(-time.Hour) {
		t.Errorf("error rows left: %+v", errs)
	}
	// Purging again finds nothing.
	if n, err := s.PurgeRequestLogs(ctx, cutoff); err != nil || n != 0 {
		t.Errorf("second purge = %d, %v", n, err)
	}
	if n := countRequests(t, s); n != 3 {
		t.Errorf("request rows after second purge: %d", n)
	}
}
