package keypool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // the quota day ends at midnight America/Los_Angeles, even on hosts without a zoneinfo database
	"unicode/utf8"
)

// Kind is what an upstream answer means for the key that got it.
type Kind uint8

const (
	// Success resets the key's consecutive-failure count.
	Success Kind = iota
	// Quota (429) cools the (key, model) pair down until Outcome.Until; it never disables.
	Quota
	// KeyInvalid is key-fatal: the key is disabled at once with Outcome.Reason.
	KeyInvalid
	// Transient (5xx, network) counts a failure; the key is disabled when the
	// count reaches the pool's maximum.
	Transient
	// ClientError is the caller's own error: no penalty, no retry.
	ClientError
	// Canceled means the client went away: no penalty, no retry.
	Canceled
)

var kindNames = [...]string{
	Success:     "success",
	Quota:       "quota",
	KeyInvalid:  "key_invalid",
	Transient:   "transient",
	ClientError: "client_error",
	Canceled:    "canceled",
}

// String returns the kind as a short snake_case word, e.g. "key_invalid".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Outcome is the classification of one upstream attempt.
type Outcome struct {
	Kind   Kind
	Until  time.Time // Quota only: when the (key, model) pair may be used again
	Reason string    // short human text, never containing a key; for KeyInvalid the disable reason
}

// Retryable reports whether the request may be retried on another key: true for
// Quota, KeyInvalid and Transient.
func (o Outcome) Retryable() bool {
	return o.Kind == Quota || o.Kind == KeyInvalid || o.Kind == Transient
}

const (
	maxReasonBytes   = 300
	fallbackCooldown = 60 * time.Second
	noAccessCooldown = 24 * time.Hour
	maxRetryDelay    = 24 * time.Hour
)

// Classify tells what an upstream HTTP answer with the given status and body
// means for the key that got it. The body is parsed as a Google error envelope
// whatever its content type; non-JSON bodies are used as plain text. now is the
// base of a Quota cooldown.
func Classify(status int, body []byte, now time.Time) Outcome {
	switch {
	case status >= 100 && status < 400:
		return Outcome{Kind: Success}
	case status < 100:
		return Outcome{Kind: Transient, Reason: fmt.Sprintf("invalid upstream HTTP status %d", status)}
	}
	ae := parseError(body)
	msg := ae.Message
	if msg == "" {
		msg = ae.Status
	}
	if msg == "" {
		msg = strings.TrimSpace(fmt.Sprintf("HTTP %d %s", status, http.StatusText(status)))
	}
	reason := sanitize(msg)
	info := ae.errorInfo()

	switch {
	case status == http.StatusTooManyRequests:
		return Outcome{Kind: Quota, Until: ae.quotaUntil(now), Reason: reason}
	case status == http.StatusPaymentRequired:
		return Outcome{Kind: KeyInvalid, Reason: keyReason(info.Reason, msg)}
	case status == http.StatusBadRequest, status == http.StatusUnauthorized, status == http.StatusForbidden:
		if isKeyFatal(status, info.Reason, msg) {
			return Outcome{Kind: KeyInvalid, Reason: keyReason(info.Reason, msg)}
		}
		return Outcome{Kind: ClientError, Reason: reason}
	case status == http.StatusRequestTimeout, status >= 500:
		return Outcome{Kind: Transient, Reason: reason}
	default:
		return Outcome{Kind: ClientError, Reason: reason}
	}
}

// ClassifyError tells what a failed upstream round trip (no HTTP answer) means:
// a canceled context is Canceled, anything else (dial, reset, timeout, EOF) is
// Transient. A nil error is Success.
func ClassifyError(err error) Outcome {
	switch {
	case err == nil:
		return Outcome{Kind: Success}
	case errors.Is(err, context.Canceled):
		return Outcome{Kind: Canceled, Reason: "request canceled"}
	}
	msg := err.Error()
	// Drop the method and URL a *url.Error adds: only the cause is useful.
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		msg = ue.Err.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) && !strings.Contains(msg, "deadline") {
		msg = "timeout: " + msg
	}
	return Outcome{Kind: Transient, Reason: sanitize("upstream: " + msg)}
}

// isKeyFatal recognises answers that condemn the key itself. Known
// resource/permission messages that are not about the key win over everything.
func isKeyFatal(status int, reason, msg string) bool {
	lower := strings.ToLower(msg)
	if status == http.StatusForbidden || status == http.StatusUnauthorized {
		for _, s := range notKeyMessages {
			if strings.Contains(lower, s) {
				return false
			}
		}
	}
	if strings.HasPrefix(reason, "API_KEY_") || strings.HasPrefix(reason, "CONSUMER_") || reason == "SERVICE_DISABLED" {
		return true
	}
	for _, s := range keyFatalMessages {
		if strings.Contains(lower, s) {
			return true
		}
	}
	return false
}

// notKeyMessages are 401/403 messages that are never the key's fault (lower case).
var notKeyMessages = []string{
	"you do not have permission to access",
	"method doesn't allow unregistered callers",
	"caller does not have required permission to use project",
}

