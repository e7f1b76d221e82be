package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// adminBackend gives the admin API what it needs from the core.
type adminBackend struct{ c *Core }

// adminTimeout bounds the store calls that have no request context.
const adminTimeout = 5 * time.Second

// operatorDisabled is the reason recorded when an operator disables a key.
const operatorDisabled = "disabled by an operator"

// CheckAdminKey compares the key's SHA-256 with the stored one in constant time. An error
// means the stored hash could not be read (the database is busy or gone), not a wrong key.
func (b adminBackend) CheckAdminKey(key string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	all, err := b.c.store.Settings(ctx)
	if err != nil {
		return false, err
	}
	want, err := hex.DecodeString(all[setAdminKeyHash])
	if err != nil || len(want) != sha256.Size {
		return false, nil
	}
	got := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(got[:], want) == 1, nil
}

// SetAdminKey stores the new key's hash as a panel edit (it wins until the Caddyfile's
// admin_key itself changes) and ends every session but keep.
func (b adminBackend) SetAdminKey(ctx context.Context, key string, keep [32]byte) error {
	if err := b.c.store.SetSetting(ctx, setAdminKeyHash, hashHex(key)); err != nil {
		return err
	}
	n, err := b.c.store.DeleteSessionsExcept(ctx, keep)
	b.c.logger.Info("admin: the admin key was changed in the admin API", zap.Int64("sessions_ended", n))
	return err
}

// Status reports the pool's state and the log writer's health.
func (b adminBackend) Status() any {
	active, cooling, disabled := b.c.pool.Counts(time.Now())
	return map[string]any{
		"keys":             map[string]int{"active": active, "cooling": cooling, "disabled": disabled},
		"log_rows_dropped": b.c.store.Dropped(),
	}
}

// Location is the timezone setting.
func (b adminBackend) Location() *time.Location { return b.c.settings.Load().timezone }

// CreateSession implements admin.Backend.
func (b adminBackend) CreateSession(ctx context.Context, tokenHash [32]byte, expires time.Time) error {
	return b.c.store.CreateSession(ctx, tokenHash, expires)
}

// SessionExpiry implements admin.Backend.
func (b adminBackend) SessionExpiry(ctx context.Context, tokenHash [32]byte, now time.Time) (time.Time, bool, error) {
	return b.c.store.SessionExpiry(ctx, tokenHash, now)
}

// DeleteSession implements admin.Backend.
func (b adminBackend) DeleteSession(ctx context.Context, tokenHash [32]byte) error {
	return b.c.store.DeleteSession(ctx, tokenHash)
}

// ---- upstream keys

// liveKey is a stored key with its state in the pool and the status the API shows.
type liveKey struct {
	store.Key
	state  keypool.KeyState
	status string
}

// liveKeys returns every stored key with its live state. The pool knows best whether a key is
// disabled or cooling (the store is written behind it); the store knows the rest.
func (c *Core) liveKeys(ctx context.Context) ([]liveKey, error) {
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return nil, err
	}
	states := c.poolStates(time.Now())
	out := make([]liveKey, len(keys))
	for i, k := range keys {
		st, inPool := states[k.ID]
		lk := liveKey{Key: k, state: st, status: admin.KeyActive}
		if inPool {
			lk.Failures = st.Failures
		}
		switch {
		case isDisabled(k, st):
			lk.status = admin.KeyDisabled
		case len(st.Cooldowns) > 0:
			lk.status = admin.KeyCooling
		}
		out[i] = lk
	}
	return out, nil
}

// maskKey shows the start and end of a key only.
func maskKey(secret string) string {
	if len(secret) < 16 {
		return strings.Repeat("*", len(secret))
	}
	return secret[:6] + "…" + secret[len(secret)-4:]
}

// inZone returns t in loc, or the zero admin.Time for the zero time.
func inZone(t time.Time, loc *time.Location) admin.Time {
	if t.IsZero() {
		return admin.Time{}
	}
	return admin.Time(t.In(loc))
}

