package admin

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"
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

// statsRangeOf reads ?range= (default 24h); for a bad one it answers 400 and returns false.
func statsRangeOf(w http.ResponseWriter, r *http.Request) (string, statsRange, bool) {
	name := r.URL.Query().Get("range")
	if name == "" {
		name = "24h"
	}
	rg, ok := statsRanges[name]
	if !ok {
		badField(w, "range", "must be 24h, 7d or 30d")
		return "", statsRange{}, false
	}
	return name, rg, true
}

// point is one bucket of a trend.
type point struct {
	T       Time  `json:"t"`
	Success int64 `json:"success"`
	Failure int64 `json:"failure"`
	Tokens  int64 `json:"tokens"`
}

// trendOf turns the usage of the buckets starting at bounds into a trend.
func trendOf(buckets []store.Usage, bounds []time.Time, loc *time.Location) []point {
	trend := make([]point, len(buckets))
	for i, b := range buckets {
		trend[i] = point{T: Time(bounds[i].In(loc)), Success: b.Requests - b.Failures, Failure: b.Failures, Tokens: b.TotalTokens}
	}
	return trend
}

// modelFigures is one model's line in the stats.
type modelFigures struct {
	Model    string `json:"model"`
	Requests int64  `json:"requests"`
	Failures int64  `json:"failures"`
	Tokens   int64  `json:"tokens"`
}

func modelsOf(models []store.ModelUsage) []modelFigures {
	ms := make([]modelFigures, len(models))
	for i, m := range models {
		ms[i] = modelFigures{Model: m.Model, Requests: m.Requests, Failures: m.Failures, Tokens: m.TotalTokens}
	}
	return ms
}

// accessKeyFigures is one access key's line in the stats.
type accessKeyFigures struct {
	ID         int64            `json:"id"`
	Label      string           `json:"label"`
	Requests   int64            `json:"requests"`
	Failures   int64            `json:"failures"`
	Tokens     int64            `json:"tokens"`
	Limited    int64            `json:"limited"`
	LimitsHit  map[string]int64 `json:"limits_hit"`
	LastUsedAt Time             `json:"last_used_at"`
}

// Labels of the stats lines of access keys that are not (or no longer) stored.
const (
	labelDeleted     = "(deleted)"
	labelNoAccessKey = "(no access key)"
)

// accessKeyTable lists every access key with its figures of the range, and the keys of the
// figures that are gone, most requests first (then by id).
func accessKeyTable(keys []AccessKey, figures []store.AccessKeyUsage) []accessKeyFigures {
	out := make([]accessKeyFigures, 0, len(keys)+1)
	at := make(map[int64]int, len(keys))
	for _, k := range keys {
		at[k.ID] = len(out)
		out = append(out, accessKeyFigures{ID: k.ID, Label: k.Label, LimitsHit: map[string]int64{}, LastUsedAt: k.LastUsedAt})
	}
	for _, f := range figures {
		i, ok := at[f.AccessKeyID]
		if !ok {
			label := labelDeleted
			if f.AccessKeyID == 0 {
				label = labelNoAccessKey
			}
			i = len(out)
			at[f.AccessKeyID] = i
			out = append(out, accessKeyFigures{ID: f.AccessKeyID, Label: label, LimitsHit: map[string]int64{}})
		}
		row := &out[i]
		row.Requests += f.Requests
		row.Failures += f.Failures
		row.Tokens += f.TotalTokens
		row.Limited += f.Limited
		for limit, n := range f.LimitsHit {
			row.LimitsHit[limit] += n
		}
	}
	slices.SortStableFunc(out, func(a, b accessKeyFigures) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// stats answers the dashboard's figures for a range, of one access key or all.
func (h *Handler) stats(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	name, rg, ok := statsRangeOf(w, r)
	if !ok {
		return
	}
	var accessKeyID int64
	if v := r.URL.Query().Get("access_key_id"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			badField(w, "access_key_id", "must be the id of an access key, or 0 for all")
			return
		}
		accessKeyID = n
	}
	loc := h.Backend.Location()
	bounds := statsBounds(rg, h.now(), loc)
	from, to := bounds[0], bounds[len(bounds)-1]
	ctx := r.Context()
	buckets, err := h.Backend.Usage(ctx, bounds, accessKeyID)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	models, err := h.Backend.UsageByModel(ctx, from, to, accessKeyID)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	keys, err := h.Backend.Keys(ctx)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	accessKeys, err := h.Backend.AccessKeys(ctx)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	figures, err := h.Backend.AccessKeyStats(ctx, from, to)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	var total store.Usage
	for _, b := range buckets {
		total.Requests += b.Requests
		total.Failures += b.Failures
		total.PromptTokens += b.PromptTokens
		total.CandidatesTokens += b.CandidatesTokens
		total.TotalTokens += b.TotalTokens
	}
	counts := map[string]int{KeyActive: 0, KeyCooling: 0, KeyDisabled: 0}
	for _, k := range keys {
		counts[k.Status]++
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"range":         name,
		"bucket":        rg.bucket,
		"timezone":      loc.String(),
		"access_key_id": accessKeyID,
		"from":          Time(from.In(loc)),
		"to":            Time(to.In(loc)),
		"requests":      map[string]int64{"total": total.Requests, "success": total.Requests - total.Failures, "failure": total.Failures},
		"tokens":        map[string]int64{"prompt": total.PromptTokens, "candidates": total.CandidatesTokens, "total": total.TotalTokens},
		"keys":          counts,
		"trend":         trendOf(buckets, bounds, loc),
		"models":        modelsOf(models),
		"access_keys":   accessKeyTable(accessKeys, figures),
	})
}
