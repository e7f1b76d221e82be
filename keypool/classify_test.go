package keypool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Real Google bodies from gemini-api.md §3.3, pasted verbatim.
const (
	bodyInvalidKey = `{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com" }
      },
      {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid. Please pass a valid API key."
      }
    ]
  }
}
`
	bodySuspended = `{
  "error": {
    "code": 403,
    "message": "Permission denied: Consumer 'api_key:AIzaSy…' has been suspended.",
    "status": "PERMISSION_DENIED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "CONSUMER_SUSPENDED",
        "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com", "consumer": "projects/578829824020",
                      "containerInfo": "api_key:AIzaSy…" }
      }
    ]
  }
}
`
	bodyLeaked = `{ "error": { "code": 403, "message": "Your API key was reported as leaked. Please use another API key.", "status": "PERMISSION_DENIED" } }
`
	bodyServiceDisabled = `{
  "error": {
    "code": 403,
    "message": "Generative Language API has not been used in project 411082643095 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/generativelanguage.googleapis.com/overview?project=411082643095 then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.",
    "status": "PERMISSION_DENIED",
    "details": [
      { "@type": "type.googleapis.com/google.rpc.Help", "links": [ { "description": "Google developers console API activation", "url": "https://console.developers.google.com/apis/api/generativelanguage.googleapis.com/overview?project=411082643095" } ] },
      { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com", "consumer": "projects/411082643095" } }
    ]
  }
}
`
	bodyServiceBlocked = `{
  "error": {
    "code": 403,
    "message": "Requests to this API generativelanguage.googleapis.com method google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent are blocked.",
    "status": "PERMISSION_DENIED",
    "details": [
      { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_SERVICE_BLOCKED", "domain": "googleapis.com",
        "metadata": { "consumer": "projects/177838813423", "service": "generativelanguage.googleapis.com",
                      "apiName": "generativelanguage.googleapis.com",
                      "methodName": "google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent" } },
      { "@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "Requests to this API … are blocked." }
    ]
  }
}
`
	bodyPerMinute = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
            "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.5-flash" },
            "quotaValue": "250000"
          }
        ]
      },
      { "@type": "type.googleapis.com/google.rpc.Help",
        "links": [ { "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits" } ] },
      { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s" }
    ]
  }
}
`
	bodyPrepay = `{ "error": { "code": 402, "message": "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects to manage your project and billing. Learn more at https://ai.google.dev/gemini-api/docs/billing#prepay.", "status": "RESOURCE_EXHAUSTED" } }
`
	bodyModelNotFound = `{ "error": { "code": 404, "message": "models/gemini-2.0-pro is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.", "status": "NOT_FOUND" } }
`
	bodyOverloaded = `{ "error": { "code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE" } }
`
	bodyInternal = `{ "error": { "code": 500, "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", "status": "INTERNAL" } }
`
	bodyRegion = `{ "error": { "code": 400, "message": "User location is not supported for the API use.", "status": "FAILED_PRECONDITION" } }
`
	bodyUnregistered = `{ "error": { "code": 403, "message": "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", "status": "PERMISSION_DENIED" } }
