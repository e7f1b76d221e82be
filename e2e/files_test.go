package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// generateCallKeys returns the keys of the upstream generateContent calls after the first n.
func generateCallKeys(fake *fakegemini.Server, n int) []string {
	var out []string
	for _, c := range fake.Calls()[n:] {
		if strings.Contains(c.Path, ":generateContent") || strings.Contains(c.Path, ":streamGenerateContent") {
			out = append(out, c.Key)
		}
	}
	return out
}

// The official Go SDK uploads through the gateway and then uses the file again and again: every
// use must land on the key that owns the file, with a pool of several keys.
func TestFilesGoSDKUploadThenGenerate(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	client := newSDKClient(t, g, accessKey)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 20 MiB: three chunks of the SDK's 8 MiB.
	data := bytes.Repeat([]byte("synapse file content\n"), 20<<20/21)
	var files []*genai.File
	for i := range 2 {
		f, err := client.Files.Upload(ctx, bytes.NewReader(data), &genai.UploadFileConfig{MIMEType: "text/plain", DisplayName: fmt.Sprintf("doc %d", i)})
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		if f.SizeBytes == nil || *f.SizeBytes != int64(len(data)) || f.URI == "" {
			t.Fatalf("upload %d: file %+v", i, f)
		}
		files = append(files, f)
	}
	owner := fake.FileOwner(files[0].Name)
	if owner == "" || owner == fake.FileOwner(files[1].Name) {
		t.Fatalf("the two uploads should be on two keys (round robin)")
	}
	for _, c := range fake.Calls() {
		if strings.HasPrefix(c.Path, "/upload/") && c.Key != owner && c.Key != fake.FileOwner(files[1].Name) {
			t.Errorf("an upload call went with a third key")
		}
	}
	for i := range 5 {
		n := len(fake.Calls())
		resp, err := client.Models.GenerateContent(ctx, modelFlash, []*genai.Content{{Role: "user", Parts: []*genai.Part{
			genai.NewPartFromURI(files[0].URI, files[0].MIMEType), genai.NewPartFromText("hello"),
		}}}, nil)
		if err != nil {
			t.Fatalf("generate %d: %v", i, err)
		}
		if !strings.Contains(resp.Text(), "hello") {
			t.Errorf("generate %d: %q", i, resp.Text())
		}
		if keys := generateCallKeys(fake, n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d did not go (only) to the owning key", i)
		}
	}
	// Two files of two keys in one request: a clear 400.
	n := len(fake.Calls())
	_, err := client.Models.GenerateContent(ctx, modelFlash, []*genai.Content{{Role: "user", Parts: []*genai.Part{
		genai.NewPartFromURI(files[0].URI, "text/plain"), genai.NewPartFromURI(files[1].URI, "text/plain"), genai.NewPartFromText("hello"),
	}}}, nil)
	var apiErr genai.APIError
	if !asAPIError(err, &apiErr) || apiErr.Code != 400 || !strings.Contains(apiErr.Message, "different upstream projects") {
		t.Errorf("two owners: %v", err)
	}
	if len(generateCallKeys(fake, n)) != 0 {
		t.Errorf("the two-owner request reached the upstream")
	}

	// The listing shows both files (they live under two keys); delete goes to each owner.
	seen := map[string]bool{}
	for f, err := range client.Files.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		seen[f.Name] = true
	}
	if !seen[files[0].Name] || !seen[files[1].Name] {
		t.Errorf("listing: %v, want both files", seen)
	}
	for _, f := range files {
		if _, err := client.Files.Delete(ctx, f.Name, nil); err != nil {
			t.Errorf("delete %s: %v", f.Name, err)
		}
		if fake.FileOwner(f.Name) != "" {
			t.Errorf("%s still exists upstream", f.Name)
		}
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}

func asAPIError(err error, target *genai.APIError) bool {
	if err == nil {
		return false
	}
	if e, ok := err.(genai.APIError); ok {
		*target = e
		return true
	}
	if e, ok := err.(*genai.APIError); ok {
		*target = *e
		return true
	}
	return false
}

