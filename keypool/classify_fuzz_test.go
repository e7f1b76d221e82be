package keypool

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// Fuzz tests of Classify. Run one with
//
//	go test -run '^$' -fuzz '^FuzzClassify$' -fuzztime 60s ./keypool/
//
// Their seeds (run by every plain `go test`) are Google's real error bodies (gemini-api.md
// §3.3), every error body the fake upstream writes, and the attack on text matching: a 400
// "Unknown name" that quotes a client's field named like a key error, native, wrapped in a
// JSON array (the OpenAI-compatible form) and as SSE text.

// The real bodies of gemini-api.md §3.3 that classify_test.go has no copy of, verbatim;
// the others are classify_test.go's body constants.
const (
	seedMultiViolation = `{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[` +
		`{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[` +
		`{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"200"},` +
		`{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"},` +
		`{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_input_token_count","quotaId":"GenerateContentInputTokensPerModelPerMinute-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"1000000"}]},` +
		`{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}`
	seedLegacyQuota = `{"error":{"code":429,"message":"Quota exceeded for quota metric 'Generate Content API requests per minute'","status":"RESOURCE_EXHAUSTED","details":[` +
		`{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com","metadata":{"quota_metric":"generativelanguage.googleapis.com/generate_content_requests","quota_limit":"GenerateContentRequestsPerMinutePerProjectPerRegion","quota_limit_value":"60","consumer":"projects/123456","service":"generativelanguage.googleapis.com"}}]}}`
)

// googleSeeds are §3.3's bodies with the status Google sends them with.
var googleSeeds = []struct {
	status int
	body   string
}{
	{400, bodyInvalidKey}, {403, bodySuspended}, {403, bodyLeaked}, {403, bodyServiceDisabled},
	{403, bodyServiceBlocked}, {429, bodyPerMinute}, {429, seedMultiViolation}, {429, bodyLimitZeroMessage},
	{402, bodyPrepay}, {404, bodyModelNotFound}, {503, bodyOverloaded}, {500, bodyInternal},
	{400, bodyRegion}, {403, bodyUnregistered}, {429, seedLegacyQuota},
}

// fuzzAttackPhrases are key-error words a client can name a body field with, for Google to
// quote back in a 400 "Unknown name" (and the last one a full key, which must be masked).
var fuzzAttackPhrases = []string{
	"API key not valid. Please pass a valid API key.",
	"API key expired. Please renew the API key.",
	"Your API key was reported as leaked. Please use another API key.",
	"Permission denied: Consumer 'api_key:AIzaXXXX' has been suspended.",
	"API_KEY_INVALID",
	"Generative Language API has not been used in project 123 before or it is disabled",
	"has been suspended",
	"reported as leaked",
	"CONSUMER_SUSPENDED",
	"consumer projects/123456 API_KEY_SERVICE_BLOCKED PerProject",
	"AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
}

// attackBodies returns Google's 400 for a body field named phrase in every form a gateway can
// see it: the native envelope (compact and pretty), wrapped in a JSON array (OpenAI-compatible
// endpoints), as SSE text, and rewrapped as js-genai does.
func attackBodies(phrase string) []string {
	msg := `Invalid JSON payload received. Unknown name "` + phrase + `": Cannot find field.`
	env := map[string]any{"error": map[string]any{
		"code": 400, "message": msg, "status": "INVALID_ARGUMENT",
		"details": []any{map[string]any{
			"@type":           "type.googleapis.com/google.rpc.BadRequest",
			"fieldViolations": []any{map[string]any{"description": msg}},
		}},
	}}
	compact, _ := json.Marshal(env)
	pretty, _ := json.MarshalIndent(env, "", "  ")
	wrapped, _ := json.Marshal(map[string]any{"error": map[string]any{
		"code": 500, "status": "Internal Server Error", "message": string(pretty) + "\n",
	}})
	return []string{
		string(compact),
		string(pretty) + "\n",
		"[" + string(compact) + "]",
		"[" + string(pretty) + "\n]",
		"data: " + string(compact) + "\n\n",
		"data: " + string(compact) + "\r\n\r\n",
		string(wrapped),
	}
}

// fakeSeed is one error answer of the fake upstream.
type fakeSeed struct {
	status int
	body   []byte
}

