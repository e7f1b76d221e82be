package gateway

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// poolProjects returns the project label the live pool has for every key.
func poolProjects(e *adminEnv) map[int64]string {
	out := make(map[int64]string)
	for _, k := range e.c.pool.Keys(time.Now()) {
		out[k.ID] = k.Project
	}
	return out
}

// storeProjects returns the stored project label of every key.
func storeProjects(t *testing.T, e *adminEnv) map[int64]string {
	t.Helper()
	keys, err := e.c.store.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int64]string)
	for _, k := range keys {
		out[k.ID] = k.Project
	}
	return out
}

// wantProjects checks the labels in the store, in the pool (the proxy's view) and in the API.
func wantProjects(t *testing.T, e *adminEnv, want map[int64]string) {
	t.Helper()
	api := make(map[int64]string)
	for _, k := range list(t, e.bearer().wantStatus(200, "GET", "/admin/api/keys", ""), "keys") {
		api[int64(k["id"].(float64))] = k["project"].(string)
	}
	for name, got := range map[string]map[int64]string{"store": storeProjects(t, e), "pool": poolProjects(e), "API": api} {
		if len(got) != len(want) {
			t.Errorf("%s labels = %v, want %v", name, got, want)
			continue
		}
		for id, p := range want {
			if got[id] != p {
				t.Errorf("%s labels = %v, want %v", name, got, want)
				break
			}
		}
	}
}

func TestAdminKeyProjectRoutesNeedAuth(t *testing.T) {
	e := newAdminEnv(t, 2)
	anon := e.client(nil)
	anon.wantError(401, "UNAUTHENTICATED", "PATCH", "/admin/api/keys/1", `{"project":"p"}`)
	anon.wantError(401, "UNAUTHENTICATED", "POST", "/admin/api/keys/project", `{"ids":[1,2],"project":"p"}`)
	anon.wantError(401, "UNAUTHENTICATED", "GET", "/admin/api/keys?project=p", "")
	wantProjects(t, e, map[int64]string{1: "", 2: ""})

	// A session may label keys from the panel's own page only, as for every other change.
	u, _ := url.Parse(e.url)
	self := "http://" + u.Host
	browser := e.login()
	browser.wantError(403, "PERMISSION_DENIED", "PATCH", "/admin/api/keys/1", `{"project":"evil"}`, "Origin", "https://evil.example")
	browser.wantError(403, "PERMISSION_DENIED", "POST", "/admin/api/keys/project", `{"ids":[1,2],"project":"evil"}`, "Sec-Fetch-Site", "cross-site")
	wantProjects(t, e, map[int64]string{1: "", 2: ""})
	browser.wantStatus(200, "PATCH", "/admin/api/keys/1", `{"project":"mine"}`, "Origin", self, "Sec-Fetch-Site", "same-origin")
	browser.wantStatus(200, "POST", "/admin/api/keys/project", `{"ids":[2],"project":"mine"}`, "Origin", self)
	wantProjects(t, e, map[int64]string{1: "mine", 2: "mine"})
}

