package admin

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

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
