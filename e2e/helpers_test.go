package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// Models used by the tests; the fake knows them.
const (
	modelFlash = "gemini-2.5-flash"
	modelPro   = "gemini-2.5-pro"
	modelEmbed = "gemini-embedding-001"
)

// Credentials used by the tests. Pool keys are distinctive so that any leak is easy to spot.
const (
	adminKey     = "e2e-admin-key-0123456789abcdef0123"
	accessKey    = "e2e-access-key-alpha-0123456789abcdef"
	accessKey2   = "e2e-access-key-bravo-0123456789abcdef"
	wrongKey     = "e2e-access-key-wrong-0123456789abcdef"
	genBody      = `{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}`
	defaultSite  = "gemini_synapse_admin /admin\n\tgemini_synapse"
	readyTimeout = 30 * time.Second
)

// poolKeys returns n distinctive upstream keys, e.g. "AIzaSyTEST-pool-key-0001-aaaaaaaaaaaaaaa".
func poolKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("AIzaSyTEST-pool-key-%04d-%s", i+1, strings.Repeat(string(rune('a'+i)), 15))
	}
	return keys
}

// mask shortens a key for test messages so that failures never print a full key.
func mask(key string) string {
	if len(key) <= 8 {
		return "***"
	}
	return key[:4] + "…" + key[len(key)-4:]
}

