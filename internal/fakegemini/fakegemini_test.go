package fakegemini

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"
)

const (
	keyA = "AIzaSyTEST-key-a-0000000000000000000000"
	keyB = "AIzaSyTEST-key-b-1111111111111111111111"
)

// start serves a new fake on 127.0.0.1 for the duration of the test.
func start(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	fake := New()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv
}

// result is a fully read HTTP answer.
type result struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; headers come as name/value pairs.
func do(t *testing.T, method, url, body string, headers ...string) result {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, b}
}

func genBody(text string) string {
	return `{"contents":[{"role":"user","parts":[{"text":` + quote(text) + `}]}]}`
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// decodeError parses a Google error envelope.
func decodeError(t *testing.T, body []byte) apiErrorJSON {
	t.Helper()
	var env struct {
		Error apiErrorJSON `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("not an error envelope: %v: %s", err, body)
	}
	return env.Error
}

type apiErrorJSON struct {
	Code    int              `json:"code"`
	Message string           `json:"message"`
	Status  string           `json:"status"`
	Details []map[string]any `json:"details"`
}

func newSDK(t *testing.T, baseURL, key string) *genai.Client {
	t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: baseURL},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSDKSpeaksTheFake(t *testing.T) {
	fake, srv := start(t)
	client := newSDK(t, srv.URL, keyA)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("GenerateContent", func(t *testing.T) {
		resp, err := client.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hello big world"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Text(); got != "echo: hello big world" {
			t.Errorf("text = %q", got)
		}
		u := resp.UsageMetadata
		if u.PromptTokenCount != 3 || u.CandidatesTokenCount != 4 || u.ThoughtsTokenCount != fakeThoughtsTokens ||
			u.TotalTokenCount != 3+4+fakeThoughtsTokens {
			t.Errorf("usage = %+v", u)
		}
		if resp.ModelVersion != "gemini-2.5-flash" || resp.ResponseID == "" {
			t.Errorf("modelVersion = %q, responseId = %q", resp.ModelVersion, resp.ResponseID)
		}
		if resp.Candidates[0].FinishReason != genai.FinishReasonStop {
			t.Errorf("finishReason = %q", resp.Candidates[0].FinishReason)
		}
	})

	t.Run("ThinkingBudgetZeroHasNoThoughts", func(t *testing.T) {
		cfg := &genai.GenerateContentConfig{ThinkingConfig: &genai.ThinkingConfig{ThinkingBudget: genai.Ptr[int32](0)}}
		resp, err := client.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if u := resp.UsageMetadata; u.ThoughtsTokenCount != 0 || u.TotalTokenCount != 1+2 {
			t.Errorf("usage = %+v", u)
		}
	})

	t.Run("GenerateContentStream", func(t *testing.T) {
		fake.SetStream(4, 0)
		defer fake.SetStream(0, 0)
		var text strings.Builder
		var last *genai.GenerateContentResponse
		n := 0
		for resp, err := range client.Models.GenerateContentStream(ctx, "gemini-2.5-pro", genai.Text("stream me please"), nil) {
			if err != nil {
				t.Fatalf("after %d chunks: %v", n, err)
			}
			n++
			text.WriteString(resp.Text())
			last = resp
		}
		if n != 4 || text.String() != "echo: stream me please" {
			t.Fatalf("got %d chunks with text %q", n, text.String())
		}
		if last.Candidates[0].FinishReason != genai.FinishReasonStop || last.ModelVersion != "gemini-2.5-pro" {
			t.Errorf("last chunk = %+v", last.Candidates[0])
		}
		if u := last.UsageMetadata; u.PromptTokenCount != 3 || u.CandidatesTokenCount != 4 || u.TotalTokenCount != 3+4+fakeThoughtsTokens {
			t.Errorf("final usage = %+v", u)
		}
		if got := fake.Calls()[len(fake.Calls())-1].RawQuery; got != "alt=sse" {
			t.Errorf("SDK stream query = %q, want alt=sse", got)
		}
	})

	t.Run("CountTokens", func(t *testing.T) {
		resp, err := client.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("one two three four"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalTokens != 4 {
			t.Errorf("totalTokens = %d, want 4", resp.TotalTokens)
		}
	})

	t.Run("EmbedContent", func(t *testing.T) {
		contents := []*genai.Content{genai.NewContentFromText("alpha", genai.RoleUser), genai.NewContentFromText("beta", genai.RoleUser)}
		resp, err := client.Models.EmbedContent(ctx, "gemini-embedding-001", contents, &genai.EmbedContentConfig{OutputDimensionality: genai.Ptr[int32](16)})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Embeddings) != 2 || len(resp.Embeddings[0].Values) != 16 {
			t.Fatalf("embeddings = %d, first has %d values", len(resp.Embeddings), len(resp.Embeddings[0].Values))
		}
		again, err := client.Models.EmbedContent(ctx, "gemini-embedding-001", contents[:1], &genai.EmbedContentConfig{OutputDimensionality: genai.Ptr[int32](16)})
		if err != nil {
			t.Fatal(err)
		}
		if !slicesEqual(again.Embeddings[0].Values, resp.Embeddings[0].Values) {
			t.Errorf("embedding of the same text differs between calls")
		}
		if slicesEqual(resp.Embeddings[0].Values, resp.Embeddings[1].Values) {
			t.Errorf("different texts got the same embedding")
		}
	})

	t.Run("ModelsList", func(t *testing.T) {
		page, err := client.Models.List(ctx, &genai.ListModelsConfig{PageSize: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Items) != 3 || page.NextPageToken == "" {
			t.Fatalf("first page: %d items, next %q", len(page.Items), page.NextPageToken)
		}
		names := map[string]bool{}
		for m, err := range client.Models.All(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			names[m.Name] = true
		}
		for _, want := range []string{"models/gemini-2.5-flash", "models/gemini-2.5-pro", "models/gemini-embedding-001"} {
			if !names[want] {
				t.Errorf("%s not listed (got %v)", want, names)
			}
		}
		if len(names) != len(catalog) {
			t.Errorf("listed %d models, want %d", len(names), len(catalog))
		}
	})

	t.Run("UnknownModelIs404", func(t *testing.T) {
		_, err := client.Models.Get(ctx, "gemini-0-nope", nil)
		var apiErr genai.APIError
		if !errors.As(err, &apiErr) || apiErr.Code != 404 || apiErr.Status != "NOT_FOUND" {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("UploadAndOwnership", func(t *testing.T) {
		data := bytes.Repeat([]byte("0123456789"), 1000)
		f, err := client.Files.Upload(ctx, bytes.NewReader(data), &genai.UploadFileConfig{MIMEType: "text/plain", DisplayName: "digits"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(f.Name, "files/") || f.SizeBytes == nil || *f.SizeBytes != int64(len(data)) ||
			f.State != genai.FileStateActive || f.URI != "https://generativelanguage.googleapis.com/v1beta/"+f.Name {
			t.Fatalf("file = %+v", f)
		}
		if _, err := client.Files.Get(ctx, f.Name, nil); err != nil {
			t.Fatalf("owner cannot get its file: %v", err)
		}
		other := newSDK(t, srv.URL, keyB)
		_, err = other.Files.Get(ctx, f.Name, nil)
		var apiErr genai.APIError
		if !errors.As(err, &apiErr) || apiErr.Code != 403 ||
			apiErr.Message != "You do not have permission to access the File "+f.Name+" or it may not exist." {
			t.Fatalf("other key: err = %v", err)
		}
	})
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSDKSurfacesKeyErrors(t *testing.T) {
	fake, srv := start(t)
	fake.SetKey("bad-key-000", Invalid)
	fake.SetKey("quota-key-000", QuotaMinute)
	fake.SetRetryDelay("12.5s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	detail := func(e genai.APIError, typ string) map[string]any {
		for _, d := range e.Details {
			if d["@type"] == typ {
				return d
			}
		}
		return nil
	}

	_, err := newSDK(t, srv.URL, "bad-key-000").Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), nil)
	var apiErr genai.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != 400 || apiErr.Status != "INVALID_ARGUMENT" ||
		detail(apiErr, typeErrorInfo)["reason"] != "API_KEY_INVALID" {
		t.Errorf("invalid key: err = %v", err)
	}

	quota := newSDK(t, srv.URL, "quota-key-000")
	_, err = quota.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), nil)
	if !errors.As(err, &apiErr) || apiErr.Code != 429 || apiErr.Status != "RESOURCE_EXHAUSTED" ||
		detail(apiErr, typeRetryInfo)["retryDelay"] != "12.5s" || detail(apiErr, typeQuotaFailure) == nil {
		t.Errorf("quota key: err = %v", err)
	}
	for _, err := range quota.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("hi"), nil) {
		if !errors.As(err, &apiErr) || apiErr.Code != 429 {
			t.Errorf("quota key, stream: err = %v", err)
		}
		break
	}
	// Quota does not stop free calls.
	if _, err := quota.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("hi"), nil); err != nil {
		t.Errorf("countTokens on a quota-exhausted key: %v", err)
	}

	// A mid-stream bare error object reaches the SDK as an APIError after the first events.
	fake.SetStream(4, 0)
	fake.SetFailAfterEvents(2)
	n := 0
	var streamErr error
	for _, err := range newSDK(t, srv.URL, keyA).Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("hi"), nil) {
		if err != nil {
			streamErr = err
			break
		}
		n++
	}
	if n != 2 || !errors.As(streamErr, &apiErr) || apiErr.Code != 503 || apiErr.Status != "UNAVAILABLE" {
		t.Errorf("mid-stream failure: %d chunks, err = %v", n, streamErr)
	}
}

func TestErrorBodiesAreGooglesFormat(t *testing.T) {
	fake, srv := start(t)
	url := srv.URL + "/v1beta/models/gemini-2.5-flash:generateContent"

	fake.SetKey(keyA, Invalid)
	r := do(t, "POST", url, genBody("hi"), "x-goog-api-key", keyA)
	want := `{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {
          "service": "generativelanguage.googleapis.com"
        }
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
	if r.status != 400 || string(r.body) != want {
		t.Errorf("invalid key: status %d, body:\n%s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json; charset=UTF-8" {
		t.Errorf("Content-Type = %q", ct)
	}

	tests := []struct {
		state  KeyState
		code   int
		status string
		reason string // ErrorInfo reason, "" for none
		msg    string // substring of the message
	}{
		{Suspended, 403, "PERMISSION_DENIED", "CONSUMER_SUSPENDED", "Consumer 'api_key:AIzaSy…' has been suspended."},
		{Leaked, 403, "PERMISSION_DENIED", "", "Your API key was reported as leaked. Please use another API key."},
		{ServiceBlocked, 403, "PERMISSION_DENIED", "API_KEY_SERVICE_BLOCKED", "method google.ai.generativelanguage.v1beta.GenerativeService.GenerateContent are blocked."},
		{QuotaMinute, 429, "RESOURCE_EXHAUSTED", "", "You exceeded your current quota"},
		{QuotaDay, 429, "RESOURCE_EXHAUSTED", "", "You exceeded your current quota"},
		{Prepay, 402, "RESOURCE_EXHAUSTED", "", "Your prepayment credits are depleted."},
		{Internal, 500, "INTERNAL", "", "An internal error has occurred."},
		{Overloaded, 503, "UNAVAILABLE", "", "The model is overloaded. Please try again later."},
	}
	for _, tc := range tests {
		t.Run(string(tc.state), func(t *testing.T) {
			fake.SetKey(keyA, tc.state)
			r := do(t, "POST", url, genBody("hi"), "x-goog-api-key", keyA)
			e := decodeError(t, r.body)
			if r.status != tc.code || e.Code != tc.code || e.Status != tc.status || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("got %d %+v", r.status, e)
			}
			if tc.reason == "" && tc.state == Leaked && len(e.Details) != 0 {
				t.Errorf("leaked error has details: %v", e.Details)
			}
			if tc.reason != "" && (len(e.Details) == 0 || e.Details[0]["reason"] != tc.reason) {
				t.Errorf("details = %v, want reason %s", e.Details, tc.reason)
			}
			if bytes.Contains(r.body, []byte(keyA)) {
				t.Errorf("error body contains the full key")
			}
			var indented bytes.Buffer
			_ = json.Indent(&indented, bytes.TrimSpace(r.body), "", "  ")
			if indented.String()+"\n" != string(r.body) {
				t.Errorf("body is not 2-space pretty-printed with a trailing newline:\n%s", r.body)
			}
		})
	}

	t.Run("QuotaViolations", func(t *testing.T) {
		fake.SetRetryDelay("")
		fake.SetKey(keyA, QuotaDay)
		e := decodeError(t, do(t, "POST", url, genBody("hi"), "x-goog-api-key", keyA).body)
		var ids []string
		var delay any
		for _, d := range e.Details {
			if vs, ok := d["violations"].([]any); ok {
				for _, v := range vs {
					ids = append(ids, v.(map[string]any)["quotaId"].(string))
					if m := v.(map[string]any)["quotaDimensions"].(map[string]any)["model"]; m != "gemini-2.5-flash" {
						t.Errorf("violation model = %v", m)
					}
				}
			}
			if d["@type"] == typeRetryInfo {
				delay = d["retryDelay"]
			}
		}
		if len(ids) != 2 || !strings.Contains(ids[0], "PerDay") || !strings.Contains(ids[1], "PerMinute") || delay != "30s" {
			t.Errorf("quotaIds = %v, retryDelay = %v", ids, delay)
		}
	})

	t.Run("SSEStreamErrorIsEventStream", func(t *testing.T) {
		fake.SetKey(keyA, Overloaded)
		r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", genBody("hi"), "x-goog-api-key", keyA)
		if r.status != 503 || r.header.Get("Content-Type") != "text/event-stream" || decodeError(t, r.body).Status != "UNAVAILABLE" {
			t.Errorf("got %d %q %s", r.status, r.header.Get("Content-Type"), r.body)
		}
		r = do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent", genBody("hi"), "x-goog-api-key", keyA)
		if r.status != 503 || r.header.Get("Content-Type") != "application/json; charset=UTF-8" {
			t.Errorf("JSON-array stream error: got %d %q", r.status, r.header.Get("Content-Type"))
		}
	})

	t.Run("UnknownModel", func(t *testing.T) {
		fake.SetKey(keyA, OK)
		r := do(t, "POST", srv.URL+"/v1/models/gemini-0-pro:generateContent", genBody("hi"), "x-goog-api-key", keyA)
		e := decodeError(t, r.body)
		wantMsg := "models/gemini-0-pro is not found for API version v1, or is not supported for generateContent. " +
			"Call ListModels to see the list of available models and their supported methods."
		if r.status != 404 || e.Status != "NOT_FOUND" || e.Message != wantMsg {
			t.Errorf("got %d %+v", r.status, e)
		}
		r = do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:embedContent", `{"content":{"parts":[{"text":"x"}]}}`, "x-goog-api-key", keyA)
		if r.status != 404 {
			t.Errorf("embedContent on a chat model: %d", r.status)
		}
	})
}

func TestAuthRules(t *testing.T) {
	fake, srv := start(t)
	gen := srv.URL + "/v1beta/models/gemini-2.5-flash:generateContent"

	r := do(t, "POST", gen, genBody("hi"))
	e := decodeError(t, r.body)
	if r.status != 403 || e.Status != "PERMISSION_DENIED" || !strings.HasPrefix(e.Message, "Method doesn't allow unregistered callers") {
		t.Errorf("no key: %d %+v", r.status, e)
	}
	r = do(t, "POST", gen, genBody("hi"), "Authorization", "Bearer "+keyA)
	if e := decodeError(t, r.body); r.status != 401 || e.Status != "UNAUTHENTICATED" {
		t.Errorf("Bearer on a native path: %d %+v", r.status, e)
	}
	if r := do(t, "POST", gen+"?key="+keyA, genBody("hi")); r.status != 200 {
		t.Errorf("?key=: %d %s", r.status, r.body)
	}
	fake.SetKey(keyB, Invalid)
	if r := do(t, "POST", gen+"?key="+keyB, genBody("hi"), "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("header should win over ?key=: %d", r.status)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/openai/models", "", "Authorization", "Bearer "+keyA); r.status != 200 {
		t.Errorf("Bearer on the OpenAI path: %d %s", r.status, r.body)
	}
	if r := do(t, "POST", srv.URL+"/v1alpha/models/gemini-2.5-flash%3AgenerateContent", genBody("hi"), "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("%%3A-encoded method: %d %s", r.status, r.body)
	}

	calls := fake.Calls()
	wantKeys := []string{"", "", keyA, keyA, keyA, keyA}
	if len(calls) != len(wantKeys) {
		t.Fatalf("recorded %d calls, want %d", len(calls), len(wantKeys))
	}
	for i, c := range calls {
		if c.Key != wantKeys[i] {
			t.Errorf("call %d: key %q, want %q", i, c.Key, wantKeys[i])
		}
	}
	if c := calls[1]; c.Method != "POST" || c.Path != "/v1beta/models/gemini-2.5-flash:generateContent" ||
		c.Header.Get("Authorization") != "Bearer "+keyA || string(c.Body) != genBody("hi") || c.Time.IsZero() {
		t.Errorf("call 1 = %+v", c)
	}
	if calls[2].RawQuery != "key="+keyA || calls[5].Path != "/v1alpha/models/gemini-2.5-flash:generateContent" {
		t.Errorf("RawQuery %q, Path %q", calls[2].RawQuery, calls[5].Path)
	}

	calls[0].Header.Set("X-Mutated", "1")
	calls[1].Body[0] = 'X'
	if again := fake.Calls(); again[0].Header.Get("X-Mutated") != "" || again[1].Body[0] != '{' {
		t.Errorf("Calls shares headers or bodies with the fake's log")
	}

	// Reset forgets calls but not key states.
	fake.Reset()
	if n := len(fake.Calls()); n != 0 {
		t.Errorf("%d calls after Reset", n)
	}
	if r := do(t, "POST", gen, genBody("hi"), "x-goog-api-key", keyB); r.status != 400 {
		t.Errorf("key state lost by Reset: %d", r.status)
	}
}

func TestStatesScopeAndPrecedence(t *testing.T) {
	fake, srv := start(t)
	post := func(model, key string) int {
		return do(t, "POST", srv.URL+"/v1beta/models/"+model+":generateContent", genBody("hi"), "x-goog-api-key", key).status
	}
	fake.SetModelState("models/gemini-2.5-pro", Overloaded)
	if p, f := post("gemini-2.5-pro", keyA), post("gemini-2.5-flash", keyA); p != 503 || f != 200 {
		t.Errorf("model state: pro %d, flash %d", p, f)
	}
	fake.SetKey(keyB, Invalid)
	if got := post("gemini-2.5-pro", keyB); got != 400 {
		t.Errorf("an invalid key on an overloaded model: %d, want 400", got)
	}
	fake.SetModelState("gemini-2.5-pro", "")
	if got := post("gemini-2.5-pro", keyA); got != 200 {
		t.Errorf("cleared model state: %d", got)
	}

	fake.SetDefault(QuotaMinute)
	if got := post("gemini-2.5-flash", "never-set-key"); got != 429 {
		t.Errorf("default state: %d", got)
	}
	// Quota leaves the free calls alone; auth states stop everything.
	if r := do(t, "GET", srv.URL+"/v1beta/models?pageSize=1", "", "x-goog-api-key", "never-set-key"); r.status != 200 {
		t.Errorf("models.list on a quota key: %d", r.status)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/models?pageSize=1", "", "x-goog-api-key", keyB); r.status != 400 {
		t.Errorf("models.list on an invalid key: %d", r.status)
	}
}

func TestHangWaitsForTheClient(t *testing.T) {
	fake, srv := start(t)
	fake.SetKey(keyA, Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", strings.NewReader(genBody("hi")))
	req.Header.Set("x-goog-api-key", keyA)
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("hang key answered %d", resp.StatusCode)
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) < 200*time.Millisecond {
		t.Errorf("err = %v after %s", err, time.Since(began))
	}
	if n := len(fake.Calls()); n != 1 {
		t.Errorf("%d calls recorded", n)
	}
}

func TestSSEStreamShape(t *testing.T) {
	fake, srv := start(t)
	fake.SetStream(3, 0)
	r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", genBody("one two three four five"), "x-goog-api-key", keyA)
	if r.status != 200 || r.header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("got %d %q", r.status, r.header.Get("Content-Type"))
	}
	if !bytes.HasSuffix(r.body, []byte("\r\n\r\n")) {
		t.Errorf("stream does not end with CRLF CRLF: %q", r.body)
	}
	events := strings.Split(strings.TrimSuffix(string(r.body), "\r\n\r\n"), "\r\n\r\n")
	if len(events) != 3 {
		t.Fatalf("%d events: %q", len(events), r.body)
	}
	var text string
	prevCandidates := 0
	for i, ev := range events {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.ContainsAny(data, "\r\n") {
			t.Fatalf("event %d is not one data: line: %q", i, ev)
		}
		var resp generateResponse
		if err := json.Unmarshal([]byte(data), &resp); err != nil {
			t.Fatal(err)
		}
		text += resp.Candidates[0].Content.Parts[0].Text
		u := resp.UsageMetadata
		if u.PromptTokenCount != 5 || u.CandidatesTokenCount < prevCandidates ||
			u.TotalTokenCount != u.PromptTokenCount+u.CandidatesTokenCount+u.ThoughtsTokenCount {
			t.Errorf("event %d usage = %+v", i, u)
		}
		prevCandidates = u.CandidatesTokenCount
		if final := resp.Candidates[0].FinishReason == "STOP"; final != (i == 2) {
			t.Errorf("event %d finishReason %q", i, resp.Candidates[0].FinishReason)
		}
	}
	if text != "echo: one two three four five" || prevCandidates != 6 {
		t.Errorf("text %q, final candidates %d", text, prevCandidates)
	}
}

func TestJSONArrayStreamShape(t *testing.T) {
	fake, srv := start(t)
	fake.SetStream(3, 0)
	r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=json", genBody("hi there"), "x-goog-api-key", keyA)
	if r.status != 200 || r.header.Get("Content-Type") != "application/json; charset=UTF-8" {
		t.Fatalf("got %d %q", r.status, r.header.Get("Content-Type"))
	}
	body := string(r.body)
	if !strings.HasPrefix(body, "[{\n  \"candidates\"") || !strings.HasSuffix(body, "}\r\n]") || strings.Count(body, "}\r\n,\r\n{") != 2 {
		t.Errorf("not Google's array framing: %q", body)
	}
	var arr []generateResponse
	if err := json.Unmarshal(r.body, &arr); err != nil || len(arr) != 3 {
		t.Fatalf("%d elements, err %v", len(arr), err)
	}
	if arr[2].Candidates[0].FinishReason != "STOP" || arr[2].UsageMetadata.CandidatesTokenCount != 3 {
		t.Errorf("last element = %+v", arr[2])
	}

	fake.SetFailAfterEvents(1)
	r = do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent", genBody("hi there"), "x-goog-api-key", keyA)
	var mixed []map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &mixed); err != nil || len(mixed) != 2 || mixed[1]["error"] == nil {
		t.Errorf("array with a failure: err %v, body %s", err, r.body)
	}
}

func TestMidStreamBareError(t *testing.T) {
	fake, srv := start(t)
	fake.SetStream(3, 0)
	fake.SetFailAfterEvents(1)
	r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", genBody("hi"), "x-goog-api-key", keyA)
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	first, rest, ok := strings.Cut(string(r.body), "\r\n\r\n")
	if !ok || !strings.HasPrefix(first, "data: {") {
		t.Fatalf("first event %q", first)
	}
	if !strings.HasPrefix(rest, `{"error":{"code":503,`) || strings.Contains(rest, "data:") {
		t.Errorf("after the first event: %q", rest)
	}
	if e := decodeError(t, []byte(rest)); e.Status != "UNAVAILABLE" {
		t.Errorf("error = %+v", e)
	}
}

func TestStreamIsProgressiveAndStopsOnDisconnect(t *testing.T) {
	fake, srv := start(t)
	fake.SetStream(5, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", strings.NewReader(genBody("hi")))
	req.Header.Set("x-goog-api-key", keyA)
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf)
	if err != nil || !bytes.HasSuffix(buf[:n], []byte("\r\n\r\n")) {
		t.Fatalf("first read: %q, %v", buf[:n], err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("first event after %s: not flushed", d)
	}
	if got := fake.OpenStreams(); got != 1 {
		t.Errorf("OpenStreams = %d mid-stream", got)
	}
	cancel() // mid-way through a 2s pause: the fake must not wait it out
	deadline := time.Now().Add(time.Second)
	for fake.OpenStreams() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := fake.OpenStreams(); got != 0 {
		t.Errorf("OpenStreams = %d after the client left", got)
	}
}

func TestModelsListPagination(t *testing.T) {
	_, srv := start(t)
	var names []string
	token := ""
	for range len(catalog) + 1 {
		r := do(t, "GET", srv.URL+"/v1beta/models?pageSize=3&pageToken="+url.QueryEscape(token), "", "x-goog-api-key", keyA)
		var page struct {
			Models        []modelInfo `json:"models"`
			NextPageToken string      `json:"nextPageToken"`
		}
		if err := json.Unmarshal(r.body, &page); err != nil || r.status != 200 || len(page.Models) > 3 {
			t.Fatalf("page: %d %v %s", r.status, err, r.body)
		}
		for _, m := range page.Models {
			names = append(names, m.Name)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if len(names) != len(catalog) || names[0] != catalog[0].Name {
		t.Errorf("listed %v", names)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/models/gemini-2.5-flash", "", "x-goog-api-key", keyA); !bytes.Contains(r.body, []byte(`"name": "models/gemini-2.5-flash"`)) {
		t.Errorf("models.get: %s", r.body)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/models?pageToken=garbage", "", "x-goog-api-key", keyA); r.status != 400 {
		t.Errorf("bad page token: %d", r.status)
	}
}

func TestOpenAICompat(t *testing.T) {
	fake, srv := start(t)
	chat := srv.URL + "/v1beta/openai/chat/completions"
	body := `{"model":"gemini-2.5-flash","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi there"}]}]}`

	r := do(t, "POST", chat, body, "Authorization", "Bearer "+keyA)
	var c chatCompletion
	if err := json.Unmarshal(r.body, &c); err != nil || r.status != 200 {
		t.Fatalf("%d %v %s", r.status, err, r.body)
	}
	if c.Object != "chat.completion" || c.Model != "gemini-2.5-flash" || c.Choices[0].Message.Content != "echo: hi there" ||
		c.Choices[0].FinishReason != "stop" || c.Usage == nil || *c.Usage != (chatUsage{CompletionTokens: 3, PromptTokens: 4, TotalTokens: 7}) {
		t.Errorf("completion = %s", r.body)
	}

	fake.SetStream(2, 0)
	r = do(t, "POST", chat, strings.Replace(body, `"messages"`, `"stream":true,"messages"`, 1), "Authorization", "Bearer "+keyA)
	if r.header.Get("Content-Type") != "text/event-stream" || !strings.HasSuffix(string(r.body), "data: [DONE]\n\n") {
		t.Fatalf("stream: %q %q", r.header.Get("Content-Type"), r.body)
	}
	events := strings.Split(strings.TrimSuffix(string(r.body), "\n\n"), "\n\n")
	if len(events) != 3 {
		t.Fatalf("%d events: %q", len(events), r.body)
	}
	var text string
	for i, ev := range events[:2] {
		var chunk chatCompletion
		if err := json.Unmarshal([]byte(strings.TrimPrefix(ev, "data: ")), &chunk); err != nil || chunk.Object != "chat.completion.chunk" {
			t.Fatalf("chunk %d: %v %q", i, err, ev)
		}
		text += chunk.Choices[0].Delta.Content
		if (chunk.Usage != nil) != (i == 1) {
			t.Errorf("chunk %d usage = %v", i, chunk.Usage)
		}
	}
	if text != "echo: hi there" {
		t.Errorf("streamed text %q", text)
	}

	fake.SetKey(keyB, Invalid)
	r = do(t, "POST", chat, body, "Authorization", "Bearer "+keyB)
	var wrapped []errorEnvelope
	if err := json.Unmarshal(r.body, &wrapped); err != nil || r.status != 400 || len(wrapped) != 1 || wrapped[0].Error.Status != "INVALID_ARGUMENT" {
		t.Errorf("OpenAI error not array-wrapped: %d %s", r.status, r.body)
	}
	r = do(t, "POST", chat, strings.Replace(body, "gemini-2.5-flash", "models/gemini-9", 1), "Authorization", "Bearer "+keyA)
	if r.status != 404 || !strings.HasPrefix(string(r.body), "[") {
		t.Errorf("unknown model: %d %s", r.status, r.body)
	}
	r = do(t, "GET", srv.URL+"/v1beta/openai/models", "", "Authorization", "Bearer "+keyA)
	if !bytes.Contains(r.body, []byte(`"id": "models/gemini-2.5-pro"`)) {
		t.Errorf("models: %s", r.body)
	}
}

func TestResumableUpload(t *testing.T) {
	fake, srv := start(t)
	startUpload := func(query string, headers ...string) result {
		h := append([]string{"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start",
			"X-Goog-Upload-Header-Content-Length", "10", "X-Goog-Upload-Header-Content-Type", "text/plain"}, headers...)
		return do(t, "POST", srv.URL+"/upload/v1beta/files"+query, `{"file":{"display_name":"ten"}}`, h...)
	}
	// The upload URL names Google's host; the proxy must rewrite it.
	local := func(googleURL string) string {
		u, err := url.Parse(googleURL)
		if err != nil || u.Host != "generativelanguage.googleapis.com" || u.Path != "/upload/v1beta/files" {
			t.Fatalf("upload URL %q", googleURL)
		}
		return srv.URL + u.RequestURI()
	}

	r := startUpload("?key=" + keyA)
	up, err := url.Parse(r.header.Get("X-Goog-Upload-Url"))
	if err != nil || r.status != 200 || len(r.body) != 0 || r.header.Get("X-Goog-Upload-Status") != "active" ||
		r.header.Get("X-Goog-Upload-Chunk-Granularity") != "8388608" ||
		r.header.Get("X-Goog-Upload-Control-Url") != r.header.Get("X-Goog-Upload-Url") ||
		up.Query().Get("key") != keyA || up.Query().Get("upload_protocol") != "resumable" || up.Query().Get("upload_id") == "" {
		t.Fatalf("start: %d %v %s", r.status, r.header, r.body)
	}
	r = startUpload("", "x-goog-api-key", keyA)
	sessionURL := local(r.header.Get("X-Goog-Upload-Url"))
	if strings.Contains(sessionURL, "key=") {
		t.Errorf("header-authenticated start echoed a key: %s", sessionURL)
	}

	chunk := func(cmd, offset, body string, headers ...string) result {
		return do(t, "POST", sessionURL, body, append([]string{"X-Goog-Upload-Command", cmd, "X-Goog-Upload-Offset", offset}, headers...)...)
	}
	if r := chunk("upload", "0", "01234", "x-goog-api-key", keyB); r.status != 403 {
		t.Errorf("another key on the session: %d", r.status)
	}
	if r := chunk("upload", "0", "01234"); r.status != 200 || r.header.Get("X-Goog-Upload-Status") != "active" {
		t.Errorf("keyless chunk: %d %v", r.status, r.header)
	}
	if r := chunk("upload", "0", "56789"); r.status != 400 {
		t.Errorf("wrong offset: %d", r.status)
	}
	if r := chunk("query", "", ""); r.header.Get("X-Goog-Upload-Size-Received") != "5" {
		t.Errorf("query: %v", r.header)
	}
	r = chunk("upload, finalize", "5", "56789", "x-goog-api-key", keyA)
	var final struct {
		File fileResource `json:"file"`
	}
	if err := json.Unmarshal(r.body, &final); err != nil || r.status != 200 || r.header.Get("X-Goog-Upload-Status") != "final" {
		t.Fatalf("finalize: %d %v %s", r.status, err, r.body)
	}
	f := final.File
	id := strings.TrimPrefix(f.Name, "files/")
	if f.SizeBytes != "10" || f.MimeType != "text/plain" || f.DisplayName != "ten" || f.State != "ACTIVE" ||
		f.URI != "https://generativelanguage.googleapis.com/v1beta/files/"+id || id == "" {
		t.Errorf("file = %+v", f)
	}

	get := srv.URL + "/v1beta/" + f.Name
	if r := do(t, "GET", get, "", "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("owner get: %d", r.status)
	}
	r = do(t, "GET", get, "", "x-goog-api-key", keyB)
	if e := decodeError(t, r.body); r.status != 403 || e.Message != "You do not have permission to access the File "+f.Name+" or it may not exist." {
		t.Errorf("foreign get: %d %+v", r.status, e)
	}
	ref := `{"contents":[{"parts":[{"text":"describe"},{"fileData":{"mimeType":"text/plain","fileUri":"` + f.URI + `"}}]}]}`
	if r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", ref, "x-goog-api-key", keyB); r.status != 403 {
		t.Errorf("foreign fileUri: %d", r.status)
	}
	if r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", ref, "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("own fileUri: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/files", "", "x-goog-api-key", keyA); !bytes.Contains(r.body, []byte(f.Name)) {
		t.Errorf("files.list: %s", r.body)
	}
	if r := do(t, "DELETE", get, "", "x-goog-api-key", keyB); r.status != 403 {
		t.Errorf("foreign delete: %d", r.status)
	}
	if r := do(t, "DELETE", get, "", "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("owner delete: %d", r.status)
	}
	if r := do(t, "GET", get, "", "x-goog-api-key", keyA); r.status != 403 {
		t.Errorf("get after delete: %d", r.status)
	}

	r = startUpload("", "x-goog-api-key", keyA)
	sessionURL = local(r.header.Get("X-Goog-Upload-Url"))
	if r := chunk("cancel", "", ""); r.header.Get("X-Goog-Upload-Status") != "cancelled" {
		t.Errorf("cancel: %v", r.header)
	}
	if r := chunk("upload", "0", "x"); r.status != 404 {
		t.Errorf("chunk after cancel: %d", r.status)
	}
	if n := len(fake.Calls()); n < 15 {
		t.Errorf("only %d calls recorded", n)
	}
}

func TestUploadChunksAreCountedNotKept(t *testing.T) {
	fake, srv := start(t)
	r := do(t, "POST", srv.URL+"/upload/v1beta/files", `{}`, "x-goog-api-key", keyA,
		"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start")
	u, _ := url.Parse(r.header.Get("X-Goog-Upload-Url"))
	data := strings.Repeat("z", 3<<20)
	r = do(t, "POST", srv.URL+u.RequestURI(), data, "X-Goog-Upload-Command", "upload, finalize", "X-Goog-Upload-Offset", "0")
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"sizeBytes": "3145728"`)) {
		t.Fatalf("finalize: %d %s", r.status, r.body)
	}
	calls := fake.Calls()
	last := calls[len(calls)-1]
	if last.Body != nil || last.BodySize != int64(len(data)) || last.Key != "" {
		t.Errorf("chunk call: body kept %d bytes, size %d, key %q", len(last.Body), last.BodySize, last.Key)
	}
}

func TestFilesListPagesAndCachedContentsAreOwned(t *testing.T) {
	fake, srv := start(t)
	for range 5 {
		r := do(t, "POST", srv.URL+"/upload/v1beta/files", `{}`, "x-goog-api-key", keyA,
			"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start")
		u, _ := url.Parse(r.header.Get("X-Goog-Upload-Url"))
		do(t, "POST", srv.URL+u.RequestURI(), "abc", "X-Goog-Upload-Command", "upload, finalize")
	}
	var names []string
	tok := ""
	for pages := 0; pages < 5; pages++ {
		r := do(t, "GET", srv.URL+"/v1beta/files?pageSize=2&pageToken="+url.QueryEscape(tok), "", "x-goog-api-key", keyA)
		var page struct {
			Files []struct {
				Name string `json:"name"`
			} `json:"files"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := json.Unmarshal(r.body, &page); err != nil || r.status != 200 || len(page.Files) > 2 {
			t.Fatalf("list: %d %s", r.status, r.body)
		}
		for _, f := range page.Files {
			names = append(names, f.Name)
			if fake.FileOwner(f.Name) != keyA {
				t.Errorf("%s not owned by key A", f.Name)
			}
		}
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	if len(names) != 5 {
		t.Errorf("listed %d files in pages of 2, want 5", len(names))
	}
	if r := do(t, "GET", srv.URL+"/v1beta/files", "", "x-goog-api-key", keyB); bytes.Contains(r.body, []byte("files/")) {
		t.Errorf("key B sees key A's files: %s", r.body)
	}

	r := do(t, "POST", srv.URL+"/v1beta/cachedContents", `{"model":"models/gemini-2.5-flash","ttl":"60s","contents":[{"parts":[{"text":"ctx"}]}]}`, "x-goog-api-key", keyA)
	var cc cachedContent
	if err := json.Unmarshal(r.body, &cc); err != nil || r.status != 200 || !strings.HasPrefix(cc.Name, "cachedContents/") || cc.ExpireTime == "" {
		t.Fatalf("create cache: %d %s", r.status, r.body)
	}
	gen := `{"cachedContent":"` + cc.Name + `","contents":[{"parts":[{"text":"hi"}]}]}`
	if r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", gen, "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("owner uses cache: %d %s", r.status, r.body)
	}
	for _, r := range []result{
		do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", gen, "x-goog-api-key", keyB),
		do(t, "GET", srv.URL+"/v1beta/"+cc.Name, "", "x-goog-api-key", keyB),
		do(t, "DELETE", srv.URL+"/v1beta/"+cc.Name, "", "x-goog-api-key", keyB),
	} {
		if e := decodeError(t, r.body); r.status != 403 || e.Status != "PERMISSION_DENIED" {
			t.Errorf("foreign cache use: %d %+v", r.status, e)
		}
	}
	if r := do(t, "DELETE", srv.URL+"/v1beta/"+cc.Name, "", "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("owner deletes cache: %d", r.status)
	}
}

func TestBatchesAreOwned(t *testing.T) {
	_, srv := start(t)
	r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:batchGenerateContent",
		`{"batch":{"inputConfig":{"requests":{"requests":[{"request":{"contents":[{"parts":[{"text":"hi"}]}]}}]}}}}`, "x-goog-api-key", keyA)
	var op batchOperation
	if err := json.Unmarshal(r.body, &op); err != nil || r.status != 200 || !strings.HasPrefix(op.Name, "batches/") {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/"+op.Name, "", "x-goog-api-key", keyB); r.status != 403 {
		t.Errorf("foreign get: %d", r.status)
	}
	if r := do(t, "POST", srv.URL+"/v1beta/"+op.Name+":cancel", "", "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("owner cancel: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/"+op.Name, "", "x-goog-api-key", keyA); r.status != 200 || !bytes.Contains(r.body, []byte("BATCH_STATE_CANCELLED")) {
		t.Errorf("owner get after cancel: %d %s", r.status, r.body)
	}
	if r := do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:batchGenerateContent",
		`{"batch":{"inputConfig":{"fileName":"files/nope"}}}`, "x-goog-api-key", keyA); r.status != 403 {
		t.Errorf("batch of an unknown file: %d %s", r.status, r.body)
	}
}

// The attack on a text-matching classifier: a field named like a key error.
const keyishName = "API key not valid. Please pass a valid API key."

func TestUnknownTopLevelNamesAreRefused(t *testing.T) {
	_, srv := start(t)
	v1beta := srv.URL + "/v1beta/models/"
	contents := `"contents":[{"parts":[{"text":"hi"}]}]`
	embed := `"content":{"parts":[{"text":"hi"}]}`
	endpoints := []struct {
		name, url, known string // known: the body's known members, without braces
		contentType      string
	}{
		{"generateContent", v1beta + "gemini-2.5-flash:generateContent", contents, "application/json; charset=UTF-8"},
		{"streamSSE", v1beta + "gemini-2.5-flash:streamGenerateContent?alt=sse", contents, "text/event-stream"},
		{"streamJSONArray", v1beta + "gemini-2.5-flash:streamGenerateContent", contents, "application/json; charset=UTF-8"},
		{"countTokens", v1beta + "gemini-2.5-flash:countTokens", contents, "application/json; charset=UTF-8"},
		{"embedContent", v1beta + "gemini-embedding-001:embedContent", embed, "application/json; charset=UTF-8"},
		{"batchEmbedContents", v1beta + "gemini-embedding-001:batchEmbedContents",
			`"requests":[{"model":"models/gemini-embedding-001",` + embed + `}]`, "application/json; charset=UTF-8"},
	}
	for _, ep := range endpoints {
		t.Run(ep.name, func(t *testing.T) {
			r := do(t, "POST", ep.url, `{`+ep.known+`,`+quote(keyishName)+`:1}`, "x-goog-api-key", keyA)
			wantMsg := `Invalid JSON payload received. Unknown name "` + keyishName + `": Cannot find field.`
			want := `{
  "error": {
    "code": 400,
    "message": ` + quote(wantMsg) + `,
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [
          {
            "description": ` + quote(wantMsg) + `
          }
        ]
      }
    ]
  }
}
`
			if r.status != 400 || string(r.body) != want {
				t.Errorf("status %d, body:\n%s\nwant:\n%s", r.status, r.body, want)
			}
			if ct := r.header.Get("Content-Type"); ct != ep.contentType {
				t.Errorf("Content-Type = %q, want %q", ct, ep.contentType)
			}
			if r := do(t, "POST", ep.url, `{`+ep.known+`}`, "x-goog-api-key", keyA); r.status != 200 {
				t.Errorf("known names only: %d %s", r.status, r.body)
			}
		})
	}

	t.Run("NameQuotedAsSent", func(t *testing.T) {
		// Every unknown name, once, in the order sent; quotes, backslashes and
		// non-ASCII come back JSON-escaped by the encoder, never HTML-escaped.
		body := `{"a\"b\\c":1,` + contents + `,"<é>":2,"a\"b\\c":3,"Contents":[]}`
		r := do(t, "POST", endpoints[0].url, body, "x-goog-api-key", keyA)
		e := decodeError(t, r.body)
		names := []string{`a"b\c`, `<é>`, `Contents`}
		var lines []string
		for _, n := range names {
			lines = append(lines, `Invalid JSON payload received. Unknown name "`+n+`": Cannot find field.`)
		}
		if r.status != 400 || e.Status != "INVALID_ARGUMENT" || e.Message != strings.Join(lines, "\n") {
			t.Fatalf("got %d %+v", r.status, e)
		}
		fv, _ := e.Details[0]["fieldViolations"].([]any)
		if len(e.Details) != 1 || e.Details[0]["@type"] != typeBadRequest || len(fv) != len(names) {
			t.Fatalf("details = %v", e.Details)
		}
		for i, v := range fv {
			if d := v.(map[string]any)["description"]; d != lines[i] {
				t.Errorf("violation %d = %v, want %q", i, d, lines[i])
			}
		}
		if !bytes.Contains(r.body, []byte(`Unknown name \"a\"b\\c\"`)) || !bytes.Contains(r.body, []byte(`"<é>`)) {
			t.Errorf("names not escaped as the encoder does: %s", r.body)
		}
	})

	t.Run("SnakeAndCamelNamesAreKnown", func(t *testing.T) {
		gen := []string{
			`{"contents":[],"systemInstruction":{"parts":[{"text":"s"}]},"tools":[],"toolConfig":{},"safetySettings":[],` +
				`"generationConfig":{"temperature":1},"labels":{"a":"b"},"serviceTier":"standard","model":"models/gemini-2.5-flash"}`,
			`{"contents":[],"system_instruction":{"parts":[{"text":"s"}]},"tool_config":{},"safety_settings":[],` +
				`"generation_config":{"thinking_config":{"thinking_budget":0}},"service_tier":"standard"}`,
		}
		for _, b := range gen {
			b = strings.Replace(b, `"contents":[]`, contents, 1)
			if r := do(t, "POST", endpoints[0].url, b, "x-goog-api-key", keyA); r.status != 200 {
				t.Errorf("%s: %d %s", b, r.status, r.body)
			}
		}
		for _, b := range []string{
			`{` + contents + `,"model":"models/gemini-2.5-flash"}`,
			`{"generateContentRequest":{"model":"models/gemini-2.5-flash",` + contents + `}}`,
			`{"generate_content_request":{"model":"models/gemini-2.5-flash",` + contents + `}}`,
		} {
			if r := do(t, "POST", endpoints[3].url, b, "x-goog-api-key", keyA); r.status != 200 {
				t.Errorf("countTokens %s: %d %s", b, r.status, r.body)
			}
		}
		for _, b := range []string{
			`{"model":"models/gemini-embedding-001",` + embed + `,"taskType":"RETRIEVAL_DOCUMENT","title":"t","outputDimensionality":8}`,
			`{` + embed + `,"task_type":"RETRIEVAL_QUERY","output_dimensionality":8}`,
		} {
			if r := do(t, "POST", endpoints[4].url, b, "x-goog-api-key", keyA); r.status != 200 {
				t.Errorf("embedContent %s: %d %s", b, r.status, r.body)
			}
		}
		// countTokens takes no generation config at the top level.
		r := do(t, "POST", endpoints[3].url, `{`+contents+`,"generationConfig":{}}`, "x-goog-api-key", keyA)
		if e := decodeError(t, r.body); r.status != 400 || !strings.Contains(e.Message, `Unknown name "generationConfig"`) {
			t.Errorf("countTokens with generationConfig: %d %+v", r.status, e)
		}
	})

	t.Run("SDKRequestsAreKnown", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		client := newSDK(t, srv.URL, keyA)
		cfg := &genai.GenerateContentConfig{
			SystemInstruction: genai.NewContentFromText("be brief", genai.RoleUser),
			Temperature:       genai.Ptr[float32](0.5),
			MaxOutputTokens:   64,
			SafetySettings: []*genai.SafetySetting{{Category: genai.HarmCategoryHarassment,
				Threshold: genai.HarmBlockThresholdBlockNone}},
			Tools: []*genai.Tool{{FunctionDeclarations: []*genai.FunctionDeclaration{{Name: "f", Description: "d"}}}},
			ToolConfig: &genai.ToolConfig{FunctionCallingConfig: &genai.FunctionCallingConfig{
				Mode: genai.FunctionCallingConfigModeAuto}},
			Labels:         map[string]string{"team": "a"},
			ThinkingConfig: &genai.ThinkingConfig{ThinkingBudget: genai.Ptr[int32](0)},
		}
		if _, err := client.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), cfg); err != nil {
			t.Errorf("GenerateContent with a full config: %v", err)
		}
		for _, err := range client.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("hi"), cfg) {
			if err != nil {
				t.Errorf("GenerateContentStream with a full config: %v", err)
				break
			}
		}
		ecfg := &genai.EmbedContentConfig{TaskType: "RETRIEVAL_DOCUMENT", Title: "doc", OutputDimensionality: genai.Ptr[int32](8)}
		if _, err := client.Models.EmbedContent(ctx, "gemini-embedding-001", genai.Text("hi"), ecfg); err != nil {
			t.Errorf("EmbedContent with a config: %v", err)
		}
		if _, err := client.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("hi"), nil); err != nil {
			t.Errorf("CountTokens: %v", err)
		}
		// An unknown name reaches the SDK as Google's APIError.
		odd := genai.HTTPOptions{ExtraBody: map[string]any{keyishName: true}}
		_, err := client.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), &genai.GenerateContentConfig{HTTPOptions: &odd})
		var apiErr genai.APIError
		if !errors.As(err, &apiErr) || apiErr.Code != 400 || apiErr.Status != "INVALID_ARGUMENT" ||
			!strings.Contains(apiErr.Message, `Unknown name "`+keyishName+`"`) {
			t.Errorf("extra body member: err = %v", err)
		}
	})

	t.Run("OpenAIChatCompletions", func(t *testing.T) {
		chat := srv.URL + "/v1beta/openai/chat/completions"
		full := `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}],"stream":false,` +
			`"temperature":0.2,"top_p":0.9,"n":1,"max_tokens":10,"max_completion_tokens":10,"stop":["x"],` +
			`"tools":[],"tool_choice":"auto","response_format":{"type":"text"},"reasoning_effort":"low","seed":1,` +
			`"presence_penalty":0,"frequency_penalty":0,"user":"u","logprobs":false,"top_logprobs":0,` +
			`"parallel_tool_calls":true,"metadata":{},"modalities":["text"],"audio":null,"store":false,` +
			`"service_tier":"auto","logit_bias":{},"extra_body":{"google":{}},"web_search_options":{},"prediction":null,` +
			`"stream_options":{"include_usage":true}}`
		if r := do(t, "POST", chat, full, "Authorization", "Bearer "+keyA); r.status != 200 {
			t.Errorf("known OpenAI parameters: %d %s", r.status, r.body)
		}
		body := `{"model":"gemini-2.5-flash",` + quote(keyishName) + `:1,"messages":[{"role":"user","content":"hi"}]}`
		r := do(t, "POST", chat, body, "Authorization", "Bearer "+keyA)
		var wrapped []struct {
			Error apiErrorJSON `json:"error"`
		}
		wantMsg := `Invalid JSON payload received. Unknown name "` + keyishName + `": Cannot find field.`
		if err := json.Unmarshal(r.body, &wrapped); err != nil || r.status != 400 || len(wrapped) != 1 ||
			wrapped[0].Error.Message != wantMsg || wrapped[0].Error.Status != "INVALID_ARGUMENT" ||
			wrapped[0].Error.Details[0]["@type"] != typeBadRequest {
			t.Errorf("unknown OpenAI parameter: %d %s", r.status, r.body)
		}
	})
}