// fakeErrorSeeds collects the error answers the fake upstream writes: every programmable state
// on the native, SSE and OpenAI-compatible paths, its auth and resource errors, and its 400 for
// an unknown field named like a key error.
func fakeErrorSeeds(tb testing.TB) []fakeSeed {
	tb.Helper()
	fake := fakegemini.New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	var seeds []fakeSeed
	call := func(method, path, body string, header ...string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			tb.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			tb.Fatal(err)
		}
		if resp.StatusCode >= 400 {
			seeds = append(seeds, fakeSeed{resp.StatusCode, b})
		}
	}
	const key = "AIzaSyFUZZ-seed-key-000000000000000000"
	gen := `{"contents":[{"parts":[{"text":"hi"}]}]}`
	chat := `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}`
	generate := func(body string) {
		call("POST", "/v1beta/models/gemini-2.5-flash:generateContent", body, "x-goog-api-key", key)
		call("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", body, "x-goog-api-key", key)
	}
	fake.SetProject(key, "111")
	for _, st := range []fakegemini.KeyState{
		fakegemini.Invalid, fakegemini.Suspended, fakegemini.Leaked, fakegemini.ServiceBlocked,
		fakegemini.ServiceDisabled, fakegemini.InvalidOnGenerate, fakegemini.QuotaMinute,
		fakegemini.QuotaDay, fakegemini.Prepay, fakegemini.Internal, fakegemini.Overloaded,
	} {
		fake.SetKey(key, st)
		generate(gen)
		call("POST", "/v1beta/openai/chat/completions", chat, "Authorization", "Bearer "+key)
	}
	fake.SetKey(key, fakegemini.OK)
	call("POST", "/v1beta/models/gemini-2.5-flash:generateContent", gen)                              // no key
	call("POST", "/v1beta/models/gemini-2.5-flash:generateContent", gen, "Authorization", "Bearer x") // OAuth
	call("POST", "/v1beta/models/gemini-0-nope:generateContent", gen, "x-goog-api-key", key)          // unknown model
	call("GET", "/v1beta/files/nope", "", "x-goog-api-key", key)                                      // foreign file
	call("POST", "/v1beta/models/gemini-2.5-flash:generateContent", "{", "x-goog-api-key", key)       // bad JSON
	for _, phrase := range fuzzAttackPhrases {
		q, _ := json.Marshal(phrase)
		generate(`{"contents":[{"parts":[{"text":"hi"}]}],` + string(q) + `:1}`)
		call("POST", "/v1beta/openai/chat/completions", `{"model":"gemini-2.5-flash",`+string(q)+`:1,"messages":[]}`,
			"Authorization", "Bearer "+key)
	}
	return seeds
}

var (
	// fuzzNow is the base of Quota cooldowns; fuzzNowDST is 00:30 PDT on the day that lasts
	// 25 hours, when the next Pacific midnight is furthest away.
	fuzzNow    = time.Date(2026, 5, 14, 12, 0, 0, 0, time.UTC)
	fuzzNowDST = time.Date(2026, 11, 1, 7, 30, 0, 0, time.UTC)
)

func FuzzClassify(f *testing.F) {
	for _, s := range googleSeeds {
		f.Add(s.status, []byte(s.body))
	}
	for _, s := range fakeErrorSeeds(f) {
		f.Add(s.status, s.body)
	}
	for _, phrase := range fuzzAttackPhrases {
		for _, body := range attackBodies(phrase) {
			for _, status := range []int{400, 401, 403} {
				f.Add(status, []byte(body))
			}
		}
	}
	// The fixed key messages on the "wrong" statuses, and a few odd ones.
	f.Add(400, []byte(bodyLeaked))
	f.Add(401, []byte(bodyLeaked))
	f.Add(403, []byte(`Your API key was reported as leaked. Please use another API key.`))
	f.Add(403, []byte("<html><body>403 Forbidden</body></html>"))
	f.Add(200, []byte(bodyInvalidKey))
	f.Add(0, []byte(""))
	f.Add(-1, []byte(bodyInvalidKey))
	f.Add(999, []byte(bodyInvalidKey))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		checkClassify(t, status, body, fuzzNow)
	})
}