// newFake starts the fake Gemini upstream on loopback. Register it before the gateway so that
// the gateway is stopped first (cleanups run last-in first-out).
func newFake(t *testing.T) (*fakegemini.Server, *httptest.Server) {
	t.Helper()
	fake := fakegemini.New()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// gatewayConfig describes one gateway Caddyfile.
type gatewayConfig struct {
	Upstream   string
	PoolKeys   []string
	AccessKeys []string
	// Options are extra lines for the global gemini_synapse block, e.g. "max_failures 2".
	Options []string
	// Site is the body of the site block; defaultSite when empty.
	Site string
	// Database is the SQLite path; startGateway puts it in the test's temp dir when empty.
	Database string
}

// caddyfile renders the config with the given admin and site ports.
func (c gatewayConfig) caddyfile(adminPort, sitePort int) string {
	site := c.Site
	if site == "" {
		site = defaultSite
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tgemini_synapse {\n", adminPort)
	fmt.Fprintf(&b, "\t\tdatabase %s\n", c.Database)
	fmt.Fprintf(&b, "\t\tadmin_key %s\n", adminKey)
	if len(c.AccessKeys) > 0 {
		fmt.Fprintf(&b, "\t\taccess_keys %s\n", strings.Join(c.AccessKeys, " "))
	}
	if len(c.PoolKeys) > 0 {
		fmt.Fprintf(&b, "\t\tgoogle_api_keys %s\n", strings.Join(c.PoolKeys, " "))
	}
	if c.Upstream != "" {
		fmt.Fprintf(&b, "\t\tupstream %s\n", c.Upstream)
	}
	for _, o := range c.Options {
		fmt.Fprintf(&b, "\t\t%s\n", o)
	}
	fmt.Fprintf(&b, "\t}\n}\n\nhttp://127.0.0.1:%d {\n\t%s\n}\n", sitePort, site)
	return b.String()
}

// lockedBuffer is a bytes.Buffer safe for a writer goroutine and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// gateway is one caddy process (restartable) serving the plugin.
type gateway struct {
	t          *testing.T
	dir        string
	configPath string
	cfg        gatewayConfig
	adminPort  int
	sitePort   int
	// URL is the site's base URL, e.g. http://127.0.0.1:12345.
	URL string
	// Client sends requests to the gateway and records every response for the secret check.
	Client *http.Client

	output   *lockedBuffer // caddy's stdout and stderr over all runs
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
	rec      *recorder
	secretKs []string
	runs     int // caddy processes started so far
}

// startGateway writes cfg as a Caddyfile into a temp dir, runs caddy on it and waits until the
// site answers. The process is stopped in t.Cleanup, and the cleanup fails the test if caddy's
// output shows a panic or contains a full pool key, or if any recorded response does.
func startGateway(t *testing.T, cfg gatewayConfig) *gateway {
	t.Helper()
	g := newGateway(t, cfg)
	g.Start()
	return g
}

// newGateway prepares a gateway (temp dir, ports, Caddyfile, cleanup) without starting caddy.
func newGateway(t *testing.T, cfg gatewayConfig) *gateway {
	t.Helper()
	dir := t.TempDir()
	if cfg.Database == "" {
		cfg.Database = filepath.Join(dir, "synapse.db")
	}
	g := &gateway{
		t:         t,
		dir:       dir,
		cfg:       cfg,
		adminPort: freePort(t),
		sitePort:  freePort(t),
		output:    &lockedBuffer{},
		rec:       &recorder{},
	}
	g.configPath = filepath.Join(dir, "Caddyfile")
	g.URL = fmt.Sprintf("http://127.0.0.1:%d", g.sitePort)
	g.Client = &http.Client{Transport: &recordingTransport{base: http.DefaultTransport.(*http.Transport).Clone(), rec: g.rec}}
	g.secretKs = append(g.secretKs, cfg.PoolKeys...)
	g.writeConfig(cfg)
	t.Cleanup(g.cleanup)
	return g
}

func (g *gateway) writeConfig(cfg gatewayConfig) {
	g.t.Helper()
	cfg.Database = g.cfg.Database
	g.cfg = cfg
	if err := os.WriteFile(g.configPath, []byte(cfg.caddyfile(g.adminPort, g.sitePort)), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// caddyEnv returns the environment for caddy commands: data, config and home in the temp dir.
func caddyEnv(dir string) []string {
	env := []string{}
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "HOME="), strings.HasPrefix(kv, "XDG_DATA_HOME="), strings.HasPrefix(kv, "XDG_CONFIG_HOME="):
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+filepath.Join(dir, "home"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
}

// Start runs caddy on the current Caddyfile and waits until it is ready. If the first start
// finds a port taken (another process bound it between freePort and caddy), it moves to new
// ports and tries again, a few times.
func (g *gateway) Start() {
	g.t.Helper()
	for try := 1; ; try++ {
		g.startProcess()
		if g.waitReady(g.runs == 1 && try < 4) {
			return
		}
		g.t.Logf("a port was taken before caddy bound it; retrying on other ports")
		g.runs = 0
		g.adminPort, g.sitePort = freePort(g.t), freePort(g.t)
		g.URL = fmt.Sprintf("http://127.0.0.1:%d", g.sitePort)
		g.writeConfig(g.cfg)
	}
}

// startProcess runs caddy on the current Caddyfile without waiting for it.
func (g *gateway) startProcess() {
	g.t.Helper()
	if g.cmd != nil {
		g.t.Fatal("caddy already running")
	}
	g.runs++
	fmt.Fprintf(g.output, "=== caddy run (%s)\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(caddyBin, "run", "--config", g.configPath, "--adapter", "caddyfile")
	cmd.Dir = g.dir
	cmd.Env = caddyEnv(g.dir)
	cmd.Stdout = g.output
	cmd.Stderr = g.output
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.cmd = cmd
	g.exited = make(chan struct{})
	go func() {
		g.waitErr = cmd.Wait()
		close(g.exited)
	}()
}

// waitReady waits until caddy has started every app and the site port answers. When
// bindRetry is set and caddy exits because a port is taken, it reports false instead of
// failing the test.
func (g *gateway) waitReady(bindRetry bool) bool {
	g.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	probe := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-g.exited:
			g.cmd = nil
			if bindRetry && strings.Contains(g.output.String(), "address already in use") {
				return false
			}
			g.t.Fatalf("caddy exited before it was ready: %v\n%s", g.waitErr, g.output.String())
		default:
		}
		// Caddy logs "serving initial configuration" once every app has started; the site
		// port alone may answer before the gemini_synapse app is ready.
		started := strings.Count(g.Output(), "serving initial configuration") >= g.runs
		resp, err := probe.Get(g.URL + "/")
		if err == nil {
			resp.Body.Close()
			if started {
				return true
			}
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("caddy not ready after %s: %v\n%s", readyTimeout, err, g.output.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGINT to caddy and waits for it to exit (SIGKILL after 20s, which fails the test).
func (g *gateway) Stop() {
	g.t.Helper()
	if g.cmd == nil {
		return
	}
	g.Client.CloseIdleConnections()
	_ = g.cmd.Process.Signal(os.Interrupt)
	select {
	case <-g.exited:
	case <-time.After(20 * time.Second):
		_ = g.cmd.Process.Signal(syscall.SIGKILL)
		<-g.exited
		g.t.Errorf("caddy did not stop within 20s of SIGINT")
	}
	g.cmd = nil
}

// Restart stops caddy and starts it again with the same Caddyfile and database.
func (g *gateway) Restart() {
	g.t.Helper()
	g.Stop()
	g.Start()
}

// Reload writes cfg as the new Caddyfile and runs `caddy reload` against the admin endpoint.
func (g *gateway) Reload(cfg gatewayConfig) {
	g.t.Helper()
	if err := g.tryReload(cfg); err != nil {
		g.t.Fatal(err)
	}
}

func (g *gateway) tryReload(cfg gatewayConfig) error {
	g.writeConfig(cfg)
	g.secretKs = append(g.secretKs, cfg.PoolKeys...)
	cmd := exec.Command(caddyBin, "reload", "--config", g.configPath, "--adapter", "caddyfile",
		"--address", fmt.Sprintf("127.0.0.1:%d", g.adminPort))
	cmd.Dir = g.dir
	cmd.Env = caddyEnv(g.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy reload: %v\n%s", err, out)
	}
	return nil
}

// Output returns everything caddy wrote to stdout and stderr so far.
func (g *gateway) Output() string { return g.output.String() }

func (g *gateway) cleanup() {
	g.Stop()
	out := g.Output()
	if strings.Contains(out, "panic") {
		g.t.Errorf("caddy's log output shows a panic")
	}
	for _, k := range g.secretKs {
		if strings.Contains(out, k) {
			g.t.Errorf("caddy's log output contains the full pool key %s", mask(k))
		}
	}
	for _, r := range g.rec.all() {
		for _, k := range g.secretKs {
			if strings.Contains(r, k) {
				g.t.Errorf("a gateway response contains the full pool key %s: %.300s", mask(k), strings.ReplaceAll(r, k, mask(k)))
			}
		}
	}
	if g.t.Failed() || os.Getenv("E2E_CADDY_LOG") != "" {
		g.t.Logf("caddy output:\n%s", out)
	}
}

// recorder keeps the headers and bodies of every response the gateway sent to the tests.
type recorder struct {
	mu        sync.Mutex
	responses []*bytes.Buffer
}

func (r *recorder) add(resp *http.Response) *bytes.Buffer {
	buf := &bytes.Buffer{}
	fmt.Fprintf(buf, "%s\n", resp.Status)
	_ = resp.Header.Write(buf)
	r.mu.Lock()
	r.responses = append(r.responses, buf)
	r.mu.Unlock()
	return buf
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.responses))
	for i, b := range r.responses {
		out[i] = b.String()
	}
	return out
}

type recordingTransport struct {
	base http.RoundTripper
	rec  *recorder
}

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	buf := rt.rec.add(resp)
	resp.Body = &teeBody{rc: resp.Body, buf: buf, mu: &rt.rec.mu}
	return resp, nil
}

type teeBody struct {
	rc  io.ReadCloser
	buf *bytes.Buffer
	mu  *sync.Mutex
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.mu.Lock()
		b.buf.Write(p[:n])
		b.mu.Unlock()
	}
	return n, err
}

func (b *teeBody) Close() error { return b.rc.Close() }

// response is a fully read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends a request to the gateway and reads the whole response.
func (g *gateway) do(method, path string, header http.Header, body string) response {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, g.URL+path, rd)
	if err != nil {
		g.t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.Client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// generate sends a generateContent request for model with the x-goog-api-key access key.
func (g *gateway) generate(model, key string) response {
	g.t.Helper()
	return g.do(http.MethodPost, "/v1beta/models/"+model+":generateContent", apiKeyHeader(key), genBody)
}

func apiKeyHeader(key string) http.Header {
	return http.Header{"X-Goog-Api-Key": {key}}
}

// envelope is Google's error body.
type envelope struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	} `json:"error"`
}

// wantEnvelope asserts that r is an error response with Google's JSON envelope, the given HTTP
// status and, when non-empty, the given canonical status name.
func wantEnvelope(t *testing.T, r response, code int, status string) envelope {
	t.Helper()
	if r.Status != code {
		t.Fatalf("status = %d, want %d; body: %s", r.Status, code, r.Body)
	}
	var env envelope
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Fatalf("body is not a JSON error envelope: %v; body: %s", err, r.Body)
	}
	if env.Error.Code != code {
		t.Errorf("error.code = %d, want %d; body: %s", env.Error.Code, code, r.Body)
	}
	if status != "" && env.Error.Status != status {
		t.Errorf("error.status = %q, want %q; body: %s", env.Error.Status, status, r.Body)
	}
	if env.Error.Message == "" {
		t.Errorf("error.message is empty; body: %s", r.Body)
	}
	return env
}

// wantOK asserts a 200 generateContent answer echoing "hello".
func wantOK(t *testing.T, r response) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status = %d, want 200; body: %s", r.Status, r.Body)
	}
	if !bytes.Contains(r.Body, []byte("echo: hello")) {
		t.Fatalf("body does not contain the fake's echo: %s", r.Body)
	}
}

