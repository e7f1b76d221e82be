package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

func TestAPIPathSafety(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:generateContent", true},
		{"/v1/models", "/v1/models", true},
		{"/v1alpha/auth_tokens", "/v1alpha/auth_tokens", true},
		{"/upload/v1beta/files", "/upload/v1beta/files", true},
		{"/v1beta/openai/chat/completions", "/v1beta/openai/chat/completions", true},
		{"//v1beta//models", "/v1beta/models", true},
		{"/v1beta/../admin/api/status", "", false},
		{"/v1beta/models/../../../etc/passwd", "", false},
		{"/v1beta/../v1/models", "/v1/models", true},
		{"/v1", "", false},
		{"/v1betax/models", "", false},
		{"/hello", "", false},
		{"v1beta/models", "", false},
		{"", "", false},
	} {
		got, ok := apiPath(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("apiPath(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestStripKeyParam(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "",
		"alt=sse":                     "alt=sse",
		"key=abc":                     "",
		"alt=sse&key=abc":             "alt=sse",
		"key=abc&alt=sse&pageSize=2":  "alt=sse&pageSize=2",
		"%6Bey=abc&alt=sse":           "alt=sse",
		"access_token=x&monkey=1":     "monkey=1",
		"apikey=1&key=2&key=3&$alt=j": "apikey=1&$alt=j",
		"key&alt=sse":                 "alt=sse", // a bare key parameter (found by the abuse suite)
		"alt=sse&key":                 "alt=sse",
		"access_token":                "",
	} {
		if got := stripKeyParam(in); got != want {
			t.Errorf("stripKeyParam(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRequestModel(t *testing.T) {
	for _, tc := range []struct {
		path, body string
		openAI     bool
		model      string
		stream     bool
	}{
		{"/v1beta/models/gemini-2.5-flash:generateContent", "", false, "gemini-2.5-flash", false},
		{"/v1beta/models/gemini-2.5-pro:streamGenerateContent", "", false, "gemini-2.5-pro", true},
		{"/v1/models/gemini-embedding-001:embedContent", "", false, "gemini-embedding-001", false},
		{"/v1beta/models/gemini-2.5-flash", "", false, "gemini-2.5-flash", false},
		{"/v1beta/tunedModels/my-tune:generateContent", "", false, "my-tune", false},
		{"/v1beta/models", "", false, "", false},
		{"/v1beta/files/abc", "", false, "", false},
		{"/v1beta/openai/chat/completions", `{"model":"models/gemini-2.5-flash","stream":true}`, true, "gemini-2.5-flash", true},
		{"/v1beta/openai/chat/completions", `{"model":"gemini-2.0-flash"}`, true, "gemini-2.0-flash", false},
		{"/v1beta/openai/chat/completions", `not json`, true, "", false},
	} {
		m, s := requestModel(tc.path, "", []byte(tc.body), tc.openAI)
		if m != tc.model || s != tc.stream {
			t.Errorf("requestModel(%q, %q) = %q, %v; want %q, %v", tc.path, tc.body, m, s, tc.model, tc.stream)
		}
	}
}

func TestTailUsageAndStreamError(t *testing.T) {
	var tl tail
	// A long stream: only the last event's cumulative counts matter.
	for i := 0; i < 400; i++ {
		tl.write([]byte(`data: {"candidates":[{"content":{"parts":[{"text":"` + strings.Repeat("x", 50) + `"}]}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":` + itoa(i) + `,"totalTokenCount":` + itoa(i+5) + `}}` + "\r\n\r\n"))
	}
	tl.finish()
	u := tl.usage(false)
	if u.prompt != 5 || u.candidates != 399 || u.total != 404 {
		t.Errorf("usage = %+v", u)
	}
	if len(tl.buf) != tailKeep {
		t.Errorf("tail holds %d bytes, want %d", len(tl.buf), tailKeep)
	}
	if _, _, ok := tl.streamError(); ok {
		t.Error("a clean stream was taken for an error")
	}
	tl.write([]byte("{\n  \"error\": {\n    \"code\": 503,\n    \"message\": \"The model is overloaded. Please try again later.\",\n    \"status\": \"UNAVAILABLE\"\n  }\n}\n"))
	tl.finish()
	code, msg, ok := tl.streamError()
	if !ok || code != 503 || !strings.Contains(msg, "overloaded") {
		t.Errorf("streamError = %d %q %v", code, msg, ok)
	}
	var o tail
	o.write([]byte(`data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}` + "\n\ndata: [DONE]\n\n"))
	o.finish()
	if u := o.usage(true); u.prompt != 3 || u.candidates != 7 || u.total != 10 {
		t.Errorf("openai usage = %+v", u)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// testGateway runs the proxy handler in-process on loopback with a real SQLite file and the
// fake upstream, without Caddy around it.
type testGateway struct {
	url  string
	fake *fakegemini.Server
	core *Core
}

const testAccessKey = "sk-test-access"

var testPoolKeys = []string{"AIzaSyUNIT-pool-key-0001-aaaaaaaaaaaaaaaa", "AIzaSyUNIT-pool-key-0002-bbbbbbbbbbbbbbbb"}

func newTestGateway(t *testing.T, configure func(*Config)) *testGateway {
	t.Helper()
	a := &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: testPoolKeys}
	if configure != nil {
		configure(a)
	}
	tc := startCore(t, coreSetup{}, a)
	return &testGateway{url: serveCore(t, tc.c, nil, ""), fake: tc.fake, core: tc.c}
}

func TestHeadersAndCredentialsAreSwapped(t *testing.T) {
	g := newTestGateway(t, nil)
	body := `{"contents":[{"parts":[{"text":"hello there"}]}]}`
	req, _ := http.NewRequest("POST", g.url+"/v1beta/models/gemini-2.5-flash:generateContent?key="+testAccessKey+"&alt=json", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Goog-User-Project", "projects/123")
	req.Header.Set("Cookie", "session=1")
	req.Header.Set("X-Forwarded-For", "10.0.0.1")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("X-Goog-Api-Client", "google-genai-sdk/1.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "echo: hello there") {
		t.Fatalf("status %d body %s", resp.StatusCode, b)
	}
	calls := g.fake.Calls()
	if len(calls) != 1 {
		t.Fatalf("upstream calls: %d", len(calls))
	}
	c := calls[0]
	if c.Key != testPoolKeys[0] && c.Key != testPoolKeys[1] {
		t.Errorf("upstream key %q is not a pool key", c.Key)
	}
	if strings.Contains(c.RawQuery, "key=") || c.RawQuery != "alt=json" {
		t.Errorf("upstream query %q", c.RawQuery)
	}
	for _, h := range []string{"X-Goog-User-Project", "Cookie", "X-Forwarded-For", "X-Hop", "Authorization"} {
		if v := c.Header.Get(h); v != "" {
			t.Errorf("header %s reached the upstream: %q", h, v)
		}
	}
	if c.Header.Get("X-Goog-Api-Client") != "google-genai-sdk/1.0" {
		t.Errorf("x-goog-api-client was not forwarded")
	}
	if strings.Contains(string(b), testPoolKeys[0]) || strings.Contains(string(b), testPoolKeys[1]) {
		t.Error("a pool key reached the client")
	}
}

func TestNonAPIPathsGoToNextHandler(t *testing.T) {
	g := newTestGateway(t, nil)
	for _, p := range []string{"/hello", "/v1beta/../admin", "/favicon.ico"} {
		req, _ := http.NewRequest("GET", g.url+"/x", nil)
		req.URL.Path = p
		req.URL.RawPath = ""
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTeapot {
			t.Errorf("%s: status %d, want the next handler's 418", p, resp.StatusCode)
		}
	}
	if n := len(g.fake.Calls()); n != 0 {
		t.Errorf("%d upstream calls for non-API paths", n)
	}
}

func TestAuthErrorsUseGeminiEnvelope(t *testing.T) {
	g := newTestGateway(t, nil)
	for _, tc := range []struct {
		key    string
		code   int
		status string
	}{
		{"", 401, "UNAUTHENTICATED"},
		{"wrong", 401, "UNAUTHENTICATED"},
	} {
		req, _ := http.NewRequest("GET", g.url+"/v1beta/models", nil)
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct {
				Code    int
				Message string
				Status  string
			}
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tc.code || e.Error.Code != tc.code || e.Error.Status != tc.status || e.Error.Message == "" {
			t.Errorf("key %q: %d %+v", tc.key, resp.StatusCode, e)
		}
	}
	if n := len(g.fake.Calls()); n != 0 {
		t.Errorf("%d upstream calls for rejected requests", n)
	}
}

func TestBodyLimit(t *testing.T) {
	g := newTestGateway(t, func(a *Config) { a.MaxRequestBody = 1024 })
	body := `{"contents":[{"parts":[{"text":"` + strings.Repeat("a", 2048) + `"}]}]}`
	for _, chunked := range []bool{false, true} {
		var r io.Reader = strings.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // unknown length: sent chunked
		}
		req, _ := http.NewRequest("POST", g.url+"/v1beta/models/gemini-2.5-flash:generateContent", r)
		req.Header.Set("x-goog-api-key", testAccessKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || !strings.Contains(string(b), `"code":413`) {
			t.Errorf("chunked=%v: %d %s", chunked, resp.StatusCode, b)
		}
	}
	if n := len(g.fake.Calls()); n != 0 {
		t.Errorf("%d upstream calls for oversized bodies", n)
	}
}

// TestKeyFilterAcrossReads splits a body that quotes the key at every possible point: the key
// never gets through, nothing else changes, and only a possible key start is ever held back.
func TestKeyFilterAcrossReads(t *testing.T) {
	secret := "AIzaSyFILTER-key-0001-aaaaaaaaaaaaaaaaa"
	body := `data: {"x":"A AI AIz ` + secret + ` and again ` + secret + `"}` + "\r\n\r\nAIza"
	want := strings.ReplaceAll(body, secret, redacted(secret))
	if len(want) != len(body) {
		t.Fatalf("redaction changes the length: %d vs %d", len(want), len(body))
	}
	for cut1 := 0; cut1 <= len(body); cut1++ {
		for _, cut2 := range []int{cut1, (cut1 + len(body)) / 2, len(body)} {
			f := keyFilter{secret: []byte(secret)}
			var got []byte
			for _, part := range []string{body[:cut1], body[cut1:cut2], body[cut2:]} {
				got = append(got, f.filter([]byte(part))...)
			}
			got = append(got, f.flush()...)
			if string(got) != want {
				t.Fatalf("cuts %d,%d: got %q", cut1, cut2, got)
			}
		}
	}
	f := keyFilter{secret: []byte(secret)}
	if out := f.filter([]byte("data: {}\r\n\r\n")); string(out) != "data: {}\r\n\r\n" {
		t.Errorf("an event boundary was held back: %q", out)
	}
}

// TestTailRing checks the ring against a plain copy for writes of every size around its edge.
func TestTailRing(t *testing.T) {
	var all []byte
	var tl tail
	for i, n := range []int{1, 100, tailKeep - 101, 1, 2, tailKeep, 3, tailKeep + 7, 5, tailKeep - 5, 4, 1} {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, n)
		chunk[0] = byte('A' + i)
		all = append(all, chunk...)
		tl.write(chunk)
		tl.finish()
		want := all
		if len(want) > tailKeep {
			want = want[len(want)-tailKeep:]
		}
		if !bytes.Equal(tl.buf, want) {
			t.Fatalf("after write %d (%d bytes): tail differs from the last %d bytes", i, n, len(want))
		}
	}
}
