package store

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"
)

func TestSessionsLifecycle(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	now := time.UnixMilli(1_750_000_000_000)
	a, b, c := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b")), sha256.Sum256([]byte("c"))
	for _, h := range [][32]byte{a, b, c} {
		if err := s.CreateSession(ctx, h, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	exp, ok, err := s.SessionExpiry(ctx, a, now)
	if err != nil || !ok || !exp.Equal(now.Add(time.Hour)) {
		t.Fatalf("SessionExpiry(a) = %v %v %v", exp, ok, err)
	}
	// Expired at its expiry instant, and unknown tokens are not sessions.
	if _, ok, err := s.SessionExpiry(ctx, a, now.Add(time.Hour)); ok || err != nil {
		t.Errorf("session alive at its expiry: %v %v", ok, err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, sha256.Sum256([]byte("x")), now); ok {
		t.Error("unknown token accepted")
	}
	if err := s.DeleteSession(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, b, now); ok {
		t.Error("deleted session still valid")
	}
	if err := s.DeleteSession(ctx, b); err != nil {
		t.Errorf("deleting an unknown session: %v", err)
	}
	// Ending all but a leaves a only; the zero hash ends them all.
	if n, err := s.DeleteSessionsExcept(ctx, a); err != nil || n != 1 {
		t.Fatalf("DeleteSessionsExcept(a) = %d, %v; want 1 (c)", n, err)
	}
	if _, ok, _ := s.SessionExpiry(ctx, a, now); !ok {
		t.Error("kept session ended")
	}
	if _, ok, _ := s.SessionExpiry(ctx, c, now); ok {
		t.Error("other session survived")
	}
	if n, err := s.DeleteSessionsExcept(ctx, [32]byte{}); err != nil || n != 1 {
		t.Fatalf("DeleteSessionsExcept(zero) = %d, %v; want 1", n, err)
	}
	if n := countRows(t, s, "sessions"); n != 0 {
		t.Errorf("%d sessions left", n)
	}
}

func TestSetSettingsIsAPanelEdit(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	if _, err := s.ApplyConfigSetting(ctx, "max_retries", "3"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSettings(ctx, map[string]string{"max_retries": "5", "timezone": "Europe/Berlin"}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Settings(ctx)
	if err != nil || all["max_retries"] != "5" || all["timezone"] != "Europe/Berlin" {
		t.Fatalf("settings = %v, %v", all, err)
	}
	// The same Caddyfile value again keeps the panel's edit; a new one wins.
	if applied, _ := s.ApplyConfigSetting(ctx, "max_retries", "3"); applied {
		t.Error("an unchanged Caddyfile value overrode the panel's edit")
	}
	if applied, _ := s.ApplyConfigSetting(ctx, "max_retries", "4"); !applied {
		t.Error("a changed Caddyfile value did not win")
	}
	if all, _ := s.Settings(ctx); all["max_retries"] != "4" {
		t.Errorf("max_retries = %q, want 4", all["max_retries"])
	}
}

// insertRequest writes one request row directly, so that its time is exact.
func insertRequest(t *testing.T, s *Store, at time.Time, model string, status int, keyID, accessID int64, tokens int64) {
	t.Helper()
	_, err := s.db.Exec(`INSERT INTO request_logs (time, model, status, key_id, access_key_id, prompt_tokens,
		candidates_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		toMS(at), model, status, keyID, accessID, tokens, 2*tokens, 3*tokens)
	if err != nil {
		t.Fatal(err)
	}
}

func TestUsageBuckets(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(1_750_000_000_000)
	h := time.Hour
	insertRequest(t, s, t0.Add(-time.Millisecond), "m", 200, 1, 1, 1)   // before the first bucket
	insertRequest(t, s, t0, "m", 200, 1, 1, 1)                          // bucket 0, at its start
	insertRequest(t, s, t0.Add(h-time.Millisecond), "m", 500, 1, 1, 10) // bucket 0, at its end
	insertRequest(t, s, t0.Add(h), "n", 429, 1, 1, 100)                 // bucket 1
	insertRequest(t, s, t0.Add(h+1), "n", 301, 1, 1, 0)                 // bucket 1: 3xx succeeds
	insertRequest(t, s, t0.Add(3*h), "n", 200, 1, 1, 5)                 // after the last bucket
	// Bucket 1 is 2 h long: bounds need not be evenly spaced (DST days are not).
	got, err := s.UsageBuckets(ctx, []time.Time{t0, t0.Add(h), t0.Add(3 * h)})
	if err != nil {
		t.Fatal(err)
	}
	want := []Usage{
		{Requests: 2, Failures: 1, PromptTokens: 11, CandidatesTokens: 22, TotalTokens: 33},
		{Requests: 2, Failures: 1, PromptTokens: 100, CandidatesTokens: 200, TotalTokens: 300},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("buckets = %+v, want %+v", got, want)
	}
	// An empty bucket is all zeros.
	got, err = s.UsageBuckets(ctx, []time.Time{t0.Add(10 * h), t0.Add(11 * h)})
	if err != nil || len(got) != 1 || got[0] != (Usage{}) {
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

func TestLogPagingAndFilters(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "d.db"), nil, nil)
	ctx := context.Background()
	t0 := time.UnixMilli(1_750_000_000_000)
	for i := range 25 {
		insertRequest(t, s, t0.Add(time.Duration(i)*time.Second), []string{"a", "b"}[i%2], 200+i%2*300, int64(1+i%3), int64(1+i%5), 1)
	}
	q := LogQuery{Limit: 10, Offset: 10}
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
	if rows, _ := s.RecentRequests(ctx, LogQuery{Limit: 10, Offset: 20}); len(rows) != 5 {
		t.Errorf("last page has %d rows, want 5", len(rows))
	}
	f := LogQuery{Model: "b", Status: 500, KeyID: 2, AccessKeyID: 4}
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
	s.LogError(ErrorLog{Time: t0, KeyID: 7, Model: "a", Status: 503, Message: "x"})
	s.LogError(ErrorLog{Time: t0.Add(time.Second), KeyID: 8, Model: "a", Status: 503, Message: "y"})
	s.Flush()
	if n, _ := s.CountErrors(ctx, LogQuery{KeyID: 8}); n != 1 {
		t.Errorf("error count for key 8 = %d", n)
	}
	if errs, _ := s.RecentErrors(ctx, LogQuery{Limit: 1, Offset: 1}); len(errs) != 1 || errs[0].Message != "x" {
		t.Errorf("second error row = %+v", errs)
	}
}
