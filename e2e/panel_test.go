package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"google.golang.org/genai"
)

// adminAPI calls the gateway's admin API with the admin key as a Bearer token and decodes the
// JSON answer into out (when not nil). It fails the test unless the status is want.
func (g *gateway) adminAPI(method, path, body string, want int, out any) {
	g.t.Helper()
	r := g.do(method, "/admin/api/"+path, http.Header{"Authorization": {"Bearer " + adminKey}}, body)
	if r.Status != want {
		g.t.Fatalf("%s /admin/api/%s: status %d, want %d; body: %s", method, path, r.Status, want, r.Body)
	}
	if out != nil {
		if err := json.Unmarshal(r.Body, out); err != nil {
			g.t.Fatalf("%s /admin/api/%s: %v; body: %s", method, path, err, r.Body)
		}
	}
}

// apiStats is the part of GET P/api/stats the dashboard shows in its cards.
type apiStats struct {
	Requests struct{ Total, Success, Failure int64 }   `json:"requests"`
	Tokens   struct{ Prompt, Candidates, Total int64 } `json:"tokens"`
	Keys     struct{ Active, Cooling, Disabled int64 } `json:"keys"`
}

// apiKey is the part of a key in GET P/api/keys the test looks at.
type apiKey struct {
	ID        int64  `json:"id"`
	Masked    string `json:"masked"`
	Status    string `json:"status"`
	Resources int    `json:"resources"`
}

func (g *gateway) apiKeys() []apiKey {
	g.t.Helper()
	var out struct {
		Keys []apiKey `json:"keys"`
	}
	g.adminAPI(http.MethodGet, "keys?page_size=500", "", http.StatusOK, &out)
	return out.Keys
}

// apiLogItem is the part of a request log row the test looks at.
type apiLogItem struct {
	Model  string `json:"model"`
	Status int    `json:"status"`
	Path   string `json:"path"`
	Error  string `json:"error"`
}

func (g *gateway) apiRequestLogs(query string) (items []apiLogItem, total int64) {
	g.t.Helper()
	var out struct {
		Items []apiLogItem `json:"items"`
		Total int64        `json:"total"`
	}
	g.adminAPI(http.MethodGet, "logs?kind=request&"+query, "", http.StatusOK, &out)
	return out.Items, out.Total
}

// digits keeps the digits of a figure as the panel shows it ("1,234" -> 1234).
func digits(t *testing.T, s string) int64 {
	t.Helper()
	d := regexp.MustCompile(`\D`).ReplaceAllString(s, "")
	n, err := strconv.ParseInt(d, 10, 64)
	if err != nil {
		t.Fatalf("figure %q is not a number", s)
	}
	return n
}

// pastedKey is a well-formed Gemini key ("AIza" and 35 more characters) for the import.
const pastedKey = "AIzaSyPANEL-e2e-pasted-key-000000000001"

