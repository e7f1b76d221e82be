package gateway

// Tests of the hardening of issue 13: unauthenticated requests leave no request-log row,
// clients never see network details, project numbers or client-IP headers going upstream,
// and no proxy answer can run script in the gateway's origin.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// garbageKey returns a random access key that no gateway knows.
func garbageKey() string {
	var b [16]byte
	rand.Read(b[:])
	return "garbage-" + hex.EncodeToString(b[:])
}

// rawDo sends one request without the test's access key and returns status, header and body.
func rawDo(t *testing.T, method, u string, header http.Header, body string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, vv := range header {
		req.Header[k] = vv
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// rejectionLines returns the sampled warnings about refused requests, by reason.
func rejectionLines(logs *observer.ObservedLogs) map[string][]observer.LoggedEntry {
	out := map[string][]observer.LoggedEntry{}
	for _, l := range logs.FilterMessage(rejectedLogMessage).All() {
		r, _ := l.ContextMap()["reason"].(string)
		out[r] = append(out[r], l)
	}
	return out
}

// TestUnauthenticatedRequestsWriteNoRow: requests without a usable credential (no key, a
// wrong one in each place a key can go, a disabled one, an upload chunk with a wrong key or an
// unknown session) write no request-log row; they are counted by reason in a metric and in
// one sampled warning per reason. Preflights are neither. Authenticated requests (by key, or by
// the session of a running upload) still write theirs.
func TestUnauthenticatedRequestsWriteNoRow(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.metrics.register(reg); err != nil {
		t.Fatal(err)
	}
	const disabledKey = "sk-disabled-access-key-0123456789"
	ak, err := (adminBackend{e.core}).AddAccessKey(ctx, disabledKey, "disabled", tenant.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if err := (adminBackend{e.core}).SetAccessKeyEnabled(ctx, ak.ID, false); err != nil {
		t.Fatal(err)
	}
	// A real upload session, started and continued by the access key's holder.
	h := http.Header{"X-Goog-Api-Key": {testAccessKey}, "X-Goog-Upload-Protocol": {"resumable"},
		"X-Goog-Upload-Command": {"start"}, "Content-Type": {"application/json"}}
	e.made.Add(1)
	status, hdr, b := rawDo(t, "POST", e.url+"/upload/v1beta/files", h, `{"file":{"display_name":"doc"}}`)
	upURL := hdr.Get("X-Goog-Upload-Url")
	if status != 200 || upURL == "" {
		t.Fatalf("upload start: %d %s", status, b)
	}
	gen := e.url + genPath("gemini-2.5-flash")
	const n = 25
	var sent []string // every garbage key sent
	for range n {
		wrong := [3]string{garbageKey(), garbageKey(), garbageKey()}
		chunkKey := garbageKey()
		sent = append(sent, wrong[:]...)
		sent = append(sent, chunkKey)
		for _, c := range []struct {
			method, url string
			header      http.Header
			code        int
		}{
			{"POST", gen, nil, 401},
			{"POST", gen, http.Header{"X-Goog-Api-Key": {wrong[0]}}, 401},
			{"POST", gen + "?key=" + wrong[1], nil, 401},
			{"GET", e.url + "/v1beta/openai/models", http.Header{"Authorization": {"Bearer " + wrong[2]}}, 401},
			{"POST", gen, http.Header{"X-Goog-Api-Key": {disabledKey}}, 403},
			{"POST", upURL, http.Header{"X-Goog-Api-Key": {chunkKey}, "X-Goog-Upload-Command": {"query"}}, 401},
			{"POST", e.url + "/upload/v1beta/files?upload_id=" + garbageKey() + "&upload_protocol=resumable",
				http.Header{"X-Goog-Upload-Command": {"upload, finalize"}, "X-Goog-Upload-Offset": {"0"}}, 404},
			{"OPTIONS", gen, http.Header{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"POST"}}, 204},
		} {
			status, hdr, b := rawDo(t, c.method, c.url, c.header, helloBody)
			if status != c.code {
				t.Fatalf("%s %s %v: %d, want %d: %s", c.method, c.url, c.header, status, c.code, b)
			}
			if status != 204 {
				decodeError(t, b)
			}
			e.assertNoLeak(hdr, b)
		}
	}
	// Authenticated: a generation, and a chunk the session id authenticates.
	if resp, b := e.do("POST", genPath("gemini-2.5-flash"), helloBody); resp.StatusCode != 200 {
		t.Fatalf("a real request: %d %s", resp.StatusCode, b)
	}
	e.made.Add(1)
	if status, _, b := rawDo(t, "POST", upURL, http.Header{"X-Goog-Upload-Command": {"query"}}, ""); status != 200 {
		t.Fatalf("a chunk on the session without a key: %d %s", status, b)
	}

	e.waitLogged()
	e.core.store.Flush()
	if rows, err := e.core.store.CountRequestLogs(ctx); err != nil || rows != e.made.Load() {
		t.Errorf("%d request-log rows (%v), want %d: one per authenticated request, none for the %d refused ones",
			rows, err, e.made.Load(), 7*n)
	}
	refused := 0
	for _, r := range e.requests() {
		if r.AccessKeyID == 0 || r.Status == 401 || r.Status == 403 {
			if refused++; refused == 1 {
				t.Errorf("a row for a refused request: %+v", r)
			}
		}
	}
	got := gatherSamples(t, reg)
	for reason, want := range map[string]float64{
		"missing_key":            n,
		"wrong_key":              4 * n,
		"disabled_key":           n,
		"unknown_upload_session": n,
	} {
		name := `caddy_gemini_synapse_rejected_total{reason="` + reason + `"}`
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	// One warning per reason (the test takes far less than the sampling interval), naming
	// how many it stands for, and no key.
	lines := rejectionLines(e.logs)
	for _, reason := range []string{"missing_key", "wrong_key", "disabled_key", "unknown_upload_session"} {
		if len(lines[reason]) != 1 {
			t.Errorf("%d warnings for %s, want 1 (sampled)", len(lines[reason]), reason)
			continue
		}
		if c, _ := lines[reason][0].ContextMap()["count"].(int64); c != 1 {
			t.Errorf("the first %s warning counts %v, want 1", reason, lines[reason][0].ContextMap()["count"])
		}
	}
	for _, l := range e.logs.All() {
		text := l.Message + " " + fmt.Sprint(l.ContextMap())
		for _, k := range append(sent, disabledKey, testAccessKey) {
			if strings.Contains(text, k) {
				t.Errorf("a log line carries an access key: %s", text)
			}
		}
	}
}

// TestRejectionWarningsAreSampled: at most one warning per reason and interval, carrying the
// number of refusals since the last one, and the client address only when the server tells it.
func TestRejectionWarningsAreSampled(t *testing.T) {
	obs, logs := observer.New(zap.DebugLevel)
	c := &Core{logger: zap.New(obs)}
	m := newMetrics(c)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	r := httptestRequest()
	m.noteRejected(c, rejectWrongKey, r, t0)
	for i := 1; i <= 9; i++ {
		m.noteRejected(c, rejectWrongKey, r, t0.Add(time.Duration(i)*time.Second))
	}
	m.noteRejected(c, rejectMissingKey, r, t0.Add(5*time.Second))
	if got := len(logs.All()); got != 2 {
		t.Fatalf("%d lines in the first 10s, want one per reason", got)
	}
	m.noteRejected(c, rejectWrongKey, r, t0.Add(rejectedLogEvery))
	all := rejectionLines(logs)
	if len(all["wrong_key"]) != 2 {
		t.Fatalf("wrong_key lines: %d, want 2", len(all["wrong_key"]))
	}
	if got := all["wrong_key"][1].ContextMap()["count"]; got != int64(10) {
		t.Errorf("the second line counts %v, want the 10 refusals since the first", got)
	}
	if _, ok := all["wrong_key"][0].ContextMap()["client_ip"]; ok {
		t.Error("a client address without a ClientIP hook")
	}
	c.hooks.ClientIP = func(*http.Request) string { return "203.0.113.7" }
	m.noteRejected(c, rejectDisabledKey, r, t0)
	if got := rejectionLines(logs)["disabled_key"][0].ContextMap()["client_ip"]; got != "203.0.113.7" {
		t.Errorf("client_ip = %v, want the hook's", got)
	}
}

// deadAddress returns a loopback address nothing listens on.
func deadAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

var requestIDPattern = regexp.MustCompile(`request id ([0-9a-f]{12})\b`)

// TestNetworkErrorsStayInTheErrorLog: when the upstream (here: the outbound proxy) cannot be
// reached, on the pool loop, an upload chunk, a files listing and a bound resource's call, the
// client gets a generic 502 with a request id, and the error log has the cause under that id.
func TestNetworkErrorsStayInTheErrorLog(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	name, _ := e.upload("0123456789", "", 100)
	// A second session, left open for a chunk after the proxy dies.
	h := http.Header{"X-Goog-Api-Key": {testAccessKey}, "X-Goog-Upload-Protocol": {"resumable"},
		"X-Goog-Upload-Command": {"start"}, "Content-Type": {"application/json"}}
	e.made.Add(1)
	status, hdr, b := rawDo(t, "POST", e.url+"/upload/v1beta/files", h, `{"file":{"display_name":"doc"}}`)
	upURL := hdr.Get("X-Goog-Upload-Url")
	if status != 200 || upURL == "" {
		t.Fatalf("upload start: %d %s", status, b)
	}
	dead := deadAddress(t)
	host, port, _ := net.SplitHostPort(dead)
	cl, err := newUpstreamClient("http://" + dead)
	if err != nil {
		t.Fatal(err)
	}
	e.core.upstream.Store(cl)

	check := func(what string, status int, b []byte) {
		t.Helper()
		if status != http.StatusBadGateway {
			t.Errorf("%s: %d, want 502: %s", what, status, b)
		}
		g := decodeError(t, b)
		for _, leak := range []string{host, port, "dial", "proxyconnect", "refused", "tcp"} {
			if strings.Contains(g.Error.Message, leak) {
				t.Errorf("%s: the client sees %q: %s", what, leak, g.Error.Message)
			}
		}
		m := requestIDPattern.FindStringSubmatch(g.Error.Message)
		if g.Error.Status != "UNAVAILABLE" || m == nil {
			t.Errorf("%s: %s %q, want UNAVAILABLE with a request id", what, g.Error.Status, g.Error.Message)
			return
		}
		found := false
		for _, r := range e.errorRows() {
			if strings.Contains(r.Message, m[1]) && strings.Contains(r.Message, "connection refused") &&
				strings.Contains(r.Message, port) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no error-log row holds request %s with the cause; rows: %+v", what, m[1], e.errorRows())
		}
	}
	resp, b := e.do("POST", genPath("gemini-2.5-flash"), helloBody)
	check("generateContent", resp.StatusCode, b)
	e.made.Add(1)
	status, _, b = rawDo(t, "POST", upURL, http.Header{"X-Goog-Upload-Command": {"upload, finalize"}, "X-Goog-Upload-Offset": {"0"}}, "data")
	check("upload chunk", status, b)
	resp, b = e.do("GET", "/v1beta/files", "")
	check("files.list", resp.StatusCode, b)
	resp, b = e.do("GET", "/v1beta/"+name, "")
	check("a bound file", resp.StatusCode, b)
	// The request log has the details too, for the operator.
	for _, r := range e.requests() {
		if r.Status == http.StatusBadGateway && !strings.Contains(r.Error, "refused") {
			t.Errorf("request row %s %s: error %q lacks the cause", r.Method, r.Path, r.Error)
		}
	}
}

// TestKeyRejectionReasonsReachClientsGeneric: when every key is refused for a reason that
// names its Google project, the client learns the ErrorInfo reason only; the admin side keeps
// Google's full text.
func TestKeyRejectionReasonsReachClientsGeneric(t *testing.T) {
	for _, tc := range []struct {
		state fakegemini.KeyState
		code  string // the ErrorInfo reason the client may see; "" for none
	}{
		{fakegemini.ServiceDisabled, "SERVICE_DISABLED"},
		{fakegemini.Suspended, "CONSUMER_SUSPENDED"},
		{fakegemini.ServiceBlocked, "API_KEY_SERVICE_BLOCKED"},
		{fakegemini.Leaked, ""},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			e := newProxyEnv(t, 2, nil)
			projects := []string{"123456789012", "987654321098"}
			for i, k := range e.keys {
				e.fake.SetProject(k, projects[i])
			}
			e.fake.SetDefault(tc.state)
			resp, b, _ := e.generate("gemini-2.5-flash")
			g := decodeError(t, b)
			if resp.StatusCode != 503 || !strings.Contains(g.Error.Message, "rejected by the upstream") {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			for _, leak := range append(projects, "project", "Consumer", "api_key:", "Google", "http") {
				if strings.Contains(string(b), leak) {
					t.Errorf("the client sees %q: %s", leak, g.Error.Message)
				}
			}
			if tc.code != "" && !strings.Contains(g.Error.Message, "("+tc.code+")") {
				t.Errorf("the client's message lacks the reason %s: %s", tc.code, g.Error.Message)
			}
			// The operator keeps everything.
			if k := e.storedKey(e.keys[0]); k.Status != store.StatusDisabled || len(k.DisabledReason) < 20 ||
				(tc.state == fakegemini.ServiceDisabled && !strings.Contains(k.DisabledReason, projects[0])) {
				t.Errorf("stored key: %s %q", k.Status, k.DisabledReason)
			}
		})
	}
}

func TestPublicKeyReason(t *testing.T) {
	for in, want := range map[string]string{
		"SERVICE_DISABLED: Generative Language API has not been used in project 123456789012 before": "SERVICE_DISABLED",
		"CONSUMER_SUSPENDED: Permission denied: Consumer 'projects/123' has been suspended.":         "CONSUMER_SUSPENDED",
		"API_KEY_INVALID: API key not valid. Please pass a valid API key.":                           "API_KEY_INVALID",
		"API_KEY_INVALID": "API_KEY_INVALID",
		"Your API key was reported as leaked. Please use another API key.":        "",
		"Permission denied: Consumer 'project_number:123456' has been suspended.": "",
		"PROJECT 123: x":                   "",
		"":                                 "",
		"key rejected by upstream":         "",
		operatorDisabled:                   operatorDisabled,
		"A_B: c":                           "A_B",
		"ab_c: lowercase":                  "",
		strings.Repeat("A", 80) + ": long": "",
	} {
		if got := publicKeyReason(in); got != want {
			t.Errorf("publicKeyReason(%q) = %q, want %q", in, got, want)
		}
	}
}

// clientIPHeaders are the headers proxies and CDNs use to name the client or the way it
// came; none may reach Google.
var clientIPHeaders = []string{
	"CF-Connecting-IP", "CF-Connecting-IPv6", "CF-IPCountry", "CF-Ray", "CF-Visitor", "CF-Worker", "CDN-Loop",
	"True-Client-IP", "X-Real-IP", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"X-Forwarded", "X-Client-IP", "X-Cluster-Client-IP", "Fastly-Client-IP", "X-Original-Forwarded-For",
	"X-Envoy-External-Address", "X-Appengine-User-IP", "Client-IP", "X-Originating-IP", "X-Remote-IP",
	"X-Remote-Addr", "X-ProxyUser-Ip", "WL-Proxy-Client-IP", "Proxy-Client-IP", "Fly-Client-IP",
	"X-Azure-ClientIP", "X-Azure-SocketIP", "X-Vercel-Forwarded-For", "Akamai-Origin-Hop", "Via",
}

// TestClientIPHeadersStayHome: no header that names the client's address (or the proxies it
// came through) goes upstream, on the pool loop and on an upload chunk.
func TestClientIPHeadersStayHome(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	h := http.Header{"X-Goog-Api-Key": {testAccessKey}, "Content-Type": {"application/json"},
		"X-Goog-Api-Client": {"google-genai-sdk/1.0"}}
	for _, name := range clientIPHeaders {
		h.Set(name, "198.51.100.23")
	}
	e.made.Add(1)
	if status, _, b := rawDo(t, "POST", e.url+genPath("gemini-2.5-flash"), h, helloBody); status != 200 {
		t.Fatalf("%d %s", status, b)
	}
	_, upURL := e.upload("x", "", 10)
	h.Del("X-Goog-Api-Key")
	h.Set("X-Goog-Upload-Command", "query")
	e.made.Add(1)
	if status, _, b := rawDo(t, "POST", upURL, h, ""); status != 200 {
		t.Fatalf("chunk: %d %s", status, b)
	}
	calls := e.fake.Calls()
	for _, c := range []fakegemini.Call{calls[0], calls[len(calls)-1]} {
		for _, name := range clientIPHeaders {
			if v := c.Header.Get(name); v != "" {
				t.Errorf("%s %s: %s reached the upstream: %q", c.Method, c.Path, name, v)
			}
		}
		for name, vv := range c.Header {
			if strings.Contains(strings.Join(vv, ","), "198.51.100.23") {
				t.Errorf("%s %s: the client's address reached the upstream in %s", c.Method, c.Path, name)
			}
		}
	}
	if calls[0].Header.Get("X-Goog-Api-Client") != "google-genai-sdk/1.0" {
		t.Error("x-goog-api-client is not forwarded any more")
	}
}

// htmlUpstream answers file downloads with HTML (as an upstream serving user content, or an
// error page, could), and otherwise passes to the fake.
func htmlUpstream(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, ":download"):
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "sniff-away")
			io.WriteString(w, "<html><script>fetch('/admin/api/keys')</script></html>")
		case strings.HasSuffix(r.URL.Path, ":untyped"):
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html><script>alert(1)</script></html>")
		case strings.HasSuffix(r.URL.Path, ":errorpage"):
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html><body>bad gateway<script>alert(1)</script></body></html>")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// TestProxyAnswersCannotRunScript: every answer says nosniff; an answer that is neither JSON nor
// a stream is also sandboxed, so no upstream answer can run script in the gateway's origin
// (which the admin panel may share).
func TestProxyAnswersCannotRunScript(t *testing.T) {
	// The download names a file the gateway did not record: a shared key may use it.
	cfg := &Config{GoogleAPIKeys: testPoolKeys}
	sharedAccess(cfg)
	tc := startCore(t, coreSetup{wrap: htmlUpstream}, cfg)
	base := serveCore(t, tc.c, nil, "")
	key := http.Header{"X-Goog-Api-Key": {testAccessKey}, "Content-Type": {"application/json"}}
	for _, c := range []struct {
		what, method, path string
		header             http.Header
		code               int
		sandbox            bool
	}{
		{"generateContent", "POST", genPath("gemini-2.5-flash"), key, 200, false},
		{"SSE stream", "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", key, 200, false},
		{"JSON-array stream", "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", key, 200, false},
		{"the gateway's own error", "POST", genPath("gemini-2.5-flash"), nil, 401, false},
		{"a preflight", "OPTIONS", genPath("gemini-2.5-flash"), http.Header{"Origin": {"https://x.example"}}, 204, false},
		{"files.list", "GET", "/v1beta/files", key, 200, false},
		{"an upstream error", "POST", genPath("gemini-0-nope"), key, 404, false},
		{"an HTML download", "GET", "/v1beta/files/abc:download?alt=media", key, 200, true},
		{"an untyped answer", "GET", "/v1beta/files/abc:untyped", key, 200, true},
		{"an HTML error page", "GET", "/v1beta/files/abc:errorpage", key, 502, true},
	} {
		body := ""
		if c.method == "POST" {
			body = helloBody
		}
		status, hdr, b := rawDo(t, c.method, base+c.path, c.header, body)
		if status != c.code {
			t.Errorf("%s: %d, want %d: %s", c.what, status, c.code, b)
		}
		if got := hdr.Values("X-Content-Type-Options"); len(got) != 1 || got[0] != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q, want nosniff", c.what, got)
		}
		if csp := hdr.Get("Content-Security-Policy"); c.sandbox && csp != "sandbox" {
			t.Errorf("%s (%s): Content-Security-Policy %q, want sandbox", c.what, hdr.Get("Content-Type"), csp)
		}
	}
}