// startUpload runs a resumable start the way the cookbook's curl recipe does (key in the query).
func startUpload(t *testing.T, g *gateway, size int64, mime string) string {
	t.Helper()
	r := g.do(http.MethodPost, "/upload/v1beta/files?key="+url.QueryEscape(accessKey), http.Header{
		"X-Goog-Upload-Protocol":              {"resumable"},
		"X-Goog-Upload-Command":               {"start"},
		"X-Goog-Upload-Header-Content-Length": {strconv.FormatInt(size, 10)},
		"X-Goog-Upload-Header-Content-Type":   {mime},
	}, `{"file": {"display_name": "curl upload"}}`)
	u := r.Header.Get("X-Goog-Upload-Url")
	if r.Status != 200 || r.Header.Get("X-Goog-Upload-Status") != "active" || !strings.HasPrefix(u, g.URL+"/upload/v1beta/files?") ||
		strings.Contains(u, "key=") || r.Header.Get("X-Goog-Upload-Control-Url") != u {
		t.Fatalf("start: %d status %q url %q: %s", r.Status, r.Header.Get("X-Goog-Upload-Status"), u, r.Body)
	}
	return u
}

// The cookbook's curl recipe: chunks carry no key at all, then the file is used with ?key=.
func TestFilesCurlRecipeWithoutKeyOnChunks(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	data := strings.Repeat("a picture of a cat ", 1000)
	u := startUpload(t, g, int64(len(data)), "text/plain")

	// query before any data: 0 received.
	req, _ := http.NewRequest(http.MethodPost, u, nil)
	req.Header.Set("X-Goog-Upload-Command", "query")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Goog-Upload-Size-Received") != "0" || resp.Header.Get("X-Goog-Upload-Status") != "active" {
		t.Fatalf("query: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ = http.NewRequest(http.MethodPost, u, strings.NewReader(data))
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err = g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var f struct {
		File struct {
			Name, URI string
		} `json:"file"`
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Goog-Upload-Status") != "final" || json.Unmarshal(body, &f) != nil || f.File.URI == "" {
		t.Fatalf("upload, finalize: %d %q %s", resp.StatusCode, resp.Header.Get("X-Goog-Upload-Status"), body)
	}
	owner := fake.FileOwner(f.File.Name)
	for i := range 4 {
		n := len(fake.Calls())
		r := g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent?key="+url.QueryEscape(accessKey), nil,
			`{"contents":[{"parts":[{"text":"hello"},{"file_data":{"mime_type":"text/plain","file_uri":"`+f.File.URI+`"}}]}]}`)
		if r.Status != 200 {
			t.Fatalf("generate %d: %d %s", i, r.Status, r.Body)
		}
		if keys := generateCallKeys(fake, n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d not on the owning key", i)
		}
	}

	// A session id the gateway never handed out is refused, and nothing goes upstream.
	n := len(fake.Calls())
	req, _ = http.NewRequest(http.MethodPost, g.URL+"/upload/v1beta/files?upload_id=ABgVH8forged-session&upload_protocol=resumable", strings.NewReader("x"))
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err = g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	wantEnvelope(t, response{Status: resp.StatusCode, Header: resp.Header, Body: body}, 404, "NOT_FOUND")
	if len(fake.Calls()) != n {
		t.Errorf("a forged session reached the upstream")
	}

	// The owning key dies: the first use of its file fails (the upstream rejects the key, which
	// gets disabled); later uses say which key owns the file and why it cannot be used, and no
	// other key is tried.
	fake.SetKey(owner, fakegemini.Invalid)
	gen := func() response {
		return g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey),
			`{"contents":[{"parts":[{"text":"hello"},{"file_data":{"file_uri":"`+f.File.URI+`"}}]}]}`)
	}
	n = len(fake.Calls())
	gen()
	r := gen()
	env := wantEnvelope(t, r, 503, "UNAVAILABLE")
	if !strings.Contains(env.Error.Message, f.File.Name) || !strings.Contains(env.Error.Message, "disabled") {
		t.Errorf("owner disabled: %s", r.Body)
	}
	if keys := generateCallKeys(fake, n); len(keys) != 1 || keys[0] != owner {
		t.Errorf("with the owner dead, %d upstream calls were made (want the one that found it dead)", len(keys))
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}

// rss reads a process's current and peak resident set size from /proc, in bytes.
func rss(t *testing.T, pid int) (cur, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("cannot read the process's memory figures: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			cur = n << 10
		case "VmHWM:":
			peak = n << 10
		}
	}
	return cur, peak
}

// patternReader yields size bytes of a fixed pattern without holding them.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(b))
	if n > p.left {
		n = p.left
	}
	for i := range b[:n] {
		b[i] = byte('a' + i%26)
	}
	p.left -= n
	return int(n), nil
}

