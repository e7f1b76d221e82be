package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"
)

// exampleEnv is what the example Caddyfiles read with {$VAR} (the {env.VAR} secrets are read
// only at start, so adapting needs none of them).
var exampleEnv = map[string]string{
	"DOMAIN":     "gemini.example.com",
	"ACME_EMAIL": "ops@example.com",
}

// exampleCaddyfiles returns every example Caddyfile of the repository.
func exampleCaddyfiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "examples", "*Caddyfile*"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "Caddyfile.example"))
	if len(files) < 3 {
		t.Fatalf("found only %v", files)
	}
	return files
}

// TestExampleCaddyfilesAdapt adapts and validates every example Caddyfile with the built caddy:
// `caddy adapt --validate` provisions every module, ours included, and must open no database.
func TestExampleCaddyfilesAdapt(t *testing.T) {
	for _, file := range exampleCaddyfiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			abs, err := filepath.Abs(file)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			cmd := execCaddy(dir, exampleEnv, "adapt", "--validate", "--config", abs, "--adapter", "caddyfile")
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("caddy adapt --validate: %v\n%s", err, stderr.String())
			}
			var cfg struct {
				Apps map[string]json.RawMessage `json:"apps"`
			}
			if err := json.Unmarshal([]byte(stdout.String()), &cfg); err != nil {
				t.Fatalf("adapted config is not JSON: %v\n%s", err, stdout.String())
			}
			if _, ok := cfg.Apps["gemini_synapse"]; !ok {
				t.Errorf("no gemini_synapse app in the adapted config")
			}
			if !strings.Contains(stdout.String(), `"handler":"gemini_synapse"`) {
				t.Errorf("no gemini_synapse handler in the adapted config")
			}
			if filepath.Base(filepath.Dir(file)) == "examples" {
				// The public examples keep access keys out of the access log.
				for _, field := range []string{`request\u003euri`, `request\u003eheaders\u003eX-Goog-Api-Key`, `request\u003eheaders\u003eAuthorization`,
					`"parameter":"upload_id"`, `(key|upload_id)=`} {
					if !strings.Contains(stdout.String(), field) {
						t.Errorf("the access log filter has no rule for %s", field)
					}
				}
			}
			// Validation opened nothing: no database (nor any other SQLite file) anywhere.
			_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && (strings.HasSuffix(p, ".db") || strings.Contains(p, "gemini_synapse")) {
					t.Errorf("adapt --validate created %s", p)
				}
				return nil
			})
		})
	}
}

// execCaddy prepares a caddy command in dir with the test's data dirs and extra variables.
func execCaddy(dir string, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.Command(caddyBin, args...)
	cmd.Dir = dir
	cmd.Env = caddyEnv(dir)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// uploadKeyEcho makes the upstream's resumable-upload URL carry a key= parameter, as Google's
// does when the upload was started with ?key=, to check that neither the client nor the access
// log gets it back.
type uploadKeyEcho struct {
	http.ResponseWriter
	key string
}

func (w uploadKeyEcho) WriteHeader(code int) {
	h := w.Header()
	if u := h.Get("X-Goog-Upload-Url"); u != "" {
		h.Set("X-Goog-Upload-Url", u+"&key="+w.key)
	}
	w.ResponseWriter.WriteHeader(code)
}

// loopbackTransport dials 127.0.0.1 whatever the URL's host (localhost), with HTTP/2 on and
// the given roots trusted (nil: the system's).
func loopbackTransport(roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", port))
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}
}