func TestAdminKeyProjects(t *testing.T) {
	e := newAdminEnv(t, 5)
	b := e.bearer()

	// One key.
	k := b.wantStatus(200, "PATCH", "/admin/api/keys/1", `{"project":" proj-a "}`)
	if k["id"] != 1.0 || k["project"] != "proj-a" || k["status"] != "active" {
		t.Errorf("PATCH answer %v, want key 1 labelled proj-a", k)
	}
	// Many keys; one already labelled so is not counted again.
	m := b.wantStatus(200, "POST", "/admin/api/keys/project", `{"ids":[2,3,4],"project":"proj-b"}`)
	if m["changed"] != 3.0 {
		t.Errorf("changed = %v, want 3", m["changed"])
	}
	if m := b.wantStatus(200, "POST", "/admin/api/keys/project", `{"ids":[3,4,4],"project":"proj-b"}`); m["changed"] != 0.0 {
		t.Errorf("the same label again: changed = %v, want 0", m["changed"])
	}
	wantProjects(t, e, map[int64]string{1: "proj-a", 2: "proj-b", 3: "proj-b", 4: "proj-b", 5: ""})

	// Filtering, the labels in use, and search.
	m = b.wantStatus(200, "GET", "/admin/api/keys?project=proj-b", "")
	if ids := keyIDs(list(t, m, "keys")); !slices.Equal(ids, []int64{2, 3, 4}) || m["total"] != 3.0 {
		t.Errorf("?project=proj-b: %v, total %v", ids, m["total"])
	}
	projects := list(t, m, "projects")
	if len(projects) != 2 || projects[0]["project"] != "proj-a" || projects[0]["keys"] != 1.0 ||
		projects[1]["project"] != "proj-b" || projects[1]["keys"] != 3.0 || m["unlabeled"] != 1.0 {
		t.Errorf("projects %v, unlabeled %v; want proj-a 1, proj-b 3 (over all keys), 1 unlabelled", projects, m["unlabeled"])
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?project=", ""), "keys")); !slices.Equal(ids, []int64{5}) {
		t.Errorf("?project= (no label): %v, want [5]", ids)
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?project=proj-b&status=active&page_size=2&page=2", ""), "keys")); !slices.Equal(ids, []int64{4}) {
		t.Errorf("?project with status and paging: %v, want [4]", ids)
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?project=nobody", ""), "keys")); len(ids) != 0 {
		t.Errorf("?project=nobody: %v", ids)
	}
	if ids := keyIDs(list(t, b.wantStatus(200, "GET", "/admin/api/keys?q=PROJ-A", ""), "keys")); !slices.Equal(ids, []int64{1}) {
		t.Errorf("search for a label: %v, want [1]", ids)
	}
	if f := fieldViolations(t, b.do("GET", "/admin/api/keys?project="+url.QueryEscape("a/b"), "")); !slices.Equal(f, []string{"project"}) {
		t.Errorf("a bad label filter names %v", f)
	}

	// Bad changes name the field and change nothing.
	for _, c := range []struct{ method, path, body, field string }{
		{"PATCH", "/admin/api/keys/1", `{"project":"two words"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"` + strings.Repeat("x", 65) + `"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"a/b"}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":7}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{}`, "project"},
		{"PATCH", "/admin/api/keys/1", `{"project":"ok","status":"disabled"}`, "status"},
		{"POST", "/admin/api/keys/project", `{"ids":[1,2],"project":"bad label"}`, "project"},
		{"POST", "/admin/api/keys/project", `{"ids":[1,2]}`, "project"},
		{"POST", "/admin/api/keys/project", `{"ids":[],"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":[0],"project":"x"}`, "ids"},
		{"POST", "/admin/api/keys/project", `{"ids":"1","project":"x"}`, "ids"},
	} {
		a := b.do(c.method, c.path, c.body)
		if a.status != 400 {
			t.Errorf("%s %s %s: %d %s, want 400", c.method, c.path, c.body, a.status, a.body)
			continue
		}
		if f := fieldViolations(t, a); !slices.Equal(f, []string{c.field}) {
			t.Errorf("%s %s %s names %v, want %s", c.method, c.path, c.body, f, c.field)
		}
	}
	wantProjects(t, e, map[int64]string{1: "proj-a", 2: "proj-b", 3: "proj-b", 4: "proj-b", 5: ""})

	// Unknown ids: 404, and nothing changes, not even for the known ones.
	b.wantError(404, "NOT_FOUND", "PATCH", "/admin/api/keys/999", `{"project":"x"}`)
	g := b.wantError(404, "NOT_FOUND", "POST", "/admin/api/keys/project", `{"ids":[5,999,998,999],"project":"x"}`)
	if !strings.Contains(g.Error.Message, "998, 999") {
		t.Errorf("404 message %q does not name the unknown ids", g.Error.Message)
	}
	wantProjects(t, e, map[int64]string{1: "proj-a", 2: "proj-b", 3: "proj-b", 4: "proj-b", 5: ""})

	// Clearing.
	if k := b.wantStatus(200, "PATCH", "/admin/api/keys/2", `{"project":""}`); k["project"] != "" {
		t.Errorf("cleared key %v", k)
	}
	if m := b.wantStatus(200, "POST", "/admin/api/keys/project", `{"ids":[3],"project":"  "}`); m["changed"] != 1.0 {
		t.Errorf("clearing with blanks: %v", m)
	}
	wantProjects(t, e, map[int64]string{1: "proj-a", 2: "", 3: "", 4: "proj-b", 5: ""})

	// A deleted key is unknown.
	b.wantStatus(200, "DELETE", "/admin/api/keys/5", "")
	b.wantError(404, "NOT_FOUND", "PATCH", "/admin/api/keys/5", `{"project":"x"}`)
	wantProjects(t, e, map[int64]string{1: "proj-a", 2: "", 3: "", 4: "proj-b"})
}

