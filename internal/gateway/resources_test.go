package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestResourceName(t *testing.T) {
	for in, want := range map[string]string{
		"files/abc": "files/abc",
		"https://generativelanguage.googleapis.com/v1beta/files/abc": "files/abc",
		"http://127.0.0.1:8080/gemini/v1beta/files/abc":              "",
		"/v1beta/files/abc:download":                                 "files/abc",
		"/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore": "fileSearchStores/s1",
		"/v1beta/fileSearchStores/s1/documents/d2":                   "fileSearchStores/s1",
		"cachedContents/xyz":                                         "cachedContents/xyz",
		"/v1beta/batches/b1:cancel":                                  "batches/b1",
		"tunedModels/t1/operations/o1":                               "tunedModels/t1/operations/o1",
		"models/veo-3.0/operations/op1":                              "models/veo-3.0/operations/op1",
		"/v1beta/models/gemini-2.5-flash:generateContent":            "",
		"/v1beta/files":                                              "",
		"look at files/abc":                                          "",
		"files/":                                                     "",
		"models/gemini-2.5-flash":                                    "",
	} {
		if got := resourceName(in); got != want {
			t.Errorf("resourceName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBodyReferences(t *testing.T) {
	body := `{"contents":[{"role":"user","parts":[
		{"text":"files/not-a-reference"},
		{"fileData":{"mimeType":"text/plain","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1"}},
		{"file_data":{"file_uri":"files/f2"}},
		{"inlineData":{"mimeType":"image/png","data":"aGVsbG8gZmlsZXMvbm8="}}]}],
		"cachedContent":"cachedContents/c1",
		"batch":{"inputConfig":{"fileName":"files/f3"}},
		"extra_body":{"google":{"cached_content":"cachedContents/c1"}},
		"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s1"]}}],
		"n":3,"ok":true,"none":null}`
	got, tooMany := bodyReferences([]byte(body))
	want := []string{"files/f1", "files/f2", "cachedContents/c1", "files/f3", "fileSearchStores/s1"}
	if !slices.Equal(got, want) || tooMany {
		t.Errorf("bodyReferences = %q (too many %v), want %q", got, tooMany, want)
	}
	if got, _ := bodyReferences([]byte(helloBody)); got != nil {
		t.Errorf("plain prompt: %q, want none", got)
	}
}

// upload runs the resumable protocol through the gateway: a start with the access key, then the
// data in chunks of chunkSize with the given chunk key ("" sends none). It returns the file
// name and the upload URL the gateway handed out.
func (e *proxyEnv) upload(data, chunkKey string, chunkSize int) (name string, uploadURL string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.url+"/upload/v1beta/files", strings.NewReader(`{"file":{"display_name":"doc"}}`))
	req.Header.Set("x-goog-api-key", testAccessKey)
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	req.Header.Set("X-Goog-Upload-Header-Content-Length", strconv.Itoa(len(data)))
	req.Header.Set("X-Goog-Upload-Header-Content-Type", "text/plain")
	req.Header.Set("Content-Type", "application/json")
	e.made.Add(1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	uploadURL = resp.Header.Get("X-Goog-Upload-Url")
	if resp.StatusCode != 200 || !strings.HasPrefix(uploadURL, e.url+"/upload/v1beta/files?") || strings.Contains(uploadURL, "key=") {
		e.t.Fatalf("start: %d, upload URL %q: %s", resp.StatusCode, uploadURL, b)
	}
	off := 0
	for {
		end := min(off+chunkSize, len(data))
		cmd := "upload"
		if end == len(data) {
			cmd = "upload, finalize"
		}
		req, _ := http.NewRequest("POST", uploadURL, strings.NewReader(data[off:end]))
		if chunkKey != "" {
			req.Header.Set("x-goog-api-key", chunkKey)
		}
		req.Header.Set("X-Goog-Upload-Command", cmd)
		req.Header.Set("X-Goog-Upload-Offset", strconv.Itoa(off))
		e.made.Add(1)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			e.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.assertNoLeak(resp.Header, b)
		if resp.StatusCode != 200 {
			e.t.Fatalf("chunk at %d: %d %s", off, resp.StatusCode, b)
		}
		off = end
		if cmd == "upload" {
			if s := resp.Header.Get("X-Goog-Upload-Status"); s != "active" {
				e.t.Fatalf("chunk status %q, want active", s)
			}
			continue
		}
		if s := resp.Header.Get("X-Goog-Upload-Status"); s != "final" {
			e.t.Fatalf("finalize status %q: %s", s, b)
		}
		var f struct {
			File struct {
				Name string `json:"name"`
			} `json:"file"`
		}
		if err := json.Unmarshal(b, &f); err != nil || f.File.Name == "" {
			e.t.Fatalf("finalize answer: %v %s", err, b)
		}
		return f.File.Name, uploadURL
	}
}

func fileBody(names ...string) string {
	var parts []string
	for _, n := range names {
		parts = append(parts, `{"fileData":{"mimeType":"text/plain","fileUri":"https://generativelanguage.googleapis.com/v1beta/`+n+`"}}`)
	}
	parts = append(parts, `{"text":"hello"}`)
	return `{"contents":[{"role":"user","parts":[` + strings.Join(parts, ",") + `]}]}`
}

func TestProxyUploadedFileStaysOnItsKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	data := strings.Repeat("0123456789", 1000)
	before := len(e.fake.Calls())
	// Chunks without any key, as the curl recipe and older python SDKs send them.
	name, _ := e.upload(data, "", 3000)
	calls := e.fake.Calls()[before:]
	if len(calls) != 5 {
		t.Fatalf("%d upstream calls, want start + 4 chunks", len(calls))
	}
	owner := calls[0].Key
	var size int64
	for _, c := range calls {
		if c.Key != owner {
			t.Errorf("%s %s?%s went with another key", c.Method, c.Path, c.RawQuery)
		}
		size += c.BodySize
	}
	if size < int64(len(data)) {
		t.Errorf("the upstream received %d bytes, want %d", size, len(data))
	}
	if got := e.fake.FileOwner(name); got != owner {
		t.Fatalf("fake says %s is owned by another key", name)
	}
	// Every use goes to the owner, in the body or in the path; round robin would spread them.
	for i := range 6 {
		n := len(e.fake.Calls())
		resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(name))
		if resp.StatusCode != 200 {
			t.Fatalf("generate %d: %d %s", i, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d went to other keys (%d calls)", i, len(keys))
		}
	}
	for _, p := range []string{"/v1beta/" + name, "/v1beta/" + name + "?alt=json"} {
		n := len(e.fake.Calls())
		resp, b := e.do("GET", p, "")
		if resp.StatusCode != 200 || !strings.Contains(string(b), name) {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("GET %s went to another key", p)
		}
	}
	// With the access key on the chunks it works the same.
	name2, _ := e.upload("small", testAccessKey, 100)
	if e.fake.FileOwner(name2) == "" {
		t.Fatalf("second upload: no file %s", name2)
	}
	e.assertNoPenalty()
}

func TestProxyFilesOfTwoKeysInOneRequest(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	a, _ := e.upload("first", "", 100)
	b, _ := e.upload("second", "", 100)
	c, _ := e.upload("third", "", 100)
	d, _ := e.upload("fourth", "", 100)
	owner := e.fake.FileOwner
	if owner(a) == owner(b) {
		t.Fatalf("round robin put both uploads on one key")
	}
	same := d
	if owner(a) != owner(d) {
		same = c // three keys, four uploads: two share a key
		if owner(a) != owner(c) {
			a = b
		}
	}
	if owner(a) != owner(same) {
		t.Fatalf("no two files share a key")
	}
	n := len(e.fake.Calls())
	resp, body := e.do("POST", genPath("gemini-2.5-flash"), fileBody(a, same))
	if resp.StatusCode != 200 {
		t.Fatalf("two files of one key: %d %s", resp.StatusCode, body)
	}
	if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner(a) {
		t.Errorf("two files of one key: sent to another key")
	}
	var other string
	for _, f := range []string{b, c, d} {
		if owner(f) != owner(a) {
			other = f
		}
	}
	n = len(e.fake.Calls())
	resp, body = e.do("POST", genPath("gemini-2.5-flash"), fileBody(a, other))
	g := decodeError(t, body)
	if resp.StatusCode != 400 || g.Error.Status != "INVALID_ARGUMENT" || !strings.Contains(g.Error.Message, "different upstream projects") ||
		!strings.Contains(g.Error.Message, a) || !strings.Contains(g.Error.Message, other) {
		t.Errorf("two owners: %d %s", resp.StatusCode, body)
	}
	if len(e.fake.Calls()) != n {
		t.Errorf("a request refused for two owners reached the upstream")
	}
}

func TestProxyForgedUploadSessionIsRefused(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	// A real session exists upstream but was not started through this gateway.
	req, _ := http.NewRequest("POST", e.upstream+"/upload/v1beta/files", strings.NewReader(`{}`))
	req.Header.Set("x-goog-api-key", e.keys[0])
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(resp.Header.Get("X-Goog-Upload-Url"))
	e.fake.Reset()
	for _, id := range []string{u.Query().Get("upload_id"), "ABgVH8forged"} {
		for _, key := range []string{"", testAccessKey} {
			req, _ := http.NewRequest("POST", e.url+"/upload/v1beta/files?upload_id="+url.QueryEscape(id)+"&upload_protocol=resumable", strings.NewReader("data"))
			if key != "" {
				req.Header.Set("x-goog-api-key", key)
			}
			req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
			req.Header.Set("X-Goog-Upload-Offset", "0")
			e.made.Add(1)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			g := decodeError(t, b)
			if resp.StatusCode != 404 || g.Error.Status != "NOT_FOUND" || !strings.Contains(g.Error.Message, "did not start") {
				t.Errorf("forged session (key %v): %d %s", key != "", resp.StatusCode, b)
			}
			if resp.Header.Get("X-Goog-Upload-Status") != "final" {
				t.Errorf("forged session: upload status %q, want final (so SDKs stop)", resp.Header.Get("X-Goog-Upload-Status"))
			}
		}
	}
	// A wrong key on a real session is refused too.
	_, upURL := e.upload("x", "", 10)
	req, _ = http.NewRequest("POST", upURL, strings.NewReader("more"))
	req.Header.Set("x-goog-api-key", "not-an-access-key")
	req.Header.Set("X-Goog-Upload-Command", "query")
	e.made.Add(1)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("wrong key on a chunk: %d, want 401", resp.StatusCode)
	}
	for _, c := range e.fake.Calls() {
		if strings.Contains(c.RawQuery, "upload_id") && !strings.Contains(c.RawQuery, url.QueryEscape(mustUploadID(t, upURL))) {
			t.Errorf("a refused chunk reached the upstream: %s?%s", c.Path, c.RawQuery)
		}
	}
}

func mustUploadID(t *testing.T, s string) string {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("upload_id")
}

func TestProxyOwnerUnusable(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	name, _ := e.upload("payload", "", 100)
	owner := e.ids[e.fake.FileOwner(name)]
	ctx := context.Background()

	// Cooling for the model: 429 with Retry-After, and no hop to another key.
	until := time.Now().Add(time.Hour)
	e.core.pool.Report(owner, "gemini-2.5-flash", keypool.Outcome{Kind: keypool.Quota, Until: until}, time.Now())
	n := len(e.fake.Calls())
	resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(name))
	g := decodeError(t, b)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(g.Error.Message, name) ||
		!strings.Contains(g.Error.Message, "cooling") {
		t.Errorf("owner cooling: %d %s", resp.StatusCode, b)
	}
	// Another model is fine on the same key.
	resp, b = e.do("POST", genPath("gemini-2.5-pro"), fileBody(name))
	if resp.StatusCode != 200 {
		t.Errorf("owner cooling for another model: %d %s", resp.StatusCode, b)
	}

	// Disabled (by an operator, as the admin API does): 503 with the reason.
	if err := e.core.store.SetKeyStatus(ctx, owner, store.StatusDisabled, operatorDisabled, true); err != nil {
		t.Fatal(err)
	}
	e.core.pool.SetDisabled(owner, true)
	n = len(e.fake.Calls())
	resp, b = e.do("POST", genPath("gemini-2.5-pro"), fileBody(name))
	g = decodeError(t, b)
	if resp.StatusCode != 503 || g.Error.Status != "UNAVAILABLE" || !strings.Contains(g.Error.Message, "disabled") ||
		!strings.Contains(g.Error.Message, operatorDisabled) {
		t.Errorf("owner disabled: %d %s", resp.StatusCode, b)
	}
	if len(e.fake.Calls()) != n {
		t.Errorf("a request for a disabled owner's file reached the upstream")
	}
	// (Unknown resources keep the normal path: a plain prompt still works.)
	if resp, b, _ := e.generate("gemini-2.5-flash"); resp.StatusCode != 200 {
		t.Errorf("plain prompt: %d %s", resp.StatusCode, b)
	}
}

