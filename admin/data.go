package admin

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// maxLabelLen bounds an access key's label, in characters.
const maxLabelLen = 100

// ---- access keys

func (h *Handler) listAccessKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	if list == nil {
		list = []AccessKey{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_keys": list})
}

// createAccessKey makes a new random access key and answers it in full, the only time it is
// ever shown.
func (h *Handler) createAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		Label string `json:"label"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	label := strings.TrimSpace(body.Label)
	switch {
	case utf8.RuneCountInString(label) > maxLabelLen:
		badField(w, "label", fmt.Sprintf("must be at most %d characters long", maxLabelLen))
		return
	case strings.IndexFunc(label, unicode.IsControl) >= 0:
		badField(w, "label", "must not contain control characters")
		return
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		writeBackendError(w, err)
		return
	}
	secret := "gs-" + base64.RawURLEncoding.EncodeToString(raw[:])
	k, err := h.Backend.AddAccessKey(r.Context(), secret, label)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	k.Key = secret
	writeJSON(w, http.StatusCreated, k)
}

func (h *Handler) deleteAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	if err := h.Backend.DeleteAccessKey(r.Context(), id); err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

func (h *Handler) enableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, true)
}

func (h *Handler) disableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, false)
}

func (h *Handler) setAccessKeyEnabled(w http.ResponseWriter, r *http.Request, id int64, enabled bool) {
	if err := h.Backend.SetAccessKeyEnabled(r.Context(), id, enabled); err != nil {
		writeBackendError(w, err)
		return
	}
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	for _, k := range list {
		if k.ID == id {
			writeJSON(w, http.StatusOK, k)
			return
		}
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("No access key with id %d.", id))
}

// ---- settings

func (h *Handler) getSettings(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	s, err := h.Backend.Settings(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"settings": s})
}

// putSettings applies a partial update: every value is checked first, and one bad value
// changes nothing.
func (h *Handler) putSettings(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body map[string]json.RawMessage
	if !readJSON(w, r, &body) {
		return
	}
	values := make(map[string]string, len(body))
	var bad []FieldError
	for name, raw := range body {
		raw = bytes.TrimSpace(raw)
		var s string
		switch {
		case len(raw) > 0 && raw[0] == '"':
			if err := json.Unmarshal(raw, &s); err != nil {
				bad = append(bad, FieldError{name, "is not a valid JSON string"})
				continue
			}
		case len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')):
			s = string(raw)
		default:
			bad = append(bad, FieldError{name, "must be a string or a number"})
			continue
		}
		values[name] = s
	}
	if len(bad) > 0 {
		writeFieldErrors(w, bad)
		return
	}
	if len(values) > 0 {
		bad, err := h.Backend.UpdateSettings(r.Context(), values)
		if err != nil {
			writeBackendError(w, err)
			return
		}
		if len(bad) > 0 {
			writeFieldErrors(w, bad)
			return
		}
	}
	h.getSettings(w, r, nil, 0)
}

// ---- stats

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

// ---- logs

// requestItem is a request log row as the API shows it.
type requestItem struct {
	Time             Time    `json:"time"`
	AccessKeyID      int64   `json:"access_key_id"`
	KeyID            int64   `json:"key_id"`
	Method           string  `json:"method"`
	Path             string  `json:"path"`
	Model            string  `json:"model"`
	Stream           bool    `json:"stream"`
	Status           int     `json:"status"`
	Attempts         int     `json:"attempts"`
	LatencyMS        float64 `json:"latency_ms"`
	TTFBMS           float64 `json:"ttfb_ms"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CandidatesTokens int64   `json:"candidates_tokens"`
	ThoughtsTokens   int64   `json:"thoughts_tokens"`
	TotalTokens      int64   `json:"total_tokens"`
	Error            string  `json:"error"`
}

// errorItem is an error log row (one failed upstream attempt) as the API shows it.
type errorItem struct {
	Time        Time   `json:"time"`
	KeyID       int64  `json:"key_id"`
	AccessKeyID int64  `json:"access_key_id"`
	Model       string `json:"model"`
	Path        string `json:"path"`
	Status      int    `json:"status"`
	Message     string `json:"message"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// logs answers a page of the request or error log, newest first.
func (h *Handler) logs(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	page, size, ok := paging(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	lq := store.LogQuery{Limit: size, Offset: (page - 1) * size, Model: strings.TrimSpace(q.Get("model"))}
	var status int64
	ints := []struct {
		name string
		dst  *int64
	}{{"status", &status}, {"key_id", &lq.KeyID}, {"access_key_id", &lq.AccessKeyID}}
	for _, f := range ints {
		if v := q.Get(f.name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				badField(w, f.name, "must be a whole number")
				return
			}
			*f.dst = n
		}
	}
	if status > 999 {
		badField(w, "status", "must be an HTTP status code")
		return
	}
	lq.Status = int(status)
	loc := h.Backend.Location()
	var items any
	var total int64
	switch kind := q.Get("kind"); kind {
	case "", "request":
		rows, n, err := h.Backend.RequestLogs(r.Context(), lq)
		if err != nil {
			writeBackendError(w, err)
			return
		}
		list := make([]requestItem, len(rows))
		for i, x := range rows {
			list[i] = requestItem{Time(x.Time.In(loc)), x.AccessKeyID, x.KeyID, x.Method, x.Path, x.Model, x.Stream,
				x.Status, x.Attempts, ms(x.Latency), ms(x.TTFB), x.PromptTokens, x.CandidatesTokens,
				x.ThoughtsTokens, x.TotalTokens, x.Error}
		}
		items, total = list, n
	case "error":
		rows, n, err := h.Backend.ErrorLogs(r.Context(), lq)
		if err != nil {
			writeBackendError(w, err)
			return
		}
		list := make([]errorItem, len(rows))
		for i, x := range rows {
			list[i] = errorItem{Time(x.Time.In(loc)), x.KeyID, x.AccessKeyID, x.Model, x.Path, x.Status, x.Message}
		}
		items, total = list, n
	default:
		badField(w, "kind", "must be request or error")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items, "total": total, "page": page, "page_size": size})
}
