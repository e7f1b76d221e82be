package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzRequestModel checks the model and stream flag read from a request (requestModel):
//   - a native request's model comes from its path alone, whatever the body and query: it is
//     the segment after the first "/models/" (else "/tunedModels/"), up to ":" or "/", and it
//     streams only for the method streamGenerateContent;
//   - a native path built from a model name and a method gives them back;
//   - an OpenAI-compatible request's model and flag come from its JSON body alone, valid UTF-8,
//     without a "models/" prefix it had; a body that is not such an object gives none; the
//     same model and flag re-encoded give them back.
func FuzzRequestModel(f *testing.F) {
	paths := []string{
		"/v1beta/models/gemini-2.5-flash:generateContent",
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent",
		"/v1/models/gemini-2.5-pro:countTokens",
		"/v1beta/tunedModels/my-tuned-1:streamGenerateContent",
		"/v1beta/models/veo-3.0-generate-001/operations/op1",
		"/v1beta/models",
		"/v1beta/files/abc",
		"/v1beta/openai/chat/completions",
		"/v1beta/models/x:streamGenerateContent:y",
		"/v1beta/tunedModels/t/models/m:streamGenerateContent",
	}
	for i, p := range paths {
		body := seedRequests[i%len(seedRequests)]
		f.Add(p, "alt=sse", []byte(body), false, "gemini-2.5-flash", "streamGenerateContent")
	}
	for _, b := range seedRequests {
		f.Add("/v1beta/openai/chat/completions", "", []byte(b), true, "models/gemini-2.5-pro", "generateContent")
	}
	f.Add("/v1beta/openai/chat/completions", "", []byte(`{"model":"gemini","stream":"yes"}`), true, "", "")
	f.Add("/v1beta/openai/embeddings", "", []byte(`{"model":"\xff\xfe","input":"x"}`), true, "a\xffb", "m")
	f.Add("/v1beta/openai/chat/completions", "", []byte(`[{"model":"x"}]`), true, "x/y", "")
	f.Fuzz(func(t *testing.T, p, rawQuery string, body []byte, openAI bool, name, method string) {
		model, stream := requestModel(p, rawQuery, body, openAI)
		if !openAI {
			if m, s := requestModel(p, "", nil, false); m != model || s != stream {
				t.Fatalf("native %q: (%q, %v) with body and query %q, (%q, %v) without", p, model, stream, rawQuery, m, s)
			}
			var rest string
			if i := strings.Index(p, "/models/"); i >= 0 {
				rest = p[i+len("/models/"):]
			} else if i := strings.Index(p, "/tunedModels/"); i >= 0 {
				rest = p[i+len("/tunedModels/"):]
			} else if model != "" || stream {
				t.Fatalf("%q names no model, got (%q, %v)", p, model, stream)
			}
			if !strings.HasPrefix(rest, model) || strings.ContainsAny(model, ":/") {
				t.Fatalf("%q: model %q is not the segment after models/", p, model)
			}
			after := rest[len(model):]
			if after != "" && after[0] != ':' && after[0] != '/' {
				t.Fatalf("%q: model %q stops early", p, model)
			}
			if stream != (after == ":streamGenerateContent") {
				t.Fatalf("%q: stream %v after the model %q", p, stream, after)
			}
			// A path made of a name and a method gives them back.
			if name != "" && !strings.ContainsAny(name, ":/") {
				for _, pre := range []string{"/v1beta/models/", "/v1/tunedModels/"} {
					m, s := requestModel(pre+name+":"+method, rawQuery, body, false)
					if m != name || s != (method == "streamGenerateContent") {
						t.Fatalf("%s%s:%s gives (%q, %v)", pre, name, method, m, s)
					}
				}
			}
			return
		}
		if m, s := requestModel("", "", body, true); m != model || s != stream {
			t.Fatalf("OpenAI body %q: (%q, %v) on path %q, (%q, %v) on none", body, model, stream, p, m, s)
		}
		if !utf8.ValidString(model) {
			t.Fatalf("OpenAI body %q: model %q is not UTF-8", body, model)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(body, &obj) != nil && (model != "" || stream) {
			t.Fatalf("OpenAI body %q is no JSON object, yet gives (%q, %v)", body, model, stream)
		}
		// The same model and flag, re-encoded, give them back.
		again, _ := json.Marshal(map[string]any{"model": "models/" + model, "stream": stream, "messages": []any{}})
		if m, s := requestModel(p, rawQuery, again, true); m != model || s != stream {
			t.Fatalf("re-encoded %s gives (%q, %v), want (%q, %v)", again, m, s, model, stream)
		}
		if utf8.ValidString(name) {
			b, _ := json.Marshal(map[string]any{"model": name, "stream": true})
			if m, s := requestModel(p, rawQuery, b, true); m != strings.TrimPrefix(name, "models/") || !s {
				t.Fatalf("%s gives (%q, %v)", b, m, s)
			}
		}
	})
}