// TestPanel drives the admin panel in headless Chromium against the real caddy, as an operator
// would: sign in, read the dashboard, add a key by pasting text and disable it, change a
// setting, find a proxied request in the logs, sign out. Each step is checked against the API.
func TestPanel(t *testing.T) {
	if len(pastedKey) != 39 {
		t.Fatalf("pastedKey has %d characters, want 39", len(pastedKey))
	}
	_, srv := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	g.secretKs = append(g.secretKs, pastedKey)

	for range 3 {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	if !eventually(10*time.Second, func() bool { _, n := g.apiRequestLogs(""); return n >= 3 }) {
		t.Fatal("the three requests did not reach the request log")
	}

	b := newBrowser(t, 1280, 900)
	panel := g.URL + "/admin/"

	// ---- sign in: a wrong key is refused on the form, the right one opens the dashboard
	b.do("opening the panel", chromedp.Navigate(panel), chromedp.WaitVisible(chromedp.ID("signin-key")))
	b.typeInto("#signin-key", "not-the-admin-key-at-all")
	b.click("#signin-submit")
	b.waitJS("the sign-in error", `!document.getElementById('signin-error').hidden`)
	b.typeInto("#signin-key", adminKey)
	b.click("#signin-submit")
	b.waitJS("the dashboard figures", `document.querySelector('[data-stat="requests-total"]') !== null`)

	// ---- dashboard figures match GET P/api/stats
	var st apiStats
	g.adminAPI(http.MethodGet, "stats?range=24h", "", http.StatusOK, &st)
	if st.Requests.Total < 3 {
		t.Fatalf("stats: %d requests, want at least 3", st.Requests.Total)
	}
	shown := evalJS[map[string]string](b, `Object.fromEntries([...document.querySelectorAll('[data-stat]')].map(e => [e.dataset.stat, e.textContent]))`)
	for name, want := range map[string]int64{
		"requests-total":   st.Requests.Total,
		"requests-success": st.Requests.Success,
		"requests-failure": st.Requests.Failure,
		"tokens-total":     st.Tokens.Total,
		"keys-active":      st.Keys.Active,
		"keys-cooling":     st.Keys.Cooling,
		"keys-disabled":    st.Keys.Disabled,
	} {
		v, ok := shown[name]
		if !ok {
			t.Errorf("dashboard: no figure %q (have %v)", name, shown)
			continue
		}
		if got := digits(t, v); got != want {
			t.Errorf("dashboard: %s shows %q, the API says %d", name, v, want)
		}
	}
	rate := float64(st.Requests.Success) / float64(st.Requests.Total) * 100
	wantRate := strconv.FormatFloat(rate, 'f', 1, 64) + "%"
	if rate == 100 || rate == 0 {
		wantRate = strconv.FormatFloat(rate, 'f', 0, 64) + "%"
	}
	if shown["success-rate"] != wantRate {
		t.Errorf("dashboard: success rate shows %q, want %q", shown["success-rate"], wantRate)
	}
	if st.Keys.Active != int64(len(pool)) {
		t.Errorf("stats: %d active keys, want %d", st.Keys.Active, len(pool))
	}
	b.waitJS("the trend chart", `document.querySelectorAll('.chart .bar-ok').length > 0`)
	b.waitJS("the model list", `[...document.querySelectorAll('.model-name')].some(e => e.textContent === `+jsString(modelFlash)+`)`)

	// ---- keys: paste text holding a new key twice and a cut-short one
	before := g.apiKeys()
	b.click(`a[data-route="keys"]`)
	b.waitJS("the key table", `document.querySelectorAll('#keys-table tbody tr').length === `+strconv.Itoa(len(before)))
	b.click("#keys-add")
	b.do("focusing the import text", chromedp.WaitVisible(chromedp.ID("import-text")), chromedp.Focus(chromedp.ID("import-text")))
	b.call(func(ctx context.Context) error { // a paste: the text arrives in one piece
		_, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{
			Text: "# keys from the team sheet\nGEMINI_API_KEY=" + pastedKey + "\nold: AIzaSyTOO-SHORT, again: \"" + pastedKey + "\"\n",
		})
		return err
	})
	b.click("#import-submit")
	b.waitJS("the import summary", `!document.getElementById('import-result').hidden`)
	for name, want := range map[string]string{"added": "1", "duplicates": "1", "invalid": "1"} {
		if got := b.text(`[data-result="` + name + `"]`); got != want {
			t.Errorf("import summary: %s = %q, want %q", name, got, want)
		}
	}
	b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)

	after := g.apiKeys()
	if len(after) != len(before)+1 {
		t.Fatalf("the API lists %d keys after the import, want %d", len(after), len(before)+1)
	}
	added := after[len(after)-1]
	if added.Status != "active" || !strings.HasPrefix(pastedKey, strings.SplitN(added.Masked, "…", 2)[0][:4]) {
		t.Fatalf("imported key: %+v", added)
	}
	row := fmt.Sprintf(`#keys-table tr[data-id="%d"]`, added.ID)
	b.waitJS("the imported key's row", `document.querySelector('`+row+`') !== null`)
	if got := b.text(row + " .key-masked"); got != added.Masked {
		t.Errorf("the row shows key %q, the API %q", got, added.Masked)
	}

	// ---- disable it from its row
	b.click(row + ` button[title="Disable"]`)
	b.waitJS("the row to show disabled", `document.querySelector('`+row+`').dataset.status === 'disabled'`)
	if !eventually(5*time.Second, func() bool {
		for _, k := range g.apiKeys() {
			if k.ID == added.ID {
				return k.Status == "disabled"
			}
		}
		return false
	}) {
		t.Error("the API does not show the key disabled")
	}

	// ---- export asks for the admin key again
	b.click("#keys-export")
	b.waitJS("the export dialog", `document.getElementById('export-admin-key') !== null`)
	b.typeInto("#export-admin-key", "not-the-admin-key-at-all")
	b.click("#modal .modal-foot .btn-primary")
	b.waitJS("the export refusal", `[...document.querySelectorAll('#modal .form-error')].some(e => !e.hidden && e.textContent.includes('not right'))`)
	b.typeInto("#export-admin-key", adminKey)
	b.click("#modal .modal-foot .btn-primary")
	b.waitJS("the export", `[...document.querySelectorAll('.toast-text')].some(e => e.textContent === 'Exported `+strconv.Itoa(len(after))+` keys.')`)
	b.waitJS("the export dialog to close", `!document.getElementById('modal').open`)
	var exported []byte
	if !eventually(10*time.Second, func() bool {
		files, _ := filepath.Glob(filepath.Join(b.Downloads, "gemini-keys-all-*.txt"))
		if len(files) != 1 {
			return false
		}
		exported, _ = os.ReadFile(files[0])
		return len(exported) > 0
	}) {
		t.Fatal("the export was not downloaded")
	}
	if lines := strings.Fields(string(exported)); len(lines) != len(after) || !slices.Contains(lines, pastedKey) || !slices.Contains(lines, pool[0]) {
		t.Errorf("the export holds %d keys (want %d, with the pasted key and the pool's)", len(lines), len(after))
	}

	// ---- validate every key: the run shows its progress, and the key an operator disabled
	// stays disabled although it passes
	b.click("#keys-validate-all")
	b.waitJS("the confirmation", `document.getElementById('modal').open`)
	b.click("#modal .modal-foot .btn-primary")
	b.waitJS("the validation run to finish", `(document.getElementById('validate-progress') || {}).textContent === '`+
		fmt.Sprintf("%d of %d checked", len(after), len(after))+`' && !document.getElementById('keys-validate-all').disabled`)
	var run struct {
		Running bool `json:"running"`
		Done    int  `json:"done"`
		Total   int  `json:"total"`
	}
	g.adminAPI(http.MethodGet, "keys/validate", "", http.StatusOK, &run)
	if run.Running || run.Done != len(after) || run.Total != len(after) {
		t.Errorf("validation run: %+v, want %d of %d done", run, len(after), len(after))
	}
	for _, k := range g.apiKeys() {
		if k.ID == added.ID && k.Status != "disabled" {
			t.Errorf("after validating every key the key an operator disabled is %s", k.Status)
		}
	}

	// ---- access keys: a new one is shown once and works at once
	b.click(`a[data-route="access"]`)
	b.waitJS("the access key page", `document.getElementById('access-label') !== null && document.querySelector('#access-table, #view .empty') !== null`)
	b.typeInto("#access-label", "panel e2e")
	b.click("#access-create")
	b.waitJS("the new key", `document.getElementById('access-secret') !== null && document.getElementById('access-secret').value !== ''`)
	secret := evalJS[string](b, `document.getElementById('access-secret').value`)
	b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	b.waitJS("the new key's row", `[...document.querySelectorAll('#access-table td')].some(td => td.textContent === 'panel e2e')`)
	b.waitJS("the shown key to leave the page", `!document.documentElement.outerHTML.includes(`+jsString(secret)+`) && ![...document.querySelectorAll('input')].some(i => i.value === `+jsString(secret)+`)`)

	// ---- settings: a bad value is refused with the field named; a good one is applied
	var set struct {
		Settings map[string]any `json:"settings"`
	}
	g.adminAPI(http.MethodGet, "settings", "", http.StatusOK, &set)
	oldFailures := set.Settings["max_failures"]
	newRetries := 7.0
	if set.Settings["max_retries"] == newRetries {
		newRetries = 6
	}
	b.click(`a[data-route="settings"]`)
	b.waitJS("the settings form", `document.getElementById('set-max_retries') !== null`)
	b.typeInto("#set-max_failures", "0")
	b.click("#settings-save")
	b.waitJS("the max_failures error", `!document.getElementById('err-max_failures').hidden`)
	if msg := b.text("#err-max_failures"); !strings.Contains(msg, "range") {
		t.Errorf("max_failures error reads %q", msg)
	}
	g.adminAPI(http.MethodGet, "settings", "", http.StatusOK, &set)
	if set.Settings["max_failures"] != oldFailures {
		t.Errorf("a refused value changed max_failures to %v", set.Settings["max_failures"])
	}
	// Changing the upstream asks for the admin key again; without it nothing is sent.
	oldUpstream := set.Settings["upstream"]
	b.typeInto("#set-upstream", "https://collector.example")
	b.waitJS("the admin key field", `!document.getElementById('settings-admin-key-field').hidden`)
	b.click("#settings-save")
	b.waitJS("the admin key error", `!document.getElementById('err-settings-admin-key').hidden`)
	b.typeInto("#settings-admin-key", "not-the-admin-key")
	b.click("#settings-save")
	b.waitJS("the wrong admin key error", `document.getElementById('err-settings-admin-key').textContent.includes('not right')`)
	g.adminAPI(http.MethodGet, "settings", "", http.StatusOK, &set)
	if set.Settings["upstream"] != oldUpstream {
		t.Fatalf("the upstream changed to %v without the admin key", set.Settings["upstream"])
	}
	b.typeInto("#set-upstream", fmt.Sprint(oldUpstream))
	b.waitJS("the admin key field to hide", `document.getElementById('settings-admin-key-field').hidden`)
	b.typeInto("#set-max_failures", fmt.Sprint(oldFailures))
	b.typeInto("#set-max_retries", strconv.Itoa(int(newRetries)))
	b.click("#settings-save")
	if !eventually(5*time.Second, func() bool {
		g.adminAPI(http.MethodGet, "settings", "", http.StatusOK, &set)
		return set.Settings["max_retries"] == newRetries
	}) {
		t.Fatalf("max_retries is %v after saving %v in the panel", set.Settings["max_retries"], newRetries)
	}
	if set.Settings["max_failures"] != oldFailures {
		t.Errorf("max_failures changed to %v", set.Settings["max_failures"])
	}

	// ---- a request through the proxy, with the new access key, shows in the logs
	wantOK(t, g.generate(modelPro, secret))
	if !eventually(10*time.Second, func() bool { _, n := g.apiRequestLogs("model=" + modelPro); return n == 1 }) {
		t.Fatal("the proxied request did not reach the request log")
	}
	b.click(`a[data-route="logs"]`)
	b.waitJS("the proxied request in the logs", `[...document.querySelectorAll('#logs-table .log-model')].some(e => e.firstChild && e.firstChild.textContent === `+jsString(modelPro)+`)`)
	if got := b.text("#logs-total"); digits(t, got) < 4 {
		t.Errorf("logs total reads %q, want at least 4", got)
	}
	b.typeInto("#logs-model", modelPro)
	b.waitJS("the model filter", `document.querySelectorAll('#logs-table tbody tr').length === 1 && document.getElementById('logs-total').textContent.startsWith('1 ')`)
	if got := b.text("#logs-table tbody tr td.log-client"); got != "panel e2e" {
		t.Errorf("the request's client shows as %q, want the access key's label", got)
	}
	b.click(`.tab[data-kind="error"]`)
	b.waitJS("the error tab", `document.querySelector('.tab[data-kind="error"]').classList.contains('on') && !document.querySelector('.table-card').classList.contains('loading') && document.querySelector('.table-card .empty, #logs-table') !== null`)

	// ---- sign out: the page returns to the sign-in form and the old cookie is refused
	var cookies []*network.Cookie
	b.call(func(ctx context.Context) error {
		res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{panel}})
		cookies = res.Cookies
		return err
	})
	if len(cookies) == 0 {
		t.Fatal("the browser holds no session cookie")
	}
	b.click("#signout")
	b.waitJS("the sign-in form", `!document.getElementById('signin').hidden && document.getElementById('app').hidden`)
	for _, c := range cookies {
		r := g.do(http.MethodGet, "/admin/api/session", http.Header{"Cookie": {c.Name + "=" + c.Value}}, "")
		if r.Status != http.StatusUnauthorized {
			t.Errorf("after sign-out, cookie %s still answers %d: %s", c.Name, r.Status, r.Body)
		}
	}

	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the browser reported problems:\n%s", strings.Join(p, "\n"))
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("unexpected dialogs: %v", d)
	}
}

