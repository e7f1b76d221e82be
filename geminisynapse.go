// Package geminisynapse is a Caddy plugin that serves the Gemini API through a pool of upstream
// Google keys: clients authenticate with an access key, the gateway swaps in a pooled key, retries
// failed calls on other keys, cools keys down on quota errors, disables keys that are dead, and
// streams answers back as they arrive.
//
// It registers the app `gemini_synapse` (configured with the global Caddyfile option of the same
// name), the proxy handler `http.handlers.gemini_synapse` and the admin handler
// `http.handlers.gemini_synapse_admin`. This package is the Caddy wiring only; the gateway itself
// is internal/gateway.
package geminisynapse

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/gateway"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

func init() {
	caddy.RegisterModule(App{})
}

// cores holds one core per database: its absolute path, or its URL as written. A core outlives
// config reloads: the new config takes its reference before the old one releases its own.
var cores = caddy.NewUsagePool()

// App is the shared state of the Gemini gateway: one database (a SQLite file, or PostgreSQL
// shared with other instances), the key pool built from it, the request-log writer and the
// scheduler. Both handlers of a config use it. Settings marked
// "live" are stored in the database and may also be changed in the admin panel; the newer edit
// wins (a value here is applied when it differs from the one seen at the previous start).
type App struct {
	// Database is the path of the SQLite file (its directory is created if missing, the file
	// with mode 0600), or the URL of a PostgreSQL database,
	// `postgres://user:password@host:5432/db?sslmode=verify-full` (`postgresql://` too, with
	// any parameter pgx accepts, such as pool_max_conns or connect_timeout), which several
	// caddy instances share: they then act as one gateway. Accepts placeholders such as
	// `{env.DATABASE_URL}`, which keeps the password out of the config; the password is
	// never logged. Default: `{caddy data dir}/gemini_synapse/data.db`.
	Database string `json:"database,omitempty"`

	// AdminKey is the secret of the admin panel and API. It is stored hashed. If none is
	// configured anywhere, one is generated at first start and printed once in the log.
	// It must be 16 to 512 characters without spaces. Accepts placeholders such as
	// `{env.ADMIN_KEY}`.
	AdminKey string `json:"admin_key,omitempty"`

	// AccessKeys are the keys clients use to call the gateway; each entry may hold several
	// separated by commas or spaces. They are added to the database if missing (stored as
	// SHA-256 hashes) and never deleted from here; one deleted in the admin panel stays
	// deleted (it is skipped, with a log line). Accepts placeholders.
	AccessKeys []string `json:"access_keys,omitempty"`

	// AccessKeyPolicies are access keys declared with a label and a policy: the models they may
	// use, their limits, their expiry. Each is added to the database if missing; a label or
	// policy changed here since the last start replaces the stored one (an edit in the admin
	// panel stays until then). Keys accept placeholders; one that resolves to nothing (an unset
	// `{env.VAR}`) is skipped with a warning. Keys listed in `access_keys` have no policy.
	AccessKeyPolicies []AccessKeyPolicy `json:"access_key_policies,omitempty"`

	// GoogleAPIKeys are upstream Gemini keys added to the pool at start and on reload if
	// missing; removing one here does not delete it, and one deleted in the admin panel stays
	// deleted until it is added there again (it is skipped, with a log line). Entries may be
	// comma- or space-separated. Accepts placeholders.
	GoogleAPIKeys []string `json:"google_api_keys,omitempty"`

	// Upstream is the base URL of the Gemini API (live setting).
	// Default: `https://generativelanguage.googleapis.com`.
	Upstream string `json:"upstream,omitempty"`

	// Proxy is an optional outbound proxy used to reach the upstream, as an `http://`,
	// `https://` or `socks5://` URL (live setting). Default: none (direct).
	Proxy string `json:"proxy,omitempty"`

	// MaxFailures is the number of consecutive transient failures (5xx, network errors) after
	// which a key is ejected: out of rotation for 1 minute, doubling on each consecutive
	// ejection up to 1 hour, then back on its own. A key is ejected only while other keys
	// succeed for the same model; when most attempts fail with every key (an outage), nothing
	// is counted. Transient failures never disable a key (live setting). Must be at least 1.
	// Default: 5.
	MaxFailures int `json:"max_failures,omitempty"`

	// MaxEjectionPercent is the largest share, in percent, of the enabled keys that may be
	// ejected at once (live setting). 0 turns ejection off. Default: 50.
	MaxEjectionPercent *int `json:"max_ejection_percent,omitempty"`

	// MaxRetries is how many further attempts, each on another key, a failed call gets
	// (live setting). 0 means no retry. Default: 3.
	MaxRetries *int `json:"max_retries,omitempty"`

	// MaxRequestBody is the largest request body accepted, in bytes; larger bodies get 413
	// (live setting). Default: 32 MiB.
	MaxRequestBody int64 `json:"max_request_body,omitempty"`

	// ValidationModel is the model used to check keys (live setting).
	// Default: `gemini-2.5-flash`.
	ValidationModel string `json:"validation_model,omitempty"`

	// ValidationInterval is how often disabled and cooling keys are re-checked (live setting).
	// Default: 1h.
	ValidationInterval caddy.Duration `json:"validation_interval,omitempty"`

	// ValidationProbe is how keys are checked (live setting): `models` asks for the validation
	// model's metadata, which is free and tells invalid, suspended and leaked keys from valid
	// ones; `generate` sends a one-token generateContent, which also finds exhausted quota but
	// spends a request of it. Default: `models`.
	ValidationProbe string `json:"validation_probe,omitempty"`

	// Timezone is the IANA time zone used for schedules and statistics (live setting).
	// Default: `UTC`.
	Timezone string `json:"timezone,omitempty"`

	// ErrorLogRetention is how long rows of the error log are kept (live setting). Default: 15d.
	ErrorLogRetention caddy.Duration `json:"error_log_retention,omitempty"`

	// RequestLogRetention is how long rows of the request log are kept (live setting).
	// Default: 30d.
	RequestLogRetention caddy.Duration `json:"request_log_retention,omitempty"`

	// SharedLimitsLease is how long a slice of an access key's limits, leased by one of several
	// instances sharing a PostgreSQL database, may be used before its unused units go back
	// (default 2s). Shorter gives idle units back sooner (less under-admission) at the cost of
	// more calls to the database. Read when the database is first opened; a reload does not
	// change it.
	SharedLimitsLease caddy.Duration `json:"shared_limits_lease,omitempty"`

	// SharedLimitsSlice is the largest slice one instance leases, in percent of the limit
	// (default 10). Smaller slices leave fewer units held away from the other instances; larger
	// ones mean fewer calls under load. Read when the database is first opened.
	SharedLimitsSlice float64 `json:"shared_limits_slice,omitempty"`

	dbPath     string
	policyKeys []gateway.AccessKeyConfig // AccessKeyPolicies, resolved and checked by Provision
	core       *gateway.Core
	logger     *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "gemini_synapse",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets defaults, checks the settings and takes a reference to the shared core of the
// database. It opens nothing: `caddy validate` provisions modules too.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	db := strings.TrimSpace(repl.ReplaceAll(a.Database, ""))
	if db == "" && a.Database != "" {
		// An unset {env.DATABASE_URL} must not fall back to a local file: an instance of a
		// cluster would then run alone, unnoticed.
		return fmt.Errorf("database %q is empty once its placeholders are replaced (an unset environment variable?)", a.Database)
	}
	if !cgoEnabled && !gateway.IsDatabaseURL(db) {
		return errors.New("gemini_synapse needs SQLite through cgo, but this caddy was built without it: rebuild with CGO_ENABLED=1, or use a PostgreSQL database")
	}
	a.AdminKey = repl.ReplaceAll(a.AdminKey, "")
	a.AccessKeys = splitKeys(repl, a.AccessKeys)
	a.GoogleAPIKeys = splitKeys(repl, a.GoogleAPIKeys)
	keys, err := a.resolvePolicyKeys(repl)
	if err != nil {
		return err
	}
	a.policyKeys = keys
	if err := a.config().Check(); err != nil {
		return err
	}

	key := db // the core's key in cores, and the database it opens: a URL as written
	if !gateway.IsDatabaseURL(db) {
		if db == "" {
			db = filepath.Join(caddy.AppDataDir(), "gemini_synapse", "data.db")
		}
		abs, err := filepath.Abs(db)
		if err != nil {
			return fmt.Errorf("database path %q: %v", db, err)
		}
		key = abs
	}
	a.dbPath = key
	val, _, err := cores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return gateway.New(key, a.logger, caddyHooks), nil
	})
	if err != nil {
		return err
	}
	a.core = val.(*gateway.Core)
	return a.core.RegisterMetrics(ctx.GetMetricsRegistry())
}