// httptestRequest is a request for the unit tests that need one.
func httptestRequest() *http.Request {
	r, _ := http.NewRequest("POST", "http://gw.example/v1beta/models", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	return r
}

// A bound resource's owner disabled for a reason that names its project: the client gets the
// reason code, never the project number (the admin side keeps the text).
func TestBoundOwnerDisabledReasonIsGeneric(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	name, _ := e.upload("0123456789", "", 100)
	calls := e.fake.Calls()
	owner := e.ids[calls[len(calls)-1].Key]
	reason := "SERVICE_DISABLED: Generative Language API has not been used in project 123456789012 before"
	if err := e.core.store.SetKeyStatus(context.Background(), owner, store.StatusDisabled, reason, false); err != nil {
		t.Fatal(err)
	}
	e.core.pool.SetDisabled(owner, true)
	resp, b := e.do("GET", "/v1beta/"+name, "")
	if resp.StatusCode != 503 || strings.Contains(string(b), "123456789012") || !strings.Contains(string(b), "(SERVICE_DISABLED)") {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
}

// slowBody fails as a body cut by the server's read timeout does.
type slowBody struct{ sent bool }

func (b *slowBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, `{"contents":`), nil
	}
	return 0, fmt.Errorf("read tcp 127.0.0.1:8008->127.0.0.1:51234: %w", os.ErrDeadlineExceeded)
}

