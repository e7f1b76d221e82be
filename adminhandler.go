package geminisynapse

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
)

func init() {
	caddy.RegisterModule(AdminHandler{})
}

// AdminHandler serves the admin panel and its JSON API under a path prefix and passes every
// other request to the next handler. It shares the gemini_synapse app with the proxy handler.
type AdminHandler struct {
	// Prefix is the path the panel and API live under. Default: `/admin`.
	Prefix string `json:"prefix,omitempty"`

	core *gateway.Core
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
	m.api = &admin.Handler{Prefix: m.Prefix, Backend: m.core.AdminBackend(), ClientIP: caddyClientIP,
		Throttle: m.core.AdminThrottle(), Forwarded: caddyForwarded,
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (m *AdminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	p := r.URL.Path
	if p != m.Prefix && !strings.HasPrefix(p, m.Prefix+"/") {
		return next.ServeHTTP(w, r)
	}
	select {
	case <-m.core.Ready():
	case <-r.Context().Done():
		return nil
	}
	m.api.ServeHTTP(w, r)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*AdminHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*AdminHandler)(nil)
)