`
)

// Bodies reconstructed from the shapes described in gemini-api.md §3.2-3.4.
const (
	// Multiple violations incl. per-day (python-genai#2044, gemini-cli#8437).
	bodyMultiPerDay = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.0-flash" },
            "quotaValue": "200"
          },
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.0-flash" },
            "quotaValue": "15"
          },
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
            "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.0-flash" },
            "quotaValue": "1000000"
          }
        ]
      },
      {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "47s"
      }
    ]
  }
}
`
	// Fractional retryDelay.
	bodyFractionalDelay = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
            "quotaDimensions": { "location": "global", "model": "gemini-2.5-pro" },
            "quotaValue": "150"
          }
        ]
      },
      {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "38.804097346s"
      }
    ]
  }
}
`
	// Newer message variant: limit 0 listed in the message, no quotaValue "0" needed.
	bodyLimitZeroMessage = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, … To monitor your current usage, head to: https://ai.dev/rate-limit.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_input_token_count, limit: 0, model: gemini-2.5-pro\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro\nPlease retry in 24.077635839s.",
    "status": "RESOURCE_EXHAUSTED"
  }
}
`
	// limit 0 as a QuotaFailure quotaValue.
	bodyQuotaValueZero = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.5-pro" },
            "quotaValue": "0"
          }
        ]
      },
      { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s" }
    ]
  }
}
`
	// Message-only retry hint, quota not zero.
	bodyRetryInMessage = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 10, model: gemini-2.5-flash\nPlease retry in 24.07s.",
    "status": "RESOURCE_EXHAUSTED"
  }
}
`
	bodyNoDetails429 = `{
  "error": {
    "code": 429,
    "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED"
  }
}
`
	bodyLegacyPerDay = `{
  "error": {
    "code": 429,
    "message": "Quota exceeded for quota metric 'Generate Content API requests per day' and limit 'GenerateContent request limit per day per project per region' of service 'generativelanguage.googleapis.com' for consumer 'project_number:123'.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com",
        "metadata": {
          "service": "generativelanguage.googleapis.com",
          "quota_metric": "generativelanguage.googleapis.com/generate_content_requests",
          "quota_limit": "GenerateContentRequestsPerDayPerProjectPerRegion",
          "quota_limit_value": "1500",
          "consumer": "projects/123"
        }
      }
    ]
  },
  "errors": [ { "message": "Quota exceeded", "domain": "global", "reason": "rateLimitExceeded" } ]
}
`
	bodyLegacyPerMinute = `{
  "error": {
    "code": 429,
    "message": "Quota exceeded for quota metric 'Generate Content API requests per minute'.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com",
        "metadata": { "quota_limit": "GenerateContentRequestsPerMinutePerProjectPerRegion", "quota_limit_value": "60" }
      }
    ]
  }
}
`
	bodyKeyExpired = `{
  "error": {
    "code": 400,
    "message": "API key expired. Please renew the API key.",
    "status": "INVALID_ARGUMENT"
  }
}
`
	bodyKeyNotFound = `{ "error": { "code": 400, "message": "API Key not found. Please pass a valid API key.", "status": "INVALID_ARGUMENT" } }
`
	bodyBadArgument = `{
  "error": {
    "code": 400,
    "message": "Invalid JSON payload received. Unknown name \"foo\": Cannot find field.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [ { "description": "Invalid JSON payload received. Unknown name \"foo\": Cannot find field." } ]
      }
    ]
  }
}
`
	bodyFreeTierCountry = `{ "error": { "code": 400, "message": "Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio.", "status": "FAILED_PRECONDITION" } }
`
	bodyReferrerBlocked = `{
  "error": {
    "code": 403,
    "message": "Requests from referer <empty> are blocked.",
    "status": "PERMISSION_DENIED",
    "details": [
      { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_HTTP_REFERRER_BLOCKED", "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com", "consumer": "projects/1" } }
    ]
  }
}
`
	bodyFilePermission = `{
  "error": {
    "code": 403,
    "message": "You do not have permission to access the File abc123 or it may not exist.",
    "status": "PERMISSION_DENIED"
  }
}
`
	bodyCachePermission = `{ "error": { "code": 403, "message": "You do not have permission to access the CachedContent xyz or it may not exist.", "status": "PERMISSION_DENIED" } }
`
	bodyUserProject = `{ "error": { "code": 403, "message": "Caller does not have required permission to use project my-project. Grant the caller the roles/serviceusage.serviceUsageConsumer role.", "status": "PERMISSION_DENIED",
  "details": [ { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "USER_PROJECT_DENIED", "domain": "googleapis.com" } ] } }
`
	bodyOtherForbidden = `{ "error": { "code": 403, "message": "The caller does not have permission", "status": "PERMISSION_DENIED" } }
`
	// OpenAI-compatible endpoint: the envelope wrapped in an array.
	bodyCompatUnauthenticated = `[{
  "error": {
    "code": 401,
    "message": "API keys are not supported by this API. Expected OAuth2 access token or other authentication credentials that assert a principal. See https://cloud.google.com/docs/authentication",
    "status": "UNAUTHENTICATED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "CREDENTIALS_MISSING",
        "domain": "googleapis.com",
        "metadata": { "method": "google.ai.generativelanguage.v1beta.PredictionService.Predict", "service": "generativelanguage.googleapis.com" }
      }
    ]
  }
}]
`
	bodyCompatInvalidKey = `[{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com" } }
    ]
  }
}]
`
	bodyCompatQuota = `[{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [ { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s" } ]
  }
}]
`
	bodyDeadline = `{ "error": { "code": 504, "message": "Deadline expired before operation could complete.", "status": "DEADLINE_EXCEEDED" } }
`
	bodyHTMLBadGateway = "<html><head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body></html>\n"
)

