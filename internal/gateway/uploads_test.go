package gateway

import (
	"context"
	"database/sql"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// startUpload starts a resumable upload through the gateway with the access key and returns
// the upload URL it hands out.
func (e *proxyEnv) startUpload() string {
	e.t.Helper()
	resp, b := e.sendUpload("POST", e.url+"/upload/v1beta/files", testAccessKey, "start", `{"file":{"display_name":"doc"}}`)
	u := resp.Header.Get("X-Goog-Upload-Url")
	if resp.StatusCode != 200 || u == "" {
		e.t.Fatalf("start: %d %s", resp.StatusCode, b)
	}
	return u
}

// sendUpload sends one upload request (a start or a command on a session) with the given
// access key ("" sends none) and returns the response, its body read.
func (e *proxyEnv) sendUpload(method, u, key, command, body string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("x-goog-api-key", key)
	}
	req.Header.Set("X-Goog-Upload-Command", command)
	if command == "start" {
		req.Header.Set("X-Goog-Upload-Protocol", "resumable")
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Header.Set("X-Goog-Upload-Offset", "0")
	}
	e.made.Add(1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.assertNoLeak(resp.Header, b)
	return resp, b
}

// setAccessKey disables (enabled false) or deletes (del) the access key with id, as the admin
// API does: in the store, then the core's view.
func (e *proxyEnv) setAccessKey(id int64, enabled, del bool) {
	e.t.Helper()
	ctx := context.Background()
	var err error
	if del {
		err = e.core.store.DeleteAccessKey(ctx, id)
	} else {
		err = e.core.store.SetAccessKeyEnabled(ctx, id, enabled)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.core.mu.Lock()
	defer e.core.mu.Unlock()
	if err := e.core.reloadAccessKeysLocked(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// A session id is worth no more than the access key that started the session: once that key
// is disabled or deleted, keyless chunks are refused with a final status.
func TestProxyChunkOfDisabledAccessKeyIsRefused(t *testing.T) {
	for _, del := range []bool{false, true} {
		e := newProxyEnv(t, 2, nil)
		upURL := e.startUpload()
		keys, err := e.core.store.AccessKeys(context.Background())
		if err != nil || len(keys) != 1 {
			t.Fatalf("access keys: %v %v", keys, err)
		}
		e.setAccessKey(keys[0].ID, false, del)
		n := len(e.fake.Calls())
		resp, b := e.sendUpload("POST", upURL, "", "upload, finalize", "data")
		g := decodeError(t, b)
		if resp.StatusCode != 403 || g.Error.Status != "PERMISSION_DENIED" || resp.Header.Get("X-Goog-Upload-Status") != "final" {
			t.Errorf("deleted %v: chunk of a disabled access key's session: %d %q %s", del, resp.StatusCode, resp.Header.Get("X-Goog-Upload-Status"), b)
		}
		if len(e.fake.Calls()) != n {
			t.Errorf("deleted %v: the refused chunk reached the upstream", del)
		}
	}
}

// sqlExec runs statements on the gateway's database through a connection of its own, to make
// the store fail the way a broken or busy database does.
func (e *proxyEnv) sqlExec(stmts ...string) {
	e.t.Helper()
	sqlExec(e.t, e.core.path, stmts...)
}

func sqlExec(t *testing.T, path string, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// A store failure while looking up a session is transient: the answer must not carry the
// final upload status that makes SDKs give the upload up.
func TestProxyChunkStoreErrorIsNotFinal(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	upURL := e.startUpload()
	e.sqlExec(`ALTER TABLE upload_sessions RENAME TO upload_sessions_away`)
	resp, b := e.sendUpload("POST", upURL, "", "upload, finalize", "data")
	e.sqlExec(`ALTER TABLE upload_sessions_away RENAME TO upload_sessions`)
	g := decodeError(t, b)
	if resp.StatusCode != 503 || g.Error.Status != "UNAVAILABLE" || resp.Header.Get("X-Goog-Upload-Status") != "" {
		t.Errorf("store error: %d, upload status %q, %s", resp.StatusCode, resp.Header.Get("X-Goog-Upload-Status"), b)
	}
	// Once the store is back the same chunk goes through.
	if resp, b := e.sendUpload("POST", upURL, "", "upload, finalize", "data"); resp.StatusCode != 200 || resp.Header.Get("X-Goog-Upload-Status") != "final" {
		t.Errorf("retried chunk: %d %s", resp.StatusCode, b)
	}
}

// echoKeyUpstream is an upload upstream that puts the key it was called with into every
// upload URL it hands out (as Google's would with ?key=), and answers chunks with
// chunkStatus: 200 "active", or 400 API_KEY_INVALID when invalid is set.
type echoKeyUpstream struct {
	invalid atomic.Bool
}

func (u *echoKeyUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("X-Goog-Api-Key")
	session := "https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=U1&upload_protocol=resumable&key=" + url.QueryEscape(key)
	h := w.Header()
	h.Set("X-Goog-Upload-Url", session)
	h.Set("X-Goog-Upload-Control-Url", session)
	h.Set("Location", session)
	h.Set("X-Goog-Upload-Size-Received", "0")
	// An invalid key fails its chunks and the gateway's confirming probe (GET …/models/…) alike.
	if (r.URL.Query().Get("upload_id") != "" || strings.Contains(r.URL.Path, "/models/")) && u.invalid.Load() {
		h.Set("X-Goog-Upload-Status", "final")
		h.Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",`+
			`"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com",`+
			`"metadata":{"service":"generativelanguage.googleapis.com"}}]}}`)
		return
	}
	h.Set("X-Goog-Upload-Status", "active")
	w.WriteHeader(http.StatusOK)
}

func newEchoKeyEnv(t *testing.T) (*proxyEnv, *echoKeyUpstream) {
	up := &echoKeyUpstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	return newProxyEnv(t, 2, func(a *Config) { a.Upstream = srv.URL }), up
}

// Upload URLs of start and chunk answers never carry a key= to the client, nor any pool key.
func TestProxyUploadURLsLoseTheKey(t *testing.T) {
	e, _ := newEchoKeyEnv(t)
	check := func(what string, resp *http.Response) {
		t.Helper()
		for _, name := range []string{"X-Goog-Upload-Url", "X-Goog-Upload-Control-Url", "Location"} {
			v := resp.Header.Get(name)
			if v == "" || strings.Contains(v, "key=") || !strings.HasPrefix(v, e.url+"/upload/v1beta/files?") || !strings.Contains(v, "upload_id=U1") {
				t.Errorf("%s: %s = %q", what, name, v)
			}
		}
		// sendUpload's assertNoLeak has checked every header and the body for pool keys.
	}
	resp, b := e.sendUpload("POST", e.url+"/upload/v1beta/files", testAccessKey, "start", `{}`)
	if resp.StatusCode != 200 {
		t.Fatalf("start: %d %s", resp.StatusCode, b)
	}
	check("start", resp)
	for _, key := range []string{"", testAccessKey} {
		resp, b := e.sendUpload("POST", resp.Header.Get("X-Goog-Upload-Url"), key, "upload", "data")
		if resp.StatusCode != 200 {
			t.Fatalf("chunk: %d %s", resp.StatusCode, b)
		}
		check("chunk", resp)
	}
}

// A chunk the upstream refuses with "API key not valid" is the pool key's fault: the client
// gets the normal path's 503, not Google's words about "its" key, with the upload headers.
func TestProxyChunkOfInvalidPoolKeyIsUnavailable(t *testing.T) {
	e, up := newEchoKeyEnv(t)
	upURL := e.startUpload()
	up.invalid.Store(true)
	resp, b := e.sendUpload("POST", upURL, "", "upload, finalize", "data")
	g := decodeError(t, b)
	if resp.StatusCode != 503 || g.Error.Status != "UNAVAILABLE" || !strings.HasPrefix(g.Error.Message, "No upstream key could serve the request") {
		t.Errorf("invalid pool key on a chunk: %d %s", resp.StatusCode, b)
	}
	if resp.Header.Get("X-Goog-Upload-Status") != "final" || resp.Header.Get("X-Goog-Upload-Size-Received") != "0" {
		t.Errorf("upload headers lost: %v", resp.Header)
	}
	if v := resp.Header.Get("X-Goog-Upload-Url"); strings.Contains(v, "key=") {
		t.Errorf("upload URL with a key: %q", v)
	}
}

// The upload URL handed back names the scheme the client used: https when a trusted proxy
// ended TLS in front of caddy and says so, and never on an untrusted peer's word.
func TestPublicBaseScheme(t *testing.T) {
	for _, tc := range []struct {
		trusted bool
		proto   string
		want    string
	}{
		{false, "", "http://gw.example.com"},
		{true, "", "http://gw.example.com"},
		{true, "https", "https://gw.example.com"},
		{false, "https", "http://gw.example.com"},
	} {
		r := httptest.NewRequest(http.MethodPost, "http://gw.example.com/upload/v1beta/files", nil)
		if tc.proto != "" {
			r.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		trusted := tc.trusted
		c := &Core{hooks: Hooks{Trusted: func(*http.Request) bool { return trusted }}}
		x := &exchange{core: c, r: r}
		if got := x.publicBase(); got != tc.want {
			t.Errorf("trusted=%v proto=%q: publicBase = %q, want %q", tc.trusted, tc.proto, got, tc.want)
		}
	}
}
