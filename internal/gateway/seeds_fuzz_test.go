package gateway

// The standing fuzz suite of the gateway's parsers (issue 13): each Fuzz* target checks
// invariants, not only the absence of panics. Run one with
//
//	go test -run '^$' -fuzz '^FuzzKeyFilter$' -fuzztime 60s ./internal/gateway/
//
// `make test` runs every target of the module for a few seconds (`make fuzz FUZZTIME=2m` for
// longer). Their seeds, which every plain `go test` runs too, are real bodies: the verbatim
// captures of gemini-api.md, the request bodies the SDKs send, and the answers of the fake
// upstream (internal/fakegemini), which writes Google's wire formats; testdata/fuzz holds
// more.

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// fuzzPoolKey is the pool key the fake's answers are fetched with, shaped like Google's.
const fuzzPoolKey = "AIzaSyFUZZ-0123456789abcdefghijKLMNOPQRS"

// Verbatim bodies of gemini-api.md §4 (an SSE stream with CRLF framing, a JSON-array stream,
// a mid-stream error) and the OpenAI-compatible stream's last chunk.
const (
	seedSSE = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Here you go!\\n\\n1.  **English:** Hi\\n\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 5,\"candidatesTokenCount\": 39,\"totalTokenCount\": 230,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 5}],\"thoughtsTokenCount\": 186},\"modelVersion\": \"models/gemini-2.5-flash-preview-05-20\",\"responseId\": \"AdVRaMmDCYekqtsPrb_-iAw\"}\r\n\r\n" +
		"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Italian:** Ciao\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 5,\"candidatesTokenCount\": 44,\"totalTokenCount\": 235,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 5}],\"thoughtsTokenCount\": 186},\"modelVersion\": \"models/gemini-2.5-flash-preview-05-20\",\"responseId\": \"AdVRaMmDCYekqtsPrb_-iAw\"}\r\n\r\n"
	seedJSONArray      = "[{\n  \"candidates\": [\n    {\n      \"content\": {\n        \"parts\": [\n          {\n            \"text\": \"Hello\"\n          }\n        ],\n        \"role\": \"model\"\n      },\n      \"index\": 0\n    }\n  ],\n  \"usageMetadata\": {\n    \"promptTokenCount\": 4,\n    \"candidatesTokenCount\": 1,\n    \"totalTokenCount\": 5\n  }\n}\r\n,\r\n{\n  \"candidates\": [\n    {\n      \"content\": {\n        \"parts\": [\n          {\n            \"text\": \" world\"\n          }\n        ],\n        \"role\": \"model\"\n      },\n      \"finishReason\": \"STOP\",\n      \"index\": 0\n    }\n  ],\n  \"usageMetadata\": {\n    \"promptTokenCount\": 4,\n    \"candidatesTokenCount\": 2,\n    \"totalTokenCount\": 6\n  }\n}\r\n]"
	seedMidStreamError = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Once\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 3,\"totalTokenCount\": 3}}\r\n\r\n" +
		"{\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}"
	seedOpenAIChunk = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\",\"role\":\"assistant\"},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1750000000,\"id\":\"abc\",\"model\":\"gemini-2.5-flash\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":1,\"prompt_tokens\":4,\"total_tokens\":5,\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n"
)

// seedRequests are request bodies as clients send them: the SDKs' generateContent with a
// file, a cached content and a file search store (gemini-api.md §1.2), a batch's input file,
// the OpenAI-compatible chat, embeddings and batch bodies.
var seedRequests = []string{
	`{"contents":[{"parts":[{"text":"hello proxy"}]}]}`,
	`{"contents":[{"role":"user","parts":[{"fileData":{"mimeType":"video/mp4","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc123"}},{"text":"Describe files/xyz in detail"}]}],"generationConfig":{"temperature":0.2}}`,
	`{"cachedContent":"cachedContents/c4ch3","contents":[{"parts":[{"text":"What did the document say?"}]}]}`,
	`{"contents":[{"parts":[{"text":"q"}]}],"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/st0r3"]}}]}`,
	`{"batch":{"displayName":"my-batch","inputConfig":{"fileName":"files/batch-input"}}}`,
	`{"batch":{"displayName":"inline","inputConfig":{"requests":{"requests":[{"request":{"contents":[{"parts":[{"text":"hi"}]}]},"metadata":{"key":"r1"}}]}}}}`,
	`{"requests":[{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"x"}]}}]}`,
	`{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"Hello"}],"stream":true,"stream_options":{"include_usage":true}}`,
	`{"model":"models/gemini-2.5-pro","messages":[{"role":"user","content":"Hi"}],"extra_body":{"google":{"cached_content":"cachedContents/oa1"}}}`,
	`{"input_file_id":"files/oai-batch","endpoint":"/v1/chat/completions","completion_window":"24h"}`,
	`{"model":"tunedModels/my-tuned-1","contents":[]}`,
	`{"name":"models/veo-3.0-generate-001/operations/op9"}`,
	`{"file":{"display_name":"a.txt"}}`,
}

