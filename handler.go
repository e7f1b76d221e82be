package geminisynapse

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler proxies Gemini API requests (`/v1/…`, `/v1beta/…`, `/v1alpha/…`, `/upload/…`,
// including the OpenAI-compatible `/v1beta/openai/…`, and the Live API's WebSocket
// `/ws/google.ai.generativelanguage.…`) to the upstream with a key from the pool
// of the `gemini_synapse` app. Clients authenticate with an access key sent as
// `x-goog-api-key`, `?key=` or `Authorization: Bearer`. Other paths go to the next handler.
// Its settings live in the `gemini_synapse` app (the global option of the same name).
type Handler struct {
	core *gateway.Core
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.gemini_synapse",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision looks up the gemini_synapse app (configuring it with defaults if the config has no
// global option for it) and keeps its shared core.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("gemini_synapse")
	if err != nil {
		return err
	}
	h.core = app.(*App).core
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.core.Serve(w, r) {
		return nil
	}
	return next.ServeHTTP(w, r)
}

// caddyHooks tell the gateway what caddy found out about a request.
var caddyHooks = gateway.Hooks{
	ClientIP:     caddyClientIP,
	Trusted:      caddyTrusted,
	OriginalPath: caddyOriginalPath,
}

// caddyClientIP is the client address as caddy determined it: the connection's, or the one a
// trusted proxy forwarded (the server's trusted_proxies and client_ip_headers).
func caddyClientIP(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return ip
}

// caddyTrusted tells whether the request came through a proxy in the server's trusted_proxies.
func caddyTrusted(r *http.Request) bool {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return trusted
}

// caddyOriginalPath is the escaped path the request arrived with, before a `handle_path` or
// `uri strip_prefix` changed it ("" when caddy kept no copy).
func caddyOriginalPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.EscapedPath()
	}
	return ""
}

// caddyForwarded is the scheme and host the client used, from X-Forwarded-Proto and
// X-Forwarded-Host, when caddy found the request came from a trusted proxy (the server's
// trusted_proxies); "" each otherwise, so a client cannot claim HTTPS or another host itself.
func caddyForwarded(r *http.Request) (proto, host string) {
	if !caddyTrusted(r) {
		return "", ""
	}
	first := func(name string) string {
		v, _, _ := strings.Cut(r.Header.Get(name), ",")
		return strings.TrimSpace(v)
	}
	return strings.ToLower(first("X-Forwarded-Proto")), first("X-Forwarded-Host")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