// Keys implements admin.Backend.
func (b adminBackend) Keys(ctx context.Context) ([]admin.Key, error) {
	keys, err := b.c.liveKeys(ctx)
	if err != nil {
		return nil, err
	}
	owned, err := b.c.ownedResourceCounts(ctx)
	if err != nil {
		return nil, err
	}
	loc := b.Location()
	out := make([]admin.Key, len(keys))
	for i, k := range keys {
		cds := make([]admin.Cooldown, len(k.state.Cooldowns))
		for j, cd := range k.state.Cooldowns {
			cds[j] = admin.Cooldown{Model: cd.Model, Until: inZone(cd.Until, loc)}
		}
		out[i] = admin.Key{
			ID:             k.ID,
			Masked:         maskKey(k.Secret),
			Project:        k.Project,
			Status:         k.status,
			DisabledReason: k.DisabledReason,
			ManualDisabled: k.ManualDisabled,
			FailureCount:   k.Failures,
			LastError:      k.LastError,
			LastUsedAt:     inZone(k.LastUsedAt, loc),
			Requests:       k.Requests,
			Failures:       k.FailedRequests,
			Cooldowns:      cds,
			CreatedAt:      inZone(k.CreatedAt, loc),
			Resources:      owned[k.ID],
		}
	}
	return out, nil
}

// AddKeys stores unlabelled keys as AddLabeledKeys does and returns how many were new.
func (b adminBackend) AddKeys(ctx context.Context, secrets []string) (int, error) {
	keys := make([]store.NewKey, len(secrets))
	for i, s := range secrets {
		keys[i] = store.NewKey{Secret: s}
	}
	added, _, err := b.AddLabeledKeys(ctx, keys)
	return added, err
}

// AddLabeledKeys stores the keys with their project labels, gives the keys already in the pool
// their new label at once, and puts the new keys (with their labels) into the live pool.
func (b adminBackend) AddLabeledKeys(ctx context.Context, keys []store.NewKey) (added, relabeled int, err error) {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	res, err := c.addLabeledKeys(ctx, keys)
	if err != nil {
		return 0, 0, err
	}
	if len(res.Relabeled) > 0 {
		c.logger.Info("admin: upstream keys relabelled by an import", zap.Int("keys", len(res.Relabeled)))
	}
	if res.Added > 0 {
		if err := c.loadPool(ctx); err != nil {
			return res.Added, len(res.Relabeled), err
		}
		c.logger.Info("admin: upstream keys added", zap.Int("added", res.Added))
	}
	return res.Added, len(res.Relabeled), nil
}

// addLabeledKeys stores keys and hands the new label of each key already stored to the pool,
// in one step with respect to other key changes (keysMu). New keys reach the pool by loadPool.
func (c *Core) addLabeledKeys(ctx context.Context, keys []store.NewKey) (store.AddResult, error) {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	res, err := c.store.AddLabeledKeys(ctx, keys)
	if err != nil {
		return store.AddResult{}, err
	}
	for _, r := range res.Relabeled {
		c.pool.SetProject(r.KeyID, r.Project)
	}
	return res, nil
}

// SetKeysProject labels the keys with ids as an operator, in the store and the pool; an
// unknown id changes nothing.
func (b adminBackend) SetKeysProject(ctx context.Context, ids []int64, project string) (int, error) {
	c := b.c
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return 0, err
	}
	known := make(map[int64]bool, len(keys))
	for _, k := range keys {
		known[k.ID] = true
	}
	var missing []int64
	for _, id := range ids {
		if !known[id] {
			known[id] = true // listed once
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return 0, &admin.UnknownKeysError{IDs: missing}
	}
	changed, err := c.store.SetKeysProject(ctx, ids, project)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		c.pool.SetProject(id, project)
	}
	c.logger.Info("admin: upstream keys' project label set", zap.Int("keys", len(ids)),
		zap.Int64("changed", changed), zap.String("project", project))
	return int(changed), nil
}

// DeleteKey deletes the key from the store, then from the pool.
func (b adminBackend) DeleteKey(ctx context.Context, id int64) error {
	b.c.keysMu.Lock()
	defer b.c.keysMu.Unlock()
	if err := b.c.store.DeleteKey(ctx, id); err != nil {
		return err
	}
	b.c.pool.Remove(id)
	b.c.logger.Info("admin: upstream key deleted", zap.Int64("key_id", id))
	return nil
}

