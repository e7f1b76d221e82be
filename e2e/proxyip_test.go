package e2e

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
)

// startGatewayGlobal is startGateway with extra lines for caddy's global options block (for
// example a `servers { ... }` block), which gatewayConfig does not render. Like Start, it
// moves to other ports when the first start finds one taken.
func startGatewayGlobal(t *testing.T, cfg gatewayConfig, global string) *gateway {
	t.Helper()
	g := newGateway(t, cfg)
	for try := 1; ; try++ {
		text := g.cfg.caddyfile(g.adminPort, g.sitePort)
		const anchor = "\tpersist_config off\n"
		if !strings.Contains(text, anchor) {
			t.Fatalf("no %q in the Caddyfile to put the global options after:\n%s", anchor, text)
		}
		text = strings.Replace(text, anchor, anchor+global, 1)
		if err := os.WriteFile(g.configPath, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		g.startProcess()
		if g.waitReady(try < 4) {
			return g
		}
		t.Logf("a port was taken before caddy bound it; retrying on other ports")
		g.runs = 0
		g.adminPort, g.sitePort = freePort(t), freePort(t)
		g.URL = fmt.Sprintf("http://127.0.0.1:%d", g.sitePort)
	}
}

// adminLogin sends the admin key as a sign-in with the given extra headers and returns the
// status.
func adminLogin(t *testing.T, g *gateway, key string, header ...string) int {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Add(header[i], header[i+1])
	}
	return g.do("POST", "/admin/api/login", h, `{"admin_key":"`+key+`"}`).Status
}

// TestAdminThrottleBehindTunnel: behind a tunnel or a CDN every connection comes from the
// tunnel's end (here, as with cloudflared on the same machine, 127.0.0.1). With the README's
// `servers { trusted_proxies ...; client_ip_headers ... }` caddy takes the client's address
// from the header the tunnel sets, and the admin throttle counts each real client on its own:
// one guessing the admin key is locked out, another with the right key still signs in.
// Without that trust, or from an address caddy does not trust, the header is not believed
// and everyone shares one address (the lockout the README warns about).
func TestAdminThrottleBehindTunnel(t *testing.T) {
	const (
		guesser = "203.0.113.10"
		admin   = "198.51.100.20"
	)
	wrong := "e2e-admin-key-wrong-wrong-wrong-0123"

	// guessThenAdmin: the guesser sends one more wrong key than allowed (5), the last is
	// refused with 429; then the admin, from the same connection address, signs in. It returns
	// the admin's status.
	guessThenAdmin := func(t *testing.T, g *gateway, guesserHeader, adminHeader func(i int) []string) int {
		t.Helper()
		const allowed = 5
		for i := range allowed {
			if code := adminLogin(t, g, wrong, guesserHeader(i)...); code != http.StatusUnauthorized {
				t.Fatalf("wrong key %d: status %d, want 401", i+1, code)
			}
		}
		if code := adminLogin(t, g, wrong, guesserHeader(allowed)...); code != http.StatusTooManyRequests {
			t.Fatalf("wrong key %d: status %d, want 429", allowed+1, code)
		}
		if code := adminLogin(t, g, adminKey, guesserHeader(allowed+1)...); code != http.StatusTooManyRequests {
			t.Errorf("the locked-out guesser with the right key: status %d, want 429", code)
		}
		return adminLogin(t, g, adminKey, adminHeader(0)...)
	}
	fixed := func(name, value string) func(int) []string {
		return func(int) []string { return []string{name, value} }
	}

	t.Run("cloudflared", func(t *testing.T) {
		g := startGatewayGlobal(t, gatewayConfig{}, "\tservers {\n"+
			"\t\ttrusted_proxies static 127.0.0.1/8 ::1\n"+
			"\t\tclient_ip_headers Cf-Connecting-Ip\n"+
			"\t}\n")
		if code := guessThenAdmin(t, g, fixed("Cf-Connecting-Ip", guesser), fixed("Cf-Connecting-Ip", admin)); code != http.StatusOK {
			t.Errorf("the admin behind the same tunnel after another client's lockout: status %d, want 200", code)
		}
	})

	t.Run("x-forwarded-for strict", func(t *testing.T) {
		// A tunnel or proxy that appends the client's address to X-Forwarded-For: whatever the
		// client wrote to the left of it is its own invention, and changing it every time buys
		// no further guesses.
		g := startGatewayGlobal(t, gatewayConfig{}, "\tservers {\n"+
			"\t\ttrusted_proxies static 127.0.0.1/8 ::1\n"+
			"\t\ttrusted_proxies_strict\n"+
			"\t\tclient_ip_headers X-Forwarded-For\n"+
			"\t}\n")
		forged := func(i int) []string {
			return []string{"X-Forwarded-For", fmt.Sprintf("192.0.2.%d, %s", i+1, guesser)}
		}
		if code := guessThenAdmin(t, g, forged, fixed("X-Forwarded-For", admin)); code != http.StatusOK {
			t.Errorf("the admin after another client's lockout: status %d, want 200", code)
		}
	})

	t.Run("not trusted", func(t *testing.T) {
		// Without trusted_proxies a client's own Cf-Connecting-Ip means nothing: both clients
		// are 127.0.0.1, so the guesser's lockout is the admin's too.
		g := startGateway(t, gatewayConfig{})
		if code := guessThenAdmin(t, g, fixed("Cf-Connecting-Ip", guesser), fixed("Cf-Connecting-Ip", admin)); code != http.StatusTooManyRequests {
			t.Errorf("a Cf-Connecting-Ip header sent to a server that trusts no proxy was believed: admin status %d, want 429", code)
		}
	})

	t.Run("other proxy trusted", func(t *testing.T) {
		// A server that trusts only its tunnel's addresses ignores the header from anyone else
		// (here the clients connect from 127.0.0.1, which is not among them).
		g := startGatewayGlobal(t, gatewayConfig{}, "\tservers {\n"+
			"\t\ttrusted_proxies static 192.0.2.0/24\n"+
			"\t\tclient_ip_headers Cf-Connecting-Ip\n"+
			"\t}\n")
		if code := guessThenAdmin(t, g, fixed("Cf-Connecting-Ip", guesser), fixed("Cf-Connecting-Ip", admin)); code != http.StatusTooManyRequests {
			t.Errorf("a Cf-Connecting-Ip header from an untrusted address was believed: admin status %d, want 429", code)
		}
	})
}
