package admin

// The contract of access key policies and of usage per access key: POST and PATCH
// P/api/access-keys with policy fields, GET P/api/access-keys/{id}/usage, and the
// access_key_id filter and access_keys table of GET P/api/stats. Over real HTTP against
// fakeBackend, as the rest of the contract.

import (
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// accessKeyFields are the fields every access key shows; its policy's fields come on top,
// each only when set, and "usage" when a limit is set.
var accessKeyFields = []string{"id", "label", "enabled", "created_at", "last_used_at", "expired"}

// withFields returns accessKeyFields and more.
func withFields(more ...string) []string { return append(slices.Clone(accessKeyFields), more...) }

// lastAdd returns the policy of the last AddAccessKey call.
func (b *fakeBackend) lastAdd() tenant.Policy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accessAdds[len(b.accessAdds)-1]
}

// updates returns the UpdateAccessKey calls made so far.
func (b *fakeBackend) updateCalls() []accessUpdate {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.accessUpdates)
}

// policyOf returns the stored policy of an access key.
func (b *fakeBackend) policyOf(id int64) tenant.Policy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return clonePolicy(b.accessKey(id).Policy)
}

// asJSON re-encodes a decoded JSON value, for comparisons.
func asJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// sameJSON tells whether the decoded value got is the JSON text want (members in any order).
func sameJSON(t *testing.T, got any, want string) bool {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad JSON in the test: %v: %s", err, want)
	}
	return asJSON(got) == asJSON(w)
}