// A 200 MiB upload in one request (as curl sends a whole file) streams through the gateway:
// its peak memory grows by far less than the file.
func TestFilesLargeUploadStreamsWithFlatMemory(t *testing.T) {
	const size = 200 << 20
	fake, up := newFake(t)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: poolKeys(2), AccessKeys: []string{accessKey}})
	// Warm up (the first requests allocate the pools and buffers of the process).
	wantOK(t, g.generate(modelFlash, accessKey))
	u := startUpload(t, g, size, "application/octet-stream")
	_, peakBefore := rss(t, g.cmd.Process.Pid)

	req, _ := http.NewRequest(http.MethodPost, u, &patternReader{left: size})
	req.ContentLength = size
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 200 || resp.Header.Get("X-Goog-Upload-Status") != "final" || !strings.Contains(string(body), `"sizeBytes": "`+strconv.Itoa(size)+`"`) {
		t.Fatalf("upload: %d %q %s", resp.StatusCode, resp.Header.Get("X-Goog-Upload-Status"), body)
	}
	cur, peakAfter := rss(t, g.cmd.Process.Pid)
	growth := peakAfter - peakBefore
	t.Logf("200 MiB upload in %v: caddy peak RSS %.1f MiB before, %.1f MiB after (growth %.1f MiB), current %.1f MiB",
		took.Round(time.Millisecond), float64(peakBefore)/(1<<20), float64(peakAfter)/(1<<20), float64(growth)/(1<<20), float64(cur)/(1<<20))
	// Generous: buffering the file would add 200 MiB or more.
	if growth > 48<<20 {
		t.Errorf("caddy's peak RSS grew by %.1f MiB during a 200 MiB upload: the body is being buffered", float64(growth)/(1<<20))
	}
	var got int64
	for _, c := range fake.Calls() {
		if strings.Contains(c.RawQuery, "upload_id") {
			got += c.BodySize
		}
	}
	if got != size {
		t.Errorf("the upstream received %d bytes, want %d", got, size)
	}
}

// Mounted under a path prefix (handle_path strips it before the handler), the upload URL must
// keep the prefix, or clients that follow it (or only swap scheme and host, as the SDKs do)
// would miss the gateway.
func TestFilesUploadUnderPathPrefix(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Site: "handle_path /gemini/* {\n\t\tgemini_synapse\n\t}"})
	r := g.do(http.MethodPost, "/gemini/upload/v1beta/files", http.Header{
		"X-Goog-Api-Key":         {accessKey},
		"X-Goog-Upload-Protocol": {"resumable"},
		"X-Goog-Upload-Command":  {"start"},
	}, `{"file":{}}`)
	u := r.Header.Get("X-Goog-Upload-Url")
	if r.Status != 200 || !strings.HasPrefix(u, g.URL+"/gemini/upload/v1beta/files?upload_id=") {
		t.Fatalf("start under /gemini: %d upload URL %q: %s", r.Status, u, r.Body)
	}
	client, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey: accessKey, Backend: genai.BackendGeminiAPI, HTTPClient: g.Client,
		HTTPOptions: genai.HTTPOptions{BaseURL: g.URL + "/gemini/"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := client.Files.Upload(ctx, strings.NewReader("prefixed"), &genai.UploadFileConfig{MIMEType: "text/plain"})
	if err != nil {
		t.Fatalf("SDK upload under /gemini: %v", err)
	}
	if fake.FileOwner(f.Name) == "" {
		t.Fatalf("no file %s upstream", f.Name)
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}

// Upload sessions and file owners are in the database: a restart between the start and the
// chunks, and between the upload and its use, changes nothing.
func TestFilesSurviveRestart(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	u := startUpload(t, g, 5, "text/plain")
	g.Restart()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader("hello"))
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var f struct {
		File struct{ Name, URI string } `json:"file"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &f) != nil || f.File.Name == "" {
		t.Fatalf("chunk after restart: %d %s", resp.StatusCode, body)
	}
	owner := fake.FileOwner(f.File.Name)
	g.Restart()
	for i := range 3 {
		n := len(fake.Calls())
		r := g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey),
			`{"contents":[{"parts":[{"text":"hello"},{"fileData":{"fileUri":"`+f.File.URI+`"}}]}]}`)
		if r.Status != 200 {
			t.Fatalf("generate %d after restart: %d %s", i, r.Status, r.Body)
		}
		if keys := generateCallKeys(fake, n); len(keys) != 1 || keys[0] != owner {
			t.Fatalf("generate %d after restart not on the owning key", i)
		}
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}