func FuzzQuota(f *testing.F) {
	for _, s := range googleSeeds {
		f.Add([]byte(s.body))
	}
	for _, s := range fakeErrorSeeds(f) {
		f.Add(s.body)
	}
	for _, phrase := range fuzzAttackPhrases {
		for _, body := range attackBodies(phrase) {
			f.Add([]byte(body))
		}
	}
	f.Add([]byte(`{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}`))
	f.Add([]byte(`{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"99999999h"}]}}`))
	f.Add([]byte(`{"error":{"code":429,"message":"Please retry in 1e9s. limit: 0."}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, now := range []time.Time{fuzzNow, fuzzNowDST} {
			o := checkClassify(t, http.StatusTooManyRequests, body, now)
			if o.Kind != Quota {
				t.Fatalf("429 classified %v: %+v\nbody: %q", o.Kind, o, body)
			}
		}
	})
}

// keyInReason is what must never survive sanitising: a Google API key.
var keyInReason = regexp.MustCompile(`AIza[0-9A-Za-z_\-]{20,}|AQ\.[0-9A-Za-z_\-.]{20,}`)

// fixedKeyMessages are Google's whole 401/403 key messages: they quote nothing of the request,
// so a 401/403 whose message is exactly one of them may condemn the key without an ErrorInfo.
var fixedKeyMessages = map[string]bool{
	"Your API key was reported as leaked. Please use another API key.": true,
	"API key not valid. Please pass a valid API key.":                  true,
	"API Key not found. Please pass a valid API key.":                  true,
	"API key expired. Please renew the API key.":                       true,
}

// suspendedWhole is the whole "consumer suspended" message (the consumer is an identifier of
// the key or project, never request text): also allowed as a fixed 401/403 key message.
var suspendedWhole = regexp.MustCompile(`^Permission denied: Consumer '[^'\s]{1,80}' has been suspended\.$`)

// checkClassify classifies one answer and checks every invariant, independently of how
// Classify reads the body. It returns the outcome.
func checkClassify(t *testing.T, status int, body []byte, now time.Time) Outcome {
	t.Helper()
	o := Classify(status, body, now)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("Classify(%d, %q):\n%+v\n"+format, append([]any{status, body, o}, args...)...)
	}
	e := readFuzzError(body)

	// Reason: valid UTF-8, short, no key.
	switch {
	case !utf8.ValidString(o.Reason):
		fail("Reason is not valid UTF-8")
	case len(o.Reason) > 300:
		fail("Reason is %d bytes", len(o.Reason))
	case keyInReason.MatchString(o.Reason):
		fail("Reason contains a key: %q", keyInReason.FindString(o.Reason))
	}

	// Kind by status.
	switch {
	case status >= 100 && status < 400:
		if o.Kind != Success {
			fail("status %d is not Success", status)
		}
	case status < 100: // no HTTP client delivers one; whatever it is, it is not the key's fault
		if o.Kind == KeyInvalid || o.Kind == Quota {
			fail("status %d condemned or cooled the key", status)
		}
	case status == http.StatusTooManyRequests:
		if o.Kind != Quota {
			fail("429 is not Quota")
		}
	case status >= 500:
		if o.Kind != Transient {
			fail("5xx is not Transient")
		}
	}
	if o.Kind == Quota {
		if !o.Until.After(now) || o.Until.After(now.Add(25*time.Hour)) {
			fail("Until %s is not in (now, now+25h] (now %s)", o.Until, now)
		}
	} else if !o.Until.IsZero() {
		fail("Until set on a %v", o.Kind)
	}

	// KeyInvalid only on 400/401/402/403, and on 400/401/403 only from structure: an ErrorInfo,
	// or a 401/403 whose whole message is one of Google's fixed key messages.
	if o.Kind == KeyInvalid {
		switch status {
		case 400, 401, 403:
			msg := strings.TrimSpace(e.Message)
			fixed := (status == 401 || status == 403) && (fixedKeyMessages[msg] || suspendedWhole.MatchString(msg))
			if !e.hasDetail("google.rpc.ErrorInfo") && !fixed {
				fail("KeyInvalid without an ErrorInfo or a whole fixed key message (message %q)", e.Message)
			}
		case 402:
		default:
			fail("KeyInvalid on status %d", status)
		}
	}
	checkStructuredFields(t, status, body, e, o, fail)
	return o
}

// checkStructuredFields checks the outcome fields that must come from structured details only:
// Confirm, PerProject and Project.
func checkStructuredFields(t *testing.T, status int, body []byte, e fuzzError, o Outcome, fail func(string, ...any)) {
	t.Helper()
	if o.Confirm != (o.Kind == KeyInvalid && status != http.StatusPaymentRequired) {
		fail("Confirm %v on a %v (status %d): only a 400/401/403 KeyInvalid asks for a probe", o.Confirm, o.Kind, status)
	}

	// PerProject: a Quota whose QuotaFailure (or legacy RATE_LIMIT_EXCEEDED ErrorInfo) names a
	// per-project quota, and every such Quota.
	typed := e.perProjectQuota()
	if o.PerProject && (o.Kind != Quota || !typed) {
		fail("PerProject without a per-project QuotaFailure or RATE_LIMIT_EXCEEDED ErrorInfo")
	}
	if o.Kind == Quota && typed && !o.PerProject {
		fail("a per-project QuotaFailure is not PerProject")
	}

	// Project: digits named by an ErrorInfo's metadata, never by text.
	if o.Project != "" {
		if strings.Trim(o.Project, "0123456789") != "" || len(o.Project) > 20 {
			fail("Project %q is not a project number", o.Project)
		}
		if !e.namesProject(o.Project) {
			fail("Project %q is not named by any ErrorInfo metadata", o.Project)
		}
	}
}

// fuzzError is the test's own reading of an error body: the envelope `{"error":…}` or the
// first element of a JSON array of them that has one, decoded as encoding/json does for
// Classify (fields of an unexpected type are skipped); any other body is its own message.
type fuzzError struct {
	Message string       `json:"message"`
	Details []fuzzDetail `json:"details"`
}

type fuzzDetail struct {
	Type       string         `json:"@type"`
	Reason     string         `json:"reason"`
	Metadata   map[string]any `json:"metadata"`
	Violations []struct {
		QuotaID string `json:"quotaId"`
	} `json:"violations"`
}

type fuzzEnvelope struct {
	Error *fuzzError `json:"error"`
}

func readFuzzError(body []byte) fuzzError {
	trimmed := bytes.TrimSpace(body)
	usable := func(err error) bool {
		var te *json.UnmarshalTypeError
		return err == nil || errors.As(err, &te)
	}
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var env fuzzEnvelope
		if usable(json.Unmarshal(trimmed, &env)) && env.Error != nil {
			return *env.Error
		}
	}
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var envs []fuzzEnvelope
		if usable(json.Unmarshal(trimmed, &envs)) {
			for _, env := range envs {
				if env.Error != nil {
					return *env.Error
				}
			}
		}
	}
	return fuzzError{Message: string(trimmed)}
}