// TestContractAccessKeyPolicyCreate: POST P/api/access-keys takes every policy field, in each
// of its forms, hands the checked policy to the backend and answers it at the top level with
// the live usage of each limit; a key without a policy shows none of its fields.
func TestContractAccessKeyPolicyCreate(t *testing.T) {
	c := newContract(t, 1)
	c.b.mu.Lock()
	c.b.loc = time.FixedZone("UTC+2", 2*3600)
	c.b.mu.Unlock()
	b := c.login()
	path := "/admin/api/access-keys"
	expires := c.clock().Add(48 * time.Hour)

	m := b.ok(201, "POST", path, fmt.Sprintf(`{"label":" team ","models":["gemini-2.5-flash*","models/gemini-2.0-*"],"rpm":60,"rpd":"5k",
		"tpm":"200K","token_budget":{"limit":"10M","period":"weekly"},"concurrency":8,"expires_at":%q,"shared":true}`, expires.Format(time.RFC3339)))
	hasFields(t, "created access key", m, withFields("key", "models", "rpm", "rpd", "tpm", "token_budget", "concurrency", "expires_at", "shared", "usage")...)
	want := tenant.Policy{Models: []string{"gemini-2.5-flash*", "gemini-2.0-*"}, RPM: 60, RPD: 5000, TPM: 200000,
		TokenBudget: &tenant.Budget{Limit: 10_000_000, Period: tenant.Weekly}, Concurrency: 8, ExpiresAt: expires, Shared: true}
	if got := c.b.lastAdd(); !reflect.DeepEqual(asJSON(got), asJSON(want)) || !got.ExpiresAt.Equal(expires) {
		t.Errorf("the backend was given the policy %s, want %s", asJSON(got), asJSON(want))
	}
	if m["label"] != "team" || m["rpm"] != 60.0 || m["rpd"] != 5000.0 || m["tpm"] != 200000.0 || m["concurrency"] != 8.0 ||
		m["shared"] != true || m["expired"] != false || asJSON(m["models"]) != `["gemini-2.5-flash*","gemini-2.0-*"]` ||
		asJSON(m["token_budget"]) != `{"limit":10000000,"period":"weekly"}` {
		t.Errorf("created access key %v", m)
	}
	// Times show in the configured zone.
	if m["expires_at"] != expires.In(time.FixedZone("UTC+2", 2*3600)).Format(time.RFC3339) {
		t.Errorf("expires_at %v, want %s in the configured zone", m["expires_at"], expires)
	}
	usage := m["usage"].(map[string]any)
	hasFields(t, "usage", usage, "rpm", "rpd", "tpm", "concurrency", "token_budget")
	for name, lim := range map[string]float64{"rpm": 60, "rpd": 5000, "tpm": 200000, "concurrency": 8, "token_budget": 10_000_000} {
		u := usage[name].(map[string]any)
		hasFields(t, "usage of "+name, u, "used", "limit", "resets_at")
		if u["used"] != 0.0 || u["limit"] != lim {
			t.Errorf("usage of %s: %v, want 0 of %v", name, u, lim)
		}
		if sliding := name == "rpm" || name == "tpm" || name == "concurrency"; sliding != (u["resets_at"] == nil) {
			t.Errorf("usage of %s resets at %v", name, u["resets_at"])
		}
	}
	// The list shows the same.
	all := list(t, b.ok(200, "GET", path, ""), "access_keys")
	if len(all) != 2 || asJSON(all[1]["token_budget"]) != `{"limit":10000000,"period":"weekly"}` || all[1]["key"] != nil {
		t.Errorf("listed %v", all)
	}

	// Other forms: models as text, counts as numbers or text, the budget as text with the
	// period by default daily, nulls and zeros as "not set".
	m = b.ok(201, "POST", path, `{"models":"gemini-2.5-pro, gemini-2.0-*  x","rpm":0,"rpd":null,"tpm":"","token_budget":"2M","expires_at":null,"shared":false}`)
	hasFields(t, "second access key", m, withFields("key", "models", "token_budget", "usage")...)
	if asJSON(m["models"]) != `["gemini-2.5-pro","gemini-2.0-*","x"]` || asJSON(m["token_budget"]) != `{"limit":2000000,"period":"daily"}` {
		t.Errorf("second access key %v", m)
	}
	m = b.ok(201, "POST", path, `{"token_budget":{"limit":3000,"period":"monthly"},"models":[],"expires_at":""}`)
	hasFields(t, "third access key", m, withFields("key", "token_budget", "usage")...)
	m = b.ok(201, "POST", path, `{"label":"plain","token_budget":{"limit":0}}`)
	hasFields(t, "a key without a policy", m, withFields("key")...)
	if p := c.b.lastAdd(); !p.IsZero() {
		t.Errorf("a key without a policy was given %s", asJSON(p))
	}
	m = b.ok(201, "POST", path, "")
	hasFields(t, "a key from an empty body", m, withFields("key")...)
}

