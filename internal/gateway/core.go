// Package geminisynapse is a Caddy plugin that serves the Gemini API through a pool of upstream
// Google keys: clients authenticate with an access key, the gateway swaps in a pooled key, retries
// failed calls on other keys, cools keys down on quota errors, disables keys that are dead, and
// streams answers back as they arrive.
//
// It registers the app `gemini_synapse` (configured with the global Caddyfile option of the same
// name), the proxy handler `http.handlers.gemini_synapse` and the admin handler
// `http.handlers.gemini_synapse_admin`.
package geminisynapse

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// cores holds one core per absolute database path. A core outlives config reloads: the new
// config takes its reference before the old one releases its own.
var cores = caddy.NewUsagePool()

// App is the shared state of the Gemini gateway: one SQLite database, the key pool built from
// it, the request-log writer and the scheduler. Both handlers of a config use it. Settings marked
// "live" are stored in the database and may also be changed in the admin panel; the newer edit
// wins (a value here is applied when it differs from the one seen at the previous start).
type App struct {
	// Database is the path of the SQLite file. Its directory is created if missing, the file
	// with mode 0600. Default: `{caddy data dir}/gemini_synapse/data.db`.
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

	dbPath string
	core   *core
	logger *zap.Logger
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
	if !cgoEnabled {
		return errors.New("gemini_synapse needs SQLite through cgo, but this caddy was built without it: rebuild with CGO_ENABLED=1")
	}
	repl := caddy.NewReplacer()
	a.AdminKey = repl.ReplaceAll(a.AdminKey, "")
	if a.AdminKey != "" {
		// The same rules as a key set in the panel: a short admin key is guessable.
		if why := admin.AdminKeyProblem(a.AdminKey); why != "" {
			return fmt.Errorf("admin_key: %s (leave it out to have one generated)", why)
		}
	}
	a.AccessKeys = splitKeys(repl, a.AccessKeys)
	a.GoogleAPIKeys = splitKeys(repl, a.GoogleAPIKeys)

	if _, err := parseSettings(a.configSettings()); err != nil {
		return err
	}

	db := a.Database
	if db == "" {
		db = filepath.Join(caddy.AppDataDir(), "gemini_synapse", "data.db")
	}
	abs, err := filepath.Abs(db)
	if err != nil {
		return fmt.Errorf("database path %q: %v", db, err)
	}
	a.dbPath = abs
	val, _, err := cores.LoadOrNew(abs, func() (caddy.Destructor, error) {
		return newCore(abs, a.logger), nil
	})
	if err != nil {
		return err
	}
	a.core = val.(*core)
	return a.core.metrics.register(ctx.GetMetricsRegistry())
}

