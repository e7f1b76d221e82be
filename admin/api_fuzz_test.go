package admin

// Fuzz tests of the admin API's JSON decoders and of the paste-import key extractor (issue
// 13's standing suite). Run one with
//
//	go test -run '^$' -fuzz '^FuzzAdminAPI$' -fuzztime 60s ./admin/
//
// `make test` runs each for a few seconds (`make fuzz FUZZTIME=2m` for longer). The seeds are
// the bodies the panel (web/) and the contract tests send.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzRoutes are the API's endpoints that read a body.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/admin/api/keys"},
	{"POST", "/admin/api/keys/project"},
	{"PATCH", "/admin/api/keys/1"},
	{"POST", "/admin/api/access-keys"},
	{"PUT", "/admin/api/admin-key"},
	{"PUT", "/admin/api/settings"},
	{"POST", "/admin/api/login"},
	{"POST", "/admin/api/keys/validate"},
	{"POST", "/admin/api/keys/export"},
	{"PATCH", "/admin/api/access-keys/1"},
}

// fuzzContentTypes are the Content-Type headers a body is sent with.
var fuzzContentTypes = []string{"application/json", "application/json; charset=utf-8", "text/plain", "", "application/x-www-form-urlencoded", "APPLICATION/JSON"}

// fuzzBodies are the bodies the panel and the contract tests send, per route above.
var fuzzBodies = []string{
	`{"keys":["` + contractKeys(40, 1)[0] + `"]}`,
	`{"text":"` + contractKeys(41, 1)[0] + ` prod-eu\n` + contractKeys(42, 1)[0] + `\nAIzaShort"}`,
	`{"ids":[1,2],"project":"team-a"}`,
	`{"project":""}`,
	`{"label":"laptop"}`,
	`{"current":"` + contractAdminKey + `","new":"a-new-admin-key-0123456789"}`,
	`{"max_retries":"4","timeout":30,"upstream":"https://generativelanguage.googleapis.com"}`,
	`{"proxy":"http://proxy.example:3128","admin_key":"wrong"}`,
	`{"admin_key":"` + contractAdminKey + `"}`,
	`{"ids":[3]}`,
	`{"admin_key":"` + contractAdminKey + `","status":"active"}`,
	`{"keys":null,"text":null}`, `{"ids":[0]}`, `{"project":1}`, `{"unknown":true}`, `[]`, `null`, `{} {"x":1}`, ``,
	`{"label":"\u0000"}`, `{"keys":[` + strings.Repeat(`"x",`, 50) + `"y"]}`,
	`{"label":"team","models":["gemini-2.5-flash*"],"rpm":60,"rpd":"5k","tpm":200000,"token_budget":{"limit":"10M","period":"weekly"},"concurrency":8,"expires_at":"2030-01-31T00:00:00Z","shared":true}`,
	`{"rpm":null,"models":"gemini-2.0-* gemini-2.5-pro","token_budget":"1M monthly","expires_at":null}`,
	`{"rpm":-1,"token_budget":{"limit":5,"period":"hourly"},"expires_at":"2001-01-01T00:00:00Z","shared":"yes"}`,
}

// backendState is what a refused request must leave unchanged.
func backendState(b *fakeBackend) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	access, _ := json.Marshal(b.access)
	return fmt.Sprint(b.keys, string(access), b.settings, b.adminKey, len(b.sessions), b.run.Running, b.loc)
}