// modelOf extracts the model id from an upstream path like /v1beta/models/gemini-2.5-flash:generateContent.
func modelOf(path string) string {
	i := strings.Index(path, "/models/")
	if i < 0 {
		return ""
	}
	m := path[i+len("/models/"):]
	if j := strings.IndexAny(m, ":/"); j >= 0 {
		m = m[:j]
	}
	return m
}

// clientCalls keeps the upstream calls that carry the tests' prompt ("hello"), leaving out any
// probe the gateway makes on its own (key validation).
func clientCalls(calls []fakegemini.Call) []fakegemini.Call {
	var out []fakegemini.Call
	for _, c := range calls {
		if bytes.Contains(c.Body, []byte(`"hello"`)) {
			out = append(out, c)
		}
	}
	return out
}

// countKeys counts the fake's client calls per upstream key, optionally only for one model ("" = all).
func countKeys(calls []fakegemini.Call, model string) map[string]int {
	n := map[string]int{}
	for _, c := range clientCalls(calls) {
		if model != "" && modelOf(c.Path) != model {
			continue
		}
		n[c.Key]++
	}
	return n
}

// assertCleanUpstream checks every call the fake received: the key is a pool key, no client
// credential appears anywhere, no key= query parameter, no Authorization on native paths and no
// x-goog-user-project header.
func assertCleanUpstream(t *testing.T, calls []fakegemini.Call, pool []string, clientKeys ...string) {
	t.Helper()
	inPool := map[string]bool{}
	for _, k := range pool {
		inPool[k] = true
	}
	for i, c := range calls {
		where := fmt.Sprintf("upstream call %d (%s %s)", i, c.Method, c.Path)
		if !inPool[c.Key] {
			t.Errorf("%s used key %s, which is not a pool key", where, mask(c.Key))
		}
		for _, ck := range clientKeys {
			if strings.Contains(c.Path, ck) || strings.Contains(c.RawQuery, ck) {
				t.Errorf("%s carries the client's access key in its URL", where)
			}
			for name, vs := range c.Header {
				for _, v := range vs {
					if strings.Contains(v, ck) {
						t.Errorf("%s carries the client's access key in header %s", where, name)
					}
				}
			}
		}
		if q, err := url.ParseQuery(c.RawQuery); err != nil || q.Has("key") {
			t.Errorf("%s has a key= query parameter (raw query %q)", where, strings.ReplaceAll(c.RawQuery, c.Key, mask(c.Key)))
		}
		if !strings.HasPrefix(c.Path, "/v1beta/openai/") && c.Header.Get("Authorization") != "" {
			t.Errorf("%s has an Authorization header on a native path", where)
		}
		if c.Header.Get("X-Goog-User-Project") != "" {
			t.Errorf("%s forwarded x-goog-user-project", where)
		}
	}
}

