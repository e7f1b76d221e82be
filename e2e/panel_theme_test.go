package e2e

import (
	"context"
	"testing"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// TestPanelThemeFollowsSystem: with no theme picked, the panel takes the system's light or dark
// and follows a change of it; a theme the user picked wins over the system's.
func TestPanelThemeFollowsSystem(t *testing.T) {
	_, srv := newFake(t)
	g := startGateway(t, gatewayConfig{Upstream: srv.URL, PoolKeys: poolKeys(1), AccessKeys: []string{"sk-theme-access-key-0123"}})
	b := newBrowser(t, 1024, 700)
	system := func(scheme string) {
		b.call(func(ctx context.Context) error {
			_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
				Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
			})
			return err
		})
	}
	// The page's background, as painted: the light and dark palettes differ in it.
	bg := func() string {
		return evalJS[string](b, `getComputedStyle(document.body).backgroundColor`)
	}
	theme := func() string { return evalJS[string](b, `document.documentElement.dataset.theme || ''`) }

	system("dark")
	b.do("opening the panel", chromedp.Navigate(g.URL+"/admin/"), chromedp.WaitVisible(chromedp.ID("signin-key")))
	if got := theme(); got != "dark" {
		t.Fatalf("system dark, nothing picked: theme %q, want dark", got)
	}
	darkBG := bg()
	system("light")
	b.waitJS("the theme to follow the system to light", `document.documentElement.dataset.theme === 'light'`)
	if lightBG := bg(); lightBG == darkBG {
		t.Errorf("light and dark paint the same background %s", lightBG)
	}
	b.do("picking dark", chromedp.Evaluate[chromedp.Void](`localStorage.setItem('synapse-theme', 'dark')`),
		chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("signin-key")))
	if got := theme(); got != "dark" {
		t.Errorf("picked dark on a light system: theme %q, want dark", got)
	}
	if got := bg(); got != darkBG {
		t.Errorf("picked dark paints %s, the system's dark painted %s", got, darkBG)
	}
	system("dark")
	system("light")
	if got := theme(); got != "dark" {
		t.Errorf("a system change overrode the picked theme: %q", got)
	}
}