var classifyNow = time.Date(2026, 5, 14, 12, 0, 0, 0, time.UTC) // 05:00 PDT

func TestClassify(t *testing.T) {
	nextMidnight := time.Date(2026, 5, 15, 7, 0, 0, 0, time.UTC) // 00:00 PDT May 15
	tests := []struct {
		name   string
		status int
		body   string
		kind   Kind
		until  time.Time // Quota only
		reason string    // expected exactly when not empty
	}{
		{"200 ok", 200, `{"candidates":[]}`, Success, time.Time{}, ""},
		{"204", 204, "", Success, time.Time{}, ""},
		{"101", 101, "", Success, time.Time{}, ""},
		{"304", 304, "", Success, time.Time{}, ""},

		{"invalid key", 400, bodyInvalidKey, KeyInvalid, time.Time{},
			"API_KEY_INVALID: API key not valid. Please pass a valid API key."},
		// A 400 condemns a key only with its ErrorInfo reason: message text can quote the client.
		{"expired key (message only)", 400, bodyKeyExpired, ClientError, time.Time{},
			"API key expired. Please renew the API key."},
		{"key not found (message only)", 400, bodyKeyNotFound, ClientError, time.Time{},
			"API Key not found. Please pass a valid API key."},
		{"suspended", 403, bodySuspended, KeyInvalid, time.Time{},
			"CONSUMER_SUSPENDED: Permission denied: Consumer 'api_key:AIzaSy…' has been suspended."},
		{"leaked", 403, bodyLeaked, KeyInvalid, time.Time{},
			"Your API key was reported as leaked. Please use another API key."},
		{"service disabled", 403, bodyServiceDisabled, KeyInvalid, time.Time{}, ""},
		{"service blocked", 403, bodyServiceBlocked, KeyInvalid, time.Time{},
			"API_KEY_SERVICE_BLOCKED: Requests to this API generativelanguage.googleapis.com method google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent are blocked."},
		{"referrer blocked", 403, bodyReferrerBlocked, KeyInvalid, time.Time{},
			"API_KEY_HTTP_REFERRER_BLOCKED: Requests from referer <empty> are blocked."},
		{"prepay depleted", 402, bodyPrepay, KeyInvalid, time.Time{},
			"Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects to manage your project and billing. Learn more at https://ai.google.dev/gemini-api/docs/billing#prepay."},

		{"per-minute quota 26s", 429, bodyPerMinute, Quota, classifyNow.Add(26 * time.Second),
			"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."},
		{"fractional retryDelay", 429, bodyFractionalDelay, Quota, classifyNow.Add(38804097346 * time.Nanosecond), ""},
		{"multiple violations incl. PerDay", 429, bodyMultiPerDay, Quota, nextMidnight, ""},
		{"quotaValue 0", 429, bodyQuotaValueZero, Quota, classifyNow.Add(24 * time.Hour), ""},
		{"limit: 0 in message", 429, bodyLimitZeroMessage, Quota, classifyNow.Add(24 * time.Hour), ""},
		{"retry in message", 429, bodyRetryInMessage, Quota, classifyNow.Add(24070 * time.Millisecond), ""},
		{"429 without details", 429, bodyNoDetails429, Quota, classifyNow.Add(60 * time.Second),
			"Resource has been exhausted (e.g. check quota)."},
		{"legacy RATE_LIMIT_EXCEEDED per day", 429, bodyLegacyPerDay, Quota, nextMidnight, ""},
		{"legacy RATE_LIMIT_EXCEEDED per minute", 429, bodyLegacyPerMinute, Quota, classifyNow.Add(60 * time.Second), ""},
		{"429 empty body", 429, "", Quota, classifyNow.Add(60 * time.Second), "HTTP 429 Too Many Requests"},
		{"429 array-wrapped", 429, bodyCompatQuota, Quota, classifyNow.Add(5 * time.Second), "You exceeded your current quota."},

		{"500", 500, bodyInternal, Transient, time.Time{},
			"An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"},
		{"503", 503, bodyOverloaded, Transient, time.Time{}, "The model is overloaded. Please try again later."},
		{"504", 504, bodyDeadline, Transient, time.Time{}, "Deadline expired before operation could complete."},
		{"502 HTML", 502, bodyHTMLBadGateway, Transient, time.Time{},
			"<html><head><title>502 Bad Gateway</title></head> <body> <h1>Bad Gateway</h1> </body></html>"},
		{"503 empty body", 503, "", Transient, time.Time{}, "HTTP 503 Service Unavailable"},
		{"599 unknown 5xx", 599, "oops", Transient, time.Time{}, "oops"},
		{"408", 408, "", Transient, time.Time{}, "HTTP 408 Request Timeout"},

		{"bad argument", 400, bodyBadArgument, ClientError, time.Time{},
			`Invalid JSON payload received. Unknown name "foo": Cannot find field.`},
		{"region", 400, bodyRegion, ClientError, time.Time{}, "User location is not supported for the API use."},
		{"free tier country", 400, bodyFreeTierCountry, ClientError, time.Time{}, ""},
		{"model not found", 404, bodyModelNotFound, ClientError, time.Time{}, ""},
		{"file permission", 403, bodyFilePermission, ClientError, time.Time{},
			"You do not have permission to access the File abc123 or it may not exist."},
		{"cached content permission", 403, bodyCachePermission, ClientError, time.Time{}, ""},
		{"unregistered callers", 403, bodyUnregistered, ClientError, time.Time{}, ""},
		{"user project denied", 403, bodyUserProject, ClientError, time.Time{}, ""},
		{"other 403", 403, bodyOtherForbidden, ClientError, time.Time{}, "The caller does not have permission"},
		{"compat 401 array-wrapped", 401, bodyCompatUnauthenticated, ClientError, time.Time{}, ""},
		{"compat invalid key array-wrapped", 400, bodyCompatInvalidKey, KeyInvalid, time.Time{},
			"API_KEY_INVALID: API key not valid. Please pass a valid API key."},
		{"non-JSON 400", 400, "Bad Request\n", ClientError, time.Time{}, "Bad Request"},
		{"truncated JSON", 400, `{"error": {"code": 400, "message": "API key not`, ClientError, time.Time{}, ""},
		{"empty 400", 400, "", ClientError, time.Time{}, "HTTP 400 Bad Request"},
		{"413", 413, "", ClientError, time.Time{}, ""},
		{"499", 499, "", ClientError, time.Time{}, "HTTP 499"},
		{"string code and odd field types", 403, `{"error":{"code":"permission_denied","message":"Your API key was reported as leaked. Please use another API key.","details":[{"@type":"x","metadata":"not-an-object"}]}}`,
			KeyInvalid, time.Time{}, "Your API key was reported as leaked. Please use another API key."},
		{"leaked words inside a longer message", 403, `{"error":{"code":403,"message":"Unknown name \"Your API key was reported as leaked. Please use another API key.\"","status":"PERMISSION_DENIED"}}`,
			ClientError, time.Time{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.status, []byte(tt.body), classifyNow)
			if got.Kind != tt.kind {
				t.Fatalf("Kind = %v, want %v (reason %q)", got.Kind, tt.kind, got.Reason)
			}
			if !got.Until.Equal(tt.until) {
				t.Errorf("Until = %v, want %v", got.Until.UTC(), tt.until.UTC())
			}
			if tt.reason != "" && got.Reason != tt.reason {
				t.Errorf("Reason = %q, want %q", got.Reason, tt.reason)
			}
			if got.Kind != Success && got.Reason == "" {
				t.Errorf("empty Reason")
			}
			if got.Retryable() != (tt.kind == Quota || tt.kind == KeyInvalid || tt.kind == Transient) {
				t.Errorf("Retryable() = %v for %v", got.Retryable(), got.Kind)
			}
		})
	}
}

