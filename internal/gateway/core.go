package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// Core is the gateway of one database file: the store, the key pool built from it, the
// request-log writer and the scheduler. Every server configuration that names the file shares
// it, across reloads.
type Core struct {
	path   string
	logger *zap.Logger
	hooks  Hooks

	openOnce sync.Once
	openErr  error
	opened   atomic.Bool   // the store is open (Destruct has something to close)
	ready    chan struct{} // closed once the first config is applied: requests wait for it
	readyOne sync.Once

	mu sync.Mutex // serialises Apply and access-key reloads
	// keysMu makes a change of an upstream key (store write plus pool change) and loadPool
	// (store read plus pool add) atomic with respect to each other, so a reload never puts a
	// key deleted meanwhile back into the pool. It is taken after mu, never before, and never
	// held while waiting for a job (a validation run takes it too).
	keysMu sync.Mutex
	// adminThrottle counts wrong admin keys for every admin handler of every config, so a
	// reload does not lift a lockout.
	adminThrottle admin.Throttle

	store      store.Store
	pool       *keypool.Pool
	poolLoaded bool // guarded by mu
	jobs       jobs // the scheduler and its jobs (jobs.go)

	clock        clockwork.Clock               // drives the scheduler; nil means the real clock (tests set a fake)
	probeTimeout time.Duration                 // per-check timeout of key validation; 0 means defaultProbeTimeout
	pendingRetry time.Duration                 // how often owner records the store refused are retried; 0 means defaultPendingRetry
	wrapStore    func(store.Store) store.Store // tests: wraps the store once opened (a cluster of cores in one process)
	shareOnce    sync.Once                     // the limiter joins the cluster's shared limits once (limits.go)
	pending      pendingOwners                 // those records (pending.go)

	settings   atomic.Pointer[settings]
	accessKeys atomic.Pointer[map[[32]byte]*accessKey]
	// accessKeyByID maps the id of every stored access key (the Caddyfile's included) to it:
	// an upload chunk sent without a key is checked against the access key that started its
	// session, and resources are shown to the access key that made them.
	accessKeyByID atomic.Pointer[map[int64]*accessKey]
	limiter       *tenant.Limiter // every access key's limits, counted exactly (limits.go)
	seeded        bool            // the limiter's day and budget counts were restored from the store (guarded by mu)
	upstream      atomic.Pointer[upstreamClient]

	// ctx ends when the core is destroyed; background work started by the admin API (bg)
	// runs under it and is waited for before the store closes.
	ctx        context.Context
	cancel     context.CancelFunc
	bg         sync.WaitGroup
	validation validationState // "validate every key" from the admin API (admin.go)
	confirms   confirmations   // probes confirming key errors (confirm.go)
	metrics    *metrics        // registered in every config's metrics registry (metrics.go)
}

// accessKey is what the proxy needs to know of a client credential. It is never changed once
// published: a change builds new ones.
type accessKey struct {
	id      int64
	label   string
	enabled bool
	policy  *tenant.Policy // never nil
	broken  bool           // the stored policy does not parse: the key is refused
}

// New returns the core of the database at path (opened by Open); logger receives its log lines
// and hooks tell it what the server in front knows about a request.
func New(path string, logger *zap.Logger, hooks Hooks) *Core {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Core{path: path, logger: logger, hooks: hooks, ready: make(chan struct{}), ctx: ctx, cancel: cancel,
		limiter: tenant.NewLimiter()}
	c.metrics = newMetrics(c)
	return c
}

// Open opens the database and the scheduler. Only the first call works; later ones return its
// error.
func (c *Core) Open() error {
	c.openOnce.Do(func() {
		c.openErr = c.doOpen()
		c.opened.Store(c.openErr == nil)
	})
	return c.openErr
}