func TestAdminImportKeysWithProjects(t *testing.T) {
	e := newAdminEnv(t, 3)
	b := e.bearer()
	old := adminKeys(0, 3)
	fresh := adminKeys(10, 4)
	e.secret(fresh...)
	b.wantStatus(200, "PATCH", "/admin/api/keys/3", `{"project":"kept"}`)

	text := strings.Join([]string{
		fresh[0] + " proj-new",    // added with a label
		fresh[1],                  // added without
		old[0] + "\tproj-old",     // already stored: labelled now
		old[1],                    // already stored, no label: a duplicate, unchanged
		old[2],                    // already labelled, no label given: keeps its label
		fresh[2] + " bad/label",   // invalid: not added
		fresh[3] + " two words",   // free text: the key, no label
		fresh[0] + " proj-new",    // a repeat
		"AIzaSyCutShort proj-cut", // not a key
	}, "\n")
	m := b.wantStatus(200, "POST", "/admin/api/keys", fmt.Sprintf(`{"text":%q}`, text))
	if m["added"] != 3.0 || m["duplicates"] != 4.0 || m["invalid"] != 2.0 || m["relabeled"] != 1.0 {
		t.Errorf("import: %v; want 3 added, 4 duplicates (3 stored, 1 repeat), 2 invalid, 1 relabeled", m)
	}
	// Ids: 1-3 the old keys, 4 fresh[0], 5 fresh[1], 6 fresh[3].
	wantProjects(t, e, map[int64]string{1: "proj-old", 2: "", 3: "kept", 4: "proj-new", 5: "", 6: ""})
	keys, _ := e.c.store.Keys(context.Background())
	if len(keys) != 6 || keys[3].Secret != fresh[0] || keys[5].Secret != fresh[3] {
		t.Fatalf("stored keys after the import: %d", len(keys))
	}

	// The list form takes "key label" entries too.
	m = b.wantStatus(200, "POST", "/admin/api/keys", fmt.Sprintf(`{"keys":[%q,%q,%q]}`, old[1]+" proj-list", fresh[2]+" a/b", fresh[2]))
	if m["added"] != 1.0 || m["duplicates"] != 1.0 || m["invalid"] != 1.0 || m["relabeled"] != 1.0 {
		t.Errorf("list import: %v; want 1 added, 1 duplicate, 1 invalid, 1 relabeled", m)
	}
	wantProjects(t, e, map[int64]string{1: "proj-old", 2: "proj-list", 3: "kept", 4: "proj-new", 5: "", 6: "", 7: ""})

	// A deleted key pasted again with a label comes back with it (the tombstone goes).
	b.wantStatus(200, "DELETE", "/admin/api/keys/7", "")
	m = b.wantStatus(200, "POST", "/admin/api/keys", fmt.Sprintf(`{"text":%q}`, fresh[2]+" back"))
	if m["added"] != 1.0 {
		t.Errorf("re-adding a deleted key: %v", m)
	}
	wantProjects(t, e, map[int64]string{1: "proj-old", 2: "proj-list", 3: "kept", 4: "proj-new", 5: "", 6: "", 7: "back"}) // SQLite gives the freed id again
}