// SetKeyEnabled enables a key (failures and cooldowns reset) or disables it as an operator
// (the scheduled validation then leaves it alone), in the store and the pool.
func (b adminBackend) SetKeyEnabled(ctx context.Context, id int64, enabled bool) error {
	if enabled {
		if err := b.c.enableKey(ctx, id); err != nil {
			return err
		}
		b.c.logger.Info("admin: upstream key enabled", zap.Int64("key_id", id))
		return nil
	}
	if err := b.c.disableKey(ctx, id); err != nil {
		return err
	}
	b.c.logger.Info("admin: upstream key disabled", zap.Int64("key_id", id))
	return nil
}

// disableKey takes a key out of service as an operator, in the store and the pool.
func (c *Core) disableKey(ctx context.Context, id int64) error {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	if err := c.store.SetKeyStatus(ctx, id, store.StatusDisabled, operatorDisabled, true); err != nil {
		return err
	}
	c.pool.SetDisabled(id, true)
	return nil
}

// checkOf converts a validation result for the API.
func checkOf(r ValidationResult, loc *time.Location) admin.KeyCheck {
	return admin.KeyCheck{KeyID: r.KeyID, Result: r.Kind.String(), HTTPStatus: r.Status,
		Reason: r.Reason, Action: r.Action, Until: inZone(r.Until, loc)}
}

// ValidateKey implements admin.Backend.
func (b adminBackend) ValidateKey(ctx context.Context, id int64) (admin.KeyCheck, error) {
	r, err := b.c.validateKey(ctx, id)
	if err != nil {
		return admin.KeyCheck{}, err
	}
	return checkOf(r, b.Location()), nil
}

// validationState is the run of "validate every key" started from the admin API. It lives in
// the core, so a run outlives a config reload and the session that started it.
type validationState struct {
	mu  sync.Mutex
	run admin.ValidationRun
}

// StartValidation checks the keys (every one when ids is nil) in the background, unless a
// run is going already.
func (b adminBackend) StartValidation(only []int64) (admin.ValidationRun, bool) {
	c := b.c
	v := &c.validation
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.run.Running {
		return v.run, false
	}
	if c.ctx.Err() != nil {
		return admin.ValidationRun{Error: "the gateway is shutting down"}, false
	}
	loc := b.Location()
	ctx, cancel := context.WithTimeout(c.ctx, adminTimeout)
	keys, err := c.store.Keys(ctx)
	cancel()
	now := time.Now()
	if err != nil {
		v.run = admin.ValidationRun{StartedAt: inZone(now, loc), FinishedAt: inZone(now, loc), Error: err.Error()}
		return v.run, true
	}
	wanted := make(map[int64]bool, len(only))
	for _, id := range only {
		wanted[id] = true
	}
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		if only == nil || wanted[k.ID] {
			ids = append(ids, k.ID)
		}
	}
	v.run = admin.ValidationRun{Running: true, Total: len(ids), StartedAt: inZone(now, loc)}
	run := v.run
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		results, err := c.validateKeys(c.ctx, ids, defaultValidationConcurrency, func(done, total int) {
			v.mu.Lock()
			v.run.Done, v.run.Total = done, total
			v.mu.Unlock()
		})
		summary := make(map[string]int)
		checks := make([]admin.KeyCheck, len(results))
		for i, r := range results {
			checks[i] = checkOf(r, loc)
			summary[r.Action]++
		}
		c.logger.Info("admin: validation run finished", zap.Int("checked", len(results)),
			zap.Int("enabled", summary[actionEnabled]), zap.Int("disabled", summary[actionDisabled]),
			zap.Int("cooling", summary[actionCooling]), zap.Int("valid", summary[actionValid]),
			zap.Int("unchanged", summary[actionUnchanged]))
		v.mu.Lock()
		defer v.mu.Unlock()
		v.run.Running = false
		v.run.Done = len(results)
		v.run.Total = len(results)
		v.run.FinishedAt = inZone(time.Now(), loc)
		v.run.Summary, v.run.Results = summary, checks
		if err != nil {
			v.run.Error = err.Error()
		}
	}()
	return run, true
}