// keyFatalMessages are messages that condemn the key (lower case).
var keyFatalMessages = []string{
	"api key not valid",
	"api key expired",
	"api key not found",
	"reported as leaked",
	"has been suspended",
	"has not been used in project",
}

// keyReason builds the disable reason "REASON: message" (or just the message).
func keyReason(reason, msg string) string {
	if reason != "" && !strings.HasPrefix(msg, reason) {
		msg = reason + ": " + msg
	}
	return sanitize(msg)
}

// apiError is the part of Google's error envelope the classifier reads.
type apiError struct {
	Message string        `json:"message"`
	Status  string        `json:"status"`
	Details []errorDetail `json:"details"`
}

// errorDetail is the union of the google.rpc detail messages the classifier reads.
type errorDetail struct {
	Type       string           `json:"@type"`
	Reason     string           `json:"reason"`
	Metadata   map[string]any   `json:"metadata"`
	Violations []quotaViolation `json:"violations"`
	RetryDelay string           `json:"retryDelay"`
}

type quotaViolation struct {
	QuotaID    string          `json:"quotaId"`
	QuotaValue json.RawMessage `json:"quotaValue"`
}

type envelope struct {
	Error *apiError `json:"error"`
}

// parseError extracts the error envelope from body: a `{"error":…}` object or an
// array of them. Anything else becomes a message made of the body text.
func parseError(body []byte) apiError {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return apiError{}
	}
	switch trimmed[0] {
	case '{':
		var env envelope
		if jsonUsable(json.Unmarshal(trimmed, &env)) && env.Error != nil {
			return *env.Error
		}
	case '[':
		var envs []envelope
		if jsonUsable(json.Unmarshal(trimmed, &envs)) {
			for _, env := range envs {
				if env.Error != nil {
					return *env.Error
				}
			}
		}
	}
	return apiError{Message: string(trimmed)}
}

// jsonUsable accepts a decode that only hit fields of an unexpected type:
// encoding/json still fills in everything else.
func jsonUsable(err error) bool {
	var te *json.UnmarshalTypeError
	return err == nil || errors.As(err, &te)
}

func (ae *apiError) errorInfo() errorDetail {
	for _, d := range ae.Details {
		if strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") {
			return d
		}
	}
	return errorDetail{}
}

// quotaUntil computes the end of a 429 cooldown (gemini-api.md §3.4).
func (ae *apiError) quotaUntil(now time.Time) time.Time {
	var zeroLimit, perDay bool
	var retryDelay time.Duration
	for _, d := range ae.Details {
		for _, v := range d.Violations {
			if strings.Trim(string(v.QuotaValue), `" `) == "0" {
				zeroLimit = true
			}
			if strings.Contains(v.QuotaID, "PerDay") {
				perDay = true
			}
		}
		if d.Reason == "RATE_LIMIT_EXCEEDED" {
			if limit, _ := d.Metadata["quota_limit"].(string); strings.Contains(limit, "PerDay") {
				perDay = true
			}
		}
		if d.RetryDelay != "" && retryDelay == 0 {
			if delay, err := time.ParseDuration(d.RetryDelay); err == nil && delay > 0 {
				retryDelay = delay
			}
		}
	}
	if zeroLimitMessage.MatchString(ae.Message) {
		zeroLimit = true
	}
	switch {
	case zeroLimit:
		return now.Add(noAccessCooldown)
	case perDay:
		return nextPacificMidnight(now)
	case retryDelay > 0:
		return now.Add(min(retryDelay, maxRetryDelay))
	}
	if m := retryInMessage.FindStringSubmatch(ae.Message); m != nil {
		if delay, err := time.ParseDuration(m[1]); err == nil && delay > 0 {
			return now.Add(min(delay, maxRetryDelay))
		}
	}
	return now.Add(fallbackCooldown)
}

var (
	zeroLimitMessage = regexp.MustCompile(`limit: 0(?:$|[^0-9.]|\.(?:$|[^0-9]))`)
	retryInMessage   = regexp.MustCompile(`(?i)retry in ((?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+)`)
)

var pacific = sync.OnceValue(func() *time.Location {
	loc, err := time.LoadLocation("America/Los_Angeles")
	if err != nil { // unreachable with time/tzdata linked in
		return time.FixedZone("PST", -8*60*60)
	}
	return loc
})

// nextPacificMidnight returns the first 00:00 America/Los_Angeles strictly after
// now, when Google's daily quotas reset.
func nextPacificMidnight(now time.Time) time.Time {
	y, m, d := now.In(pacific()).Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, pacific())
}

// keyPattern matches Google API keys: standard AIza… keys and AQ.… auth keys.
var keyPattern = regexp.MustCompile(`AIza[0-9A-Za-z_\-]{20,}|AQ\.[0-9A-Za-z_\-.]{20,}`)

// sanitize makes s fit for logs and the database: valid UTF-8, keys masked,
// whitespace collapsed, at most maxReasonBytes bytes.
func sanitize(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = keyPattern.ReplaceAllStringFunc(s, func(k string) string {
		if strings.HasPrefix(k, "AIza") {
			return "AIza…[redacted]"
		}
		return "AQ.…[redacted]"
	})
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxReasonBytes {
		cut := maxReasonBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
