package fakegemini

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
)

// apiError is the "error" member of Google's error envelope.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
	Details []any  `json:"details,omitempty"`
}

type errorEnvelope struct {
	Error *apiError `json:"error"`
}

const (
	typeErrorInfo    = "type.googleapis.com/google.rpc.ErrorInfo"
	typeLocalized    = "type.googleapis.com/google.rpc.LocalizedMessage"
	typeQuotaFailure = "type.googleapis.com/google.rpc.QuotaFailure"
	typeHelp         = "type.googleapis.com/google.rpc.Help"
	typeRetryInfo    = "type.googleapis.com/google.rpc.RetryInfo"
	serviceName      = "generativelanguage.googleapis.com"
	rateLimitsURL    = "https://ai.google.dev/gemini-api/docs/rate-limits"
)

type errorInfo struct {
	Type     string            `json:"@type"`
	Reason   string            `json:"reason"`
	Domain   string            `json:"domain"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

type localizedMessage struct {
	Type    string `json:"@type"`
	Locale  string `json:"locale"`
	Message string `json:"message"`
}

type quotaFailure struct {
	Type       string           `json:"@type"`
	Violations []quotaViolation `json:"violations"`
}

type quotaViolation struct {
	QuotaMetric     string            `json:"quotaMetric"`
	QuotaID         string            `json:"quotaId"`
	QuotaDimensions map[string]string `json:"quotaDimensions"`
	QuotaValue      string            `json:"quotaValue"`
}

type helpLinks struct {
	Type  string     `json:"@type"`
	Links []helpLink `json:"links"`
}

type helpLink struct {
	Description string `json:"description"`
	URL         string `json:"url"`
}

type retryInfo struct {
	Type       string `json:"@type"`
	RetryDelay string `json:"retryDelay"`
}

// fail writes e as Google does: a pretty-printed envelope with a trailing
// newline, application/json (text/event-stream for SSE stream calls), wrapped
// in a JSON array on the OpenAI-compatible endpoints.
func (x *exchange) fail(e *apiError) {
	var v any = errorEnvelope{Error: e}
	if x.openai {
		v = []errorEnvelope{{Error: e}}
	}
	ct := contentTypeJSON
	if x.sse {
		ct = "text/event-stream"
	}
	h := x.w.Header()
	h.Set("Content-Type", ct)
	x.w.WriteHeader(e.Code)
	_, _ = x.w.Write(encodeJSON(v, x.pretty))
}

const contentTypeJSON = "application/json; charset=UTF-8"

// writeJSON writes a 200 JSON answer, pretty-printed unless the request asked
// for prettyPrint=false.
func (x *exchange) writeJSON(v any) {
	x.w.Header().Set("Content-Type", contentTypeJSON)
	x.w.WriteHeader(http.StatusOK)
	_, _ = x.w.Write(encodeJSON(v, x.pretty))
}

// encodeJSON marshals v without HTML escaping, indented by two spaces when
// pretty, always with a trailing newline.
func encodeJSON(v any, pretty bool) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if pretty {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("fakegemini: encoding %T: %v", v, err))
	}
	return b.Bytes()
}

// maskKey shortens a key for error messages: at most its first 6 characters
// (and never more than half of it) followed by "…".
func maskKey(key string) string {
	n := min(6, len(key)/2)
	return key[:n] + "…"
}

// projectNumber derives a stable fake Cloud project number from a key.
func projectNumber(key string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return fmt.Sprintf("%012d", h.Sum64()%1_000_000_000_000)
}

func notFoundError() *apiError {
	return &apiError{Code: http.StatusNotFound, Message: "Method not found.", Status: "NOT_FOUND"}
}

func badRequest(msg string) *apiError {
	return &apiError{Code: http.StatusBadRequest, Message: msg, Status: "INVALID_ARGUMENT"}
}

func invalidJSONError() *apiError {
	return badRequest("Invalid JSON payload received. Unexpected token.")
}

func modelNotFoundError(version, model, method string) *apiError {
	return &apiError{
		Code: http.StatusNotFound,
		Message: fmt.Sprintf("models/%s is not found for API version %s, or is not supported for %s. "+
			"Call ListModels to see the list of available models and their supported methods.", model, version, method),
		Status: "NOT_FOUND",
	}
}

func unregisteredCallerError() *apiError {
	return &apiError{
		Code: http.StatusForbidden,
		Message: "Method doesn't allow unregistered callers (callers without established identity). " +
			"Please use API Key or other form of API consumer identity to call this API.",
		Status: "PERMISSION_DENIED",
	}
}

func oauthRejectedError(method string) *apiError {
	return &apiError{
		Code: http.StatusUnauthorized,
		Message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie " +
			"or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
		Status: "UNAUTHENTICATED",
		Details: []any{errorInfo{
			Type: typeErrorInfo, Reason: "ACCESS_TOKEN_TYPE_UNSUPPORTED", Domain: "googleapis.com",
			Metadata: map[string]string{"method": method, "service": serviceName},
		}},
	}
}

func invalidKeyError() *apiError {
	const msg = "API key not valid. Please pass a valid API key."
	return &apiError{
		Code: http.StatusBadRequest, Message: msg, Status: "INVALID_ARGUMENT",
		Details: []any{
			errorInfo{Type: typeErrorInfo, Reason: "API_KEY_INVALID", Domain: "googleapis.com",
				Metadata: map[string]string{"service": serviceName}},
			localizedMessage{Type: typeLocalized, Locale: "en-US", Message: msg},
		},
	}
}

func suspendedError(key, project string) *apiError {
	consumer := "api_key:" + maskKey(key)
	return &apiError{
		Code:    http.StatusForbidden,
		Message: fmt.Sprintf("Permission denied: Consumer '%s' has been suspended.", consumer),
		Status:  "PERMISSION_DENIED",
		Details: []any{errorInfo{
			Type: typeErrorInfo, Reason: "CONSUMER_SUSPENDED", Domain: "googleapis.com",
			Metadata: map[string]string{
				"service":       serviceName,
				"consumer":      "projects/" + project,
				"containerInfo": consumer,
			},
		}},
	}
}

func leakedError() *apiError {
	return &apiError{
		Code:    http.StatusForbidden,
		Message: "Your API key was reported as leaked. Please use another API key.",
		Status:  "PERMISSION_DENIED",
	}
}

// serviceDisabledError is the 403 of a project that has the Generative Language
// API disabled (gemini-api.md §3.3): a Help link to the activation page, then an
// ErrorInfo naming the project.
func serviceDisabledError(project string) *apiError {
	activation := "https://console.developers.google.com/apis/api/" + serviceName + "/overview?project=" + project
	return &apiError{
		Code: http.StatusForbidden,
		Message: "Generative Language API has not been used in project " + project + " before or it is disabled. " +
			"Enable it by visiting " + activation + " then retry. If you enabled this API recently, " +
			"wait a few minutes for the action to propagate to our systems and retry.",
		Status: "PERMISSION_DENIED",
		Details: []any{
			helpLinks{Type: typeHelp, Links: []helpLink{{Description: "Google developers console API activation", URL: activation}}},
			errorInfo{Type: typeErrorInfo, Reason: "SERVICE_DISABLED", Domain: "googleapis.com",
				Metadata: map[string]string{
					"service":       serviceName,
					"consumer":      "projects/" + project,
					"activationUrl": activation,
				}},
		},
	}
}

func serviceBlockedError(project, method string) *apiError {
	msg := fmt.Sprintf("Requests to this API %s method %s are blocked.", serviceName, method)
	return &apiError{
		Code: http.StatusForbidden, Message: msg, Status: "PERMISSION_DENIED",
		Details: []any{
			errorInfo{Type: typeErrorInfo, Reason: "API_KEY_SERVICE_BLOCKED", Domain: "googleapis.com",
				Metadata: map[string]string{
					"consumer":   "projects/" + project,
					"service":    serviceName,
					"apiName":    serviceName,
					"methodName": method,
				}},
			localizedMessage{Type: typeLocalized, Locale: "en-US", Message: msg},
		},
	}
}

const (
	metricRequests = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
	perMinuteID    = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
	perDayID       = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
	perMinuteLimit = "10"
	perDayLimit    = "250"
)

func quotaMinuteError(model, retryDelay string) *apiError {
	return quotaError(model, retryDelay, []quotaViolation{
		violation(perMinuteID, model, perMinuteLimit),
	})
}

func quotaDayError(model, retryDelay string) *apiError {
	return quotaError(model, retryDelay, []quotaViolation{
		violation(perDayID, model, perDayLimit),
		violation(perMinuteID, model, perMinuteLimit),
	})
}

func violation(id, model, limit string) quotaViolation {
	return quotaViolation{
		QuotaMetric:     metricRequests,
		QuotaID:         id,
		QuotaDimensions: map[string]string{"location": "global", "model": model},
		QuotaValue:      limit,
	}
}

// quotaError builds the 2026 form of the 429 body: one message line per
// violation, then QuotaFailure, Help and RetryInfo details.
func quotaError(model, retryDelay string, vs []quotaViolation) *apiError {
	var msg strings.Builder
	msg.WriteString("You exceeded your current quota, please check your plan and billing details. " +
		"For more information on this error, head to: " + rateLimitsURL +
		". To monitor your current usage, head to: https://ai.dev/rate-limit. ")
	for _, v := range vs {
		fmt.Fprintf(&msg, "\n* Quota exceeded for metric: %s, limit: %s, model: %s", v.QuotaMetric, v.QuotaValue, model)
	}
	fmt.Fprintf(&msg, "\nPlease retry in %s.", retryDelay)
	return &apiError{
		Code: http.StatusTooManyRequests, Message: msg.String(), Status: "RESOURCE_EXHAUSTED",
		Details: []any{
			quotaFailure{Type: typeQuotaFailure, Violations: vs},
			helpLinks{Type: typeHelp, Links: []helpLink{{Description: "Learn more about Gemini API quotas", URL: rateLimitsURL}}},
			retryInfo{Type: typeRetryInfo, RetryDelay: retryDelay},
		},
	}
}

func prepayError() *apiError {
	return &apiError{
		Code: http.StatusPaymentRequired,
		Message: "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects " +
			"to manage your project and billing. Learn more at https://ai.google.dev/gemini-api/docs/billing#prepay.",
		Status: "RESOURCE_EXHAUSTED",
	}
}

func internalError() *apiError {
	return &apiError{
		Code: http.StatusInternalServerError,
		Message: "An internal error has occurred. Please retry or report in " +
			"https://developers.generativeai.google/guide/troubleshooting",
		Status: "INTERNAL",
	}
}

func overloadedError() *apiError {
	return &apiError{
		Code:    http.StatusServiceUnavailable,
		Message: "The model is overloaded. Please try again later.",
		Status:  "UNAVAILABLE",
	}
}

func fileDeniedError(name string) *apiError {
	return &apiError{
		Code:    http.StatusForbidden,
		Message: fmt.Sprintf("You do not have permission to access the File %s or it may not exist.", name),
		Status:  "PERMISSION_DENIED",
	}
}
