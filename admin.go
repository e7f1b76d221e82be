package geminisynapse

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
)

func init() {
	caddy.RegisterModule(AdminHandler{})
}

// AdminHandler serves the gateway's admin API under a path prefix and passes every other
// request to the next handler. It shares the gemini_synapse app with the proxy handler.
type AdminHandler struct {
	// Prefix is the path the admin API lives under. Default: `/admin`.
	Prefix string `json:"prefix,omitempty"`

	core *core
	api  *admin.Handler
}

// CaddyModule returns the Caddy module information.
func (AdminHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.gemini_synapse_admin",
		New: func() caddy.Module { return new(AdminHandler) },
	}
}

// Provision looks up the gemini_synapse app and builds the admin API on its core.
func (m *AdminHandler) Provision(ctx caddy.Context) error {
	if m.Prefix == "" {
		m.Prefix = "/admin"
	}
	m.Prefix = strings.TrimSuffix(m.Prefix, "/")
	app, err := ctx.App("gemini_synapse")
	if err != nil {
		return err
	}
	m.core = app.(*App).core
	m.api = &admin.Handler{Prefix: m.Prefix, Backend: adminBackend{m.core}}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (m *AdminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	p := r.URL.Path
	if p != m.Prefix && !strings.HasPrefix(p, m.Prefix+"/") {
		return next.ServeHTTP(w, r)
	}
	select {
	case <-m.core.ready:
	case <-r.Context().Done():
		return nil
	}
	m.api.ServeHTTP(w, r)
	return nil
}

// adminBackend gives the admin API what it needs from the core.
type adminBackend struct{ c *core }

// CheckAdminKey compares the key's SHA-256 with the stored one in constant time.
func (b adminBackend) CheckAdminKey(key string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, err := b.c.store.Settings(ctx)
	if err != nil {
		return false
	}
	want, err := hex.DecodeString(all[setAdminKeyHash])
	if err != nil || len(want) != sha256.Size {
		return false
	}
	got := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(got[:], want) == 1
}

// Status reports the pool's state and the log writer's health.
func (b adminBackend) Status() any {
	active, cooling, disabled := b.c.pool.Counts(time.Now())
	return map[string]any{
		"keys":             map[string]int{"active": active, "cooling": cooling, "disabled": disabled},
		"log_rows_dropped": b.c.store.Dropped(),
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*AdminHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*AdminHandler)(nil)
)