// TestPanelXSS sends requests whose model names are markup and checks that the logs page
// shows them as text: no element is injected, no script runs, no dialog opens.
func TestPanelXSS(t *testing.T) {
	_, srv := newFake(t)
	g := startGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: poolKeys(1), AccessKeys: []string{accessKey}})

	payloads := []string{
		`<img src=x onerror=alert(1)>`,
		`<script>alert(2)</script>`,
		`<svg onload=alert(3)>"'&amp;`,
	}
	for _, p := range payloads {
		r := g.do(http.MethodPost, "/v1beta/models/"+url.PathEscape(p)+":generateContent", apiKeyHeader(accessKey), genBody)
		if r.Status == 0 {
			t.Fatalf("no answer for %q", p)
		}
	}
	var logged []string
	if !eventually(10*time.Second, func() bool {
		items, _ := g.apiRequestLogs("page_size=50")
		logged = logged[:0]
		for _, it := range items {
			if strings.ContainsAny(it.Model, "<>") {
				logged = append(logged, it.Model)
			}
		}
		return len(logged) == len(payloads)
	}) {
		t.Fatalf("the request log holds %d markup model names, want %d: %q", len(logged), len(payloads), logged)
	}
	if !slices.ContainsFunc(logged, func(m string) bool { return strings.Contains(m, "<script>") }) ||
		!slices.ContainsFunc(logged, func(m string) bool { return strings.Contains(m, "<img") }) {
		t.Fatalf("the logged model names lost their markup: %q", logged)
	}

	b := newBrowser(t, 1280, 900)
	b.do("opening the panel", chromedp.Navigate(g.URL+"/admin/#/logs"), chromedp.WaitVisible(chromedp.ID("signin-key")))
	b.typeInto("#signin-key", adminKey)
	b.click("#signin-submit")
	b.waitJS("the logs table", `document.querySelectorAll('#logs-table tbody tr').length >= 3`)

	cells := evalJS[[]string](b, `[...document.querySelectorAll('#logs-table .log-model')].map(e => e.firstChild ? e.firstChild.textContent : '')`)
	for _, m := range logged {
		if !slices.Contains(cells, m) {
			t.Errorf("the logs do not show the model %q as text; cells: %q", m, cells)
		}
	}
	injected := evalJS[int](b, `document.querySelectorAll('#view img, #view script, #view svg[onload], #view [onerror], #view [onload]').length`)
	if injected != 0 {
		t.Errorf("%d elements were injected into the page", injected)
	}

	// the error text of a row is shown as text in its details too
	b.click(`#logs-table tbody tr`)
	b.waitJS("the log details", `document.getElementById('modal').open`)
	injected = evalJS[int](b, `document.querySelectorAll('#modal img, #modal script, #modal [onerror], #modal [onload]').length`)
	if injected != 0 {
		t.Errorf("%d elements were injected into the details dialog", injected)
	}

	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("a payload opened dialogs: %v", d)
	}

	// ---- a new admin key ends the session: the panel's next call returns it to sign-in
	b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	g.adminAPI(http.MethodPut, "admin-key", `{"current":"`+adminKey+`","new":"e2e-rotated-admin-key-0123456789"}`, http.StatusOK, nil)
	b.click(`a[data-route="keys"]`)
	b.waitJS("the sign-in form", `!document.getElementById('signin').hidden && document.getElementById('signin-error').textContent.includes('session has ended')`)
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the browser reported problems:\n%s", strings.Join(p, "\n"))
	}
}

