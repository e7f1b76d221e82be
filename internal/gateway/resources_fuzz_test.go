package gateway

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// jsonStrings returns every string token of a JSON text (member names and values), decoded,
// as far as the text is valid.
func jsonStrings(b []byte) []string {
	var out []string
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := dec.Token()
		if err != nil {
			return out
		}
		if s, ok := tok.(string); ok {
			out = append(out, s)
		}
	}
}

// refFields are the members of request bodies documented to name key-bound resources
// (gemini-api.md §1.2, §1.7): their values must always be found.
var refFields = map[string]bool{
	"fileUri": true, "cachedContent": true, "cached_content": true, "fileName": true,
	"input_file_id": true, "fileSearchStoreNames": true, "model": true, "name": true,
}

// documentedRefs collects the resource names in the values of refFields members of v (a
// decoded JSON value): a string, or an array of strings only, of at most 1024 bytes each.
func documentedRefs(v any, out map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if refFields[k] {
				var ss []any
				switch e := e.(type) {
				case string:
					ss = []any{e}
				case []any:
					ss = e
				}
				for _, s := range ss {
					s, ok := s.(string)
					if !ok {
						break
					}
					if n := resourceName(s); n != "" && len(s) <= 1024 {
						out[n] = true
					}
				}
			}
			documentedRefs(e, out)
		}
	case []any:
		for _, e := range v {
			documentedRefs(e, out)
		}
	}
}

// FuzzBodyReferences checks the resource references read from a request body
// (bodyReferences):
//   - at most maxReferences distinct names, exactly that many when it reports too many;
//   - each a resource name as resourceName gives it (a fixed point), made of a string of the
//     body: nothing is invented;
//   - every name in a documented member (fileData.fileUri, cachedContent, a batch's fileName,
//     input_file_id, fileSearchStoreNames, model, name), a string or an array of strings at
//     any depth, is found, unless the body names too many.
func FuzzBodyReferences(f *testing.F) {
	for _, b := range seedRequests {
		f.Add([]byte(b))
	}
	for _, b := range seedAnswers() {
		f.Add([]byte(b))
	}
	f.Add([]byte(`{"contents":[{"parts":[{"text":"files/a"},{"fileData":{"fileUri":"files/b"}}]}],"text":["files/c"]}`))
	f.Add([]byte(`{"a":"https://evil.example/v1beta/files/x:download?alt=media","b":"/upload/v1/files/y","c":"models/m/operations/o","d":"tunedModels/t/operations/u","e":"fileSearchStores/s/documents/d"}`))
	var many strings.Builder
	many.WriteString(`{"x":[`)
	for i := range maxReferences + 2 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`"files/f` + strings.Repeat("x", i) + `"`)
	}
	many.WriteString(`]}`)
	f.Add([]byte(many.String()))
	f.Fuzz(func(t *testing.T, body []byte) {
		names, tooMany := bodyReferences(body)
		if len(names) > maxReferences || (tooMany && len(names) != maxReferences) {
			t.Fatalf("%d names, tooMany %v", len(names), tooMany)
		}
		made := make(map[string]bool)
		for _, s := range jsonStrings(body) {
			if n := resourceName(s); n != "" {
				made[n] = true
			}
		}
		seen := make(map[string]bool)
		for _, n := range names {
			if seen[n] {
				t.Fatalf("%q found twice in %q", n, body)
			}
			seen[n] = true
			if n == "" || resourceName(n) != n {
				t.Fatalf("%q is not a resource name (resourceName gives %q)", n, resourceName(n))
			}
			if !made[n] {
				t.Fatalf("%q is no string of %q", n, body)
			}
		}
		var v any
		if tooMany || json.Unmarshal(body, &v) != nil {
			return
		}
		want := make(map[string]bool)
		documentedRefs(v, want)
		for n := range want {
			if !seen[n] {
				t.Fatalf("%q, named in a documented member, not found in %q (got %q)", n, body, names)
			}
		}
	})
}