// FuzzAdminAPI sends any body, with any Content-Type, to every endpoint that reads one, as a
// script with the admin key, and checks that:
//   - the answer is never a 5xx (the backend never fails here) and never a panic;
//   - a refusal is Google's error envelope as JSON, its code the status, with a status and a
//     message, and changes nothing in the backend;
//   - a success is a JSON answer (the export's text aside);
//   - no answer holds the admin key or an upstream key the request did not send (the export,
//     which answers the keys, aside).
func FuzzAdminAPI(f *testing.F) {
	for i, b := range fuzzBodies {
		for r := range fuzzRoutes {
			if i%len(fuzzRoutes) == r || i >= 11 {
				f.Add(uint8(r), uint8(0), []byte(b))
			}
		}
	}
	f.Add(uint8(0), uint8(2), []byte(fuzzBodies[0]))
	f.Add(uint8(5), uint8(5), []byte(`{"upstream":"https://x.example"}`))
	upstream := contractKeys(0, 3)
	f.Fuzz(func(t *testing.T, route, ct uint8, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		b := newFakeBackend(contractAdminKey, upstream...)
		h := &Handler{Prefix: "/admin", Backend: b, Now: func() time.Time { return time.Unix(1_750_000_000, 0) }}
		before := backendState(b)
		req := httptest.NewRequest(rt.method, rt.path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+contractAdminKey)
		if c := fuzzContentTypes[int(ct)%len(fuzzContentTypes)]; c != "" {
			req.Header.Set("Content-Type", c)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		code, out := rec.Code, rec.Body.Bytes()
		export := rt.path == "/admin/api/keys/export" && code == http.StatusOK
		if code >= 500 {
			t.Fatalf("%s %s %q: %d %s", rt.method, rt.path, body, code, out)
		}
		if !export {
			if ct := rec.Header().Get("Content-Type"); ct != "application/json; charset=UTF-8" {
				t.Fatalf("%s %s %q: %d with Content-Type %q", rt.method, rt.path, body, code, ct)
			}
			if !json.Valid(out) {
				t.Fatalf("%s %s %q: %d answers no JSON: %q", rt.method, rt.path, body, code, out)
			}
			for _, s := range append([]string{contractAdminKey}, upstream...) {
				if bytes.Contains(out, []byte(s)) && !bytes.Contains(body, []byte(s)) {
					t.Fatalf("%s %s %q: the answer shows the secret %s…: %s", rt.method, rt.path, body, s[:10], out)
				}
			}
		}
		if code < 300 {
			return
		}
		var e struct {
			Error struct {
				Code    int    `json:"code"`
				Status  string `json:"status"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(out, &e); err != nil || e.Error.Code != code || e.Error.Status == "" || e.Error.Message == "" {
			t.Fatalf("%s %s %q: %d answers no error envelope: %s", rt.method, rt.path, body, code, out)
		}
		if after := backendState(b); after != before {
			t.Fatalf("%s %s %q: refused with %d, yet the backend changed:\n%s\n%s", rt.method, rt.path, body, code, before, after)
		}
	})
}

// fuzzStrictBody is a request struct of the kinds the handlers decode into.
type fuzzStrictBody struct {
	IDs     []int64 `json:"ids"`
	Project *string `json:"project"`
	On      *bool   `json:"on"`
}

// FuzzReadJSON checks the body decoders readJSON and readStrict on any body and Content-Type:
//   - a success writes nothing to the answer; a failure answers Google's envelope with 400,
//     413 or 415;
//   - 415 exactly when a non-blank body is not declared application/json;
//   - readStrict refuses a member that is no field of the struct (even matched without case);
//   - a body made of the struct's own fields, encoded by encoding/json, decodes back to them.
func FuzzReadJSON(f *testing.F) {
	for _, b := range fuzzBodies {
		f.Add([]byte(b), "application/json", true, "p", int64(1))
		f.Add([]byte(b), "application/json", false, "p", int64(1))
	}
	f.Add([]byte(`{"IDS":[1],"Project":"x","on":true,"on":false}`), "application/json; charset=utf-8", true, "label \u00e9", int64(-5))
	f.Add([]byte(`{"ids":[1e3]}`), "text/json", true, "\xff", int64(0))
	f.Add([]byte(" \t\n"), "text/plain", true, "", int64(9))
	f.Fuzz(func(t *testing.T, body []byte, ct string, strict bool, project string, id int64) {
		decode := readJSON
		if strict {
			decode = readStrict
		}
		run := func(body []byte) (bool, *httptest.ResponseRecorder, fuzzStrictBody) {
			req := httptest.NewRequest("POST", "/admin/api/x", bytes.NewReader(body))
			req.Header.Set("Content-Type", ct)
			rec := httptest.NewRecorder()
			var v fuzzStrictBody
			return decode(rec, req, &v), rec, v
		}
		ok, rec, _ := run(body)
		if ok {
			if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
				t.Fatalf("%q decoded, yet the answer was written: %d %s", body, rec.Code, rec.Body.Bytes())
			}
		} else {
			var e struct {
				Error struct {
					Code    int    `json:"code"`
					Status  string `json:"status"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code != rec.Code || e.Error.Message == "" ||
				(rec.Code != 400 && rec.Code != 413 && rec.Code != 415) {
				t.Fatalf("%q refused with %d: %s", body, rec.Code, rec.Body.Bytes())
			}
		}
		mt, _, err := mime.ParseMediaType(ct)
		declared := err == nil && mt == "application/json"
		if unsupported := len(bytes.TrimSpace(body)) > 0 && !declared; unsupported != (!ok && rec.Code == 415) {
			t.Fatalf("%q sent as %q: %v, %d", body, ct, ok, rec.Code)
		}
		if !declared {
			return
		}
		if strict && ok {
			var members map[string]json.RawMessage
			if json.NewDecoder(bytes.NewReader(body)).Decode(&members) == nil {
				for name := range members {
					switch strings.ToLower(name) {
					case "ids", "project", "on":
					default:
						t.Fatalf("readStrict took %q with the member %q", body, name)
					}
				}
			}
		}
		on := id%2 == 0
		want := fuzzStrictBody{IDs: []int64{id}, Project: &project, On: &on}
		enc, _ := json.Marshal(want)
		ok, rec, got := run(enc)
		if want.Project != nil && !utf8.ValidString(project) {
			// encoding/json writes invalid UTF-8 as U+FFFD.
			want.Project = got.Project
		}
		if !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %v %d %s, decoded %+v", enc, ok, rec.Code, rec.Body.Bytes(), got)
		}
	})
}
