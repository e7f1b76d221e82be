package geminisynapse

import (
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("gemini_synapse", parseGlobalOption)
	// Not a handler directive: those take a leading "/path" argument as a path matcher, and
	// the admin prefix is such an argument.
	httpcaddyfile.RegisterDirective("gemini_synapse_admin", parseAdminDirective)
	httpcaddyfile.RegisterHandlerDirective("gemini_synapse", parseHandlerDirective)
	// Both are terminal handlers. Each insert lands just before reverse_proxy, so the admin
	// handler, registered first, runs first and passes what is outside its prefix on.
	httpcaddyfile.RegisterDirectiveOrder("gemini_synapse_admin", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterDirectiveOrder("gemini_synapse", httpcaddyfile.Before, "reverse_proxy")
}

// parseGlobalOption turns the `gemini_synapse` global option into the app's JSON.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the gemini_synapse global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "gemini_synapse", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option. Syntax:
//
//	gemini_synapse {
//		database              <path>
//		admin_key             <key>
//		access_keys           <key...>
//		google_api_keys       <key...>
//		upstream              <url>
//		proxy                 <url>
//		max_failures          <n>
//		max_ejection_percent  <percent>
//		max_retries           <n>
//		max_request_body      <size>
//		validation_model      <model>
//		validation_interval   <duration>
//		validation_probe      models|generate
//		timezone              <tz>
//		error_log_retention   <duration>
//		request_log_retention <duration>
//	}
//
// Key lists may repeat the subdirective and separate keys with spaces or commas.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "database", "admin_key", "upstream", "proxy", "validation_model", "validation_probe", "timezone":
			var v string
			args := d.RemainingArgs()
			switch {
			case len(args) == 1:
				v = args[0]
			case len(args) == 0 && (name == "admin_key" || name == "proxy"):
				continue // an unset environment variable ({$ADMIN_KEY}) leaves it unset
			default:
				return d.ArgErr()
			}
			switch name {
			case "database":
				a.Database = v
				continue
			case "admin_key":
				a.AdminKey = v
				continue
			case "upstream":
				a.Upstream = v
			case "proxy":
				a.Proxy = v
			case "validation_model":
				a.ValidationModel = v
			case "validation_probe":
				a.ValidationProbe = v
			case "timezone":
				a.Timezone = v
			}
			if err := gateway.CheckSetting(name, v); err != nil {
				return d.Err(err.Error())
			}
		case "access_keys", "google_api_keys":
			// No argument is allowed so that an unset {$GOOGLE_API_KEYS} adds nothing.
			args := d.RemainingArgs()
			if name == "access_keys" {
				a.AccessKeys = append(a.AccessKeys, args...)
			} else {
				a.GoogleAPIKeys = append(a.GoogleAPIKeys, args...)
			}
		case "max_failures", "max_retries", "max_ejection_percent":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			if err := gateway.CheckSetting(name, v); err != nil {
				return d.Err(err.Error())
			}
			n, _ := strconv.Atoi(strings.TrimSpace(v)) // checked just above
			switch r := n; name {
			case "max_failures":
				a.MaxFailures = r
			case "max_ejection_percent":
				a.MaxEjectionPercent = &r
			default:
				a.MaxRetries = &r
			}
		case "max_request_body":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > math.MaxInt64 || gateway.CheckSetting(name, strconv.FormatUint(n, 10)) != nil {
				return d.Errf("max_request_body: %q is not a size such as 32MiB", v)
			}
			a.MaxRequestBody = int64(n)
		case "validation_interval", "error_log_retention", "request_log_retention":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("%s: %v", name, err)
			}
			if err := gateway.CheckSetting(name, v); err != nil {
				return d.Err(err.Error())
			}
			switch name {
			case "validation_interval":
				a.ValidationInterval = caddy.Duration(dur)
			case "error_log_retention":
				a.ErrorLogRetention = caddy.Duration(dur)
			default:
				a.RequestLogRetention = caddy.Duration(dur)
			}
		default:
			return d.Errf("unrecognized gemini_synapse option %q", name)
		}
	}
	return nil
}

func parseHandlerDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the proxy handler. It takes no arguments; its settings are in the
// gemini_synapse global option. Syntax:
//
//	gemini_synapse
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("gemini_synapse takes no block: its settings go in the gemini_synapse global option (found %q)", d.Val())
	}
	return nil
}

func parseAdminDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	m := new(AdminHandler)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return h.NewRoute(nil, m), nil
}

// UnmarshalCaddyfile sets up the admin handler. Syntax:
//
//	gemini_synapse_admin [<prefix>]
//
// The prefix defaults to /admin.
func (m *AdminHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		m.Prefix = d.Val()
		if len(m.Prefix) == 0 || m.Prefix[0] != '/' {
			return d.Errf("gemini_synapse_admin: the prefix %s must start with /", strconv.Quote(m.Prefix))
		}
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("gemini_synapse_admin takes no block (found %q)", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*AdminHandler)(nil)
)
