package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// Isolation between access keys (issue 14), through a real caddy with ONE pool key: the
// upstream would let every access key use every resource, so whatever keeps access key B away
// from access key A's files, caches, batches and upload sessions is the gateway's doing. A
// refusal is Google's own answer, without an upstream call. A `shared` key also reaches what
// the gateway did not create (here: a file uploaded on the upstream directly); the others,
// including the Caddyfile's plain access_keys, do not.

// fileNames lists the files an access key sees through the gateway with the Go SDK.
func fileNames(ctx context.Context, t *testing.T, client *genai.Client) []string {
	t.Helper()
	var out []string
	for f, err := range client.Files.All(ctx) {
		if err != nil {
			t.Fatalf("files.list: %v", err)
		}
		out = append(out, f.Name)
	}
	return out
}

// directHeader marks the tests' own calls to the upstream, which bypass the gateway.
const directHeader = "X-E2e-Direct"

// viaGateway leaves out the calls the tests made to the upstream themselves.
func viaGateway(calls []fakegemini.Call) []fakegemini.Call {
	var out []fakegemini.Call
	for _, c := range calls {
		if c.Header.Get(directHeader) == "" {
			out = append(out, c)
		}
	}
	return out
}

// uploadDirect uploads data on the upstream itself with a pool key (outside the gateway) and
// returns the file's name and URI.
func uploadDirect(t *testing.T, upURL, poolKey, data string) (name, uri string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, upURL+"/upload/v1beta/files", strings.NewReader(`{"file":{"display_name":"made outside the gateway"}}`))
	req.Header.Set("X-Goog-Api-Key", poolKey)
	req.Header.Set(directHeader, "1")
	req.Header.Set("X-Goog-Upload-Protocol", "resumable")
	req.Header.Set("X-Goog-Upload-Command", "start")
	req.Header.Set("X-Goog-Upload-Header-Content-Length", strconv.Itoa(len(data)))
	req.Header.Set("X-Goog-Upload-Header-Content-Type", "text/plain")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, err := url.Parse(resp.Header.Get("X-Goog-Upload-Url"))
	if resp.StatusCode != 200 || err != nil {
		t.Fatalf("direct upload start: %d %v", resp.StatusCode, err)
	}
	req, _ = http.NewRequest(http.MethodPost, upURL+u.Path+"?"+u.RawQuery, strings.NewReader(data))
	req.Header.Set(directHeader, "1")
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f struct {
		File struct{ Name, URI string } `json:"file"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&f); err != nil || resp.StatusCode != 200 || f.File.Name == "" {
		t.Fatalf("direct upload: %d %v", resp.StatusCode, err)
	}
	return f.File.Name, f.File.URI
}

// fileBody is a generateContent body that uses the file at uri.
func fileBody(uri string) string {
	return `{"contents":[{"role":"user","parts":[{"fileData":{"mimeType":"text/plain","fileUri":"` + uri + `"}},{"text":"hello"}]}]}`
}

// wantNotYours asserts the refusal of a request for another access key's resource: 403
// PERMISSION_DENIED (or 404 NOT_FOUND, as Google answers for some kinds) in Google's envelope,
// with Google's own message when want is set, and no call upstream.
func wantNotYours(t *testing.T, g *gateway, calls func() int, what, method, path string, header http.Header, body, want string) {
	t.Helper()
	before := calls()
	r := g.mustSend(t, method, path, header, body)
	switch r.Status {
	case http.StatusForbidden:
		wantDenied(t, r, 403, "PERMISSION_DENIED", want)
	case http.StatusNotFound:
		if want != "" {
			t.Errorf("%s: 404, want Google's 403 %q: %s", what, want, r.Body)
		}
		wantDenied(t, r, 404, "NOT_FOUND")
	default:
		t.Errorf("%s: status %d, want 403 (or 404): %s", what, r.Status, r.Body)
	}
	if got := calls() - before; got != 0 {
		t.Errorf("%s reached the upstream (%d calls)", what, got)
	}
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	fake, up := newFake(t)
	pool := poolKeys(1)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Options: []string{
		accessKeyOption("alice"),
		accessKeyOption("bob", "rpm 1000"),
		accessKeyOption("sharer", "shared"),
	}})
	alice, bob, sharer := tenantKey("alice"), tenantKey("bob"), tenantKey("sharer")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	clients := map[string]*genai.Client{}
	for _, k := range []string{alice, bob, sharer, accessKey} {
		clients[k] = newSDKClient(t, g, k)
	}
	calls := func() int { return upstreamCalls(fake) }

	// A's file, uploaded with the SDK through the gateway.
	fA, err := clients[alice].Files.Upload(ctx, strings.NewReader("alice's notes"), &genai.UploadFileConfig{MIMEType: "text/plain", DisplayName: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if fake.FileOwner(fA.Name) != pool[0] {
		t.Fatalf("no file %s upstream", fA.Name)
	}
	id := strings.TrimPrefix(fA.Name, "files/")
	// Google's own words name the file by its id, without "files/".
	denial := "You do not have permission to access the File " + id + " or it may not exist."

	t.Run("Files", func(t *testing.T) {
		if names := fileNames(ctx, t, clients[alice]); !slices.Contains(names, fA.Name) {
			t.Errorf("A's files.list %v lacks A's file", names)
		}
		for who, k := range map[string]string{"B": bob, "the shared key": sharer, "a plain access_keys key": accessKey} {
			if names := fileNames(ctx, t, clients[k]); slices.Contains(names, fA.Name) {
				t.Errorf("%s's files.list shows A's file: %v", who, names)
			}
		}
		// Use in a body, read, delete: Google's 403, nothing upstream, the file stays.
		for who, k := range map[string]string{"B": bob, "the shared key": sharer, "a plain access_keys key": accessKey} {
			h := apiKeyHeader(k)
			wantNotYours(t, g, calls, who+"'s generateContent with A's file", http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", h, fileBody(fA.URI), denial)
			wantNotYours(t, g, calls, who+"'s stream with A's file", http.MethodPost, "/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse", h, fileBody(fA.Name), denial)
			wantNotYours(t, g, calls, who+"'s files.get of A's file", http.MethodGet, "/v1beta/files/"+id, h, "", denial)
			wantNotYours(t, g, calls, who+"'s files.delete of A's file", http.MethodDelete, "/v1beta/files/"+id, h, "", denial)
		}
		before := calls()
		_, err := clients[bob].Models.GenerateContent(ctx, modelFlash, []*genai.Content{{Role: "user", Parts: []*genai.Part{
			genai.NewPartFromURI(fA.URI, "text/plain"), genai.NewPartFromText("hello"),
		}}}, nil)
		if apiErr := wantSDKError(t, err, 403, "PERMISSION_DENIED"); apiErr.Message != denial {
			t.Errorf("the SDK's error: %q, want %q", apiErr.Message, denial)
		}
		_, err = clients[bob].Files.Delete(ctx, fA.Name, nil)
		wantSDKError(t, err, 403, "PERMISSION_DENIED")
		if calls() != before {
			t.Errorf("B's SDK calls on A's file reached the upstream")
		}
		if fake.FileOwner(fA.Name) == "" {
			t.Fatalf("A's file was deleted")
		}
		// A still uses it.
		resp, err := clients[alice].Models.GenerateContent(ctx, modelFlash, []*genai.Content{{Role: "user", Parts: []*genai.Part{
			genai.NewPartFromURI(fA.URI, "text/plain"), genai.NewPartFromText("hello"),
		}}}, nil)
		if err != nil || !strings.Contains(resp.Text(), "hello") {
			t.Fatalf("A's use of its file: %v", err)
		}
	})

	t.Run("UploadSession", func(t *testing.T) {
		data := "alice's second file"
		r := g.mustSend(t, http.MethodPost, "/upload/v1beta/files", http.Header{
			"X-Goog-Api-Key":                      {alice},
			"X-Goog-Upload-Protocol":              {"resumable"},
			"X-Goog-Upload-Command":               {"start"},
			"X-Goog-Upload-Header-Content-Length": {strconv.Itoa(len(data))},
			"X-Goog-Upload-Header-Content-Type":   {"text/plain"},
		}, `{"file":{"display_name":"alice 2"}}`)
		u := r.Header.Get("X-Goog-Upload-Url")
		if r.Status != 200 || !strings.HasPrefix(u, g.URL+"/upload/") {
			t.Fatalf("A's upload start: %d %q %s", r.Status, u, r.Body)
		}
		path := strings.TrimPrefix(u, g.URL)
		chunk := func(key, command, body string) timedResponse {
			h := http.Header{"X-Goog-Upload-Command": {command}, "X-Goog-Upload-Offset": {"0"}}
			if key != "" {
				h.Set("X-Goog-Api-Key", key)
			}
			r, err := g.send(http.MethodPost, path, h, body)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		uploadCalls := func() int {
			return fake.Count(func(c fakegemini.Call) bool { return strings.Contains(c.RawQuery, "upload_id") })
		}
		before := uploadCalls()
		for _, cmd := range []string{"upload, finalize", "query", "cancel"} {
			r := chunk(bob, cmd, map[bool]string{true: data}[cmd == "upload, finalize"])
			if r.Status != 403 && r.Status != 404 {
				t.Errorf("B's %q on A's upload session: %d, want 403 or 404: %s", cmd, r.Status, r.Body)
			}
		}
		if got := uploadCalls() - before; got != 0 {
			t.Errorf("B's commands on A's upload session reached the upstream (%d calls)", got)
		}
		// The session is A's still: a chunk without a key (the session is the credential)
		// finishes it, and the file is A's.
		r = chunk("", "upload, finalize", data)
		var f struct {
			File struct{ Name string } `json:"file"`
		}
		if r.Status != 200 || json.Unmarshal(r.Body, &f) != nil || f.File.Name == "" {
			t.Fatalf("A's chunk after B's attempts: %d %s", r.Status, r.Body)
		}
		if names := fileNames(ctx, t, clients[bob]); slices.Contains(names, f.File.Name) {
			t.Errorf("B's files.list shows A's upload")
		}
		if names := fileNames(ctx, t, clients[alice]); !slices.Contains(names, f.File.Name) {
			t.Errorf("A's files.list lacks A's upload %s: %v", f.File.Name, names)
		}
	})

	t.Run("Shared", func(t *testing.T) {
		name, uri := uploadDirect(t, up.URL, pool[0], "made on the upstream directly")
		if names := fileNames(ctx, t, clients[sharer]); !slices.Contains(names, name) {
			t.Errorf("the shared key's files.list lacks the file made outside the gateway: %v", names)
		}
		r := g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(sharer), fileBody(uri))
		if r.Status != 200 {
			t.Errorf("the shared key's use of a file made outside the gateway: %d %s", r.Status, r.Body)
		}
		outside := "You do not have permission to access the File " + strings.TrimPrefix(name, "files/") + " or it may not exist."
		for who, k := range map[string]string{"A": alice, "B": bob, "a plain access_keys key": accessKey} {
			if names := fileNames(ctx, t, clients[k]); slices.Contains(names, name) {
				t.Errorf("%s (not shared) lists the file made outside the gateway", who)
			}
			wantNotYours(t, g, calls, who+"'s use of a file made outside the gateway", http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(k), fileBody(uri), outside)
			wantNotYours(t, g, calls, who+"'s files.get of a file made outside the gateway", http.MethodGet, "/v1beta/"+name, apiKeyHeader(k), "", outside)
		}
	})

	t.Run("CachedContents", func(t *testing.T) {
		r := g.mustSend(t, http.MethodPost, "/v1beta/cachedContents", apiKeyHeader(alice),
			`{"model":"models/`+modelFlash+`","contents":[{"role":"user","parts":[{"text":"a long shared context"}]}],"ttl":"600s"}`)
		var c struct{ Name string }
		if r.Status != 200 || json.Unmarshal(r.Body, &c) != nil || !strings.HasPrefix(c.Name, "cachedContents/") {
			t.Fatalf("A's cache: %d %s", r.Status, r.Body)
		}
		// cachedContents.list (merged over the pool's keys like files.list) shows only one's own.
		listed := func(key string) bool {
			t.Helper()
			r := g.mustSend(t, http.MethodGet, "/v1beta/cachedContents", apiKeyHeader(key), "")
			var l struct {
				CachedContents []struct{ Name string } `json:"cachedContents"`
			}
			if r.Status != 200 || json.Unmarshal(r.Body, &l) != nil {
				t.Fatalf("cachedContents.list: %d %s", r.Status, r.Body)
			}
			return slices.ContainsFunc(l.CachedContents, func(e struct{ Name string }) bool { return e.Name == c.Name })
		}
		if !listed(alice) {
			t.Errorf("A's cachedContents.list lacks A's cache")
		}
		if listed(bob) || listed(sharer) {
			t.Errorf("another access key's cachedContents.list shows A's cache")
		}
		for who, k := range map[string]string{"B": bob, "the shared key": sharer} {
			h := apiKeyHeader(k)
			wantNotYours(t, g, calls, who+"'s get of A's cache", http.MethodGet, "/v1beta/"+c.Name, h, "", "")
			wantNotYours(t, g, calls, who+"'s delete of A's cache", http.MethodDelete, "/v1beta/"+c.Name, h, "", "")
			wantNotYours(t, g, calls, who+"'s generateContent with A's cache", http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", h,
				`{"cachedContent":"`+c.Name+`","contents":[{"role":"user","parts":[{"text":"hello"}]}]}`, "")
		}
		if r := g.mustSend(t, http.MethodGet, "/v1beta/"+c.Name, apiKeyHeader(alice), ""); r.Status != 200 {
			t.Errorf("A's get of its cache after B's delete: %d %s", r.Status, r.Body)
		}
		if r := g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(alice),
			`{"cachedContent":"`+c.Name+`","contents":[{"role":"user","parts":[{"text":"hello"}]}]}`); r.Status != 200 {
			t.Errorf("A's use of its cache: %d %s", r.Status, r.Body)
		}
	})

	t.Run("Batches", func(t *testing.T) {
		r := g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelFlash+":batchGenerateContent", apiKeyHeader(alice),
			`{"batch":{"displayName":"alice's batch","inputConfig":{"requests":{"requests":[{"request":{"contents":[{"parts":[{"text":"hello"}]}]}}]}}}}`)
		var b struct{ Name string }
		if r.Status != 200 || json.Unmarshal(r.Body, &b) != nil || !strings.HasPrefix(b.Name, "batches/") {
			t.Fatalf("A's batch: %d %s", r.Status, r.Body)
		}
		for who, k := range map[string]string{"B": bob, "the shared key": sharer} {
			h := apiKeyHeader(k)
			wantNotYours(t, g, calls, who+"'s get of A's batch", http.MethodGet, "/v1beta/"+b.Name, h, "", "")
			wantNotYours(t, g, calls, who+"'s cancel of A's batch", http.MethodPost, "/v1beta/"+b.Name+":cancel", h, "", "")
			wantNotYours(t, g, calls, who+"'s delete of A's batch", http.MethodDelete, "/v1beta/"+b.Name, h, "", "")
		}
		r = g.mustSend(t, http.MethodGet, "/v1beta/"+b.Name, apiKeyHeader(alice), "")
		if r.Status != 200 || strings.Contains(string(r.Body), "CANCELLED") {
			t.Errorf("A's batch after B's attempts: %d %s", r.Status, r.Body)
		}
	})
	assertCleanUpstream(t, viaGateway(fake.Calls()), pool, alice, bob, sharer, accessKey)
}