func TestClassifyServiceDisabledReason(t *testing.T) {
	got := Classify(403, []byte(bodyServiceDisabled), classifyNow)
	if !strings.HasPrefix(got.Reason, "SERVICE_DISABLED: Generative Language API has not been used in project 411082643095") {
		t.Errorf("Reason = %q", got.Reason)
	}
	if len(got.Reason) > 300 {
		t.Errorf("Reason is %d bytes, want <= 300", len(got.Reason))
	}
}

func TestClassifyPerDayAcrossDST(t *testing.T) {
	la, err := time.LoadLocation("America/Los_Angeles")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ now, want string }{
		{"2026-03-08T07:30:00Z", "2026-03-08T08:00:00Z"}, // 23:30 PST Mar 7 -> 00:00 PST Mar 8
		{"2026-03-08T08:00:00Z", "2026-03-09T07:00:00Z"}, // exactly midnight -> next one, which is PDT
		{"2026-03-08T09:59:59Z", "2026-03-09T07:00:00Z"}, // 01:59:59 PST, just before spring-forward
		{"2026-03-08T10:00:00Z", "2026-03-09T07:00:00Z"}, // 03:00 PDT Mar 8 -> 00:00 PDT Mar 9
		{"2026-11-01T06:59:00Z", "2026-11-01T07:00:00Z"}, // 23:59 PDT Oct 31
		{"2026-11-01T08:30:00Z", "2026-11-02T08:00:00Z"}, // 01:30 PDT, before fall-back -> 00:00 PST Nov 2
		{"2026-11-01T09:30:00Z", "2026-11-02T08:00:00Z"}, // 01:30 PST, after fall-back
		{"2026-12-31T20:00:00Z", "2027-01-01T08:00:00Z"}, // 12:00 PST, year end
		{"2026-07-15T06:59:59Z", "2026-07-15T07:00:00Z"}, // one second before PDT midnight
	}
	for _, tt := range tests {
		now, _ := time.Parse(time.RFC3339, tt.now)
		want, _ := time.Parse(time.RFC3339, tt.want)
		for _, body := range []string{bodyMultiPerDay, bodyLegacyPerDay} {
			got := Classify(429, []byte(body), now).Until
			if !got.Equal(want) {
				t.Errorf("now %s: Until = %s, want %s", tt.now, got.UTC().Format(time.RFC3339), tt.want)
			}
			if h, m, s := got.In(la).Clock(); h != 0 || m != 0 || s != 0 || got.In(la).Nanosecond() != 0 {
				t.Errorf("now %s: Until %s is not 00:00 in Los Angeles", tt.now, got.In(la))
			}
		}
	}
}