// TestContractAccessKeyPolicyRefused: every bad field of POST P/api/access-keys is a 400 naming
// it (all of them at once), and no key is created.
func TestContractAccessKeyPolicyRefused(t *testing.T) {
	c := newContract(t, 1)
	b := c.login()
	path := "/admin/api/access-keys"
	past := c.clock().Add(-time.Minute).Format(time.RFC3339)
	for body, fields := range map[string][]string{
		`{"models":5}`:                        {"models"},
		`{"models":[1]}`:                      {"models"},
		`{"models":["ok","has\"quote"]}`:      {"models"},
		`{"models":["a",""]}`:                 {"models"},
		`{"models":{"a":1}}`:                  {"models"},
		`{"rpm":-1}`:                          {"rpm"},
		`{"rpm":1.5}`:                         {"rpm"},
		`{"rpm":"lots"}`:                      {"rpm"},
		`{"rpm":"-5"}`:                        {"rpm"},
		`{"rpm":2000000}`:                     {"rpm"},
		`{"rpm":true}`:                        {"rpm"},
		`{"rpm":99999999999999999999}`:        {"rpm"},
		`{"rpd":-5}`:                          {"rpd"},
		`{"tpm":1e3}`:                         {"tpm"},
		`{"tpm":[1]}`:                         {"tpm"},
		`{"concurrency":-1}`:                  {"concurrency"},
		`{"concurrency":"2000P"}`:             {"concurrency"},
		`{"token_budget":5}`:                  {"token_budget"},
		`{"token_budget":[]}`:                 {"token_budget"},
		`{"token_budget":{"period":"daily"}}`: {"token_budget"},
		`{"token_budget":{"limit":"x"}}`:      {"token_budget"},
		`{"token_budget":{"limit":-3}}`:       {"token_budget"},
		`{"token_budget":{"limit":5,"period":"hourly"}}`: {"token_budget"},
		`{"token_budget":{"limit":5,"extra":1}}`:         {"token_budget"},
		`{"token_budget":"10M daily please"}`:            {"token_budget"},
		`{"token_budget":"10M yearly"}`:                  {"token_budget"},
		`{"expires_at":"tomorrow"}`:                      {"expires_at"},
		`{"expires_at":"2030-01-31"}`:                    {"expires_at"},
		`{"expires_at":1893456000}`:                      {"expires_at"},
		`{"expires_at":"` + past + `"}`:                  {"expires_at"},
		`{"shared":"yes"}`:                               {"shared"},
		`{"shared":1}`:                                   {"shared"},
		`{"label":5}`:                                    {"label"},
		`{"label":"a\nb"}`:                               {"label"},
		`{"policy":{"rpm":5}}`:                           {"policy"},
		`{"Rpm":5}`:                                      {"Rpm"},
		`{"rpm":-1,"tpm":"x","shared":1,"nope":true,"label":7,"expires_at":"` + past + `"}`: {"expires_at", "label", "nope", "rpm", "shared", "tpm"},
	} {
		b.bad(fields, "POST", path, body)
	}
	// Several problems of one field are one violation saying each.
	e := b.fails(400, "INVALID_ARGUMENT", "POST", path, `{"token_budget":{"limit":"4611686018427387904","period":"hourly"}}`)
	if v := e.Error.Details[0].Violations; len(v) != 1 || v[0].Field != "token_budget" {
		t.Errorf("violations %+v, want one for token_budget", v)
	}
	for _, body := range []string{`[]`, `null`, `"x"`, `{} {}`, `{"rpm":5}x`, `{"rpm":`, `5`} {
		b.fails(400, "INVALID_ARGUMENT", "POST", path, body)
	}
	if n := c.b.changes("AddAccessKey"); n != 0 {
		t.Errorf("refused bodies created %d access keys", n)
	}
	if all := list(t, b.ok(200, "GET", path, ""), "access_keys"); len(all) != 1 {
		t.Errorf("access keys after refused creations: %v", all)
	}
}