// Start opens the database (once per core), applies this config's keys and settings, and
// starts the scheduler (once per core).
func (a *App) Start() error {
	if err := a.core.Open(); err != nil {
		return err
	}
	return a.core.Apply(context.Background(), a.config())
}

// Stop implements caddy.App. The core stays up for the next config; Cleanup releases it.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's reference to the core; the last release closes it.
func (a *App) Cleanup() error {
	if a.core == nil {
		return nil
	}
	a.core = nil
	_, err := cores.Delete(a.dbPath)
	return err
}

// config is what this config asks of the gateway.
func (a *App) config() *gateway.Config {
	return &gateway.Config{
		AdminKey:            a.AdminKey,
		AccessKeys:          a.AccessKeys,
		PolicyKeys:          a.policyKeys,
		GoogleAPIKeys:       a.GoogleAPIKeys,
		Upstream:            a.Upstream,
		Proxy:               a.Proxy,
		MaxFailures:         a.MaxFailures,
		MaxEjectionPercent:  a.MaxEjectionPercent,
		MaxRetries:          a.MaxRetries,
		MaxRequestBody:      a.MaxRequestBody,
		ValidationModel:     a.ValidationModel,
		ValidationInterval:  time.Duration(a.ValidationInterval),
		ValidationProbe:     a.ValidationProbe,
		Timezone:            a.Timezone,
		ErrorLogRetention:   time.Duration(a.ErrorLogRetention),
		RequestLogRetention: time.Duration(a.RequestLogRetention),
		SharedLimitsLease:   time.Duration(a.SharedLimitsLease),
		SharedLimitsSlice:   a.SharedLimitsSlice / 100,
	}
}