// hasDetail reports whether a detail's @type ends in typ, e.g. "google.rpc.ErrorInfo".
func (e fuzzError) hasDetail(typ string) bool {
	for _, d := range e.Details {
		if strings.HasSuffix(d.Type, typ) {
			return true
		}
	}
	return false
}

// perProjectQuota reports whether a QuotaFailure violation's quotaId, or a legacy
// RATE_LIMIT_EXCEEDED ErrorInfo's quota_limit, names a per-project quota.
func (e fuzzError) perProjectQuota() bool {
	for _, d := range e.Details {
		switch {
		case strings.HasSuffix(d.Type, "google.rpc.QuotaFailure"):
			for _, v := range d.Violations {
				if strings.Contains(v.QuotaID, "PerProject") {
					return true
				}
			}
		case strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") && d.Reason == "RATE_LIMIT_EXCEEDED":
			if limit, _ := d.Metadata["quota_limit"].(string); strings.Contains(limit, "PerProject") {
				return true
			}
		}
	}
	return false
}

// namesProject reports whether an ErrorInfo's metadata has the value "projects/<number>" or
// "project_number:<number>".
func (e fuzzError) namesProject(number string) bool {
	for _, d := range e.Details {
		if !strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") {
			continue
		}
		for _, v := range d.Metadata {
			if s, _ := v.(string); s == "projects/"+number || s == "project_number:"+number {
				return true
			}
		}
	}
	return false
}
