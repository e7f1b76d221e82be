package geminisynapse

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
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
//		database              <path or postgres:// URL>
//		admin_key             <key>
//		access_keys           <key...>
//		access_key            <label> <key> {
//			models       <glob...>
//			rpm          <n>
//			rpd          <n>
//			tpm          <n>
//			token_budget <n> [daily|weekly|monthly]
//			concurrency  <n>
//			expires      <RFC 3339 time>
//			shared       [true|false]
//		}
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
//		shared_limits_lease   <duration>
//		shared_limits_slice   <percent>
//	}
//
// Key lists may repeat the subdirective and separate keys with spaces or commas. Each
// access_key declares one key with a policy (its block is optional; no block: no limit);
// counts take SI suffixes (200k, 10M).
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
		case "access_key":
			p, err := parseAccessKey(d)
			if err != nil {
				return err
			}
			a.AccessKeyPolicies = append(a.AccessKeyPolicies, p)
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
		case "shared_limits_lease":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 || dur > time.Minute {
				return d.Errf("shared_limits_lease: %q is not a duration between 1ms and 1m", v)
			}
			a.SharedLimitsLease = caddy.Duration(dur)
		case "shared_limits_slice":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			pct, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if err != nil || pct <= 0 || pct > 100 {
				return d.Errf("shared_limits_slice: %q is not a percentage between 0 and 100", v)
			}
			a.SharedLimitsSlice = pct
		default:
			return d.Errf("unrecognized gemini_synapse option %q", name)
		}
	}
	return nil
}

// parseAccessKey reads one `access_key <label> <key> { ... }` with the dispenser on its name.
// The key may be missing (an unset {$VAR} leaves nothing): Provision skips it with a warning.
func parseAccessKey(d *caddyfile.Dispenser) (AccessKeyPolicy, error) {
	var p AccessKeyPolicy
	args := d.RemainingArgs()
	switch len(args) {
	case 1:
		p.Label = args[0]
	case 2:
		p.Label, p.Key = args[0], args[1]
	default:
		return p, d.Errf("access_key takes a label and a key (access_key <label> <key> { ... }), got %d arguments", len(args))
	}
	bad := func(sub string, err error) error {
		if msg := err.Error(); strings.HasPrefix(msg, sub+": ") { // a tenant.FieldError names it already
			return d.Errf("access_key %q: %s", p.Label, msg)
		}
		return d.Errf("access_key %q: %s: %v", p.Label, sub, err)
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "models" {
			return p, d.Errf("access_key %q: %s is given twice", p.Label, sub)
		}
		seen[sub] = true
		args := d.RemainingArgs()
		switch sub {
		case "models":
			if len(args) == 0 {
				return p, d.Errf("access_key %q: models needs at least one glob such as gemini-2.5-flash*", p.Label)
			}
			p.Models = append(p.Models, args...)
		case "rpm", "rpd", "tpm", "concurrency":
			if len(args) != 1 {
				return p, d.Errf("access_key %q: %s takes one count", p.Label, sub)
			}
			n, err := tenant.ParseCount(args[0])
			if err != nil {
				return p, bad(sub, err)
			}
			switch sub {
			case "rpm":
				p.RPM = n
			case "rpd":
				p.RPD = n
			case "tpm":
				p.TPM = n
			default:
				p.Concurrency = n
			}
		case "token_budget":
			if len(args) < 1 || len(args) > 2 {
				return p, d.Errf("access_key %q: token_budget takes a count and an optional period (token_budget 10M daily)", p.Label)
			}
			period := ""
			if len(args) == 2 {
				period = args[1]
			}
			b, err := tenant.ParseBudget(args[0], period)
			if err != nil {
				return p, bad(sub, err)
			}
			p.TokenBudget = b
		case "expires":
			if len(args) != 1 {
				return p, d.Errf("access_key %q: expires takes one RFC 3339 time such as 2027-01-31T00:00:00Z", p.Label)
			}
			p.Expires = args[0]
		case "shared":
			switch {
			case len(args) == 0 || len(args) == 1 && args[0] == "true":
				p.Shared = true
			case len(args) == 1 && args[0] == "false":
				p.Shared = false
			default:
				return p, d.Errf("access_key %q: shared takes no argument, true or false", p.Label)
			}
		default:
			return p, d.Errf("access_key %q: unrecognized option %q", p.Label, sub)
		}
	}
	// The whole policy is checked here too, so an error names its file and line.
	if _, err := p.policy(); err != nil {
		return p, d.Errf("access_key %q: %v", p.Label, err)
	}
	return p, nil
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
