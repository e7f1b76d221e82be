package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestRecentLogsFilterAndOrder(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
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

func TestLogPagingAndFilters(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(1_750_000_000_000)
	for i := range 25 {
		insertRequest(t, s, t0.Add(time.Duration(i)*time.Second), []string{"a", "b"}[i%2], 200+i%2*300, int64(1+i%3), int64(1+i%5), 1)
	}
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