// Validation implements admin.Backend.
func (b adminBackend) Validation() admin.ValidationRun {
	v := &b.c.validation
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.run
}

// KeySecrets returns the full keys with the given status ("" for all): the export.
func (b adminBackend) KeySecrets(ctx context.Context, status string) ([]string, error) {
	keys, err := b.c.liveKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if status == "" || k.status == status {
			out = append(out, k.Secret)
		}
	}
	return out, nil
}

// ---- access keys

// AccessKeys implements admin.Backend.
func (b adminBackend) AccessKeys(ctx context.Context) ([]admin.AccessKey, error) {
	list, err := b.c.store.AccessKeys(ctx)
	if err != nil {
		return nil, err
	}
	loc := b.Location()
	out := make([]admin.AccessKey, len(list))
	for i, k := range list {
		out[i] = admin.AccessKey{ID: k.ID, Label: k.Label, Enabled: k.Enabled,
			CreatedAt: inZone(k.CreatedAt, loc), LastUsedAt: inZone(k.LastUsedAt, loc)}
	}
	return out, nil
}

// changeAccessKeys runs change under the core's lock and reloads the proxy's access keys, so
// the change works at once.
func (b adminBackend) changeAccessKeys(ctx context.Context, change func() error) error {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := change(); err != nil {
		return err
	}
	return c.reloadAccessKeysLocked(ctx)
}

// AddAccessKey implements admin.Backend.
func (b adminBackend) AddAccessKey(ctx context.Context, secret, label string) (admin.AccessKey, error) {
	var id int64
	err := b.changeAccessKeys(ctx, func() (err error) {
		id, err = b.c.store.AddAccessKey(ctx, secret, label)
		return err
	})
	if err != nil {
		return admin.AccessKey{}, err
	}
	b.c.logger.Info("admin: access key created", zap.Int64("access_key_id", id), zap.String("label", label))
	list, err := b.AccessKeys(ctx)
	if err != nil {
		return admin.AccessKey{}, err
	}
	for _, k := range list {
		if k.ID == id {
			return k, nil
		}
	}
	return admin.AccessKey{}, fmt.Errorf("access key %d: %w", id, store.ErrNotFound)
}

// DeleteAccessKey implements admin.Backend.
func (b adminBackend) DeleteAccessKey(ctx context.Context, id int64) error {
	if err := b.changeAccessKeys(ctx, func() error { return b.c.store.DeleteAccessKey(ctx, id) }); err != nil {
		return err
	}
	b.c.logger.Info("admin: access key deleted", zap.Int64("access_key_id", id))
	return nil
}

// SetAccessKeyEnabled implements admin.Backend.
func (b adminBackend) SetAccessKeyEnabled(ctx context.Context, id int64, enabled bool) error {
	if err := b.changeAccessKeys(ctx, func() error { return b.c.store.SetAccessKeyEnabled(ctx, id, enabled) }); err != nil {
		return err
	}
	b.c.logger.Info("admin: access key "+map[bool]string{true: "enabled", false: "disabled"}[enabled], zap.Int64("access_key_id", id))
	return nil
}

// ---- settings

// liveSettings are the settings the panel may change, in the order the panel lists them.
var liveSettings = []string{
	setUpstream, setProxy, setMaxFailures, setMaxEjectionPercent, setMaxRetries, setMaxBody,
	setValidationModel, setValidationProbe, setValidationInterval,
	setTimezone, setErrorRetention, setRequestRetention,
}