// TestContractAccessKeyPatch: PATCH P/api/access-keys/{id} changes the fields present and
// keeps the others, null or 0 clears; an unknown id is a 404, an unknown field or a bad value a
// 400, and then nothing changes; an empty body changes nothing. Writes from another site are
// refused as every cookie write is.
func TestContractAccessKeyPatch(t *testing.T) {
	c := newContract(t, 1)
	u, _ := url.Parse(c.url)
	b := c.login()
	created := b.ok(201, "POST", "/admin/api/access-keys", `{"label":"team","models":["gemini-2.5-*"],"rpm":60,"tpm":1000,
		"token_budget":{"limit":"10M","period":"weekly"},"concurrency":4,"shared":true}`)
	id := int64(created["id"].(float64))
	path := fmt.Sprintf("/admin/api/access-keys/%d", id)
	policy := c.b.policyOf(id)

	// One field: only it changes, in the store and in the answer.
	m := b.ok(200, "PATCH", path, `{"rpm":3}`, "Origin", "http://"+u.Host)
	hasFields(t, "patched access key", m, withFields("models", "rpm", "tpm", "token_budget", "concurrency", "shared", "usage")...)
	if m["rpm"] != 3.0 || m["tpm"] != 1000.0 || m["label"] != "team" || asJSON(m["models"]) != `["gemini-2.5-*"]` ||
		asJSON(m["token_budget"]) != `{"limit":10000000,"period":"weekly"}` || m["shared"] != true || m["concurrency"] != 4.0 {
		t.Errorf("after PATCH rpm: %v", m)
	}
	if u := m["usage"].(map[string]any)["rpm"].(map[string]any); u["limit"] != 3.0 {
		t.Errorf("usage of rpm after PATCH: %v", u)
	}
	policy.RPM = 3
	if got := c.b.policyOf(id); asJSON(got) != asJSON(policy) {
		t.Errorf("stored policy %s, want %s", asJSON(got), asJSON(policy))
	}
	calls := c.b.updateCalls()
	if len(calls) != 1 || calls[0].id != id || calls[0].label != nil || calls[0].policy == nil || asJSON(*calls[0].policy) != asJSON(policy) {
		t.Fatalf("UpdateAccessKey calls %+v", calls)
	}
	// The label alone leaves the policy to the backend as it is.
	m = b.ok(200, "PATCH", path, `{"label":"  renamed "}`)
	if m["label"] != "renamed" || m["rpm"] != 3.0 {
		t.Errorf("after PATCH label: %v", m)
	}
	if calls := c.b.updateCalls(); len(calls) != 2 || calls[1].label == nil || *calls[1].label != "renamed" || calls[1].policy != nil {
		t.Errorf("UpdateAccessKey calls %+v", calls)
	}
	// Null and 0 clear; the list shows it.
	m = b.ok(200, "PATCH", path, `{"models":null,"tpm":0,"token_budget":null,"shared":false,"rpm":"","concurrency":null}`)
	hasFields(t, "cleared access key", m, withFields()...)
	if got := c.b.policyOf(id); !got.IsZero() {
		t.Errorf("stored policy %s after clearing everything", asJSON(got))
	}
	if all := list(t, b.ok(200, "GET", "/admin/api/access-keys", ""), "access_keys"); asJSON(all[1]) != asJSON(m) {
		t.Errorf("listed %v, answered %v", all[1], m)
	}
	// An expiry in the past retires the key now; null brings it back.
	past := c.clock().Add(-time.Hour).UTC().Format(time.RFC3339)
	if m := b.ok(200, "PATCH", path, `{"expires_at":"`+past+`"}`); m["expired"] != true || m["expires_at"] != past {
		t.Errorf("after an expiry in the past: %v", m)
	}
	if m := b.ok(200, "PATCH", path, `{"expires_at":null,"token_budget":"5k"}`); m["expired"] != false || m["expires_at"] != nil ||
		asJSON(m["token_budget"]) != `{"limit":5000,"period":"daily"}` {
		t.Errorf("after clearing the expiry: %v", m)
	}
	// A budget without a period keeps the period the key's budget has.
	if m := b.ok(200, "PATCH", path, `{"token_budget":{"limit":"7k"}}`); asJSON(m["token_budget"]) != `{"limit":7000,"period":"daily"}` {
		t.Errorf("after a budget without a period: %v", m["token_budget"])
	}
	b.ok(200, "PATCH", path, `{"token_budget":{"limit":"7k","period":"monthly"}}`)
	if m := b.ok(200, "PATCH", path, `{"token_budget":"8k"}`); asJSON(m["token_budget"]) != `{"limit":8000,"period":"monthly"}` {
		t.Errorf("after a budget without a period: %v", m["token_budget"])
	}
	b.ok(200, "PATCH", path, `{"token_budget":"5k daily"}`)
	// The Caddyfile's key takes a policy too.
	if m := b.ok(200, "PATCH", "/admin/api/access-keys/1", `{"rpd":100}`); m["rpd"] != 100.0 || m["label"] != "Caddyfile" {
		t.Errorf("Caddyfile key after PATCH: %v", m)
	}

	// Refused: nothing changes, the backend is not called.
	before := c.b.changes("UpdateAccessKey")
	policy = c.b.policyOf(id)
	for body, fields := range map[string][]string{
		`{"rpm":5,"color":"red"}`:                                {"color"},
		`{"rpm":-1,"label":"x"}`:                                 {"rpm"},
		`{"rpm":5,"token_budget":{"limit":5,"period":"hourly"}}`: {"token_budget"},
		`{"models":["bad glob"]}`:                                {"models"},
		`{"expires_at":"soon","shared":"no"}`:                    {"expires_at", "shared"},
		`{"enabled":false}`:                                      {"enabled"},
		`{"key":"gs-mine"}`:                                      {"key"},
	} {
		b.bad(fields, "PATCH", path, body)
	}
	for _, body := range []string{`{"rpm":5} {"rpm":6}`, `{"rpm":5}garbage`, `[{"rpm":5}]`, `null`} {
		b.fails(400, "INVALID_ARGUMENT", "PATCH", path, body)
	}
	b.fails(404, "NOT_FOUND", "PATCH", "/admin/api/access-keys/99", `{"rpm":5}`)
	b.fails(404, "NOT_FOUND", "PATCH", "/admin/api/access-keys/99", ``)
	b.fails(403, "PERMISSION_DENIED", "PATCH", path, `{"rpm":5}`, "Origin", "https://evil.example")
	if n := c.b.changes("UpdateAccessKey"); n != before {
		t.Errorf("refused PATCHes called UpdateAccessKey %d times", n-before)
	}
	if got := c.b.policyOf(id); asJSON(got) != asJSON(policy) {
		t.Errorf("a refused PATCH changed the policy to %s", asJSON(got))
	}
	// An empty body or {} changes nothing and answers the key as it is.
	for _, body := range []string{``, `{}`} {
		if m := b.ok(200, "PATCH", path, body); m["label"] != "renamed" || asJSON(m["token_budget"]) != `{"limit":5000,"period":"daily"}` {
			t.Errorf("PATCH %q answered %v", body, m)
		}
	}
	if n := c.b.changes("UpdateAccessKey"); n != before {
		t.Errorf("an empty PATCH called UpdateAccessKey")
	}
	// The Bearer admin key needs no Origin check.
	c.bearer().ok(200, "PATCH", path, `{"rpm":7}`, "Origin", "https://evil.example")
	if got := c.b.policyOf(id); got.RPM != 7 {
		t.Errorf("rpm %d after a Bearer PATCH", got.RPM)
	}
}