func (c *Core) doOpen() error {
	st, err := openStore(c.path, c.logger.Named("store"))
	if err == nil && c.wrapStore != nil {
		st = c.wrapStore(st)
	}
	if err != nil {
		return fmt.Errorf("opening database %s: %w", storeName(c.path), err)
	}
	c.store = st
	c.pool = keypool.New(defaultMaxFailures)
	s, _ := parseSettings(nil)
	c.settings.Store(s)
	if err := c.reschedule(); err != nil {
		st.Close()
		return err
	}
	c.followCluster()
	return nil
}

// Apply adds the config's keys, applies its settings under the newer-edit-wins rule,
// reloads what the proxy keeps in memory and starts the scheduler once.
func (c *Core) Apply(ctx context.Context, a *Config) error {
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
	if len(a.PolicyKeys) > 0 {
		keys := make([]store.ConfigAccessKey, len(a.PolicyKeys))
		for i, k := range a.PolicyKeys {
			keys[i] = store.ConfigAccessKey{Secret: k.Key, Label: k.Label, Policy: k.Policy.String()}
		}
		_, skipped, err := st.ApplyConfigAccessKeys(ctx, keys)
		if err != nil {
			return fmt.Errorf("adding access_key entries: %v", err)
		}
		skippedAccess += skipped
	}
	if skippedKeys+skippedAccess > 0 {
		c.logger.Info("keys of the Caddyfile were skipped: they were deleted in the admin panel; remove them from the Caddyfile",
			zap.Int("google_api_keys", skippedKeys), zap.Int("access_keys", skippedAccess))
	}
	for name, v := range a.settings() {
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
	// limits.go: the limits hold for the cluster when the store is shared; the first config
	// tunes the leases.
	c.shareOnce.Do(func() { c.shareLimits(a.SharedLimitsLease, a.SharedLimitsSlice) })
	if err := c.reloadAccessKeysLocked(ctx); err != nil {
		return err
	}
	if !c.poolLoaded || added > 0 {
		if err := c.loadPool(ctx); err != nil {
			return err
		}
	}
	c.startJobs()
	// The other instances sharing the store reload what this config may have changed.
	c.announce(store.Event{Kind: store.EventSettings})
	c.announce(store.Event{Kind: store.EventAccessKeys})
	if added > 0 {
		c.announce(store.Event{Kind: store.EventKeys})
	}
	// Only now may requests pass: the access keys and the pool are in place. (The http app
	// may already be serving, since caddy starts apps in no fixed order.)
	c.readyOne.Do(func() { close(c.ready) })
	return nil
}

// ensureAdminKey generates an admin key when none is stored, and logs it once.
func (c *Core) ensureAdminKey(ctx context.Context) error {
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
func (c *Core) reloadSettings(ctx context.Context) error {
	raw, err := c.store.Settings(ctx)
	if err != nil {
		return fmt.Errorf("reading settings: %w", err)
	}
	s, err := parseSettings(raw)
	if err != nil {
		// A value edited by hand in the database may be bad: say so and keep the defaults for it.
		c.logger.Error("stored settings are invalid; using defaults for the bad ones", zap.Error(err))
	}
	c.settings.Store(s)
	c.limiter.SetLocation(s.timezone)
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

// reloadAccessKeysLocked reads the access keys and their policies from the store and puts them
// in place for the proxy and the limiter. The first time, it restores the limiter's counts of
// the day and of each token budget's period from the request log.
func (c *Core) reloadAccessKeysLocked(ctx context.Context) error {
	list, err := c.store.AccessKeys(ctx)
	if err != nil {
		return fmt.Errorf("reading access keys: %w", err)
	}
	m := make(map[[32]byte]*accessKey, len(list))
	ids := make(map[int64]*accessKey, len(list))
	policies := make(map[int64]*tenant.Policy, len(list))
	for _, k := range list {
		ak := &accessKey{id: k.ID, label: k.Label, enabled: k.Enabled}
		p, err := tenant.Parse(k.Policy)
		if err != nil {
			c.logger.Error("an access key's stored policy is invalid: the key is refused until its policy is set again",
				zap.Int64("access_key_id", k.ID), zap.Error(err))
			ak.broken, p = true, new(tenant.Policy)
		}
		ak.policy = p
		m[k.Hash] = ak
		ids[k.ID] = ak
		if p.Limited() {
			policies[k.ID] = p
		}
	}
	c.limiter.Set(policies)
	if !c.seeded {
		if err := c.seedLimiter(ctx, policies); err != nil {
			return err
		}
		c.seeded = true
	}
	c.accessKeys.Store(&m)
	c.accessKeyByID.Store(&ids)
	c.metrics.tenants.setLabels(ctx, c, list)
	return nil
}

// seedLimiter restores, after a start, each limited access key's requests of the day and tokens
// of its budget's period from the request log's per-access-key sums: a restart must not hand
// out a day's quota or a month's budget again.
func (c *Core) seedLimiter(ctx context.Context, policies map[int64]*tenant.Policy) error {
	if len(policies) == 0 {
		return nil
	}
	now := time.Now()
	loc := c.settings.Load().timezone
	counts := make(map[string]map[int64]store.Counts) // by period
	since := func(period string) (map[int64]store.Counts, error) {
		if m, ok := counts[period]; ok {
			return m, nil
		}
		m, err := c.store.AccessKeyCounts(ctx, tenant.PeriodStart(period, now, loc))
		if err != nil {
			return nil, fmt.Errorf("restoring access keys' usage: %w", err)
		}
		counts[period] = m
		return m, nil
	}
	for id, p := range policies {
		day, err := since(tenant.Daily)
		if err != nil {
			return err
		}
		tokens := int64(0)
		if b := p.TokenBudget; b != nil {
			per, err := since(b.Period)
			if err != nil {
				return err
			}
			tokens = per[id].Tokens
		}
		c.limiter.Seed(id, day[id].Requests, tokens)
	}
	return nil
}

// loadPool fills the key pool from the store the first time; later (keys were added by a
// reload) it adds only the keys the pool lacks, so the runtime state of the others (failure
// counts, cooldowns not yet written) is never overwritten by an older copy.
func (c *Core) loadPool(ctx context.Context) error {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return fmt.Errorf("reading keys: %w", err)
	}
	now := time.Now()
	cds, err := c.store.Cooldowns(ctx, now)
	if err != nil {
		return fmt.Errorf("reading cooldowns: %w", err)
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
func (c *Core) Destruct() error {
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

// persist writes what a pool report changed, and tells the other instances sharing the store.
// It never blocks on the database.
func (c *Core) persist(ch keypool.Change, lastError string) {
	c.announceChange(ch)
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

// Ready is closed once the first configuration is applied; requests wait for it.
func (c *Core) Ready() <-chan struct{} { return c.ready }

// AdminBackend is what the admin API needs of the core.
func (c *Core) AdminBackend() admin.Backend { return adminBackend{c} }

// AdminThrottle counts wrong admin keys for every admin handler of every config, so a reload
// does not lift a lockout.
func (c *Core) AdminThrottle() *admin.Throttle { return &c.adminThrottle }

// Pool is the live key pool, for tests and tools that look at it.
func (c *Core) Pool() *keypool.Pool { return c.pool }

// Hooks are what the server in front of the gateway knows about a request. A nil hook means
// "nothing known": no client address, not from a trusted proxy, no prefix stripped.
type Hooks struct {
	// ClientIP is the client's address, as the server determined it (behind a trusted proxy,
	// the forwarded one).
	ClientIP func(*http.Request) string
	// Trusted tells whether the request came through a proxy the operator trusts, whose
	// X-Forwarded-* headers may be believed.
	Trusted func(*http.Request) bool
	// OriginalPath is the escaped path the request arrived with, before a path prefix was
	// stripped in front of the gateway ("" when unchanged or unknown).
	OriginalPath func(*http.Request) string
}

// trusted tells whether r came through a trusted proxy.
func (h Hooks) trusted(r *http.Request) bool { return h.Trusted != nil && h.Trusted(r) }

// originalPath is r's path before a prefix was stripped, or "".
func (h Hooks) originalPath(r *http.Request) string {
	if h.OriginalPath == nil {
		return ""
	}
	return h.OriginalPath(r)
}
