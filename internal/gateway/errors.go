package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// writeUpstreamError returns the last upstream failure to the client with its real status and
// Gemini envelope (the pool key masked out).
func (x *exchange) writeUpstreamError(e *upstreamError) {
	if e.outcome.Kind == keypool.KeyInvalid {
		// Google's words ("API key not valid") would make the client think its own key is bad.
		// (A key error the probe did not confirm reaches here only when no retry is left.)
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE",
			"No upstream key could serve the request: the keys tried were rejected by the upstream ("+e.outcome.Reason+").")
		return
	}
	if e.body == nil {
		x.fail(e.status, "UNAVAILABLE", "The upstream could not be reached: "+e.reason)
		return
	}
	hdr := x.w.Header()
	ct := e.header.Get("Content-Type")
	if ct == "" {
		ct = "application/json; charset=UTF-8"
	}
	hdr.Set("Content-Type", ct)
	hdr.Set("Content-Length", strconv.Itoa(len(e.body)))
	if e.outcome.Kind == keypool.Quota && !e.outcome.Until.IsZero() {
		x.retryAfter(e.outcome.Until, time.Now())
	}
	x.status = e.status
	x.errText = e.outcome.Reason
	x.w.WriteHeader(e.status)
	x.w.Write(e.body)
}

func (x *exchange) retryAfter(until, now time.Time) {
	secs := int64((until.Sub(now) + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	x.w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
}

// fail answers with Google's error envelope.
func (x *exchange) fail(code int, status, msg string) {
	x.status = code
	x.errText = msg
	writeError(x.w, code, status, msg)
}

// writeError writes {"error":{"code","message","status"}} as Google does.
func writeError(w http.ResponseWriter, code int, status, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
	b = append(b, '\n')
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json; charset=UTF-8")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(b)
}
