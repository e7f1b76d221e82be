package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// max_ejection_percent is a live setting like the others: checked field by field in the admin
// API, applied to the pool at once, and the Caddyfile's value wins only when it changes.
func TestMaxEjectionPercentIsALiveSetting(t *testing.T) {
	e := newAdminEnv(t, 4)
	b := e.login()
	if s := b.wantStatus(200, "GET", "/admin/api/settings", "")["settings"].(map[string]any); s["max_ejection_percent"] != 50.0 {
		t.Fatalf("default max_ejection_percent = %v, want 50", s["max_ejection_percent"])
	}
	for _, bad := range []string{`101`, `-1`, `"half"`} {
		a := b.do("PUT", "/admin/api/settings", `{"max_ejection_percent":`+bad+`}`)
		if f := fieldViolations(t, a); a.status != 400 || len(f) != 1 || f[0] != "max_ejection_percent" {
			t.Errorf("max_ejection_percent %s: %d %v", bad, a.status, f)
		}
	}
	if got := e.c.settings.Load().maxEjectionPercent; got != 50 {
		t.Fatalf("a refused value changed the setting to %d", got)
	}
	// 0 turns ejection off, at once: a key failing while the others serve stays in rotation.
	b.wantStatus(200, "PUT", "/admin/api/settings", `{"max_ejection_percent":0}`)
	p := e.c.pool
	now := time.Now()
	fail := keypool.Outcome{Kind: keypool.Transient, Reason: "boom"}
	for i := range 10 {
		p.Report(1, "m", fail, now.Add(time.Duration(2*i)*time.Millisecond))
		if c := p.Report(2, "m", keypool.Outcome{Kind: keypool.Success}, now.Add(time.Duration(2*i+1)*time.Millisecond)); c.Disabled {
			t.Fatal("a serving key was disabled")
		}
	}
	if _, cooling, disabled := p.Counts(now.Add(time.Second)); cooling != 0 || disabled != 0 {
		t.Errorf("with max_ejection_percent 0: %d cooling, %d disabled", cooling, disabled)
	}
	// The Caddyfile's value applies when it changes.
	pct := 25
	if err := e.c.Apply(context.Background(), &Config{MaxEjectionPercent: &pct, AdminKey: testAdminKey}); err != nil {
		t.Fatal(err)
	}
	if got := e.c.settings.Load().maxEjectionPercent; got != 25 {
		t.Errorf("after a Caddyfile value: %d, want 25", got)
	}
}