// fakeRequest is one request to the fake upstream whose answer is a seed.
type fakeRequest struct {
	method, path, body string
	header             []string // name, value pairs
}

// fakeRequests cover the answers the gateway reads: unary, SSE and JSON-array streams, a
// stream that fails midway, the OpenAI-compatible ones, an upload start, a batch, errors.
var fakeRequests = []fakeRequest{
	{"POST", "/v1beta/models/gemini-2.5-flash:generateContent", seedRequests[0], nil},
	{"POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", seedRequests[0], nil},
	{"POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", seedRequests[0], nil},
	{"POST", "/v1beta/models/gemini-2.5-flash:countTokens", seedRequests[0], nil},
	{"POST", "/v1beta/openai/chat/completions", seedRequests[7], nil},
	{"POST", "/v1beta/openai/chat/completions", `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"Hello"}]}`, nil},
	{"POST", "/upload/v1beta/files?key=" + fuzzPoolKey, `{"file":{"display_name":"a.txt"}}`, []string{
		"X-Goog-Upload-Protocol", "resumable", "X-Goog-Upload-Command", "start",
		"X-Goog-Upload-Header-Content-Length", "5", "X-Goog-Upload-Header-Content-Type", "text/plain"}},
	{"POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", seedRequests[5], nil},
	{"GET", "/v1beta/files", "", nil},
	{"GET", "/v1beta/models/gemini-2.0-pro", "", nil},
	{"POST", "/v1beta/models/nope:generateContent", seedRequests[0], nil},
	{"POST", "/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":`, nil},
}

// longStreamRequests are streams of 40 events over a long prompt: longer than the usage tail,
// so the ring wraps as it does on real answers.
var longStreamRequests = []fakeRequest{
	{"POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", longPrompt, nil},
	{"POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", longPrompt, nil},
	{"POST", "/v1beta/openai/chat/completions", `{"model":"gemini-2.5-flash","stream":true,"messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 400) + `"}]}`, nil},
}

// longPrompt is a generateContent body of about 5 KB.
var longPrompt = `{"contents":[{"parts":[{"text":"` + strings.Repeat("lorem ipsum ", 400) + `"}]}]}`

var fakeSeedsOnce = sync.OnceValues(func() (bodies, headers []string) {
	for _, failAfter := range []int{0, 1, -1} {
		fake := fakegemini.New()
		reqs := fakeRequests
		if failAfter < 0 {
			fake.SetStream(40, 0)
			reqs = longStreamRequests
		} else {
			fake.SetFailAfterEvents(failAfter)
		}
		for _, fr := range reqs {
			req := httptest.NewRequest(fr.method, fr.path, strings.NewReader(fr.body))
			req.Header.Set("X-Goog-Api-Key", fuzzPoolKey)
			req.Header.Set("Authorization", "Bearer "+fuzzPoolKey)
			if fr.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			for i := 0; i+1 < len(fr.header); i += 2 {
				req.Header.Set(fr.header[i], fr.header[i+1])
			}
			rec := httptest.NewRecorder()
			fake.ServeHTTP(rec, req)
			bodies = append(bodies, rec.Body.String())
			for _, h := range []string{"X-Goog-Upload-Url", "X-Goog-Upload-Control-Url", "Location"} {
				if v := rec.Header().Get(h); v != "" {
					headers = append(headers, v)
				}
			}
		}
		// Error answers for a key in each state.
		for _, st := range []fakegemini.KeyState{fakegemini.Invalid, fakegemini.Suspended, fakegemini.QuotaDay, fakegemini.Overloaded} {
			fake.SetKey(fuzzPoolKey, st)
			req := httptest.NewRequest(http.MethodPost, "/v1beta/models/gemini-2.5-flash:generateContent", strings.NewReader(seedRequests[0]))
			req.Header.Set("X-Goog-Api-Key", fuzzPoolKey)
			rec := httptest.NewRecorder()
			fake.ServeHTTP(rec, req)
			bodies = append(bodies, rec.Body.String())
		}
	}
	return bodies, headers
})

// fakeAnswers returns the bodies of the fake upstream's answers to fakeRequests, once as
// configured by default and once with streams failing after their first event, and to
// longStreamRequests, and the upload URLs its upload starts answered.
func fakeAnswers() (bodies, uploadURLs []string) { return fakeSeedsOnce() }

// seedAnswers are every answer body seed: the verbatim captures and the fake's answers.
func seedAnswers() []string {
	bodies, _ := fakeAnswers()
	return append([]string{seedSSE, seedJSONArray, seedMidStreamError, seedOpenAIChunk}, bodies...)
}
