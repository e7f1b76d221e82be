package admin

import (
	"net/http"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// statsRange is one choice of GET P/api/stats?range=.
type statsRange struct {
	buckets int
	bucket  string // "1h", "6h" or "1d"
}

var statsRanges = map[string]statsRange{
	"24h": {24, "1h"},
	"7d":  {28, "6h"},
	"30d": {30, "1d"},
}

// statsBounds returns the bucket bounds of a range ending with the bucket that holds now:
// hours start on the local hour (a repeated hour after clocks go back is two buckets with the
// same label and their own offsets; a skipped one is no bucket), six-hour blocks at 00, 06, 12
// and 18 local, days at local midnight; so a day or a block across a DST change lasts an hour
// more or less.
func statsBounds(rg statsRange, now time.Time, loc *time.Location) []time.Time {
	now = now.In(loc)
	y, m, d := now.Date()
	n := rg.buckets
	bounds := make([]time.Time, 0, n+1)
	switch rg.bucket {
	case "1d":
		for i := n - 1; i >= -1; i-- {
			bounds = append(bounds, time.Date(y, m, d-i, 0, 0, 0, 0, loc))
		}
	case "6h":
		// Calendar arithmetic, not 6 h steps: the block starts stay at 00/06/12/18 local
		// on both sides of a DST change (time.Date normalises a negative hour into the
		// days before).
		h0 := now.Hour() - now.Hour()%6
		for i := n - 1; i >= -1; i-- {
			bounds = append(bounds, time.Date(y, m, d, h0-6*i, 0, 0, 0, loc))
		}
	default:
		// The start of the current local hour, as an instant: time.Date would pick the
		// first of two 02:00s on the night clocks go back.
		cur := now.Add(-(time.Duration(now.Minute())*time.Minute +
			time.Duration(now.Second())*time.Second + time.Duration(now.Nanosecond())))
		for i := n - 1; i >= -1; i-- {
			bounds = append(bounds, cur.Add(-time.Duration(i)*time.Hour))
		}
	}
	// A local midnight or block start that does not exist maps onto a valid time, possibly
	// the same as its neighbour; drop a bound that would not be after the one before.
	out := bounds[:1]
	for _, b := range bounds[1:] {
		if b.After(out[len(out)-1]) {
			out = append(out, b)
		}
	}
	return out
}

// stats answers the dashboard's figures for a range.
func (h *Handler) stats(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	name := r.URL.Query().Get("range")
	if name == "" {
		name = "24h"
	}
	rg, ok := statsRanges[name]
	if !ok {
		badField(w, "range", "must be 24h, 7d or 30d")
		return
	}
	loc := h.Backend.Location()
	bounds := statsBounds(rg, h.now(), loc)
	ctx := r.Context()
	buckets, err := h.Backend.Usage(ctx, bounds)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	models, err := h.Backend.UsageByModel(ctx, bounds[0], bounds[len(bounds)-1])
	if err != nil {
		writeBackendError(w, err)
		return
	}
	keys, err := h.Backend.Keys(ctx)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	type point struct {
		T       Time  `json:"t"`
		Success int64 `json:"success"`
		Failure int64 `json:"failure"`
		Tokens  int64 `json:"tokens"`
	}
	type model struct {
		Model    string `json:"model"`
		Requests int64  `json:"requests"`
		Failures int64  `json:"failures"`
		Tokens   int64  `json:"tokens"`
	}
	var total store.Usage
	trend := make([]point, len(buckets))
	for i, b := range buckets {
		trend[i] = point{T: Time(bounds[i].In(loc)), Success: b.Requests - b.Failures, Failure: b.Failures, Tokens: b.TotalTokens}
		total.Requests += b.Requests
		total.Failures += b.Failures
		total.PromptTokens += b.PromptTokens
		total.CandidatesTokens += b.CandidatesTokens
		total.TotalTokens += b.TotalTokens
	}
	ms := make([]model, len(models))
	for i, m := range models {
		ms[i] = model{Model: m.Model, Requests: m.Requests, Failures: m.Failures, Tokens: m.TotalTokens}
	}
	counts := map[string]int{KeyActive: 0, KeyCooling: 0, KeyDisabled: 0}
	for _, k := range keys {
		counts[k.Status]++
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"range":    name,
		"bucket":   rg.bucket,
		"timezone": loc.String(),
		"from":     Time(bounds[0].In(loc)),
		"to":       Time(bounds[len(bounds)-1].In(loc)),
		"requests": map[string]int64{"total": total.Requests, "success": total.Requests - total.Failures, "failure": total.Failures},
		"tokens":   map[string]int64{"prompt": total.PromptTokens, "candidates": total.CandidatesTokens, "total": total.TotalTokens},
		"keys":     counts,
		"trend":    trend,
		"models":   ms,
	})
}