func (b *slowBody) Close() error { return nil }

// A body the server's timeout cut gets Google's envelope (408), not an empty 200, and no
// socket address reaches the client; any other unreadable body gets a generic 400.
func TestSlowOrBrokenBodiesGetAnAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   io.ReadCloser
		status int
	}{
		{"timeout", &slowBody{}, http.StatusRequestTimeout},
		{"broken", io.NopCloser(io.MultiReader(strings.NewReader("{"), iotest.ErrReader(errors.New("read tcp 10.0.0.5:3128: connection reset")))), http.StatusBadRequest},
	} {
		r := httptest.NewRequest(http.MethodPost, "/v1beta/models/gemini-2.5-flash:generateContent", nil)
		if tc.status == http.StatusRequestTimeout {
			// The server cancels the request's context when its read timeout fires.
			ctx, cancel := context.WithCancel(r.Context())
			cancel()
			r = r.WithContext(ctx)
		}
		r.Body = tc.body
		r.ContentLength = -1
		w := httptest.NewRecorder()
		s, _ := parseSettings(nil)
		x := &exchange{w: w, r: r, set: s}
		if x.readBody() {
			t.Fatalf("%s: body read", tc.name)
		}
		if w.Code != tc.status || !strings.Contains(w.Body.String(), `"error"`) || strings.Contains(w.Body.String(), "127.0.0.1") ||
			strings.Contains(w.Body.String(), "10.0.0.5") {
			t.Errorf("%s: %d %s", tc.name, w.Code, w.Body.String())
		}
		if !strings.Contains(x.errText, "read tcp") {
			t.Errorf("%s: the log row lost the cause: %q", tc.name, x.errText)
		}
	}
}

// What the fuzz suite's authors found by hand, each pinned here.
func TestParsersFoundByTheFuzzSuite(t *testing.T) {
	// A JSON escape must not hide a key-bound reference (F1).
	for _, body := range []string{
		`{"cachedContent":"cachedContents\/abc"}`,
		`{"contents":[{"parts":[{"fileData":{"fileUri":"\u0066iles/abc"}}]}]}`,
	} {
		names, _ := bodyReferences([]byte(body))
		if len(names) != 1 || (names[0] != "cachedContents/abc" && names[0] != "files/abc") {
			t.Errorf("bodyReferences(%s) = %v", body, names)
		}
	}
	// Only the member named exactly "model" names the model (F2).
	if m, s := requestModel("/v1beta/openai/chat/completions", "", []byte(`{"model":"gemini-2.5-pro","MODEL":"gemini-2.5-flash","stream":true}`), true); m != "gemini-2.5-pro" || !s {
		t.Errorf("requestModel = %q, %v", m, s)
	}
	// An escaped upload_id is an upload id (F3).
	if id := uploadSessionID("/upload/v1beta/files", "upload%5Fid=abc&upload_protocol=resumable"); id != "abc" {
		t.Errorf("uploadSessionID = %q", id)
	}
}
