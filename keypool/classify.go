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
	"sort"
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
	// Quota (429) cools the (key, model) pair down until Outcome.Until, and every key of the
	// same project too when Outcome.PerProject; it never disables.
	Quota
	// KeyInvalid condemns the key itself (invalid, expired, suspended, leaked, blocked, out of
	// prepaid credit). When Outcome.Confirm is set the caller must confirm it with a probe of
	// the key before reporting it; a reported KeyInvalid disables the key at once.
	KeyInvalid
	// Transient (5xx, network, timeout) is about the service or the model, not the key: it is
	// counted towards the key's ejection only while other keys succeed for the model, and never
	// disables.
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
	// Confirm (KeyInvalid only) says the answer must be confirmed by a probe of the key before
	// the key is disabled: the same words can come back for a request the key was fine for.
	// Unset for a 402 (billing), which no request content can produce and a free probe cannot see.
	Confirm bool
	// PerProject (Quota only) says the quota that ran out is the Google Cloud project's, shared
	// by every key of that project (a QuotaFailure quota id with "PerProject").
	PerProject bool
	// Project is the number of the Google Cloud project the answer names in a structured field
	// (ErrorInfo metadata "projects/NNN" or "project_number:NNN"); "" when none does.
	Project string
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
//
// Only structured fields decide that a key is dead (see KeyInvalid): Google quotes client
// input back in its messages ("Unknown name \"<field>\""), so no message text is searched.
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
	project := ae.project()

	switch {
	case status == http.StatusTooManyRequests:
		return Outcome{Kind: Quota, Until: ae.quotaUntil(now), Reason: reason, PerProject: ae.perProject(), Project: project}
	case status == http.StatusPaymentRequired:
		return Outcome{Kind: KeyInvalid, Reason: keyReason(info.Reason, msg), Project: project}
	case status == http.StatusBadRequest, status == http.StatusUnauthorized, status == http.StatusForbidden:
		if isKeyFatal(status, ae.Status, info.Reason, ae.Message) {
			return Outcome{Kind: KeyInvalid, Confirm: true, Reason: keyReason(info.Reason, msg), Project: project}
		}
		return Outcome{Kind: ClientError, Reason: reason, Project: project}
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

// isKeyFatal recognises a 400/401/403 that condemns the key itself, from structured fields
// only: an ErrorInfo reason about the key with the status Google sends it with, or a 401/403
// whose whole message is one of Google's fixed key messages (which quote nothing of the
// request). Nothing is searched for inside a message.
func isKeyFatal(status int, rpcStatus, reason, msg string) bool {
	if want, ok := keyReasons[reason]; ok {
		return want.status == status && (rpcStatus == "" || rpcStatus == want.rpcStatus)
	}
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		_, fixed := keyMessages[strings.TrimSpace(msg)]
		return fixed || suspendedMessage.MatchString(msg)
	}
	return false
}

// keyStatus is the HTTP status and canonical code an ErrorInfo reason comes with.
type keyStatus struct {
	status    int
	rpcStatus string
}

// keyReasons are the ErrorInfo reasons about the key or its project (not the request), each
// with the status Google answers it with.
var keyReasons = map[string]keyStatus{
	"API_KEY_INVALID":               {http.StatusBadRequest, "INVALID_ARGUMENT"},
	"API_KEY_EXPIRED":               {http.StatusBadRequest, "INVALID_ARGUMENT"},
	"API_KEY_SERVICE_BLOCKED":       {http.StatusForbidden, "PERMISSION_DENIED"},
	"API_KEY_HTTP_REFERRER_BLOCKED": {http.StatusForbidden, "PERMISSION_DENIED"},
	"API_KEY_IP_ADDRESS_BLOCKED":    {http.StatusForbidden, "PERMISSION_DENIED"},
	"API_KEY_ANDROID_APP_BLOCKED":   {http.StatusForbidden, "PERMISSION_DENIED"},
	"API_KEY_IOS_APP_BLOCKED":       {http.StatusForbidden, "PERMISSION_DENIED"},
	"CONSUMER_SUSPENDED":            {http.StatusForbidden, "PERMISSION_DENIED"},
	"CONSUMER_INVALID":              {http.StatusForbidden, "PERMISSION_DENIED"},
	"SERVICE_DISABLED":              {http.StatusForbidden, "PERMISSION_DENIED"},
	"BILLING_DISABLED":              {http.StatusForbidden, "PERMISSION_DENIED"},
}

// keyMessages are Google's fixed 401/403 key messages, compared whole: they quote nothing
// of the request.
var keyMessages = map[string]struct{}{
	"Your API key was reported as leaked. Please use another API key.": {},
	"API key not valid. Please pass a valid API key.":                  {},
	"API Key not found. Please pass a valid API key.":                  {},
	"API key expired. Please renew the API key.":                       {},
}

// suspendedMessage is Google's whole "consumer suspended" message; the consumer is an
// identifier of the key or project, never request text.
var suspendedMessage = regexp.MustCompile(`^Permission denied: Consumer '(?:api_key:[A-Za-z0-9_\-.…]{1,64}|projects?/[0-9]{1,20}|project_number:[0-9]{1,20})' has been suspended\.$`)

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

// perProject tells whether a quota answer names a per-project quota: a QuotaFailure violation
// (or a legacy RATE_LIMIT_EXCEEDED ErrorInfo's quota_limit) whose id says "PerProject".
func (ae *apiError) perProject() bool {
	for _, d := range ae.Details {
		if strings.HasSuffix(d.Type, "google.rpc.QuotaFailure") {
			for _, v := range d.Violations {
				if strings.Contains(v.QuotaID, "PerProject") {
					return true
				}
			}
		}
		if d.Reason == "RATE_LIMIT_EXCEEDED" && strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") {
			if limit, _ := d.Metadata["quota_limit"].(string); strings.Contains(limit, "PerProject") {
				return true
			}
		}
	}
	return false
}

// projectValue matches a structured project reference: "projects/NNN" or "project_number:NNN".
var projectValue = regexp.MustCompile(`^(?:projects/|project_number:)([0-9]{1,20})$`)

// project returns the project number an ErrorInfo's metadata names ("consumer":
// "projects/NNN", or a "project_number:NNN" value), or "". Message text is not read: it can
// carry the client's words.
func (ae *apiError) project() string {
	for _, d := range ae.Details {
		if !strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") {
			continue
		}
		// Fixed order: "consumer" first, then the other values by name.
		if v, _ := d.Metadata["consumer"].(string); v != "" {
			if m := projectValue.FindStringSubmatch(v); m != nil {
				return m[1]
			}
		}
		names := make([]string, 0, len(d.Metadata))
		for name := range d.Metadata {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if v, _ := d.Metadata[name].(string); v != "" {
				if m := projectValue.FindStringSubmatch(v); m != nil {
					return m[1]
				}
			}
		}
	}
	return ""
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