func TestInvalidOnGenerateRefusesOnlyGeneration(t *testing.T) {
	fake, srv := start(t)
	fake.SetKey(keyA, Invalid)
	fake.SetKey(keyB, InvalidOnGenerate)
	gen := srv.URL + "/v1beta/models/gemini-2.5-flash:generateContent"
	invalid := do(t, "POST", gen, genBody("hi"), "x-goog-api-key", keyA)

	for _, c := range []struct {
		name, method, url, body, ct string
		auth                        []string
	}{
		{"generateContent", "POST", gen, genBody("hi"), "application/json; charset=UTF-8", nil},
		{"streamSSE", "POST", srv.URL + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", genBody("hi"), "text/event-stream", nil},
		{"streamJSONArray", "POST", srv.URL + "/v1/models/gemini-2.5-flash:streamGenerateContent", genBody("hi"), "application/json; charset=UTF-8", nil},
		{"embedContent", "POST", srv.URL + "/v1beta/models/gemini-embedding-001:embedContent", `{"content":{"parts":[{"text":"x"}]}}`, "application/json; charset=UTF-8", nil},
	} {
		r := do(t, c.method, c.url, c.body, "x-goog-api-key", keyB)
		if r.status != 400 || !bytes.Equal(r.body, invalid.body) || r.header.Get("Content-Type") != c.ct {
			t.Errorf("%s: %d %q, body:\n%s\nwant the Invalid body:\n%s", c.name, r.status, r.header.Get("Content-Type"), r.body, invalid.body)
		}
	}
	r := do(t, "POST", srv.URL+"/v1beta/openai/chat/completions", `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}`,
		"Authorization", "Bearer "+keyB)
	if want := encodeJSON([]errorEnvelope{{Error: invalidKeyError()}}, true); r.status != 400 || !bytes.Equal(r.body, want) {
		t.Errorf("OpenAI chat: %d %s\nwant:\n%s", r.status, r.body, want)
	}

	// Everything but generation answers as for a good key; the gateway's probe among them.
	for _, c := range []struct{ method, url, body string }{
		{"GET", srv.URL + "/v1beta/models/gemini-2.5-flash", ""},
		{"GET", srv.URL + "/v1beta/models?pageSize=1", ""},
		{"POST", srv.URL + "/v1beta/models/gemini-2.5-flash:countTokens", genBody("hi")},
		{"GET", srv.URL + "/v1beta/files", ""},
		{"GET", srv.URL + "/v1beta/openai/models", ""},
	} {
		if r := do(t, c.method, c.url, c.body, "x-goog-api-key", keyB); r.status != 200 {
			t.Errorf("%s %s: %d %s", c.method, c.url, r.status, r.body)
		}
		if r := do(t, c.method, c.url, c.body, "x-goog-api-key", keyA); r.status != 400 {
			t.Errorf("Invalid key, %s %s: %d", c.method, c.url, r.status)
		}
	}
	fake.SetKey(keyB, OK)
	if r := do(t, "POST", gen, genBody("hi"), "x-goog-api-key", keyB); r.status != 200 {
		t.Errorf("back to OK: %d", r.status)
	}
}

func TestProjectsShareAState(t *testing.T) {
	fake, srv := start(t)
	const (
		k1 = "AIzaSyTEST-project-111-aaaaaaaaaaaaaaaaaa"
		k2 = "AIzaSyTEST-project-111-bbbbbbbbbbbbbbbbbb"
		k3 = "AIzaSyTEST-project-222-cccccccccccccccccc"
	)
	fake.SetProject(k1, "111")
	fake.SetProject(k2, "111")
	fake.SetProject(k3, "222")
	gen := func(key string) result {
		return do(t, "POST", srv.URL+"/v1beta/models/gemini-2.5-flash:generateContent", genBody("hi"), "x-goog-api-key", key)
	}
	list := func(key string) int {
		return do(t, "GET", srv.URL+"/v1beta/models?pageSize=1", "", "x-goog-api-key", key).status
	}

	if p := fake.ProjectOf(k1); p != "111" {
		t.Errorf("ProjectOf(k1) = %q", p)
	}
	if p := fake.ProjectOf(keyA); len(p) != 12 || strings.Trim(p, "0123456789") != "" || p != fake.ProjectOf(keyA) || p == fake.ProjectOf(keyB) {
		t.Errorf("derived project numbers: %q, %q", p, fake.ProjectOf(keyB))
	}

	t.Run("DailyQuotaOfOneProject", func(t *testing.T) {
		fake.SetProjectState("111", QuotaDay)
		defer fake.SetProjectState("111", OK)
		for _, k := range []string{k1, k2} {
			r := gen(k)
			e := decodeError(t, r.body)
			if r.status != 429 || e.Status != "RESOURCE_EXHAUSTED" || !bytes.Contains(r.body, []byte(perDayID)) ||
				!strings.Contains(perDayID, "PerProject") {
				t.Errorf("%s: %d %s", k, r.status, r.body)
			}
			if got := list(k); got != 200 {
				t.Errorf("%s: models.list on an exhausted project: %d", k, got)
			}
		}
		if r := gen(k3); r.status != 200 {
			t.Errorf("project 222: %d %s", r.status, r.body)
		}
		if r := gen(keyA); r.status != 200 {
			t.Errorf("a key of its own project: %d %s", r.status, r.body)
		}
		// A key's own OK does not hide its project's quota; its own states win.
		fake.SetKey(k2, OK)
		if r := gen(k2); r.status != 429 {
			t.Errorf("explicit OK key of project 111: %d", r.status)
		}
		fake.SetKey(k2, Invalid)
		if r := gen(k2); r.status != 400 {
			t.Errorf("invalid key of project 111: %d", r.status)
		}
		fake.SetKey(k2, QuotaMinute)
		if r := gen(k2); r.status != 429 || bytes.Contains(r.body, []byte(perDayID)) {
			t.Errorf("own minute quota: %d %s", r.status, r.body)
		}
		fake.SetKey(k2, OK)
		// The project's state wins over the default.
		fake.SetDefault(Overloaded)
		if r := gen(k1); r.status != 429 {
			t.Errorf("project state under an Overloaded default: %d", r.status)
		}
		if r := gen(keyA); r.status != 503 {
			t.Errorf("default state: %d", r.status)
		}
		fake.SetDefault(OK)
	})
	if r := gen(k1); r.status != 200 {
		t.Errorf("project state cleared: %d %s", r.status, r.body)
	}

	t.Run("ConsumerNamesTheProject", func(t *testing.T) {
		consumer := func(e apiErrorJSON) any {
			for _, d := range e.Details {
				if d["@type"] == typeErrorInfo {
					return d["metadata"].(map[string]any)["consumer"]
				}
			}
			return nil
		}
		for _, c := range []struct {
			state  KeyState
			reason string
		}{
			{Suspended, "CONSUMER_SUSPENDED"},
			{ServiceBlocked, "API_KEY_SERVICE_BLOCKED"},
			{ServiceDisabled, "SERVICE_DISABLED"},
		} {
			fake.SetProjectState("222", c.state)
			r := gen(k3)
			e := decodeError(t, r.body)
			if r.status != 403 || e.Status != "PERMISSION_DENIED" || consumer(e) != "projects/222" ||
				!bytes.Contains(r.body, []byte(`"reason": "`+c.reason+`"`)) {
				t.Errorf("%s: %d %s", c.state, r.status, r.body)
			}
			if got := list(k3); got != 403 {
				t.Errorf("%s stops models.list too: %d", c.state, got)
			}
			if r := gen(k1); r.status != 200 {
				t.Errorf("%s of project 222 reached project 111: %d", c.state, r.status)
			}
			fake.SetProjectState("222", "")
		}
		fake.SetKey(k1, ServiceDisabled)
		e := decodeError(t, gen(k1).body)
		if want := "Generative Language API has not been used in project 111 before or it is disabled."; !strings.HasPrefix(e.Message, want) ||
			consumer(e) != "projects/111" || e.Details[0]["@type"] != typeHelp {
			t.Errorf("service disabled: %+v", e)
		}
		fake.SetKey(k1, Suspended)
		if e := decodeError(t, gen(k1).body); consumer(e) != "projects/111" {
			t.Errorf("suspended key of project 111: %+v", e)
		}
		fake.SetKey(keyA, Suspended)
		if e := decodeError(t, gen(keyA).body); consumer(e) != "projects/"+fake.ProjectOf(keyA) {
			t.Errorf("suspended key of its own project: %+v", e)
		}
	})
}

func TestOutageAndRecovery(t *testing.T) {
	fake, srv := start(t)
	gen := func(model, key string) int {
		return do(t, "POST", srv.URL+"/v1beta/models/"+model+":generateContent", genBody("hi"), "x-goog-api-key", key).status
	}
	fake.SetKey(keyB, OK) // an explicit OK does not shield from an outage

	fake.SetOutage(Overloaded)
	fake.SetModelState("gemini-2.5-pro", Internal)
	for _, k := range []string{keyA, keyB, "never-set-key"} {
		if got := gen("gemini-2.5-flash", k); got != 503 {
			t.Errorf("outage, %s: %d", k, got)
		}
		if got := gen("gemini-2.5-pro", k); got != 500 {
			t.Errorf("a model's own state wins over the outage, %s: %d", k, got)
		}
	}
	if r := do(t, "POST", srv.URL+"/v1beta/openai/chat/completions", `{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"hi"}]}`,
		"Authorization", "Bearer "+keyA); r.status != 503 || !strings.HasPrefix(string(r.body), "[") {
		t.Errorf("OpenAI chat in an outage: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", srv.URL+"/v1beta/models/gemini-2.5-flash", "", "x-goog-api-key", keyA); r.status != 200 {
		t.Errorf("models.get in an outage: %d", r.status)
	}
	fake.SetKey(keyA, QuotaMinute)
	if got := gen("gemini-2.5-flash", keyA); got != 429 {
		t.Errorf("a key's own state wins over the outage: %d", got)
	}
	fake.SetKey(keyA, OK)
	fake.SetOutage(OK)
	fake.SetModelState("gemini-2.5-pro", OK)
	for _, k := range []string{keyA, keyB} {
		if got := gen("gemini-2.5-pro", k); got != 200 {
			t.Errorf("recovered, %s: %d", k, got)
		}
	}

	// SetDefault does the same for keys never passed to SetKey.
	fake.SetDefault(Overloaded)
	if a, c := gen("gemini-2.5-flash", "never-set-key"), gen("gemini-2.5-flash", keyB); a != 503 || c != 200 {
		t.Errorf("Overloaded default: unset key %d, explicit OK key %d", a, c)
	}
	fake.SetDefault(OK)
	if got := gen("gemini-2.5-flash", "never-set-key"); got != 200 {
		t.Errorf("default back to OK: %d", got)
	}

	if n, all := fake.Count(Call.IsGeneration), fake.Count(nil); n != 13 || all != 14 {
		t.Errorf("Count: %d generation calls of %d, want 13 of 14", n, all)
	}
	for _, c := range []struct {
		method, path string
		want         bool
	}{
		{"POST", "/v1beta/models/gemini-2.5-flash:generateContent", true},
		{"POST", "/v1/models/gemini-2.5-flash:streamGenerateContent", true},
		{"POST", "/v1alpha/models/gemini-embedding-001:batchEmbedContents", true},
		{"POST", "/v1beta/openai/embeddings", true},
		{"POST", "/v1beta/models/gemini-2.5-flash:countTokens", false},
		{"GET", "/v1beta/models/gemini-2.5-flash", false},
		{"POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", false},
		{"POST", "/upload/v1beta/files", false},
	} {
		if got := (Call{Method: c.method, Path: c.path}).IsGeneration(); got != c.want {
			t.Errorf("IsGeneration(%s %s) = %v", c.method, c.path, got)
		}
	}
}