func TestClassifyMasksKeys(t *testing.T) {
	aiza := "AIzaSyA1b2C3d4E5f6G7h8I9j0K_L-mnopqrstu"
	aq := "AQ.Ab8RN6K2x_yZ-0123456789abcdef.ghijKLMN"
	body := fmt.Sprintf(`{"error":{"code":400,"message":"API key not valid: %s (also %s)","status":"INVALID_ARGUMENT",`+
		`"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}`, aiza, aq)
	got := Classify(400, []byte(body), classifyNow)
	if got.Kind != KeyInvalid {
		t.Fatalf("Kind = %v", got.Kind)
	}
	if strings.Contains(got.Reason, "A1b2C3d4E5f6") || strings.Contains(got.Reason, "Ab8RN6K2x") {
		t.Errorf("Reason leaks a key: %q", got.Reason)
	}
	if want := "API_KEY_INVALID: API key not valid: AIza…[redacted] (also AQ.…[redacted])"; got.Reason != want {
		t.Errorf("Reason = %q, want %q", got.Reason, want)
	}
	// A non-JSON body that echoes a URL with the key.
	got = Classify(503, []byte("upstream https://x/v1beta/models?key="+aiza+" failed"), classifyNow)
	if strings.Contains(got.Reason, aiza) {
		t.Errorf("Reason leaks a key: %q", got.Reason)
	}
}