// usageRows are request log rows of three access keys (1, 2 and 3, which is deleted) and of
// none, at times before now, with the limits that refused some of key 2's.
func usageRows(c *contract, now time.Time) {
	row := func(ago time.Duration, key int64, model string, status int, tokens int64) store.RequestLog {
		return store.RequestLog{Time: now.Add(-ago), AccessKeyID: key, Model: model, Status: status,
			PromptTokens: tokens, CandidatesTokens: 2 * tokens, TotalTokens: 3 * tokens}
	}
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.b.requests = []store.RequestLog{
		row(20*24*time.Hour, 2, "gemini-2.0-flash", 200, 100), // 30d only
		row(3*24*time.Hour, 2, "gemini-2.5-pro", 200, 10),     // 7d and 30d
		row(5*time.Hour, 2, "gemini-2.5-pro", 200, 1),
		row(30*time.Minute, 2, "gemini-2.5-flash", 429, 0), // refused: rpm
		row(20*time.Minute, 2, "gemini-2.5-flash", 429, 0), // refused: rpm
		row(10*time.Minute, 2, "gemini-2.5-flash", 200, 2),
		row(9*time.Minute, 2, "gemini-2.5-flash", 429, 0), // refused: token_budget
		row(2*time.Hour, 1, "gemini-2.5-flash", 200, 1000),
		row(90*time.Minute, 1, "gemini-2.5-flash", 500, 0),
		row(time.Hour, 3, "gemini-2.5-pro", 200, 5),
		row(40*time.Minute, 0, "", 401, 0),
	}
	c.b.limitHits = map[int]string{3: "rpm", 4: "rpm", 6: "token_budget"}
}

