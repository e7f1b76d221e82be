package gateway

// The admin API on upstream keys (adminBackend implements admin.Backend): the keys with their
// live state, adding, labelling, enabling, disabling, deleting and validating them.

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"go.uber.org/zap"
)

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
	if res.Added > 0 || len(res.Relabeled) > 0 {
		c.announce(store.Event{Kind: store.EventKeys})
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
	c.announce(store.Event{Kind: store.EventKeys})
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
	b.c.announce(store.Event{Kind: store.EventKeys})
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
	c.announce(store.Event{Kind: store.EventKeys})
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