// Start opens the database (once per core), applies this config's keys and settings, and
// starts the scheduler (once per core).
func (a *App) Start() error {
	if err := a.core.open(); err != nil {
		return err
	}
	return a.core.applyConfig(context.Background(), a)
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

// configSettings returns the live settings that this config sets, as stored text.
func (a *App) configSettings() map[string]string {
	m := make(map[string]string)
	put := func(name, v string) {
		if v != "" {
			m[name] = v
		}
	}
	put(setUpstream, a.Upstream)
	put(setProxy, a.Proxy)
	if a.MaxFailures != 0 {
		m[setMaxFailures] = strconv.Itoa(a.MaxFailures)
	}
	if a.MaxRetries != nil {
		m[setMaxRetries] = strconv.Itoa(*a.MaxRetries)
	}
	if a.MaxEjectionPercent != nil {
		m[setMaxEjectionPercent] = strconv.Itoa(*a.MaxEjectionPercent)
	}
	if a.MaxRequestBody != 0 {
		m[setMaxBody] = strconv.FormatInt(a.MaxRequestBody, 10)
	}
	put(setValidationModel, a.ValidationModel)
	if a.ValidationInterval != 0 {
		m[setValidationInterval] = time.Duration(a.ValidationInterval).String()
	}
	put(setValidationProbe, a.ValidationProbe)
	put(setTimezone, a.Timezone)
	if a.ErrorLogRetention != 0 {
		m[setErrorRetention] = time.Duration(a.ErrorLogRetention).String()
	}
	if a.RequestLogRetention != 0 {
		m[setRequestRetention] = time.Duration(a.RequestLogRetention).String()
	}
	return m
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

// core is the state shared by every config that names the same database file.
type core struct {
	path   string
	logger *zap.Logger

	openOnce sync.Once
	openErr  error
	opened   atomic.Bool   // the store is open (Destruct has something to close)
	ready    chan struct{} // closed once the first config is applied: requests wait for it
	readyOne sync.Once

	mu sync.Mutex // serialises applyConfig and access-key reloads
	// keysMu makes a change of an upstream key (store write plus pool change) and loadPool
	// (store read plus pool add) atomic with respect to each other, so a reload never puts a
	// key deleted meanwhile back into the pool. It is taken after mu, never before, and never
	// held while waiting for a job (a validation run takes it too).
	keysMu sync.Mutex
	// adminThrottle counts wrong admin keys for every admin handler of every config, so a
	// reload does not lift a lockout.
	adminThrottle admin.Throttle

	store      *store.Store
	pool       *keypool.Pool
	poolLoaded bool // guarded by mu
	jobs       jobs // the scheduler and its jobs (jobs.go)

	clock        clockwork.Clock // drives the scheduler; nil means the real clock (tests set a fake)
	probeTimeout time.Duration   // per-check timeout of key validation; 0 means defaultProbeTimeout
	pendingRetry time.Duration   // how often owner records the store refused are retried; 0 means defaultPendingRetry
	pending      pendingOwners   // those records (pending.go)

	settings   atomic.Pointer[settings]
	accessKeys atomic.Pointer[map[[32]byte]accessKey]
	// accessKeyEnabled maps the id of every stored access key (the Caddyfile's included) to
	// whether it is enabled: an upload chunk sent without a key is checked against the access
	// key that started its session.
	accessKeyEnabled atomic.Pointer[map[int64]bool]
	upstream         atomic.Pointer[upstreamClient]

	// ctx ends when the core is destroyed; background work started by the admin API (bg)
	// runs under it and is waited for before the store closes.
	ctx        context.Context
	cancel     context.CancelFunc
	bg         sync.WaitGroup
	validation validationState // "validate every key" from the admin API (admin.go)
	confirms   confirmations   // probes confirming key errors (confirm.go)
	metrics    *metrics        // registered in every config's metrics registry (metrics.go)
}

// accessKey is what the proxy needs to know of a client credential.
type accessKey struct {
	id      int64
	enabled bool
}

func newCore(path string, logger *zap.Logger) *core {
	ctx, cancel := context.WithCancel(context.Background())
	c := &core{path: path, logger: logger, ready: make(chan struct{}), ctx: ctx, cancel: cancel}
	c.metrics = newMetrics(c)
	return c
}

// open opens the database and the scheduler. Only the first call works.
func (c *core) open() error {
	c.openOnce.Do(func() {
		c.openErr = c.doOpen()
		c.opened.Store(c.openErr == nil)
	})
	return c.openErr
}

func (c *core) doOpen() error {
	st, err := store.Open(c.path, c.logger.Named("store"))
	if err != nil {
		return fmt.Errorf("opening database %s: %v", c.path, err)
	}
	c.store = st
	c.pool = keypool.New(defaultMaxFailures)
	s, _ := parseSettings(nil)
	c.settings.Store(s)
	if err := c.reschedule(); err != nil {
		st.Close()
		return err
	}
	return nil
}

// applyConfig adds the config's keys, applies its settings under the newer-edit-wins rule,
// reloads what the proxy keeps in memory and starts the scheduler once.
func (c *core) applyConfig(ctx context.Context, a *App) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.store
	added, skippedKeys, err := st.AddConfigKeys(ctx, a.GoogleAPIKeys)
	if err != nil {
		return fmt.Errorf("adding google_api_keys: %v", err)
	}
	_, skippedAccess, err := st.EnsureAccessKeys(ctx, a.AccessKeys, "Caddyfile")
	if err != nil {
		return fmt.Errorf("adding access_keys: %v", err)
	}
	if skippedKeys+skippedAccess > 0 {
		c.logger.Info("keys of the Caddyfile were skipped: they were deleted in the admin panel; remove them from the Caddyfile",
			zap.Int("google_api_keys", skippedKeys), zap.Int("access_keys", skippedAccess))
	}
	for name, v := range a.configSettings() {
		if _, err := st.ApplyConfigSetting(ctx, name, v); err != nil {
			return fmt.Errorf("storing setting %s: %v", name, err)
		}
	}
	if a.AdminKey != "" {
		applied, err := st.ApplyConfigSetting(ctx, setAdminKeyHash, hashHex(a.AdminKey))
		if err != nil {
			return fmt.Errorf("storing admin key: %v", err)
		}
		if applied {
			// A new admin key in the Caddyfile (often a rotation after a leak) ends every
			// admin session, as a change in the panel does.
			if _, err := st.DeleteSessionsExcept(ctx, [32]byte{}); err != nil {
				return fmt.Errorf("ending admin sessions: %v", err)
			}
		}
	}
	if err := c.ensureAdminKey(ctx); err != nil {
		return err
	}
	if err := c.reloadSettings(ctx); err != nil {
		return err
	}
	if err := c.reloadAccessKeysLocked(ctx); err != nil {
		return err
	}
	if !c.poolLoaded || added > 0 {
		if err := c.loadPool(ctx); err != nil {
			return err
		}
	}
	c.startJobs()
	// Only now may requests pass: the access keys and the pool are in place. (The http app
	// may already be serving, since caddy starts apps in no fixed order.)
	c.readyOne.Do(func() { close(c.ready) })
	return nil
}

// ensureAdminKey generates an admin key when none is stored, and logs it once.
func (c *core) ensureAdminKey(ctx context.Context) error {
	all, err := c.store.Settings(ctx)
	if err != nil {
		return err
	}
	if all[setAdminKeyHash] != "" {
		return nil
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	key := "gsa-" + base64.RawURLEncoding.EncodeToString(b[:])
	if err := c.store.SetSetting(ctx, setAdminKeyHash, hashHex(key)); err != nil {
		return err
	}
	c.logger.Warn("no admin key was configured, so one was generated; it is shown only this once: change it with the admin_key option or in the admin panel",
		zap.String("admin_key", key))
	return nil
}

// reloadSettings reads the effective settings from the store, swaps them in and reschedules the
// jobs to match.
func (c *core) reloadSettings(ctx context.Context) error {
	raw, err := c.store.Settings(ctx)
	if err != nil {
		return fmt.Errorf("reading settings: %v", err)
	}
	s, err := parseSettings(raw)
	if err != nil {
		// A value edited by hand in the database may be bad: say so and keep the defaults for it.
		c.logger.Error("stored settings are invalid; using defaults for the bad ones", zap.Error(err))
	}
	c.settings.Store(s)
	c.pool.SetMaxFailures(s.maxFailures)
	c.pool.SetMaxEjectionPercent(s.maxEjectionPercent)
	if old := c.upstream.Load(); old == nil || old.proxy != s.proxy {
		cl, err := newUpstreamClient(s.proxy)
		if err != nil {
			return err
		}
		c.upstream.Store(cl)
		if old != nil {
			old.transport.CloseIdleConnections()
		}
	}
	return c.reschedule()
}

func (c *core) reloadAccessKeysLocked(ctx context.Context) error {
	list, err := c.store.AccessKeys(ctx)
	if err != nil {
		return fmt.Errorf("reading access keys: %v", err)
	}
	m := make(map[[32]byte]accessKey, len(list))
	ids := make(map[int64]bool, len(list))
	for _, k := range list {
		m[k.Hash] = accessKey{id: k.ID, enabled: k.Enabled}
		ids[k.ID] = k.Enabled
	}
	c.accessKeys.Store(&m)
	c.accessKeyEnabled.Store(&ids)
	return nil
}

// loadPool fills the key pool from the store the first time; later (keys were added by a
// reload) it adds only the keys the pool lacks, so the runtime state of the others (failure
// counts, cooldowns not yet written) is never overwritten by an older copy.
func (c *core) loadPool(ctx context.Context) error {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return fmt.Errorf("reading keys: %v", err)
	}
	now := time.Now()
	cds, err := c.store.Cooldowns(ctx, now)
	if err != nil {
		return fmt.Errorf("reading cooldowns: %v", err)
	}
	pk := make([]keypool.Key, len(keys))
	for i, k := range keys {
		pk[i] = keypool.Key{ID: k.ID, Secret: k.Secret, Project: k.Project, Disabled: k.Status == store.StatusDisabled, Failures: k.Failures}
	}
	if c.poolLoaded {
		known := make(map[int64]bool, c.pool.Len())
		for _, k := range c.pool.Keys(now) {
			known[k.ID] = true
		}
		for _, k := range pk {
			if !known[k.ID] {
				c.pool.Add(k)
			}
		}
		return nil
	}
	pc := make([]keypool.Cooldown, len(cds))
	for i, cd := range cds {
		pc[i] = keypool.Cooldown{KeyID: cd.KeyID, Model: cd.Model, Until: cd.Until}
	}
	c.pool.Load(pk, pc)
	c.poolLoaded = true
	return nil
}

// Destruct implements caddy.Destructor: called when the last config using the core is
// cleaned up. It stops the admin API's background work and the scheduler, flushes queued log
// rows and closes the database.
func (c *core) Destruct() error {
	c.cancel()
	if !c.opened.Load() {
		return nil // never opened (caddy validate, or a failed start)
	}
	c.bg.Wait()
	var errs []error
	if err := c.stopJobs(); err != nil {
		errs = append(errs, err)
	}
	if cl := c.upstream.Load(); cl != nil {
		cl.transport.CloseIdleConnections()
	}
	c.stopPending() // owner records the store refused: one last try while it is open
	if err := c.store.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// persist writes what a pool report changed. It never blocks on the database.
func (c *core) persist(ch keypool.Change, lastError string) {
	if ch.Project != "" {
		c.store.SaveKeyProject(ch.KeyID, ch.Project)
		c.logger.Info("upstream key's project learned from an error answer", zap.Int64("key_id", ch.KeyID), zap.String("project", ch.Project))
	}
	for _, id := range ch.Siblings {
		c.store.SaveCooldown(store.Cooldown{KeyID: id, Model: ch.Model, Until: ch.SiblingsUntil})
	}
	if len(ch.Siblings) > 0 {
		c.logger.Info("per-project quota exhausted: the project's other keys cool down for the model too",
			zap.Int64("key_id", ch.KeyID), zap.Int64s("siblings", ch.Siblings), zap.String("model", ch.Model),
			zap.Time("until", ch.SiblingsUntil))
	}
	if !ch.Changed {
		return
	}
	reason := ch.Reason
	if ch.Ejected {
		lastError, reason = ch.Reason, ""
	}
	c.store.SaveKeyState(store.KeyState{
		KeyID:     ch.KeyID,
		Disabled:  ch.Disabled,
		Reason:    reason,
		Failures:  ch.Failures,
		LastError: lastError,
	})
	if !ch.CooldownUntil.IsZero() {
		c.store.SaveCooldown(store.Cooldown{KeyID: ch.KeyID, Model: ch.Model, Until: ch.CooldownUntil})
	}
	if ch.NewlyDisabled {
		c.logger.Warn("upstream key disabled", zap.Int64("key_id", ch.KeyID), zap.String("reason", ch.Reason))
	}
	if ch.Ejected {
		c.logger.Warn("upstream key ejected for a while: it failed again and again while other keys served",
			zap.Int64("key_id", ch.KeyID), zap.Time("until", ch.CooldownUntil), zap.String("reason", ch.Reason))
	}
}

func hashHex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// gocronLogger routes gocron's messages to Caddy's logger.
type gocronLogger struct{ l *zap.Logger }

func (g gocronLogger) Debug(msg string, args ...any) { g.l.Sugar().Debugw(msg, args...) }
func (g gocronLogger) Info(msg string, args ...any)  { g.l.Sugar().Infow(msg, args...) }
func (g gocronLogger) Warn(msg string, args ...any)  { g.l.Sugar().Warnw(msg, args...) }
func (g gocronLogger) Error(msg string, args ...any) { g.l.Sugar().Errorw(msg, args...) }

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*core)(nil)
)