// TestPublicHTTPSWithLocalCA runs examples/Caddyfile.local-tls as it is: caddy issues a
// certificate for localhost from its local CA, the test trusts that CA's root (read from
// caddy's storage), and Gemini calls go through HTTPS and HTTP/2, with the Go SDK too. HTTP is
// redirected to HTTPS, and the access log keeps no access key.
func TestPublicHTTPSWithLocalCA(t *testing.T) {
	fake, _ := newFake(t)
	fake.SetStream(3, 0)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/upload/") {
			w = uploadKeyEcho{w, accessKey}
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)

	example, err := filepath.Abs(filepath.Join("..", "examples", "Caddyfile.local-tls"))
	if err != nil {
		t.Fatal(err)
	}
	pool := poolKeys(2)
	dir := t.TempDir()
	g := &gateway{
		t:          t,
		dir:        dir,
		configPath: example,
		cfg:        gatewayConfig{PoolKeys: pool},
		adminPort:  freePort(t),
		sitePort:   freePort(t),
		output:     &lockedBuffer{},
		rec:        &recorder{},
		secretKs:   pool,
		Client:     &http.Client{},
	}
	httpPort := freePort(t)
	g.URL = fmt.Sprintf("https://localhost:%d", g.sitePort)
	// caddy inherits these (startProcess adds the temp data dirs).
	for k, v := range map[string]string{
		"DOMAIN":          "localhost",
		"HTTP_PORT":       fmt.Sprint(httpPort),
		"HTTPS_PORT":      fmt.Sprint(g.sitePort),
		"BIND_ADDRESS":    "127.0.0.1",
		"CADDY_ADMIN":     fmt.Sprintf("127.0.0.1:%d", g.adminPort),
		"GEMINI_UPSTREAM": up.URL,
		"ADMIN_KEY":       adminKey,
		"ACCESS_KEYS":     accessKey,
		"GOOGLE_API_KEYS": strings.Join(pool, ","),
	} {
		t.Setenv(k, v)
	}
	t.Cleanup(g.cleanup)
	g.startProcess()

	// Wait for the started config and the local CA's root certificate.
	rootPath := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	var roots *x509.CertPool
	ok := eventually(readyTimeout, func() bool {
		select {
		case <-g.exited:
			g.cmd = nil
			t.Fatalf("caddy exited: %v\n%s", g.waitErr, g.Output())
		default:
		}
		if !strings.Contains(g.Output(), "serving initial configuration") {
			return false
		}
		pem, err := os.ReadFile(rootPath)
		if err != nil {
			return false
		}
		roots = x509.NewCertPool()
		return roots.AppendCertsFromPEM(pem)
	})
	if !ok {
		t.Fatalf("caddy not ready, or no root certificate at %s\n%s", rootPath, g.Output())
	}
	tr := loopbackTransport(roots)
	t.Cleanup(tr.CloseIdleConnections)
	g.Client = &http.Client{Transport: &recordingTransport{base: tr, rec: g.rec}}

	// A raw call: HTTPS, HTTP/2, a certificate for localhost from the local CA.
	var resp *http.Response
	if !eventually(readyTimeout, func() bool {
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/v1beta/models/"+modelFlash+":generateContent", strings.NewReader(genBody))
		req.Header.Set("Authorization", "Bearer "+accessKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err = g.Client.Do(req)
		return err == nil
	}) {
		t.Fatalf("HTTPS call: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantOK(t, response{Status: resp.StatusCode, Header: resp.Header, Body: body})
	if resp.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2", resp.Proto)
	}
	if resp.TLS == nil || len(resp.TLS.VerifiedChains) == 0 {
		t.Fatal("no verified TLS chain")
	}
	leaf := resp.TLS.PeerCertificates[0]
	if err := leaf.VerifyHostname("localhost"); err != nil {
		t.Errorf("certificate: %v", err)
	}
	chain := resp.TLS.VerifiedChains[0]
	if root := chain[len(chain)-1]; !strings.Contains(root.Subject.CommonName, "Caddy Local Authority") {
		t.Errorf("chain ends at %q, want Caddy's local CA", root.Subject.CommonName)
	}

	// A client that does not trust the local CA is refused by its own TLS check.
	untrusted := &http.Client{Transport: loopbackTransport(nil)}
	_, err = untrusted.Get(g.URL + "/v1beta/models")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("a client without the local root: %v, want an unknown authority error", err)
	}

	// HTTP is redirected to HTTPS. (Caddy leaves out the https_port it was given: it assumes
	// that port is reached as 443 from outside, through a port forward.)
	plain := &http.Client{Transport: loopbackTransport(nil),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := plain.Get(fmt.Sprintf("http://localhost:%d/v1beta/models", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if want := "https://localhost/v1beta/models"; r.StatusCode != http.StatusPermanentRedirect || r.Header.Get("Location") != want {
		t.Errorf("http: %d to %q, want 308 to %q", r.StatusCode, r.Header.Get("Location"), want)
	}

	// The Go SDK over HTTPS.
	client, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey: accessKey, Backend: genai.BackendGeminiAPI, HTTPClient: g.Client,
		HTTPOptions: genai.HTTPOptions{BaseURL: g.URL + "/"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gen, err := client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if gen.Text() != "echo: hello" {
		t.Errorf("SDK text = %q", gen.Text())
	}
	chunks := 0
	for _, err := range client.Models.GenerateContentStream(ctx, modelFlash, genai.Text("hello"), nil) {
		if err != nil {
			t.Fatalf("stream after %d chunks: %v", chunks, err)
		}
		chunks++
	}
	if chunks != 3 {
		t.Errorf("stream: %d chunks, want 3", chunks)
	}

	// The key in the query string, and a resumable upload whose URL carries a key.
	if r := g.do(http.MethodGet, "/v1beta/models/"+modelFlash+"?key="+accessKey+"&pageSize=5", nil, ""); r.Status != 200 {
		t.Errorf("?key=: %d %s", r.Status, r.Body)
	}
	upload := g.do(http.MethodPost, "/upload/v1beta/files", http.Header{
		"X-Goog-Api-Key":                      {accessKey},
		"X-Goog-Upload-Protocol":              {"resumable"},
		"X-Goog-Upload-Command":               {"start"},
		"X-Goog-Upload-Header-Content-Length": {"5"},
	}, `{"file":{"display_name":"x"}}`)
	// The gateway hands back its own upload URL, without the key= the upstream's carried.
	uploadURL := upload.Header.Get("X-Goog-Upload-Url")
	if upload.Status != 200 || uploadURL == "" || strings.Contains(uploadURL, "key=") {
		t.Fatalf("upload start: %d, upload URL %q", upload.Status, uploadURL)
	}
	// The chunk goes to the upload URL with no key header: its session id is the credential.
	pu, err := url.Parse(uploadURL)
	if err != nil || !strings.HasPrefix(uploadURL, g.URL+"/upload/") {
		t.Fatalf("upload URL %q: %v", uploadURL, err)
	}
	uploadID := pu.Query().Get("upload_id")
	if len(uploadID) < 8 {
		t.Fatalf("upload URL %q has no session id", uploadURL)
	}
	chunk := g.do(http.MethodPost, strings.TrimPrefix(uploadURL, g.URL), http.Header{
		"X-Goog-Upload-Command": {"upload, finalize"},
		"X-Goog-Upload-Offset":  {"0"},
	}, "hello")
	if chunk.Status != 200 || chunk.Header.Get("X-Goog-Upload-Status") != "final" {
		t.Fatalf("upload chunk: %d %s", chunk.Status, chunk.Body)
	}

	// The access log has every request, and no access key.
	g.Stop()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(g.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `"logger":"http.log.access`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("access log line is not JSON: %v: %s", err, line)
		}
		lines = append(lines, m)
		if strings.Contains(line, accessKey) {
			t.Errorf("the access log holds the access key: %s", strings.ReplaceAll(line, accessKey, mask(accessKey)))
		}
		if strings.Contains(line, uploadID) {
			t.Errorf("the access log holds the upload session id: %s", strings.ReplaceAll(line, uploadID, mask(uploadID)))
		}
	}
	// raw generate, the untrusted client never got through, the SDK's 2 calls, ?key=, upload start
	// and chunk (the redirect is served by the HTTP redirect server, which is not logged).
	if len(lines) < 6 {
		t.Fatalf("%d access log lines, want at least 6:\n%s", len(lines), g.Output())
	}
	var sawQuery, sawUpload, sawChunk bool
	for _, m := range lines {
		req, _ := m["request"].(map[string]any)
		uri, _ := req["uri"].(string)
		if strings.Contains(uri, "pageSize=5") {
			sawQuery = true
			if strings.Contains(uri, "key=") {
				t.Errorf("logged uri keeps the key parameter: %s", uri)
			}
		}
		if uri == "/upload/v1beta/files" { // the start
			sawUpload = true
			hdr, _ := m["resp_headers"].(map[string]any)
			v := fmt.Sprint(hdr["X-Goog-Upload-Url"])
			if !strings.Contains(v, "upload_id=REDACTED") {
				t.Errorf("logged upload URL is not masked: %s", v)
			}
		}
		if strings.HasPrefix(uri, "/upload/v1beta/files?") {
			sawChunk = true // the chunk; its session id is checked for above, in every line
		}
		if h, _ := req["headers"].(map[string]any); h != nil {
			for _, name := range []string{"X-Goog-Api-Key", "Authorization"} {
				if _, ok := h[name]; ok {
					t.Errorf("access log keeps the %s header", name)
				}
			}
		}
	}
	if !sawQuery || !sawUpload || !sawChunk {
		t.Errorf("access log misses requests: ?key= %v, upload %v, chunk %v", sawQuery, sawUpload, sawChunk)
	}
}