// AccessKeyPolicy is one access key with its label and policy. A zero limit means "no limit".
type AccessKeyPolicy struct {
	// Label names the key in the admin panel, the logs and the metrics.
	Label string `json:"label"`

	// Key is the secret clients send (stored as its SHA-256 hash). Accepts placeholders such as
	// `{env.TEAM_A_KEY}`; a key that resolves to nothing is skipped with a warning.
	Key string `json:"key"`

	// Models are globs of the models the key may use, such as `gemini-2.5-flash*` (`*` matches
	// any run of characters, `?` one). Other models get 403 PERMISSION_DENIED and are left out
	// of models.list. Default: every model.
	Models []string `json:"models,omitempty"`

	// RPM is the most requests in any 60 seconds; more get 429 RESOURCE_EXHAUSTED with
	// Retry-After. Default: no limit.
	RPM int64 `json:"rpm,omitempty"`

	// RPD is the most requests per day, the day starting at midnight in the gateway's
	// `timezone`. Default: no limit.
	RPD int64 `json:"rpd,omitempty"`

	// TPM is the most tokens (prompt + candidates + thoughts, from the answers'
	// usageMetadata) in any 60 seconds: requests are refused while the last minute's tokens
	// reach it. Default: no limit.
	TPM int64 `json:"tpm,omitempty"`

	// TokenBudget is a hard stop once the tokens of the period (daily, weekly or monthly, in
	// the gateway's `timezone`) reach its limit. Default: none.
	TokenBudget *tenant.Budget `json:"token_budget,omitempty"`

	// Concurrency is the most requests in flight at once; a stream counts until it ends.
	// Default: no limit.
	Concurrency int64 `json:"concurrency,omitempty"`

	// Expires is when the key stops working, in RFC 3339 (`2027-01-31T00:00:00Z`); after it
	// clients get 401 UNAUTHENTICATED "access key expired". Default: never.
	Expires string `json:"expires,omitempty"`

	// Shared lets the key see and use the files, caches and batches the gateway did not create
	// (made outside it, or recorded before resources remembered their access key). Resources
	// of other access keys stay out of its reach either way. Default: false.
	Shared bool `json:"shared,omitempty"`
}

// policy is the tenant policy the entry declares.
func (p *AccessKeyPolicy) policy() (tenant.Policy, error) {
	pol := tenant.Policy{
		RPM:         p.RPM,
		RPD:         p.RPD,
		TPM:         p.TPM,
		TokenBudget: p.TokenBudget,
		Concurrency: p.Concurrency,
		Shared:      p.Shared,
	}
	for _, m := range p.Models {
		// As the admin API stores them: a glob matches names without "models/".
		pol.Models = append(pol.Models, strings.TrimPrefix(m, "models/"))
	}
	if p.Expires != "" {
		t, err := time.Parse(time.RFC3339, p.Expires)
		if err != nil {
			return pol, tenant.FieldError{Field: "expires", Description: fmt.Sprintf("%q is not an RFC 3339 time such as 2027-01-31T00:00:00Z", p.Expires)}
		}
		pol.ExpiresAt = t
	}
	return pol, pol.Check()
}

// resolvePolicyKeys resolves the placeholders of AccessKeyPolicies' keys and checks each
// policy. A key that resolves to nothing is skipped with a warning, as an unset variable in
// access_keys adds nothing; a key declared twice is refused.
func (a *App) resolvePolicyKeys(repl *caddy.Replacer) ([]gateway.AccessKeyConfig, error) {
	var out []gateway.AccessKeyConfig
	seen := make(map[string]string, len(a.AccessKeys)+len(a.AccessKeyPolicies))
	for _, k := range a.AccessKeys {
		seen[k] = "access_keys"
	}
	for i := range a.AccessKeyPolicies {
		p := &a.AccessKeyPolicies[i]
		name := fmt.Sprintf("access_key %q", p.Label)
		key := strings.TrimSpace(repl.ReplaceAll(p.Key, ""))
		if key == "" {
			if a.logger != nil {
				a.logger.Warn("access key skipped: its key is empty (an unset environment variable?)", zap.String("label", p.Label))
			}
			continue
		}
		if strings.ContainsAny(key, " \t\r\n,") {
			return nil, fmt.Errorf("%s: the key holds a space or a comma (one key per access_key)", name)
		}
		if where, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: the same key is also declared in %s", name, where)
		}
		seen[key] = name
		pol, err := p.policy()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, gateway.AccessKeyConfig{Label: p.Label, Key: key, Policy: pol})
	}
	return out, nil
}

// splitKeys resolves placeholders and splits entries on commas and white space.
func splitKeys(repl *caddy.Replacer, in []string) []string {
	var out []string
	for _, v := range in {
		v = repl.ReplaceAll(v, "")
		out = append(out, strings.FieldsFunc(v, func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
		})...)
	}
	return out
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*gateway.Core)(nil)
)
