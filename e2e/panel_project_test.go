package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// projectKey is the part of a key in GET P/api/keys the project test looks at.
type projectKey struct {
	ID        int64  `json:"id"`
	Project   string `json:"project"`
	Status    string `json:"status"`
	LastError string `json:"last_error"`
	Cooldowns []struct {
		Model string `json:"model"`
		Until string `json:"until"`
	} `json:"cooldowns"`
}

func (g *gateway) projectKeys() map[int64]projectKey {
	g.t.Helper()
	var out struct {
		Keys []projectKey `json:"keys"`
	}
	g.adminAPI(http.MethodGet, "keys?page_size=500", "", http.StatusOK, &out)
	m := make(map[int64]projectKey, len(out.Keys))
	for _, k := range out.Keys {
		m[k.ID] = k
	}
	return m
}

// ejectedUntil returns the end of the key's ejection (its cooldown on every model, "*").
func (k projectKey) ejectedUntil() (string, bool) {
	for _, c := range k.Cooldowns {
		if c.Model == "*" {
			return c.Until, k.Status == "cooling"
		}
	}
	return "", false
}

// pastedProjectKey is a well-formed Gemini key for the labelled import.
const pastedProjectKey = "AIzaSyPANEL-e2e-project-key-00000000001"

// TestPanelProjects drives the keys page in headless Chromium: a key failing with 500s while the
// others work is ejected and shows as "ejected until HH:MM" with its last error; two keys get a
// project label through the selection, one through its row; the project filter shows each
// label's keys and the unlabelled ones; a bad label is refused in the dialog; a pasted
// "AIza… project" line adds a labelled key; the settings page explains max_failures as
// ejection and offers max_ejection_percent. Each step is checked against the API.
// SYNAPSE_PROJECT_SHOTS=<dir> also saves the keys page at desktop and phone widths.
func TestPanelProjects(t *testing.T) {
	if len(pastedProjectKey) != 39 {
		t.Fatalf("pastedProjectKey has %d characters, want 39", len(pastedProjectKey))
	}
	fake, srv := newFake(t)
	pool := poolKeys(4)
	g := startGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Options: []string{"max_failures 2"}})
	g.secretKs = append(g.secretKs, pastedProjectKey)

	// ---- key 4 fails with 500 while the others answer: it is ejected, not disabled.
	fake.SetKey(pool[3], fakegemini.Internal)
	var ejected projectKey
	if !eventually(20*time.Second, func() bool {
		g.generate(modelFlash, accessKey)
		ejected = g.projectKeys()[4]
		_, ok := ejected.ejectedUntil()
		return ok
	}) {
		t.Fatalf("key 4 was not ejected: %+v", ejected)
	}
	// The JSON the panel reads: status cooling, a cooldown on "*", the reason in last_error.
	until, _ := ejected.ejectedUntil()
	if ejected.LastError == "" || len(ejected.Cooldowns) != 1 {
		t.Errorf("ejected key: %+v; want one cooldown on \"*\" and a last error", ejected)
	}
	ejectedAt, err := time.Parse(time.RFC3339, until)
	if err != nil {
		t.Fatalf("ejected until %q: %v", until, err)
	}
	hhmm := ejectedAt.Format("15:04")

	b := newBrowser(t, 1280, 900)
	b.do("opening the panel", chromedp.Navigate(g.URL+"/admin/"), chromedp.WaitVisible(chromedp.ID("signin-key")))
	b.typeInto("#signin-key", adminKey)
	b.click("#signin-submit")
	// The dashboard's keys needing attention name the ejection, not a model "*".
	b.waitJS("the ejected key on the dashboard", `[...document.querySelectorAll('.attention-list li')].some(li =>
		li.querySelector('.badge-ejected') && li.querySelector('.attention-why').textContent.startsWith('ejected until `+hhmm+`: '))`)
	b.click(`a[data-route="keys"]`)
	b.waitJS("the key table", `document.querySelectorAll('#keys-table tbody tr').length === 4`)

	// ---- the ejected key
	row := func(id int64) string { return fmt.Sprintf(`#keys-table tr[data-id="%d"]`, id) }
	b.waitJS("the ejected badge", `document.querySelector('`+row(4)+` .badge-ejected') !== null`)
	if got := strings.Join(strings.Fields(b.text(row(4)+" .ejected")), " "); !strings.EqualFold(got, "ejected until "+hhmm) { // the badge is capitalised
		t.Errorf("the ejected key's status reads %q, want %q", got, "ejected until "+hhmm)
	}
	if title := evalJS[string](b, `document.querySelector('`+row(4)+` .ejected').title`); !strings.Contains(title, ejected.LastError) {
		t.Errorf("the ejected key's tooltip %q does not give its last error %q", title, ejected.LastError)
	}
	if strings.Contains(b.text(row(4)), "*") {
		t.Errorf("the ejected key's row shows a model named *: %q", b.text(row(4)))
	}

	// ---- select keys 1 and 2 and label them together
	b.click(row(1) + ` .col-check input`)
	b.click(row(2) + ` .col-check input`)
	b.click(`[data-bulk="project"]`)
	b.waitJS("the project dialog", `document.getElementById('project-input') !== null`)
	b.typeInto("#project-input", "bad label")
	b.click("#project-save")
	b.waitJS("the label refused", `!document.getElementById('project-error').hidden`)
	if keys := g.projectKeys(); keys[1].Project != "" || keys[2].Project != "" {
		t.Fatalf("a refused label changed keys: %+v %+v", keys[1], keys[2])
	}
	b.typeInto("#project-input", "proj-e2e")
	b.click("#project-save")
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)
	b.waitJS("the labels in the rows", `['1','2'].every(id => document.querySelector('#keys-table tr[data-id="'+id+'"] .col-project .project-chip')?.textContent === 'proj-e2e')`)
	keys := g.projectKeys()
	if keys[1].Project != "proj-e2e" || keys[2].Project != "proj-e2e" || keys[3].Project != "" || keys[4].Project != "" {
		t.Errorf("labels after the bulk change: %+v", keys)
	}

	// ---- one key from its row
	b.click(row(3) + " .project-edit")
	b.waitJS("the project dialog", `document.getElementById('project-input') !== null`)
	b.typeInto("#project-input", "proj-other")
	b.click("#project-save")
	b.waitJS("the row's label", `document.querySelector('`+row(3)+` .col-project .project-chip')?.textContent === 'proj-other'`)
	if p := g.projectKeys()[3].Project; p != "proj-other" {
		t.Errorf("key 3 is labelled %q, want proj-other", p)
	}

	// ---- filter by project: the select lists the labels in use and "no project"
	opts := evalJS[[]string](b, `[...document.querySelectorAll('#keys-project option')].map(o => o.textContent)`)
	if want := []string{"All projects", "No project (1)", "proj-e2e (2)", "proj-other (1)"}; !slices.Equal(opts, want) {
		t.Errorf("project filter options %q, want %q", opts, want)
	}
	shownIDs := func() string {
		return `[...document.querySelectorAll('#keys-table tbody tr')].map(r => r.dataset.id).join(',')`
	}
	pickProject := func(value string) {
		b.do("choosing a project", chromedp.Evaluate[chromedp.Void](`(() => { const s = document.getElementById('keys-project');
			s.value = `+jsString(value)+`; s.dispatchEvent(new Event('change')); })()`))
	}
	pickProject("proj-e2e")
	b.waitJS("the keys of proj-e2e", shownIDs()+` === '1,2'`)
	pickProject(" none")
	b.waitJS("the keys without a project", shownIDs()+` === '4'`)
	// A chip filters by its label.
	pickProject(" all")
	b.waitJS("every key", shownIDs()+` === '1,2,3,4'`)
	b.click(row(3) + " .col-project .project-chip")
	b.waitJS("the keys of proj-other", shownIDs()+` === '3'`)
	if v := evalJS[string](b, `document.getElementById('keys-project').value`); v != "proj-other" {
		t.Errorf("the filter shows %q after clicking a label, want proj-other", v)
	}

	// ---- clear a label from the dialog
	b.click(row(3) + " .project-edit")
	b.waitJS("the project dialog", `document.getElementById('project-clear') !== null`)
	b.click("#project-clear")
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)
	b.waitJS("no key left in proj-other", `document.querySelectorAll('#keys-table tbody tr').length === 0`)
	if p := g.projectKeys()[3].Project; p != "" {
		t.Errorf("key 3 is labelled %q after Remove", p)
	}
	pickProject(" all")
	b.waitJS("every key", shownIDs()+` === '1,2,3,4'`)

	// ---- paste "key project"
	b.click("#keys-add")
	b.do("focusing the import text", chromedp.WaitVisible(chromedp.ID("import-text")), chromedp.Focus(chromedp.ID("import-text")))
	if help := b.text("#import-projects-help"); !strings.Contains(help, "AIza… project-name") {
		t.Errorf("the import dialog does not say it takes labels: %q", help)
	}
	b.call(func(ctx context.Context) error {
		_, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{
			Text: pastedProjectKey + " proj-paste\n" + pastedProjectKey + "\n",
		})
		return err
	})
	b.click("#import-submit")
	b.waitJS("the import summary", `!document.getElementById('import-result').hidden`)
	for name, want := range map[string]string{"added": "1", "duplicates": "1", "invalid": "0"} {
		if got := b.text(`[data-result="` + name + `"]`); got != want {
			t.Errorf("import summary: %s = %q, want %q", name, got, want)
		}
	}
	b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	b.waitJS("the dialog to close", `!document.getElementById('modal').open`)
	b.waitJS("the pasted key's label", `document.querySelector('`+row(5)+` .col-project .project-chip')?.textContent === 'proj-paste'`)
	if p := g.projectKeys()[5].Project; p != "proj-paste" {
		t.Errorf("the pasted key is labelled %q, want proj-paste", p)
	}

	shots := os.Getenv("SYNAPSE_PROJECT_SHOTS")
	if shots != "" {
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
		shoot := func(name string, width, height int64) {
			b.do("resizing to "+name, chromedp.EmulateViewport(width, height))
			time.Sleep(400 * time.Millisecond)
			ctx, cancel := b.step()
			defer cancel()
			png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b.do("moving the mouse away", chromedp.MouseClickXY(5, 895))
		shoot("keys-desktop", 1280, 900)
		shoot("keys-phone", 390, 844)
		b.click(row(4) + " .key-masked")
		b.waitJS("the details", `document.getElementById('key-ejected') !== null`)
		shoot("key-details-phone", 390, 844)
		b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
		b.waitJS("the dialog to close", `!document.getElementById('modal').open`)
		b.click(row(1) + ` .col-check input`)
		b.click(row(3) + ` .col-check input`)
		shoot("selection-phone", 390, 844)
		b.click(`[data-bulk="project"]`)
		b.waitJS("the project dialog", `document.getElementById('project-input') !== null`)
		shoot("project-dialog-phone", 390, 844)
		shoot("project-dialog-desktop", 1280, 900)
		b.do("closing the dialog", chromedp.KeyEvent(kb.Escape))
	}

	// ---- settings: ejection, not disabling, is what max_failures leads to; its cap is there too
	b.click(`a[data-route="settings"]`)
	b.waitJS("the settings", `document.getElementById('set-max_ejection_percent') !== null`)
	field := func(name string) string {
		return strings.Join(strings.Fields(b.text(`#settings-form .field:has(#set-`+name+`)`)), " ")
	}
	if f := field("max_failures"); !strings.Contains(f, "Failures to eject") || !strings.Contains(f, "it is never disabled for them") {
		t.Errorf("max_failures field reads %q", f)
	}
	if f := field("max_ejection_percent"); !strings.Contains(f, "Most keys ejected at once") || !strings.Contains(f, "0 turns ejection off") {
		t.Errorf("max_ejection_percent field reads %q", f)
	}
	if v := evalJS[string](b, `(e => e.min + '-' + e.max + ' ' + e.value)(document.getElementById('set-max_ejection_percent'))`); v != "0-100 50" {
		t.Errorf("max_ejection_percent input: %s, want 0-100 holding the default 50", v)
	}

	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the page reported problems: %v", p)
	}
	if d := b.Dialogs(); len(d) > 0 {
		t.Errorf("JavaScript dialogs opened: %v", d)
	}
}