// sseEvent is one server-sent event and the time the client had it complete.
type sseEvent struct {
	Data []byte
	At   time.Time
}

// readSSE reads \r\n\r\n-framed events from r until EOF or error, calling onEvent for each.
// It returns the events, any trailing bytes that did not form a complete event, and the read error
// (nil at a clean EOF).
func readSSE(r io.Reader, onEvent func(sseEvent)) ([]sseEvent, []byte, error) {
	var events []sseEvent
	var pending []byte
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			now := time.Now()
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.Index(pending, []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				ev := sseEvent{Data: append([]byte(nil), pending[:i]...), At: now}
				pending = pending[i+4:]
				events = append(events, ev)
				if onEvent != nil {
					onEvent(ev)
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return events, pending, err
		}
	}
}

// checkSSEEvent asserts that one event is a single `data: <json>` line.
func checkSSEEvent(t *testing.T, i int, ev []byte) map[string]any {
	t.Helper()
	s := string(ev)
	if !strings.HasPrefix(s, "data: ") || strings.ContainsAny(s, "\r\n") {
		t.Errorf("event %d is not a single `data: ` line: %q", i, s)
		return nil
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(s, "data: ")), &obj); err != nil {
		t.Errorf("event %d is not JSON: %v: %q", i, err, s)
	}
	return obj
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
