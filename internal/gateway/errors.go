package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// writeUpstreamError returns the last upstream failure to the client with its real status and
// Gemini envelope (the pool key masked out).
func (x *exchange) writeUpstreamError(e *upstreamError) {
	if e.outcome.Kind == keypool.KeyInvalid {
		// Google's words ("API key not valid") would make the client think its own key is bad.
		// (A key error the probe did not confirm reaches here only when no retry is left.)
		// They may also name the key's project or consumer: the client gets the ErrorInfo
		// reason at most, the admin panel and the logs the whole text.
		msg := "No upstream key could serve the request: the keys tried were rejected by the upstream"
		if r := publicKeyReason(e.outcome.Reason); r != "" {
			msg += " (" + r + ")"
		}
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", msg+".")
		x.errText = "the keys tried were rejected by the upstream: " + e.outcome.Reason
		return
	}
	if e.body == nil {
		x.unreachable(e)
		return
	}
	hdr := x.w.Header()
	ct := e.header.Get("Content-Type")
	if ct == "" {
		ct = "application/json; charset=UTF-8"
	}
	hdr.Set("Content-Type", ct)
	hdr.Set("Content-Length", strconv.Itoa(len(e.body)))
	guardAnswer(hdr)
	if e.outcome.Kind == keypool.Quota && !e.outcome.Until.IsZero() {
		x.retryAfter(e.outcome.Until, time.Now())
	}
	x.status = e.status
	x.errText = e.outcome.Reason
	x.w.WriteHeader(e.status)
	x.w.Write(e.body)
}

// unreachable answers a failure that has no upstream answer to return (a network error, an
// answer that could not be read). Its cause may name the outbound proxy's or the upstream's
// address, so the client learns only that the upstream could not be reached, and a request
// id; the error log holds the cause under that id (written here unless roundTrip already did).
func (x *exchange) unreachable(e *upstreamError) {
	id := x.requestID()
	if !e.logged {
		x.logError(x.keyID, e.status, e.reason)
	}
	x.fail(e.status, "UNAVAILABLE", "The upstream could not be reached (request id "+id+"); the gateway's error log has the details.")
	x.errText = "request " + id + ": " + e.reason
}

// publicKeyReason is what a client may learn of why a key was refused or disabled: the
// ErrorInfo reason at the head of a disable reason ("SERVICE_DISABLED: Generative Language API
// has not been used in project 123…" gives "SERVICE_DISABLED"), or the gateway's own words for
// a key an operator disabled; otherwise "". Google's free text can name the key's project, its
// consumer id or a part of the key, and stays with the operator.
func publicKeyReason(reason string) string {
	if reason == operatorDisabled {
		return reason
	}
	code, _, _ := strings.Cut(reason, ":")
	if len(code) < 3 || len(code) > maxReasonCode {
		return ""
	}
	for i := 0; i < len(code); i++ {
		switch c := code[i]; {
		case 'A' <= c && c <= 'Z', c == '_', i > 0 && '0' <= c && c <= '9':
		default:
			return ""
		}
	}
	return code
}

// maxReasonCode is the longest ErrorInfo reason publicKeyReason passes on; Google's are far
// shorter.
const maxReasonCode = 64

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