// clickButton clicks the button of the open dialog whose text is label.
func (b *browser) clickButton(label string) {
	b.t.Helper()
	if !evalJS[bool](b, `(() => { const x = [...document.querySelectorAll('#modal .modal-foot button')].find(e => e.textContent.trim() === `+jsString(label)+`); if (x) x.click(); return !!x; })()`) {
		b.t.Fatalf("the dialog has no button %q", label)
	}
}

// TestPanelKeyOwningFiles: a key that owns a file uploaded through the gateway shows it in the
// key table and its details; deleting it asks first and says the file will no longer be
// reachable, and only then is the key deleted; a key that came to own a file after the list
// was loaded is deleted only after a second question.
func TestPanelKeyOwningFiles(t *testing.T) {
	fake, srv := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := newSDKClient(t, g, accessKey).Files.Upload(ctx, strings.NewReader("a small document"), &genai.UploadFileConfig{MIMEType: "text/plain"})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	ownerSecret := fake.FileOwner(f.Name)
	var owner, other apiKey
	for _, k := range g.apiKeys() {
		switch {
		case ownerSecret != "" && k.Masked == ownerSecret[:6]+"…"+ownerSecret[len(ownerSecret)-4:]:
			owner = k
		case other.ID == 0:
			other = k
		}
	}
	if owner.ID == 0 || owner.Resources != 1 || other.Resources != 0 {
		t.Fatalf("the API shows owner %+v and another key %+v; want 1 resource on the file's owner", owner, other)
	}

	b := newBrowser(t, 1280, 900)
	b.do("opening the panel", chromedp.Navigate(g.URL+"/admin/#/keys"), chromedp.WaitVisible(chromedp.ID("signin-key")))
	b.typeInto("#signin-key", adminKey)
	b.click("#signin-submit")
	b.waitJS("the key table", `document.querySelectorAll('#keys-table tbody tr').length === 3`)
	row := func(k apiKey) string { return fmt.Sprintf(`#keys-table tr[data-id="%d"]`, k.ID) }
	if got := b.text(row(owner) + ` td[data-col="resources"]`); got != "1" {
		t.Errorf("the owner's row shows %q resources, want 1", got)
	}
	if got := b.text(row(other) + ` td[data-col="resources"]`); got != "—" {
		t.Errorf("a key owning nothing shows %q resources, want a dash", got)
	}

	// Details say it too.
	b.click(row(owner) + " .key-masked")
	b.waitJS("the key details", `document.getElementById('key-resources') !== null`)
	if got := b.text("#key-resources"); !strings.Contains(got, "1 live file/resource") {
		t.Errorf("details: %q", got)
	}
	b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)

	// Deleting the owner asks first and says what is lost; cancelling deletes nothing.
	warning := `(document.querySelector('#modal .confirm-warning') || {}).textContent || ''`
	b.click(row(owner) + ` button[title="Delete"]`)
	b.waitJS("the delete dialog", `document.getElementById('modal').open`)
	if got := evalJS[string](b, warning); !strings.Contains(got, "owns 1 live file/resource") ||
		!strings.Contains(got, "no longer be reachable through the gateway") {
		t.Errorf("the delete dialog warns %q", got)
	}
	b.clickButton("Cancel")
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)
	if len(g.apiKeys()) != 3 {
		t.Fatal("cancelling the dialog deleted a key")
	}

	// A key that owns nothing is deleted with the plain question, no warning.
	b.click(row(other) + ` button[title="Delete"]`)
	b.waitJS("the delete dialog", `document.getElementById('modal').open`)
	if got := evalJS[string](b, warning); got != "" {
		t.Errorf("deleting a key that owns nothing warns %q", got)
	}
	b.clickButton("Cancel")
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)

	// While the page shows the list, a second file lands on another key (the owner is briefly
	// disabled so the upload cannot go to it).
	g.adminAPI(http.MethodPost, fmt.Sprintf("keys/%d/disable", owner.ID), "", http.StatusOK, nil)
	f2, err := newSDKClient(t, g, accessKey).Files.Upload(ctx, strings.NewReader("another document"), &genai.UploadFileConfig{MIMEType: "text/plain"})
	if err != nil {
		t.Fatalf("second upload: %v", err)
	}
	g.adminAPI(http.MethodPost, fmt.Sprintf("keys/%d/enable", owner.ID), "", http.StatusOK, nil)
	lateSecret := fake.FileOwner(f2.Name)
	if lateSecret == "" || lateSecret == ownerSecret {
		t.Fatal("the second file is not on another key")
	}

	// Bulk delete of every key: the dialog names the owner it knows of. The key that came to own
	// the second file answers 409, and the panel asks again for it before deleting it.
	b.click("#keys-table thead .col-check input")
	b.click(`[data-bulk="delete"]`)
	b.waitJS("the bulk delete dialog", `document.getElementById('modal').open`)
	if got := evalJS[string](b, warning); !strings.Contains(got, owner.Masked+" owns 1 live file/resource") ||
		!strings.Contains(got, "no longer be reachable through the gateway") {
		t.Errorf("the bulk delete dialog warns %q", got)
	}
	b.clickButton("Delete anyway")
	b.waitJS("the second question", `document.getElementById('modal').open && ((document.querySelector('#modal .modal-text') || {}).textContent || '').includes('Since the list was loaded')`)
	lateOwner := evalJS[string](b, `document.querySelector('#modal .modal-text').textContent`)
	if got := evalJS[string](b, warning); !strings.Contains(got, "no longer be reachable through the gateway") ||
		!strings.Contains(lateOwner, lateSecret[:6]+"…"+lateSecret[len(lateSecret)-4:]) {
		t.Errorf("the second question names %q and warns %q", lateOwner, got)
	}
	if n := len(g.apiKeys()); n != 1 {
		t.Errorf("before the second answer the API lists %d keys, want only the late owner", n)
	}
	b.clickButton("Delete anyway")
	b.waitJS("the table to empty", `document.querySelector('#keys-table') === null && document.querySelector('#view .empty') !== null`)
	if keys := g.apiKeys(); len(keys) != 0 {
		t.Errorf("after the bulk delete the API lists %+v", keys)
	}
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the browser reported problems:\n%s", strings.Join(p, "\n"))
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("unexpected dialogs: %v", d)
	}
}