// newUsageContract serves the API with access keys 1 (the Caddyfile's, no policy), 2 ("team",
// rpm 10 and a daily token budget, 4 requests in its minute and 1234 tokens of its budget used
// now) and 3 (deleted), the request rows of usageRows, in the zone UTC+2 at 17:40.
func newUsageContract(t *testing.T) (*contract, time.Time) {
	c := newContract(t, 1)
	now := time.Date(2026, 3, 10, 15, 40, 0, 0, time.UTC)
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
	b := c.bearer()
	b.ok(201, "POST", "/admin/api/access-keys", `{"label":"team","rpm":10,"token_budget":"1M"}`)
	b.ok(201, "POST", "/admin/api/access-keys", `{"label":"gone"}`)
	b.ok(200, "DELETE", "/admin/api/access-keys/3", "")
	c.b.mu.Lock()
	c.b.loc = time.FixedZone("UTC+2", 2*3600)
	c.b.live[2] = map[string]int64{"rpm": 4, "token_budget": 1234}
	c.b.access[0].LastUsedAt = Time(now.Add(-90 * time.Minute).In(c.b.loc))
	c.b.access[1].LastUsedAt = Time(now.Add(-9 * time.Minute).In(c.b.loc))
	c.b.mu.Unlock()
	usageRows(c, now)
	return c, now
}