func TestClassifyTruncatesReason(t *testing.T) {
	msg := strings.Repeat("é", 400) // 800 bytes, two per rune
	got := Classify(500, []byte(`{"error":{"code":500,"message":"x`+msg+`"}}`), classifyNow)
	if len(got.Reason) > 300 || len(got.Reason) < 298 {
		t.Errorf("Reason is %d bytes, want 298..300", len(got.Reason))
	}
	if !utf8.ValidString(got.Reason) {
		t.Errorf("Reason cut inside a rune")
	}
	// Invalid UTF-8 in a non-JSON body still yields valid text.
	got = Classify(502, []byte{'b', 'a', 'd', 0xff, 0xfe, '!'}, classifyNow)
	if !utf8.ValidString(got.Reason) || !strings.HasPrefix(got.Reason, "bad") {
		t.Errorf("Reason = %q", got.Reason)
	}
}

func TestClassifyRetryDelayCapped(t *testing.T) {
	body := `{"error":{"code":429,"message":"slow down","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"999999999s"}]}}`
	if got := Classify(429, []byte(body), classifyNow).Until; !got.Equal(classifyNow.Add(24 * time.Hour)) {
		t.Errorf("Until = %v, want now+24h", got)
	}
	body = `{"error":{"code":429,"message":"slow down","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"garbage"}]}}`
	if got := Classify(429, []byte(body), classifyNow).Until; !got.Equal(classifyNow.Add(60 * time.Second)) {
		t.Errorf("Until = %v, want now+60s", got)
	}
}

func TestClassifyError(t *testing.T) {
	// A real dial failure against a closed loopback port, with a key in the URL.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	key := "AIzaSyA1b2C3d4E5f6G7h8I9j0K_L-mnopqrstu"
	_, dialErr := http.Get("http://" + addr + "/v1beta/models?key=" + key)
	if dialErr == nil {
		t.Fatal("expected a dial error")
	}

	canceledCtx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(canceledCtx, http.MethodGet, "http://"+addr+"/", nil)
	_, canceledErr := http.DefaultClient.Do(req)

	tests := []struct {
		name string
		err  error
		kind Kind
	}{
		{"nil", nil, Success},
		{"context canceled", context.Canceled, Canceled},
		{"canceled request", canceledErr, Canceled},
		{"wrapped canceled", fmt.Errorf("copy body: %w", context.Canceled), Canceled},
		{"deadline", context.DeadlineExceeded, Transient},
		{"dial refused", dialErr, Transient},
		{"EOF", io.EOF, Transient},
		{"unexpected EOF", io.ErrUnexpectedEOF, Transient},
		{"reset", errors.New("read tcp 10.0.0.1:5555->142.250.0.1:443: read: connection reset by peer"), Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ClassifyError(tt.err)
			if got.Kind != tt.kind {
				t.Fatalf("Kind = %v, want %v", got.Kind, tt.kind)
			}
			if tt.kind == Transient {
				if got.Reason == "" || len(got.Reason) > 300 {
					t.Errorf("Reason = %q", got.Reason)
				}
				if !got.Retryable() {
					t.Errorf("Transient not retryable")
				}
			}
			if strings.Contains(got.Reason, key) || strings.Contains(got.Reason, "?key=") {
				t.Errorf("Reason leaks the URL or key: %q", got.Reason)
			}
		})
	}
	if got := ClassifyError(dialErr).Reason; !strings.Contains(got, "connection refused") {
		t.Errorf("dial Reason = %q, want it to name the cause", got)
	}
}