func TestProxyPermissionErrorOnBoundResourceIsNoKeyFailure(t *testing.T) {
	e := newProxyEnv(t, 2, sharedAccess)
	// The gateway believes key 0 owns a file the upstream does not know (deleted elsewhere).
	owner := e.ids[e.keys[0]]
	if err := e.core.store.AddResources(context.Background(), store.Resource{Name: "files/gone", KeyID: owner, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		n := len(e.fake.Calls())
		resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody("files/gone"))
		if resp.StatusCode != 403 || !strings.Contains(string(b), "You do not have permission to access the File files/gone") {
			t.Fatalf("gone file: %d %s", resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != e.keys[0] {
			t.Fatalf("gone file: sent to %d keys / another key", len(keys))
		}
	}
	e.assertNoPenalty()
	// GET of the gone file makes the gateway forget it; afterwards it is an unknown file.
	e.do("GET", "/v1beta/files/gone", "")
	owners, err := e.core.store.ResourceOwners(context.Background(), []string{"files/gone"}, time.Now())
	if err != nil || len(owners) != 0 {
		t.Errorf("owners after a 403 GET: %v %v", owners, err)
	}
}

func TestProxyListAndDeleteFiles(t *testing.T) {
	e := newProxyEnv(t, 3, sharedAccess)
	var names []string
	for i := range 7 {
		n, _ := e.upload(fmt.Sprintf("file %d", i), "", 100)
		names = append(names, n)
	}
	// A file uploaded straight to the upstream with a pool key is listed too (and learnt).
	req, _ := http.NewRequest("POST", e.upstream+"/upload/v1beta/files", strings.NewReader(`{}`))
	req.Header.Set("x-goog-api-key", e.keys[2])
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ = http.NewRequest("POST", e.upstream+resp.Header.Get("X-Goog-Upload-Url")[len("https://generativelanguage.googleapis.com"):], strings.NewReader("direct"))
	req.Header.Set("x-goog-api-key", e.keys[2])
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var direct struct {
		File struct{ Name string } `json:"file"`
	}
	json.NewDecoder(resp.Body).Decode(&direct)
	resp.Body.Close()
	names = append(names, direct.File.Name)

	var listed []string
	token := ""
	pages := 0
	for {
		p := "/v1beta/files?pageSize=3"
		if token != "" {
			p += "&pageToken=" + url.QueryEscape(token)
		}
		resp, b := e.do("GET", p, "")
		if resp.StatusCode != 200 {
			t.Fatalf("list: %d %s", resp.StatusCode, b)
		}
		var page struct {
			Files []struct {
				Name string `json:"name"`
			} `json:"files"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			t.Fatal(err)
		}
		if len(page.Files) > 3 || (page.NextPageToken != "" && len(page.Files) != 3) {
			t.Fatalf("page %d has %d files (next %q)", pages, len(page.Files), page.NextPageToken)
		}
		for _, f := range page.Files {
			listed = append(listed, f.Name)
		}
		pages++
		if token = page.NextPageToken; token == "" || pages > 10 {
			break
		}
	}
	slices.Sort(listed)
	slices.Sort(names)
	if !slices.Equal(listed, names) || pages != 3 {
		t.Errorf("listed %d files in %d pages:\n%q\nwant\n%q", len(listed), pages, listed, names)
	}
	resp2, b := e.do("GET", "/v1beta/files?pageToken=bogus", "")
	if resp2.StatusCode != 400 {
		t.Errorf("bogus page token: %d %s", resp2.StatusCode, b)
	}

	// The directly uploaded file was learnt from the listing: it is now bound to its key.
	n := len(e.fake.Calls())
	if resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(direct.File.Name)); resp.StatusCode != 200 {
		t.Fatalf("generate with the listed file: %d %s", resp.StatusCode, b)
	}
	if keys := e.keysSince(n); len(keys) != 1 || keys[0] != e.keys[2] {
		t.Errorf("listed file not bound to its key")
	}

	// DELETE goes to the owner and forgets the row.
	for _, name := range names[:3] {
		owner := e.fake.FileOwner(name)
		n := len(e.fake.Calls())
		resp, b := e.do("DELETE", "/v1beta/"+name, "")
		if resp.StatusCode != 200 {
			t.Fatalf("delete %s: %d %s", name, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Errorf("delete %s went to another key", name)
		}
		if e.fake.FileOwner(name) != "" {
			t.Errorf("%s still exists upstream", name)
		}
	}
	owners, err := e.core.store.ResourceOwners(context.Background(), names, time.Now())
	if err != nil || len(owners) != len(names)-3 {
		t.Errorf("owners after deleting 3 of %d: %d, %v", len(names), len(owners), err)
	}
	counts, err := e.core.ownedResourceCounts(context.Background())
	total := 0
	for _, c := range counts {
		total += c
	}
	if err != nil || total != len(names)-3 {
		t.Errorf("owned resource counts %v (%v), want %d in all", counts, err, len(names)-3)
	}
	e.assertNoPenalty()
}

func TestProxyCachedContentStaysOnItsKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	resp, b := e.do("POST", "/v1beta/cachedContents", `{"model":"models/gemini-2.5-flash","ttl":"600s","contents":[{"role":"user","parts":[{"text":"a long context"}]}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	var cc struct{ Name string }
	json.Unmarshal(b, &cc)
	calls := e.fake.Calls()
	owner := calls[len(calls)-1].Key
	for i := range 4 {
		n := len(e.fake.Calls())
		resp, b := e.do("POST", genPath("gemini-2.5-flash"), `{"cachedContent":"`+cc.Name+`","contents":[{"role":"user","parts":[{"text":"hello"}]}]}`)
		if resp.StatusCode != 200 {
			t.Fatalf("generate %d with the cache: %d %s", i, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d with the cache went to another key", i)
		}
	}
	if resp, b := e.do("DELETE", "/v1beta/"+cc.Name, ""); resp.StatusCode != 200 {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	if owners, _ := e.core.store.ResourceOwners(context.Background(), []string{cc.Name}, time.Now()); len(owners) != 0 {
		t.Errorf("deleted cache still recorded")
	}
}

func TestRetentionPurgesExpiredResources(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	ctx := context.Background()
	id := e.ids[e.keys[0]]
	now := time.Now()
	if err := e.core.store.AddResources(ctx,
		store.Resource{Name: "files/old", KeyID: id, ExpiresAt: now.Add(-time.Hour)},
		store.Resource{Name: "files/new", KeyID: id, ExpiresAt: now.Add(time.Hour)},
	); err != nil {
		t.Fatal(err)
	}
	if err := e.core.store.AddUploadSession(ctx, store.UploadSession{ID: "old", KeyID: id, UpstreamURI: "/u", CreatedAt: now.Add(-8 * 24 * time.Hour), ExpiresAt: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e.core.runRetention(ctx)
	counts, err := e.core.ownedResourceCounts(ctx)
	if err != nil || counts[id] != 1 {
		t.Errorf("after retention: %v %v, want 1 live resource", counts, err)
	}
	if res, up, err := e.core.purgeBound(ctx, now); err != nil || res != 0 || up != 0 {
		t.Errorf("second purge deleted %d/%d (%v), want nothing left", res, up, err)
	}
}

// The cost of the ownership check on ordinary requests: a body without any resource marker is
// only scanned for the markers; one that names a file is parsed.
func BenchmarkBodyReferences(b *testing.B) {
	inline := `{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"` +
		strings.Repeat("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg", 10000) +
		`"}},{"text":"describe"}]}]}`
	for _, c := range []struct{ name, body string }{
		{"plain-prompt", helloBody},
		{"inline-1MiB", inline},
		{"file-reference", fileBody("files/abc123")},
	} {
		b.Run(c.name, func(b *testing.B) {
			body := []byte(c.body)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				bodyReferences(body)
			}
		})
	}
}

// The whole per-request cost of key-bound routing for a plain generateContent.
func BenchmarkRouteCheckPlainGenerate(b *testing.B) {
	body := []byte(helloBody)
	p := "/v1beta/models/gemini-2.5-flash:generateContent"
	b.ReportAllocs()
	for b.Loop() {
		if refs, _ := bodyReferences(body); mergedKind(p) != "" || resourceName(p) != "" || createsResource(http.MethodPost, p) || refs != nil {
			b.Fatal("a plain generate looks key-bound")
		}
	}
}

func TestProxyChunkOfDisabledKeyIsRefused(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	req, _ := http.NewRequest("POST", e.url+"/upload/v1beta/files", strings.NewReader(`{}`))
	req.Header.Set("x-goog-api-key", testAccessKey)
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	e.made.Add(1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	upURL := resp.Header.Get("X-Goog-Upload-Url")
	calls := e.fake.Calls()
	owner := e.ids[calls[len(calls)-1].Key]
	e.core.pool.SetDisabled(owner, true)
	n := len(e.fake.Calls())
	req, _ = http.NewRequest("POST", upURL, strings.NewReader("data"))
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	req.Header.Set("X-Goog-Upload-Offset", "0")
	e.made.Add(1)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	g := decodeError(t, b)
	if resp.StatusCode != 503 || !strings.Contains(g.Error.Message, "is disabled") || resp.Header.Get("X-Goog-Upload-Status") != "final" {
		t.Errorf("chunk for a disabled key: %d %q %s", resp.StatusCode, resp.Header.Get("X-Goog-Upload-Status"), b)
	}
	if len(e.fake.Calls()) != n {
		t.Errorf("the chunk went upstream with another key")
	}
	// The request log names the session's access key and key even though the chunk had none.
	rows := e.requests()
	if r := rows[0]; r.KeyID != owner || r.AccessKeyID == 0 || r.Status != 503 {
		t.Errorf("request row %+v", r)
	}
}

func TestProxyBatchOfAFileStaysOnItsKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	name, _ := e.upload(`{"key":"1","request":{"contents":[{"parts":[{"text":"hi"}]}]}}`, "", 1000)
	owner := e.fake.FileOwner(name)
	n := len(e.fake.Calls())
	resp, b := e.do("POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
		`{"batch":{"displayName":"nightly","inputConfig":{"fileName":"`+name+`"}}}`)
	if resp.StatusCode != 200 {
		t.Fatalf("batch create: %d %s", resp.StatusCode, b)
	}
	if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
		t.Fatalf("batch create did not go to the file's owner")
	}
	var op struct{ Name string }
	json.Unmarshal(b, &op)
	if !strings.HasPrefix(op.Name, "batches/") {
		t.Fatalf("batch create answer: %s", b)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1beta/" + op.Name}, {"GET", "/v1beta/" + op.Name}, {"POST", "/v1beta/" + op.Name + ":cancel"},
		{"GET", "/v1beta/" + op.Name}, {"DELETE", "/v1beta/" + op.Name},
	} {
		n := len(e.fake.Calls())
		resp, b := e.do(c.method, c.path, "")
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("%s %s did not go to the batch's owner", c.method, c.path)
		}
	}
	if owners, _ := e.core.store.ResourceOwners(context.Background(), []string{op.Name}, time.Now()); len(owners) != 0 {
		t.Errorf("deleted batch still recorded")
	}
	e.assertNoPenalty()
}

func TestCreatedResources(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		body string
		want map[string]time.Time // name -> expiry (zero: none)
	}{
		{`{"file":{"name":"files/a","expirationTime":"2026-01-04T00:00:00Z","uri":"https://generativelanguage.googleapis.com/v1beta/files/a"}}`,
			map[string]time.Time{"files/a": time.Date(2026, 1, 4, 0, 0, 0, 0, time.UTC)}},
		{`{"name":"cachedContents/c","expireTime":"2026-01-02T04:04:05.5Z"}`,
			map[string]time.Time{"cachedContents/c": time.Date(2026, 1, 2, 4, 4, 5, 5e8, time.UTC)}},
		{`{"name":"batches/b","metadata":{"name":"batches/b"}}`, map[string]time.Time{"batches/b": now.Add(30 * 24 * time.Hour)}},
		{`{"name":"tunedModels/t/operations/o","metadata":{"tunedModel":"tunedModels/t"}}`,
			map[string]time.Time{"tunedModels/t/operations/o": now.Add(7 * 24 * time.Hour), "tunedModels/t": {}}},
		{`{"name":"models/veo-3.0/operations/v"}`, map[string]time.Time{"models/veo-3.0/operations/v": now.Add(7 * 24 * time.Hour)}},
		{`{"files":[{"name":"files/r1"},{"name":"files/r2"}]}`,
			map[string]time.Time{"files/r1": now.Add(48 * time.Hour), "files/r2": now.Add(48 * time.Hour)}},
		{`{"id":"batches/oa"}`, map[string]time.Time{"batches/oa": now.Add(30 * 24 * time.Hour)}},
		{`{"candidates":[]}`, map[string]time.Time{}},
		{`not json`, map[string]time.Time{}},
	} {
		got := map[string]time.Time{}
		for _, r := range createdResources([]byte(c.body), store.Owner{KeyID: 7}, now) {
			if r.KeyID != 7 {
				t.Errorf("%s: key %d", c.body, r.KeyID)
			}
			got[r.Name] = r.ExpiresAt
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: got %v, want %v", c.body, got, c.want)
			continue
		}
		for n, exp := range c.want {
			if g, ok := got[n]; !ok || !g.Equal(exp) {
				t.Errorf("%s: %s expires %v (found %v), want %v", c.body, n, g, ok, exp)
			}
		}
	}
}

// fixedUpstream answers like Google for tests that need answers the fake does not give: a
// DELETE succeeds, a GET of /v1beta/files/suspended is a suspended key's 403, any other GET is
// 404 NOT_FOUND.
func fixedUpstream(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		switch {
		case r.Method == http.MethodDelete:
			io.WriteString(w, "{}\n")
		case r.URL.Path == "/v1beta/files/suspended":
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"error":{"code":403,"message":"Permission denied: Consumer 'api_key:x' has been suspended.","status":"PERMISSION_DENIED"}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A request about a sub-resource, a method or a bogus suffix of a resource must not make the
// gateway forget the resource: any access key could otherwise unbind anyone's file.
func TestProxySubResourcePathsKeepTheParentsRecord(t *testing.T) {
	up := fixedUpstream(t)
	e := newProxyEnv(t, 2, func(a *Config) { a.Upstream = up; sharedAccess(a) })
	ctx := context.Background()
	owner := e.ids[e.keys[0]]
	names := []string{"files/f1", "fileSearchStores/s1", "tunedModels/t1", "files/suspended", "files/gone"}
	var rs []store.Resource
	for _, n := range names {
		rs = append(rs, store.Resource{Name: n, KeyID: owner, ExpiresAt: time.Now().Add(time.Hour)})
	}
	if err := e.core.store.AddResources(ctx, rs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1beta/files/f1/junk"},
		{"GET", "/v1beta/files/f1:anything"},
		{"DELETE", "/v1beta/files/f1/junk"},
		{"DELETE", "/v1beta/files/f1:anything"},
		{"GET", "/v1beta/fileSearchStores/s1/documents/d2"},
		{"DELETE", "/v1beta/fileSearchStores/s1/documents/d2"},
		{"GET", "/v1beta/tunedModels/t1/permissions/p1"},
		{"DELETE", "/v1beta/tunedModels/t1/permissions/p1"},
		{"GET", "/v1beta/files/gone"}, // 404 NOT_FOUND on the file itself
	} {
		e.do(c.method, c.path, "")
	}
	owners, err := e.core.store.ResourceOwners(ctx, names, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names[:4] {
		if owners[n].KeyID != owner {
			t.Errorf("%s was forgotten by a request about something else", n)
		}
	}
	if _, ok := owners["files/gone"]; ok {
		t.Errorf("files/gone is still recorded after a 404 NOT_FOUND on it")
	}
	// A successful DELETE of the resource itself forgets it.
	e.do("DELETE", "/v1beta/files/f1", "")
	if owners, _ := e.core.store.ResourceOwners(ctx, []string{"files/f1"}, time.Now()); len(owners) != 0 {
		t.Errorf("files/f1 still recorded after its DELETE")
	}
	// A 403 about the key (suspended), not the file, keeps the record (last: it disables the key).
	e.do("GET", "/v1beta/files/suspended", "")
	if owners, _ := e.core.store.ResourceOwners(ctx, []string{"files/suspended"}, time.Now()); owners["files/suspended"].KeyID != owner {
		t.Errorf("files/suspended was forgotten on a suspended key's 403")
	}
}

func TestExactName(t *testing.T) {
	for in, want := range map[string]string{
		"/v1beta/files/abc":                  "files/abc",
		"/v1beta/files/abc/junk":             "files/abc/junk",
		"/v1beta/files/abc:download":         "files/abc:download",
		"/v1/tunedModels/t/operations/o":     "tunedModels/t/operations/o",
		"/upload/v1beta/fileSearchStores/s1": "fileSearchStores/s1",
	} {
		if got := exactName(in); got != want {
			t.Errorf("exactName(%q) = %q, want %q", in, got, want)
		}
	}
}

// namesBody is a generateContent body that names n distinct files.
func namesBody(n int) string {
	var b strings.Builder
	b.WriteString(`{"contents":[{"parts":[`)
	for i := range n {
		fmt.Fprintf(&b, `{"fileData":{"fileUri":"files/f%d"}},`, i)
	}
	b.WriteString(`{"text":"hi"}]}]}`)
	return b.String()
}

// A body naming tens of thousands of resources is refused up front, in the Gemini envelope,
// without reaching the upstream; up to maxReferences is routed as usual.
func TestProxyTooManyReferences(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	n := len(e.fake.Calls())
	resp, b := e.do("POST", genPath("gemini-2.5-flash"), namesBody(40000))
	g := decodeError(t, b)
	if resp.StatusCode != 400 || g.Error.Status != "INVALID_ARGUMENT" || !strings.Contains(g.Error.Message, "too many resource references (max 64)") {
		t.Errorf("40000 references: %d %s", resp.StatusCode, b)
	}
	if len(e.fake.Calls()) != n {
		t.Errorf("a refused request reached the upstream")
	}
	if refs, tooMany := bodyReferences([]byte(namesBody(maxReferences))); len(refs) != maxReferences || tooMany {
		t.Errorf("%d references: %d found, too many %v", maxReferences, len(refs), tooMany)
	}
	if _, tooMany := bodyReferences([]byte(namesBody(maxReferences + 1))); !tooMany {
		t.Errorf("%d references not too many", maxReferences+1)
	}
	// Repeats of one name count once.
	body := fileBody(slices.Repeat([]string{"files/same"}, 1000)...)
	if refs, tooMany := bodyReferences([]byte(body)); len(refs) != 1 || tooMany {
		t.Errorf("1000 repeats of one name: %q, too many %v", refs, tooMany)
	}
}

// The cost of scanning a body that names many resources (capped at maxReferences distinct
// names) and of one with a name repeated throughout a large body.
func BenchmarkBodyReferencesMany(b *testing.B) {
	for _, c := range []struct{ name, body string }{
		{"40000-distinct", namesBody(40000)},
		{"one-repeated-100000", fileBody(slices.Repeat([]string{"files/same"}, 100000)...)},
	} {
		b.Run(c.name, func(b *testing.B) {
			body := []byte(c.body)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				bodyReferences(body)
			}
		})
	}
}

// failingListUpstream is the fake upstream, except that files.list with the key in failKey
// (when set) answers 500 INTERNAL.
type failingListUpstream struct {
	fake    *fakegemini.Server
	failKey atomic.Value // string
}

func (u *failingListUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if k, _ := u.failKey.Load().(string); k != "" && r.Method == http.MethodGet && r.URL.Path == "/v1beta/files" && r.Header.Get("X-Goog-Api-Key") == k {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}`)
		return
	}
	u.fake.ServeHTTP(w, r)
}

// listAll pages through the merged files listing from token, at most stopAfter pages, and
// returns the names, the token to go on with and the failed answer's status (0 when none).
func (e *proxyEnv) listAll(token string, pageSize int, stopAfter int) (names []string, next string, failed int) {
	e.t.Helper()
	for pages := 0; pages < stopAfter; pages++ {
		p := "/v1beta/files?pageSize=" + strconv.Itoa(pageSize)
		if token != "" {
			p += "&pageToken=" + url.QueryEscape(token)
		}
		resp, b := e.do("GET", p, "")
		if resp.StatusCode != 200 {
			return names, token, resp.StatusCode
		}
		var page struct {
			Files []struct {
				Name string `json:"name"`
			} `json:"files"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			e.t.Fatal(err)
		}
		for _, f := range page.Files {
			names = append(names, f.Name)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	return names, token, 0
}

// An upstream error on one key ends the listing's page before that key, so the next page
// resumes there and no file of that key is paged past; an error with nothing listed yet is
// the answer.
func TestProxyFilesListStopsAtAFailingKey(t *testing.T) {
	fake := fakegemini.New()
	up := &failingListUpstream{fake: fake}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	e := newProxyEnv(t, 3, func(a *Config) { a.Upstream = srv.URL })
	var all []string
	for i := range 6 {
		n, _ := e.upload(fmt.Sprintf("file %d", i), "", 100)
		all = append(all, n)
	}
	byID := map[int64]string{}
	for k, id := range e.ids {
		byID[id] = k
	}
	ids := slices.Sorted(maps.Keys(byID))
	for _, n := range all {
		if fake.FileOwner(n) == "" {
			t.Fatalf("%s not uploaded", n)
		}
	}

	// The second key fails: the first page holds only the first key's files.
	up.failKey.Store(byID[ids[1]])
	first, token, failed := e.listAll("", 10, 1)
	if failed != 0 || token == "" {
		t.Fatalf("first page: failed %d, token %q, files %q", failed, token, first)
	}
	for _, n := range first {
		if fake.FileOwner(n) != byID[ids[0]] {
			t.Errorf("first page holds %s of a key after the failing one", n)
		}
	}
	// The key recovers: the listing goes on from it and misses nothing.
	up.failKey.Store("")
	rest, _, failed := e.listAll(token, 10, 10)
	if failed != 0 {
		t.Fatalf("after recovery: status %d", failed)
	}
	got := append(first, rest...)
	slices.Sort(got)
	slices.Sort(all)
	if !slices.Equal(got, all) {
		t.Errorf("listed %q, want %q", got, all)
	}

	// The first key fails: nothing is listed, and the error is the answer.
	up.failKey.Store(byID[ids[0]])
	if names, _, failed := e.listAll("", 10, 1); failed != 500 || len(names) != 0 {
		t.Errorf("first key failing: status %d, files %q", failed, names)
	}
}

// openAIFilesUpstream is the fake upstream plus the OpenAI-compatible file upload, which the
// fake lacks: POST /v1beta/openai/files answers an OpenAI file object whose id is the native
// name "files/oa-<n>", and remembers which key created it.
type openAIFilesUpstream struct {
	fake  *fakegemini.Server
	mu    sync.Mutex
	owner map[string]string // file name -> key
}

func (u *openAIFilesUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1beta/openai/files" {
		u.fake.ServeHTTP(w, r)
		return
	}
	io.Copy(io.Discard, r.Body)
	key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if key == "" {
		key = r.Header.Get("X-Goog-Api-Key")
	}
	u.mu.Lock()
	name := fmt.Sprintf("files/oa-%d", len(u.owner))
	u.owner[name] = key
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":%q,"object":"file","bytes":4,"created_at":1767225600,"filename":"batch.jsonl","purpose":"batch"}`, name)
}

// The OpenAI-compatible file upload creates a file of the key that got it.
func TestProxyOpenAIFileUploadIsRecorded(t *testing.T) {
	up := &openAIFilesUpstream{fake: fakegemini.New(), owner: map[string]string{}}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	e := newProxyEnv(t, 3, func(a *Config) { a.Upstream = srv.URL })
	for i := range 3 {
		var body strings.Builder
		mw := multipart.NewWriter(&body)
		mw.WriteField("purpose", "batch")
		fw, _ := mw.CreateFormFile("file", "batch.jsonl")
		io.WriteString(fw, `{"custom_id":"1","method":"POST","url":"/v1/chat/completions","body":{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}}`)
		mw.Close()
		req, _ := http.NewRequest("POST", e.url+"/v1beta/openai/files", strings.NewReader(body.String()))
		req.Header.Set("Authorization", "Bearer "+testAccessKey)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		e.made.Add(1)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var f struct{ ID string }
		if resp.StatusCode != 200 || json.Unmarshal(b, &f) != nil || f.ID == "" {
			t.Fatalf("upload %d: %d %s", i, resp.StatusCode, b)
		}
		owners, err := e.core.store.ResourceOwners(context.Background(), []string{f.ID}, time.Now())
		up.mu.Lock()
		want := e.ids[up.owner[f.ID]]
		up.mu.Unlock()
		if err != nil || want == 0 || owners[f.ID].KeyID != want {
			t.Errorf("upload %d: %s recorded as owned by %v (%v), want key %d", i, f.ID, owners, err, want)
		}
	}
}

// finishedAnswers are the operation and batches below as Google answers their poll once done,
// naming the files they made.
var finishedAnswers = map[string]string{
	"/v1beta/models/veo-3.0-generate-001/operations/op1": `{"name":"models/veo-3.0-generate-001/operations/op1","done":true,"response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",` +
		`"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/vid1:download?alt=media"}}]},` +
		`"generatedVideos":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/vid2:download?alt=media"}}]}}`,
	"/v1beta/batches/b1": `{"name":"batches/b1","done":true,"metadata":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch","name":"batches/b1",` +
		`"state":"BATCH_STATE_SUCCEEDED","output":{"responsesFile":"files/batch-out1"}},` +
		`"response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput","responsesFile":"files/batch-out1"}}`,
	"/v1beta/batches/big": `{"name":"batches/big","done":true,"response":{"responsesFile":"files/big-out","inlinedResponses":{"pad":"` + strings.Repeat("x", 1<<20) + `"}}}`,
}

// The owner polling a finished operation or batch learns the files it made: they belong to
// its key, and later requests that name them go there.
func TestProxyPolledOperationRecordsItsFiles(t *testing.T) {
	fake := fakegemini.New()
	srv := httptest.NewServer(cannedPolls{fake, finishedAnswers})
	t.Cleanup(srv.Close)
	e := newProxyEnv(t, 3, func(a *Config) { a.Upstream = srv.URL; sharedAccess(a) })
	ctx := context.Background()
	owner := e.ids[e.keys[1]]
	exp := time.Now().Add(time.Hour)
	if err := e.core.store.AddResources(ctx,
		store.Resource{Name: "models/veo-3.0-generate-001/operations/op1", KeyID: owner, ExpiresAt: exp},
		store.Resource{Name: "batches/b1", KeyID: owner, ExpiresAt: exp},
		store.Resource{Name: "batches/big", KeyID: owner, ExpiresAt: exp},
	); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/v1beta/models/veo-3.0-generate-001/operations/op1", "/v1beta/batches/b1", "/v1beta/batches/big"} {
		n := len(fake.Calls())
		if resp, b := e.do("GET", p, ""); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %.300s", p, resp.StatusCode, b)
		}
		if keys := e.keysSince(n); len(keys) != 0 {
			t.Fatalf("GET %s reached the fake", p)
		}
	}
	files := []string{"files/vid1", "files/vid2", "files/batch-out1", "files/big-out"}
	owners, err := e.core.store.ResourceOwners(ctx, files, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files[:3] {
		if owners[f].KeyID != owner {
			t.Errorf("%s not recorded as owned by the poller's key: %v", f, owners)
		}
	}
	if _, ok := owners["files/big-out"]; ok {
		t.Errorf("a file named in an answer over 1 MiB was recorded")
	}
}
