package e2e

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
)

// TestPanelScreenshot takes the dashboard screenshot of the README: a gateway with 30 days of
// seeded traffic, a few keys in trouble, at 1280x800. It runs only when SYNAPSE_SCREENSHOT
// names the PNG to write (relative to the repository root), e.g.
//
//	SYNAPSE_SCREENSHOT=docs/dashboard.png SYNAPSE_CADDY_BIN=$PWD/bin/caddy go test ./e2e/ -run TestPanelScreenshot
//
// SYNAPSE_SCREENSHOT_THEME=dark takes it in the dark theme.
func TestPanelScreenshot(t *testing.T) {
	out := os.Getenv("SYNAPSE_SCREENSHOT")
	if out == "" {
		t.Skip("set SYNAPSE_SCREENSHOT=docs/dashboard.png to take the dashboard screenshot")
	}
	if !filepath.IsAbs(out) {
		out = filepath.Join("..", out)
	}
	fake, srv := newFake(t)
	pool := poolKeys(8)
	g := newGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	seedTraffic(t, g.cfg.Database, pool, time.Now())
	g.Start()

	// Live traffic: one key is refused upstream (it gets disabled), one is out of quota (it
	// cools down); the rest answer.
	fake.SetKey(pool[6], fakegemini.Invalid)
	fake.SetKey(pool[7], fakegemini.QuotaMinute)
	for i := range 24 {
		model := []string{modelFlash, modelFlash, modelPro}[i%3]
		g.generate(model, accessKey)
	}
	if !eventually(10*time.Second, func() bool {
		var st apiStats
		g.adminAPI(http.MethodGet, "stats?range=24h", "", http.StatusOK, &st)
		return st.Keys.Disabled >= 1 && st.Keys.Cooling >= 1
	}) {
		t.Log("the key states did not settle; the screenshot shows them as they are")
	}

	b := newBrowser(t, 1280, 800)
	if os.Getenv("SYNAPSE_SCREENSHOT_THEME") == "dark" {
		b.do("choosing the dark theme", chromedp.Navigate(g.URL+"/admin/"),
			chromedp.Evaluate[chromedp.Void](`localStorage.setItem('synapse-theme', 'dark')`))
	}
	b.do("opening the panel", chromedp.Navigate(g.URL+"/admin/"), chromedp.WaitVisible(chromedp.ID("signin-key")))
	if dir := os.Getenv("SYNAPSE_SCREENSHOT_PAGES"); dir != "" {
		b.typeInto("#signin-key", "a wrong key")
		b.click("#signin-submit")
		b.waitJS("the sign-in error", `!document.getElementById('signin-error').hidden`)
		ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		cancel()
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "signin.png"), png, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	b.typeInto("#signin-key", adminKey)
	b.click("#signin-submit")
	b.waitJS("the chart", `document.querySelectorAll('.chart .bar-ok').length > 10 && document.querySelectorAll('.model-row').length > 2 && document.querySelector('.attention-list, .card-body .empty') !== null`)
	// let the fonts settle and the hover state clear
	b.do("moving the mouse away", chromedp.MouseClickXY(1270, 790))
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", out, len(png))

	// SYNAPSE_SCREENSHOT_PAGES=<dir> also takes every other page, for a visual review.
	if dir := os.Getenv("SYNAPSE_SCREENSHOT_PAGES"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		shoot := func(name string) {
			time.Sleep(400 * time.Millisecond) // let the slide and fade transitions end
			png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range []string{"7d", "30d"} {
			b.click(`.segmented button[data-range="` + r + `"]`)
			b.waitJS(r, `document.querySelector('.chart-sub').textContent.startsWith('`+map[string]string{"7d": "every 6 hours", "30d": "daily"}[r]+`')`)
			b.do("moving the mouse away", chromedp.MouseClickXY(1270, 790))
			shoot("dashboard-" + r)
		}
		b.click(`.segmented button[data-range="24h"]`)
		for _, p := range []struct{ route, ready string }{
			{"keys", `document.querySelectorAll('#keys-table tbody tr').length > 0`},
			{"access", `document.querySelector('#access-table, #view .empty') !== null`},
			{"logs", `document.querySelectorAll('#logs-table tbody tr').length > 0`},
			{"settings", `document.getElementById('set-upstream') !== null`},
		} {
			b.click(`a[data-route="` + p.route + `"]`)
			b.waitJS(p.route, p.ready)
			b.do("moving the mouse away", chromedp.MouseClickXY(1270, 790))
			shoot(p.route)
		}
		b.click(`a[data-route="keys"]`)
		b.waitJS("keys", `document.querySelectorAll('#keys-table tbody tr').length > 0`)
		b.click(`#keys-table tbody tr:nth-child(2) input[type=checkbox]`)
		b.click(`#keys-table tbody tr:nth-child(3) input[type=checkbox]`)
		shoot("keys-selected")
		b.click(`#keys-table tbody tr:nth-child(7) .key-masked`)
		b.waitJS("details", `document.getElementById('modal').open`)
		shoot("key-details")
		b.do("closing", chromedp.KeyEvent(kb.Escape))
		b.click("#keys-add")
		b.waitJS("import", `document.getElementById('modal').open`)
		shoot("import")
		b.do("closing", chromedp.KeyEvent(kb.Escape))
		b.click(`a[data-route="dashboard"]`)
		b.waitJS("dashboard", `document.querySelectorAll('.chart .bar-ok').length > 0`)
		b.do("narrow", chromedp.EmulateViewport(390, 844))
		shoot("mobile-dashboard")
		b.click(`#menu`)
		b.waitJS("menu", `document.body.classList.contains('nav-open') && document.getElementById('sidebar').getBoundingClientRect().left === 0`)
		shoot("mobile-menu")
		b.click(`a[data-route="keys"]`)
		b.waitJS("keys", `document.querySelectorAll('#keys-table tbody tr').length > 0`)
		shoot("mobile-keys")
		b.click(`#menu`)
		b.waitJS("menu", `document.body.classList.contains('nav-open') && document.getElementById('sidebar').getBoundingClientRect().left === 0`)
		b.click(`a[data-route="logs"]`)
		b.waitJS("logs", `document.querySelectorAll('#logs-table tbody tr').length > 0`)
		shoot("mobile-logs")
	}
	if p := b.Problems(); len(p) > 0 {
		t.Errorf("the browser reported problems: %v", p)
	}
}

// seedTraffic fills the database at path with 30 days of plausible traffic before the gateway
// starts: a daily rhythm, five models, a few per cent of failures and a quota spike.
func seedTraffic(t *testing.T, path string, pool []string, now time.Time) {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.AddKeys(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for _, label := range []string{"mobile app", "ci pipeline", "alice"} {
		if _, err := s.AddAccessKey(ctx, fmt.Sprintf("seed-%s-%d", label, now.UnixNano()), label, ""); err != nil {
			t.Fatal(err)
		}
	}
	type model struct {
		name             string
		share            float64
		prompt, output   int64
		latency          time.Duration
		embed, streaming bool
	}
	models := []model{
		{"gemini-2.5-flash", 0.50, 1400, 420, 900 * time.Millisecond, false, true},
		{"gemini-2.5-pro", 0.20, 3200, 900, 4 * time.Second, false, true},
		{"gemini-2.5-flash-lite", 0.14, 600, 160, 400 * time.Millisecond, false, false},
		{"gemini-embedding-001", 0.10, 350, 0, 150 * time.Millisecond, true, false},
		{"gemini-2.0-flash", 0.06, 900, 300, 700 * time.Millisecond, false, false},
	}
	rng := rand.New(rand.NewPCG(4, 2))
	pickModel := func() model {
		x := rng.Float64()
		for _, m := range models {
			if x < m.share {
				return m
			}
			x -= m.share
		}
		return models[0]
	}
	start := now.Add(-30 * 24 * time.Hour).Truncate(time.Hour)
	for h := start; h.Before(now); h = h.Add(time.Hour) {
		if h.UTC().Hour() == 0 {
			s.Flush() // keep the writer's queue short
		}
		hour := float64(h.UTC().Hour())
		// busy in the European afternoon, quiet at night, a little more every week
		rate := 55 + 48*math.Sin((hour-9)/24*2*math.Pi) + 15*float64(h.Sub(start))/float64(30*24*time.Hour)
		if wd := h.UTC().Weekday(); wd == time.Saturday || wd == time.Sunday {
			rate *= 0.6
		}
		n := int(rate * (0.8 + 0.4*rng.Float64()))
		failRate := 0.025
		if age := now.Sub(h); age > 5*time.Hour && age <= 6*time.Hour {
			failRate = 0.22 // a quota spike
		}
		for range n {
			at := h.Add(time.Duration(rng.Int64N(int64(time.Hour))))
			if at.After(now) {
				continue
			}
			m := pickModel()
			keyID := int64(1 + rng.IntN(len(pool)-2))
			row := store.RequestLog{
				Time: at, AccessKeyID: int64(1 + rng.IntN(3)), KeyID: keyID, Method: http.MethodPost,
				Path: "/v1beta/models/" + m.name + ":generateContent", Model: m.name, Status: http.StatusOK, Attempts: 1,
				Latency: time.Duration(float64(m.latency) * (0.5 + rng.Float64())),
			}
			if m.embed {
				row.Path = "/v1beta/models/" + m.name + ":embedContent"
			} else if m.streaming && rng.IntN(3) == 0 {
				row.Path = "/v1beta/models/" + m.name + ":streamGenerateContent"
				row.Stream = true
			}
			row.TTFB = row.Latency / 3
			if rng.Float64() < failRate {
				row.Status = []int{http.StatusTooManyRequests, http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusInternalServerError}[rng.IntN(4)]
				row.Attempts = 1 + rng.IntN(3)
				row.Error = fmt.Sprintf("upstream answered %d after %d attempts", row.Status, row.Attempts)
				s.LogError(store.ErrorLog{Time: at, KeyID: keyID, AccessKeyID: row.AccessKeyID, Model: m.name, Path: row.Path,
					Status: row.Status, Message: "Resource has been exhausted (e.g. check quota)."})
			} else {
				row.PromptTokens = int64(float64(m.prompt) * (0.3 + 1.4*rng.Float64()))
				row.CandidatesTokens = int64(float64(m.output) * (0.3 + 1.4*rng.Float64()))
				row.TotalTokens = row.PromptTokens + row.CandidatesTokens
			}
			s.LogRequest(row)
		}
	}
	s.Flush()
	if d := s.Dropped(); d > 0 {
		t.Fatalf("seeding dropped %d log rows", d)
	}
}