func TestKindString(t *testing.T) {
	want := map[Kind]string{
		Success: "success", Quota: "quota", KeyInvalid: "key_invalid", Transient: "transient",
		ClientError: "client_error", Canceled: "canceled", Kind(42): "kind(42)",
	}
	for k, s := range want {
		if k.String() != s {
			t.Errorf("%d.String() = %q, want %q", uint8(k), k.String(), s)
		}
	}
}

func TestClientWordsNeverCondemnAKey(t *testing.T) {
	// Every form a gateway can see Google's "Unknown name" 400 in (native, pretty, the
	// OpenAI-compatible array, SSE, js-genai's rewrap): see attackBodies.
	for _, phrase := range fuzzAttackPhrases {
		for _, b := range attackBodies(phrase) {
			for _, status := range []int{400, 401, 403, 404} {
				got := Classify(status, []byte(b), classifyNow)
				if got.Kind != ClientError || got.Confirm || got.Project != "" || got.Retryable() {
					t.Errorf("%d with %q: %+v, want a client error", status, phrase, got)
				}
			}
		}
	}
}

func TestKeyErrorsAskForConfirmation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		confirm bool
	}{
		{"invalid", 400, bodyInvalidKey, true},
		{"suspended", 403, bodySuspended, true},
		{"service disabled", 403, bodyServiceDisabled, true},
		{"leaked", 403, `{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}`, true},
		{"prepay", 402, `{"error":{"code":402,"message":"Your prepayment credits are depleted.","status":"RESOURCE_EXHAUSTED"}}`, false},
	} {
		got := Classify(tc.status, []byte(tc.body), classifyNow)
		if got.Kind != KeyInvalid || got.Confirm != tc.confirm {
			t.Errorf("%s: %+v, want key_invalid with Confirm %v", tc.name, got, tc.confirm)
		}
	}
	// A key reason with another status than Google's is not believed.
	wrong := strings.Replace(bodyInvalidKey, `"INVALID_ARGUMENT"`, `"NOT_FOUND"`, 1)
	if got := Classify(400, []byte(wrong), classifyNow); got.Kind != ClientError {
		t.Errorf("API_KEY_INVALID with status NOT_FOUND: %+v", got)
	}
	if got := Classify(403, []byte(bodyInvalidKey), classifyNow); got.Kind != ClientError {
		t.Errorf("API_KEY_INVALID on a 403: %+v", got)
	}
}

func TestQuotaScopeAndProject(t *testing.T) {
	perDay := Classify(429, []byte(bodyMultiPerDay), classifyNow)
	if perDay.Kind != Quota || !perDay.PerProject {
		t.Errorf("per-project daily quota: %+v", perDay)
	}
	perModel := `{"error":{"code":429,"message":"x","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateContentInputTokensPerModelPerMinute-FreeTier","quotaValue":"250000"}]}]}}`
	if got := Classify(429, []byte(perModel), classifyNow); got.PerProject {
		t.Errorf("per-model quota taken for per-project: %+v", got)
	}
	plain := `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota). PerProject","status":"RESOURCE_EXHAUSTED"}}`
	if got := Classify(429, []byte(plain), classifyNow); got.PerProject {
		t.Errorf("message words made a quota per project: %+v", got)
	}
	if got := Classify(403, []byte(bodyServiceDisabled), classifyNow); got.Project != "411082643095" {
		t.Errorf("SERVICE_DISABLED project = %q", got.Project)
	}
	numbered := `{"error":{"code":403,"message":"m","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"OTHER","metadata":{"x":"project_number:42"}}]}}`
	if got := Classify(403, []byte(numbered), classifyNow); got.Project != "42" || got.Kind != ClientError {
		t.Errorf("project_number metadata: %+v", got)
	}
	inText := `{"error":{"code":400,"message":"Unknown name \"project_number:42 projects/42\"","status":"INVALID_ARGUMENT"}}`
	if got := Classify(400, []byte(inText), classifyNow); got.Project != "" {
		t.Errorf("project learned from message text: %+v", got)
	}
}
