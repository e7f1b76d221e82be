package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// defaultChromium is where Debian's chromium package puts the browser.
const defaultChromium = "/usr/bin/chromium"

// stepTimeout bounds each step of a browser test (a click, a wait, a read).
const stepTimeout = 20 * time.Second

// chromiumPath returns the browser to drive: $SYNAPSE_CHROMIUM or Debian's chromium. Without
// one the test is skipped, except in CI (CI set), where a missing browser is a failure.
func chromiumPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SYNAPSE_CHROMIUM")
	if p == "" {
		p = defaultChromium
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the browser test needs chromium at %s (apt-get install chromium): %v", p, err)
		}
		t.Skipf("skipping the browser test: no chromium at %s (apt-get install chromium, or set SYNAPSE_CHROMIUM)", p)
	}
	return p
}

// browser is one headless Chromium with a fresh profile, and what it reported: JavaScript
// exceptions, console errors (a CSP violation is one) and dialogs (alert, confirm, prompt).
type browser struct {
	t   *testing.T
	ctx context.Context

	// Downloads is where the browser saves downloaded files (a temp dir of the test).
	Downloads string

	mu       sync.Mutex
	problems []string
	dialogs  []string
}

// newBrowser starts Chromium with a width x height window; it is stopped in t.Cleanup.
func newBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("lang", "en-US"),
		chromedp.Flag("hide-scrollbars", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	b := &browser{t: t, ctx: ctx, Downloads: t.TempDir()}
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	// The first Run starts the browser; it must not carry a timeout (that would stop it).
	if err := chromedp.Listen(ctx, b.observe); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	b.call(func(ctx context.Context) error {
		if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
			return err
		}
		if _, err := chromedp.Call(ctx, runtime.Enable, cdp.Empty{}); err != nil {
			return err
		}
		// Downloads go to the test's temp dir, never to the user's.
		_, err := chromedp.CallBrowser(ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
			Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllow, DownloadPath: b.Downloads,
		})
		return err
	})
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		t.Fatalf("browser: viewport: %v", err)
	}
	return b
}

// observe records what the page reports. It runs on the browser's reading goroutine, so it
// only records; a dialog is dismissed from another goroutine.
func (b *browser) observe(ev any) {
	switch e := ev.(type) {
	case *runtime.EventExceptionThrown:
		msg := e.ExceptionDetails.Text
		if e.ExceptionDetails.Exception != nil {
			msg += " " + e.ExceptionDetails.Exception.Description
		}
		b.report(&b.problems, "exception: "+msg)
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError {
			var parts []string
			for _, a := range e.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			b.report(&b.problems, "console.error: "+strings.Join(parts, " "))
		}
	case *cdplog.EventEntryAdded:
		if e.Entry.Level == cdplog.EntryLevelError && !expectedLogError(e.Entry) {
			b.report(&b.problems, fmt.Sprintf("log %s: %s (%s)", e.Entry.Source, e.Entry.Text, e.Entry.URL))
		}
	case *page.EventJavascriptDialogOpening:
		b.report(&b.dialogs, fmt.Sprintf("%s dialog: %q", e.Type, e.Message))
		go func() {
			_, _ = chromedp.Call(b.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}()
	}
}

// expectedLogError tells the errors the panel causes on purpose: the API's 401 while signed
// out, the 400 of a setting refused on purpose, the 403 of a wrong admin key and the 409 of
// deleting a key that came to own files after the list was loaded.
func expectedLogError(e *cdplog.Entry) bool {
	if e.Source != cdplog.EntrySourceNetwork {
		return false
	}
	return strings.Contains(e.Text, "401") || strings.Contains(e.Text, "400") || strings.Contains(e.Text, "403") || strings.Contains(e.Text, "409")
}

func (b *browser) report(list *[]string, s string) {
	b.mu.Lock()
	*list = append(*list, s)
	b.mu.Unlock()
}

// Problems returns the exceptions and console errors seen so far.
func (b *browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Dialogs returns the JavaScript dialogs that opened so far.
func (b *browser) Dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.dialogs...)
}

// step returns a context for one step, bounded by stepTimeout.
func (b *browser) step() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, stepTimeout)
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	b.t.Fatalf("browser: %s: %v\nproblems: %v", what, err, b.Problems())
}

// do runs actions in order with a step timeout and fails the test on error.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fail(what, err)
	}
}

// call runs f with a step-bounded chromedp context and fails the test on error.
func (b *browser) call(f func(ctx context.Context) error) {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	if err := f(ctx); err != nil {
		b.fail("command", err)
	}
}

// evalJS evaluates a JavaScript expression and decodes its value as T.
func evalJS[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.fail("evaluating "+expr, err)
	}
	return v
}

// waitJS waits until the JavaScript expression is truthy; what describes it in a failure.
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout)))
	if err != nil {
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`(document.getElementById('view') || document.body).innerText.slice(0, 2000)`))
		b.t.Fatalf("browser: waiting for %s: %v\npage text: %s\nproblems: %v", what, err, text, b.Problems())
	}
}

// text returns the trimmed text of the first element matching the CSS selector.
func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := b.step()
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.fail("reading "+sel, err)
	}
	return strings.TrimSpace(s)
}

// click clicks the first element matching the CSS selector once it is visible.
func (b *browser) click(sel string) {
	b.t.Helper()
	b.do("clicking "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// typeInto replaces the value of an input with text, typed key by key.
func (b *browser) typeInto(sel, text string) {
	b.t.Helper()
	b.do("typing into "+sel, chromedp.WaitVisible(chromedp.CSS(sel)),
		chromedp.Evaluate[chromedp.Void](`document.querySelector(`+jsString(sel)+`).value = ''`),
		chromedp.SendKeys(chromedp.CSS(sel), text))
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == '<' || r == '>' || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