// formatDuration writes d in the largest whole unit caddy's duration syntax has (15d, 1h).
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d%day == 0:
		return strconv.FormatInt(int64(d/day), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// redactProxy hides the password of a proxy URL.
func redactProxy(p string) string {
	u, err := url.Parse(p)
	if err != nil || p == "" {
		return p
	}
	return u.Redacted()
}

// Settings returns the effective live settings: numbers as numbers, durations in caddy's
// syntax, the proxy's password hidden.
func (b adminBackend) Settings(ctx context.Context) (map[string]any, error) {
	s := b.c.settings.Load()
	return map[string]any{
		setUpstream:           s.upstream.String(),
		setProxy:              redactProxy(s.proxy),
		setMaxFailures:        s.maxFailures,
		setMaxEjectionPercent: s.maxEjectionPercent,
		setMaxRetries:         s.maxRetries,
		setMaxBody:            s.maxBody,
		setValidationModel:    s.validationModel,
		setValidationProbe:    s.validationProbe,
		setValidationInterval: formatDuration(s.validationInterval),
		setTimezone:           s.timezone.String(),
		setErrorRetention:     formatDuration(s.errorRetention),
		setRequestRetention:   formatDuration(s.requestRetention),
	}, nil
}

// UpdateSettings checks each value with the rules of the Caddyfile's; if all are good it
// stores them as panel edits (they win until the Caddyfile's own value changes) and applies
// them at once, without a reload.
func (b adminBackend) UpdateSettings(ctx context.Context, values map[string]string) ([]admin.FieldError, error) {
	c := b.c
	cur := c.settings.Load()
	edits := make(map[string]string, len(values))
	var bad []admin.FieldError
	for name, v := range values {
		v = strings.TrimSpace(v)
		if !slices.Contains(liveSettings, name) {
			bad = append(bad, admin.FieldError{Field: name, Description: "is not a setting the panel can change; those are " + strings.Join(liveSettings, ", ")})
			continue
		}
		if name == setProxy && v != "" && v == redactProxy(cur.proxy) && v != cur.proxy {
			continue // the redacted form sent back unchanged: keep the real value
		}
		if _, err := parseSettings(map[string]string{name: v}); err != nil {
			bad = append(bad, admin.FieldError{Field: name, Description: strings.TrimPrefix(err.Error(), name+": ")})
			continue
		}
		edits[name] = v
	}
	if len(bad) > 0 {
		slices.SortFunc(bad, func(x, y admin.FieldError) int { return strings.Compare(x.Field, y.Field) })
		return bad, nil
	}
	if len(edits) == 0 {
		return nil, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.store.SetSettings(ctx, edits); err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(edits))
	// Names only: the proxy's value may hold a password.
	c.logger.Info("admin: settings changed", zap.Strings("settings", names))
	if err := c.reloadSettings(ctx); err != nil {
		return nil, err
	}
	if now := c.settings.Load(); now.upstream.String() != cur.upstream.String() {
		c.logger.Warn("admin: the upstream was changed; every upstream key now goes there",
			zap.String("old_host", cur.upstream.Host), zap.String("new_host", now.upstream.Host))
	}
	if now := c.settings.Load(); now.proxy != cur.proxy {
		c.logger.Warn("admin: the outbound proxy was changed",
			zap.String("old_host", urlHost(cur.proxy)), zap.String("new_host", urlHost(now.proxy)))
	}
	return nil, nil
}

// urlHost is the host of a URL (no user, password or path), or "" when there is none.
func urlHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}

// ---- stats and logs

// Usage implements admin.Backend.
func (b adminBackend) Usage(ctx context.Context, bounds []time.Time) ([]store.Usage, error) {
	return b.c.store.UsageBuckets(ctx, bounds)
}

// UsageByModel implements admin.Backend.
func (b adminBackend) UsageByModel(ctx context.Context, from, to time.Time) ([]store.ModelUsage, error) {
	return b.c.store.UsageByModel(ctx, from, to, 50)
}

// RequestLogs implements admin.Backend.
func (b adminBackend) RequestLogs(ctx context.Context, q store.LogQuery) ([]store.RequestLog, int64, error) {
	n, err := b.c.store.CountRequests(ctx, q)
	if err != nil {
		return nil, 0, err
	}
	rows, err := b.c.store.RecentRequests(ctx, q)
	return rows, n, err
}

// ErrorLogs implements admin.Backend.
func (b adminBackend) ErrorLogs(ctx context.Context, q store.LogQuery) ([]store.ErrorLog, int64, error) {
	n, err := b.c.store.CountErrors(ctx, q)
	if err != nil {
		return nil, 0, err
	}
	rows, err := b.c.store.RecentErrors(ctx, q)
	return rows, n, err
}

// Interface guards
var (
	_ admin.Backend = adminBackend{}
)