// FuzzResourceName checks the names read from references and paths (resourceName, exactName,
// ownerNames):
//   - a name is a fixed point of resourceName, of a bound kind (or a model's operation), of
//     non-empty segments without white space, quotes, backslashes, ":", "?" or "#", and of two
//     segments unless it is an operation;
//   - a path's exact name starts with its resource name (so only the path of the resource
//     itself makes the gateway forget it);
//   - ownerNames gives the name first, then at most its parent, itself a name;
//   - the name of a reference does not depend on a host or an API version in front of it.
func FuzzResourceName(f *testing.F) {
	for _, s := range []string{
		"files/abc", "https://generativelanguage.googleapis.com/v1beta/files/abc", "/v1beta/files/abc:download?alt=media",
		"/upload/v1beta/files?upload_id=x", "models/veo-3.0-generate-001/operations/op1", "/v1beta/batches/b1:cancel",
		"tunedModels/t/operations/o", "fileSearchStores/s/documents/d", "/v1beta/files/x/junk", "cachedContents/c#f",
		"files/", "files//x", "files/a b", "models/gemini-2.5-flash", "/v1alpha/operations/x", "http://h", "://x/files/y",
	} {
		f.Add(s)
	}
	_, urls := fakeAnswers()
	for _, u := range urls {
		f.Add(u)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		n := resourceName(ref)
		if !strings.Contains(ref, "://") {
			if e := exactName(ref); !strings.HasPrefix(e, n) {
				t.Fatalf("%q: exact name %q does not start with its name %q", ref, e, n)
			}
		}
		owners := ownerNames(ref)
		if len(owners) == 0 || owners[0] != ref || len(owners) > 2 {
			t.Fatalf("ownerNames(%q) = %q", ref, owners)
		}
		for _, v := range apiVersions {
			if m := resourceName("https://h.example/" + v + strings.TrimPrefix(n, "/")); n != "" && m != n {
				t.Fatalf("%q gives %q, on a host and %s %q", ref, n, v, m)
			}
		}
		if n == "" {
			return
		}
		if resourceName(n) != n {
			t.Fatalf("%q gives %q, which gives %q", ref, n, resourceName(n))
		}
		segs := strings.Split(n, "/")
		op := strings.Contains(n, "/operations/")
		if !boundKinds[segs[0]] && !(segs[0] == "models" && len(segs) == 4 && segs[2] == "operations") {
			t.Fatalf("%q gives %q, of no bound kind", ref, n)
		}
		if len(segs) < 2 || (len(segs) != 2 && !op) {
			t.Fatalf("%q gives %q", ref, n)
		}
		for _, s := range segs {
			if s == "" || strings.ContainsAny(s, " \t\n\"\\:?#") {
				t.Fatalf("%q gives %q, with segment %q", ref, n, s)
			}
		}
		owners = ownerNames(n)
		if owners[0] != n {
			t.Fatalf("ownerNames(%q) = %q", n, owners)
		}
		if len(owners) == 2 {
			if p := owners[1]; !strings.HasPrefix(n, p+"/") || resourceName(p) != p {
				t.Fatalf("ownerNames(%q) = %q", n, owners)
			}
		}
	})
}

// FuzzPolledFiles checks the files recorded from a polled batch or operation (polledFiles):
//   - each record is a distinct file ("files/<id>", a fixed point of fileRef) of the poller's
//     key, kind "files", expiring after the default lifetime, made of a string of the answer;
//   - nothing inside a batch's inlined responses (generated content, the client's metadata) is
//     ever recorded;
//   - the answer's layout (compact or indented) does not change what is recorded.
func FuzzPolledFiles(f *testing.F) {
	for _, b := range polledAnswers {
		f.Add([]byte(b))
	}
	for _, b := range seedAnswers() {
		f.Add([]byte(b))
	}
	f.Add([]byte(`{"response":{"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/v1:download?alt=media"}}]}}}`))
	f.Add([]byte(`{"dest":{"fileName":"files/c"},"output":{"responsesFile":"files/d"},"response":{"generatedVideos":[{"video":{"uri":"files/e"}}]}}`))
	now := time.Unix(1_750_000_000, 0)
	f.Fuzz(func(t *testing.T, body []byte) {
		rs := polledFiles(body, store.Owner{KeyID: 42}, now)
		made := make(map[string]bool)
		for _, s := range jsonStrings(body) {
			made[fileRef(s)] = true
		}
		seen := make(map[string]bool)
		for _, r := range rs {
			if seen[r.Name] || fileRef(r.Name) != r.Name || !strings.HasPrefix(r.Name, "files/") || r.Kind != "files" ||
				r.KeyID != 42 || !r.CreatedAt.Equal(now) || !r.ExpiresAt.Equal(now.Add(defaultLifetimes["files"])) {
				t.Fatalf("record %+v from %q", r, body)
			}
			seen[r.Name] = true
			if !made[r.Name] {
				t.Fatalf("%q is no string of %q", r.Name, body)
			}
		}
		if !json.Valid(body) {
			return
		}
		for _, wrap := range []string{
			`{"name":"batches/b","done":true,"response":{"inlinedResponses":{"inlinedResponses":[{"response":%s,"metadata":%s}]}}}`,
			`{"metadata":{"output":{"inlinedResponses":{"inlinedResponses":[%s,{"metadata":%s}]}}}}`,
		} {
			w := strings.ReplaceAll(wrap, "%s", string(body))
			if got := polledFiles([]byte(w), store.Owner{KeyID: 42}, now); len(got) != 0 {
				t.Fatalf("recorded %+v from inside inlined responses: %s", got, w)
			}
		}
		var compact, indented bytes.Buffer
		if json.Compact(&compact, body) != nil || json.Indent(&indented, body, "", "  ") != nil {
			t.Fatalf("json.Valid but not compactable: %q", body)
		}
		for _, b := range [][]byte{compact.Bytes(), indented.Bytes()} {
			got := polledFiles(b, store.Owner{KeyID: 42}, now)
			if !slices.EqualFunc(got, rs, func(a, b store.Resource) bool { return a.Name == b.Name }) {
				t.Fatalf("%q gives %v, %q gives %v", body, rs, b, got)
			}
		}
	})
}