// TestContractAccessKeyUsage: GET P/api/access-keys/{id}/usage answers one access key's
// figures of a range (its requests only), the limits that refused it, its live usage, trend
// and models; an unknown id is a 404, a bad range a 400.
func TestContractAccessKeyUsage(t *testing.T) {
	c, now := newUsageContract(t)
	b := c.bearer()
	for _, r := range []struct {
		rng, from                           string
		points                              int
		requests, failures, tokens, limited float64
		hits                                string
		models                              []string
	}{
		{"", "2026-03-09T18:00:00+02:00", 24, 5, 3, 9, 3, `{"rpm":2,"token_budget":1}`, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"24h", "2026-03-09T18:00:00+02:00", 24, 5, 3, 9, 3, `{"rpm":2,"token_budget":1}`, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"7d", "2026-03-03T18:00:00+02:00", 28, 6, 3, 39, 3, `{"rpm":2,"token_budget":1}`, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		{"30d", "2026-02-09T00:00:00+02:00", 30, 7, 3, 339, 3, `{"rpm":2,"token_budget":1}`, []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"}},
	} {
		m := b.ok(200, "GET", "/admin/api/access-keys/2/usage?range="+r.rng, "")
		hasFields(t, "usage", m, "access_key_id", "label", "range", "bucket", "timezone", "from", "to", "requests", "failures",
			"tokens", "limited", "limits_hit", "last_used_at", "usage", "trend", "models")
		rng := cmpOr(r.rng, "24h")
		if m["access_key_id"] != 2.0 || m["label"] != "team" || m["range"] != rng || m["from"] != r.from || m["timezone"] != "UTC+2" ||
			m["last_used_at"] != "2026-03-10T17:31:00+02:00" {
			t.Errorf("range %q: %v", r.rng, m)
		}
		if m["requests"] != r.requests || m["failures"] != r.failures || m["limited"] != r.limited || asJSON(m["limits_hit"]) != r.hits {
			t.Errorf("range %q: requests %v failures %v limited %v limits_hit %v", r.rng, m["requests"], m["failures"], m["limited"], m["limits_hit"])
		}
		if tok := m["tokens"].(map[string]any); tok["total"] != r.tokens || tok["prompt"] != r.tokens/3 || tok["candidates"] != 2*r.tokens/3 {
			t.Errorf("range %q: tokens %v", r.rng, tok)
		}
		if !sameJSON(t, m["usage"], `{"rpm":{"used":4,"limit":10,"resets_at":null},"token_budget":{"used":1234,"limit":1000000,"resets_at":"2026-03-11T00:00:00+02:00"}}`) {
			t.Errorf("range %q: live usage %s", r.rng, asJSON(m["usage"]))
		}
		trend := list(t, m, "trend")
		var succ, fail, tokens float64
		for _, p := range trend {
			succ, fail, tokens = succ+p["success"].(float64), fail+p["failure"].(float64), tokens+p["tokens"].(float64)
		}
		if len(trend) != r.points || succ != r.requests-r.failures || fail != r.failures || tokens != r.tokens {
			t.Errorf("range %q: %d points summing to %v/%v/%v", r.rng, len(trend), succ, fail, tokens)
		}
		var names []string
		for _, mo := range list(t, m, "models") {
			names = append(names, mo["model"].(string))
		}
		if !slices.Equal(names, r.models) {
			t.Errorf("range %q: models %v, want %v", r.rng, names, r.models)
		}
	}
	c.b.mu.Lock()
	for _, id := range c.b.usageCalls {
		if id != 2 {
			t.Errorf("the usage of access key 2 asked the backend for access key %d", id)
		}
	}
	c.b.mu.Unlock()
	// A key without a policy, and without requests in the range.
	m := b.ok(200, "GET", "/admin/api/access-keys/1/usage?range=24h", "")
	if m["requests"] != 2.0 || m["failures"] != 1.0 || asJSON(m["usage"]) != `{}` || asJSON(m["limits_hit"]) != `{}` || m["limited"] != 0.0 {
		t.Errorf("usage of the Caddyfile key: %v", m)
	}
	c.advance(40 * 24 * time.Hour)
	m = b.ok(200, "GET", "/admin/api/access-keys/2/usage?range=30d", "")
	if m["requests"] != 0.0 || asJSON(m["limits_hit"]) != `{}` || len(list(t, m, "models")) != 0 {
		t.Errorf("usage without requests: %v", m)
	}
	_ = now
	b.fails(404, "NOT_FOUND", "GET", "/admin/api/access-keys/3/usage", "")
	b.fails(404, "NOT_FOUND", "GET", "/admin/api/access-keys/99/usage", "")
	for _, q := range []string{"range=1y", "range=24H"} {
		b.bad([]string{"range"}, "GET", "/admin/api/access-keys/2/usage?"+q, "")
	}
	a := b.do("POST", "/admin/api/access-keys/2/usage", "")
	decodeEnvelope(t, a, 405, "METHOD_NOT_ALLOWED")
	if a.header.Get("Allow") != "GET" {
		t.Errorf("Allow %q", a.header.Get("Allow"))
	}
	if a := b.do("GET", "/admin/api/access-keys/2", ""); a.header.Get("Allow") != "DELETE, PATCH" {
		t.Errorf("GET access-keys/2: %d, Allow %q", a.status, a.header.Get("Allow"))
	}
}

// cmpOr returns s, or def when s is empty.
func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestContractStatsPerAccessKey: GET P/api/stats?access_key_id= limits the trend, the totals
// and the models to one access key; access_keys lists every key with its figures of the range
// whatever the filter, keys deleted since as "(deleted)", requests without a key as "(no
// access key)", most requests first.
func TestContractStatsPerAccessKey(t *testing.T) {
	c, _ := newUsageContract(t)
	b := c.login()
	all := b.ok(200, "GET", "/admin/api/stats", "")
	if all["access_key_id"] != 0.0 || all["requests"].(map[string]any)["total"] != 9.0 {
		t.Errorf("all keys: access_key_id %v, requests %v", all["access_key_id"], all["requests"])
	}
	table := list(t, all, "access_keys")
	want := `[{"id":2,"label":"team","requests":5,"failures":3,"tokens":9,"limited":3,"limits_hit":{"rpm":2,"token_budget":1},"last_used_at":"2026-03-10T17:31:00+02:00"},` +
		`{"id":1,"label":"Caddyfile","requests":2,"failures":1,"tokens":3000,"limited":0,"limits_hit":{},"last_used_at":"2026-03-10T16:10:00+02:00"},` +
		`{"id":0,"label":"(no access key)","requests":1,"failures":1,"tokens":0,"limited":0,"limits_hit":{},"last_used_at":null},` +
		`{"id":3,"label":"(deleted)","requests":1,"failures":0,"tokens":15,"limited":0,"limits_hit":{},"last_used_at":null}]`
	if !sameJSON(t, table, want) {
		t.Errorf("access_keys\n%s\nwant\n%s", asJSON(table), want)
	}
	hasFields(t, "an access key's line", table[0], "id", "label", "requests", "failures", "tokens", "limited", "limits_hit", "last_used_at")

	for q, w := range map[string]struct {
		total, failure, tokens float64
		models                 []string
	}{
		"access_key_id=2":          {5, 3, 9, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
		"access_key_id=1":          {2, 1, 3000, []string{"gemini-2.5-flash"}},
		"access_key_id=3":          {1, 0, 15, []string{"gemini-2.5-pro"}},
		"access_key_id=99":         {0, 0, 0, nil},
		"access_key_id=0":          {9, 5, 3024, []string{"gemini-2.5-flash", "gemini-2.5-pro", ""}},
		"access_key_id=2&range=7d": {6, 3, 39, []string{"gemini-2.5-flash", "gemini-2.5-pro"}},
	} {
		m := b.ok(200, "GET", "/admin/api/stats?"+q, "")
		req := m["requests"].(map[string]any)
		if req["total"] != w.total || req["failure"] != w.failure || m["tokens"].(map[string]any)["total"] != w.tokens {
			t.Errorf("?%s: requests %v tokens %v", q, req, m["tokens"])
		}
		var succ, fail float64
		for _, p := range list(t, m, "trend") {
			succ, fail = succ+p["success"].(float64), fail+p["failure"].(float64)
		}
		if succ+fail != w.total || fail != w.failure {
			t.Errorf("?%s: the trend sums to %v/%v", q, succ, fail)
		}
		var names []string
		for _, mo := range list(t, m, "models") {
			names = append(names, mo["model"].(string))
		}
		if !slices.Equal(names, w.models) {
			t.Errorf("?%s: models %v, want %v", q, names, w.models)
		}
		if id := strings.TrimPrefix(strings.Split(q, "&")[0], "access_key_id="); fmt.Sprint(m["access_key_id"]) != id {
			t.Errorf("?%s: access_key_id %v", q, m["access_key_id"])
		}
		// The table does not follow the filter (only the range).
		if !strings.Contains(q, "range") && !sameJSON(t, m["access_keys"], want) {
			t.Errorf("?%s: access_keys %s", q, asJSON(m["access_keys"]))
		}
	}
	week := list(t, b.ok(200, "GET", "/admin/api/stats?range=7d&access_key_id=1", ""), "access_keys")
	if week[0]["id"] != 2.0 || week[0]["requests"] != 6.0 {
		t.Errorf("the 7d table starts with %v", week[0])
	}
	for _, q := range []string{"access_key_id=x", "access_key_id=-1", "access_key_id=1.5", "access_key_id=", "access_key_id=2&range=1y"} {
		if q == "access_key_id=" {
			b.ok(200, "GET", "/admin/api/stats?"+q, "") // empty is all
			continue
		}
		field := "access_key_id"
		if strings.Contains(q, "range") {
			field = "range"
		}
		b.bad([]string{field}, "GET", "/admin/api/stats?"+q, "")
	}
}
