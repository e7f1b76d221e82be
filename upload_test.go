package geminisynapse

import (
	"context"
	"database/sql"
	"io"
	"net/http"
	"strings"
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
	db, err := sql.Open("sqlite3", e.core.path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			e.t.Fatalf("%s: %v", s, err)
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
