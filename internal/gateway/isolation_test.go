package gateway

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

const sharedKey = "gs-shared-key-two-0123456789"

// listedFiles returns the names files.list shows the access key (every page).
func (e *proxyEnv) listedFiles(key string) []string {
	e.t.Helper()
	var names []string
	token := ""
	for range 50 {
		p := "/v1beta/files?pageSize=100"
		if token != "" {
			p += "&pageToken=" + token
		}
		resp, b := e.doAs(key, "GET", p, "")
		if resp.StatusCode != 200 {
			e.t.Fatalf("files.list: %d %s", resp.StatusCode, b)
		}
		var page struct {
			Files []struct{ Name string }
			Next  string `json:"nextPageToken"`
		}
		json.Unmarshal(b, &page)
		for _, f := range page.Files {
			names = append(names, f.Name)
		}
		if token = page.Next; token == "" {
			break
		}
	}
	return names
}

func TestIsolationBetweenAccessKeys(t *testing.T) {
	e := newProxyEnv(t, 3, func(c *Config) {
		withPolicy(tenantKey, tenant.Policy{})(c)
		withPolicy(sharedKey, tenant.Policy{Shared: true})(c)
	})
	// A (testAccessKey) makes a file and a cached content.
	file, _ := e.upload("secret data of A", "", 100)
	resp, b := e.do("POST", "/v1beta/cachedContents", `{"model":"models/gemini-2.5-flash","ttl":"600s","contents":[{"role":"user","parts":[{"text":"a long context"}]}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("create cache: %d %s", resp.StatusCode, b)
	}
	var cc struct{ Name string }
	json.Unmarshal(b, &cc)

	n := len(e.fake.Calls())
	// B: every use of A's resources reads as Google's answer for another project's, and
	// nothing goes upstream.
	for _, c := range []struct {
		method, path, body string
		code               int
		status, msg        string
	}{
		{"GET", "/v1beta/" + file, "", 403, "PERMISSION_DENIED", "You do not have permission to access the File " + strings.TrimPrefix(file, "files/") + " or it may not exist."},
		{"DELETE", "/v1beta/" + file, "", 403, "PERMISSION_DENIED", "You do not have permission to access the File"},
		{"POST", genPath("gemini-2.5-flash"), fileBody(file), 403, "PERMISSION_DENIED", "You do not have permission to access the File"},
		{"GET", "/v1beta/" + cc.Name, "", 403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)"},
		{"POST", genPath("gemini-2.5-flash"), `{"cachedContent":"` + cc.Name + `","contents":[{"parts":[{"text":"hi"}]}]}`, 403, "PERMISSION_DENIED", "CachedContent not found"},
	} {
		for _, key := range []string{tenantKey, sharedKey} { // shared reaches only what no access key made
			resp, b := e.doAs(key, c.method, c.path, c.body)
			g := decodeError(t, b)
			if resp.StatusCode != c.code || g.Error.Status != c.status || !strings.HasPrefix(g.Error.Message, c.msg) {
				t.Errorf("%s %s by another access key: %d %s", c.method, c.path, resp.StatusCode, b)
			}
		}
	}
	if got := len(e.fake.Calls()); got != n {
		t.Errorf("requests naming another access key's resources reached the upstream (%d calls)", got-n)
	}
	// Listings show each access key its own.
	if !slices.Contains(e.listedFiles(testAccessKey), file) {
		t.Errorf("A's files.list lacks its file %s", file)
	}
	if slices.Contains(e.listedFiles(tenantKey), file) || slices.Contains(e.listedFiles(sharedKey), file) {
		t.Errorf("another access key's files.list shows A's file %s", file)
	}
	for key, want := range map[string]bool{testAccessKey: true, tenantKey: false} {
		resp, b := e.doAs(key, "GET", "/v1beta/cachedContents", "")
		if resp.StatusCode != 200 || strings.Contains(string(b), cc.Name) != want {
			t.Errorf("cachedContents.list for the %v key: %d %s", want, resp.StatusCode, b)
		}
	}
	// A's upload session is not B's to continue.
	u := e.startUpload()
	resp, b = e.sendUpload("POST", u, tenantKey, "upload, finalize", "data")
	if resp.StatusCode != 404 || resp.Header.Get("X-Goog-Upload-Status") != "final" {
		t.Errorf("B's chunk on A's session: %d %s", resp.StatusCode, b)
	}
	// A still uses and deletes its own.
	if resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(file)); resp.StatusCode != 200 {
		t.Errorf("A's own file: %d %s", resp.StatusCode, b)
	}
	if resp, b := e.do("DELETE", "/v1beta/"+file, ""); resp.StatusCode != 200 {
		t.Errorf("A deleting its own file: %d %s", resp.StatusCode, b)
	}
}

func TestIsolationSharedKeysSeeWhatTheGatewayDidNotCreate(t *testing.T) {
	e := newProxyEnv(t, 2, func(c *Config) {
		withPolicy(tenantKey, tenant.Policy{})(c)
		withPolicy(sharedKey, tenant.Policy{Shared: true})(c)
	})
	// A record from before access keys were recorded: no access key made it.
	file, _ := e.upload("an old file", "", 100)
	e.sqlExec(`UPDATE resources SET access_key_id = 0`)
	if resp, b := e.doAs(sharedKey, "GET", "/v1beta/"+file, ""); resp.StatusCode != 200 {
		t.Errorf("shared key on an old file: %d %s", resp.StatusCode, b)
	}
	for _, key := range []string{tenantKey, testAccessKey} {
		if resp, b := e.doAs(key, "GET", "/v1beta/"+file, ""); resp.StatusCode != 403 {
			t.Errorf("unshared key on an old file: %d %s", resp.StatusCode, b)
		}
	}
	if !slices.Contains(e.listedFiles(sharedKey), file) || slices.Contains(e.listedFiles(tenantKey), file) {
		t.Errorf("files.list: the shared key must see the old file, the unshared one not")
	}
	// A name the gateway never recorded (made outside it): the shared key's request goes
	// upstream as before; an unshared key's does not.
	n := len(e.fake.Calls())
	if resp, _ := e.doAs(tenantKey, "GET", "/v1beta/files/made-elsewhere", ""); resp.StatusCode != 403 || len(e.fake.Calls()) != n {
		t.Errorf("unshared key on an unknown file: %d, %d upstream calls", resp.StatusCode, len(e.fake.Calls())-n)
	}
	e.doAs(sharedKey, "GET", "/v1beta/files/made-elsewhere", "")
	if len(e.fake.Calls()) == n {
		t.Errorf("shared key on an unknown file: nothing went upstream")
	}
}
