package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Values of the validation_probe setting.
const (
	// probeModels asks for the validation model's metadata: free, and tells invalid, suspended
	// and leaked keys from valid ones, but not an exhausted quota.
	probeModels = "models"
	// probeGenerate sends a one-token generateContent: it spends a request of the quota, and
	// finds an exhausted one too.
	probeGenerate = "generate"
)

const (
	// defaultValidationConcurrency is how many checks run at once.
	defaultValidationConcurrency = 4
	// defaultProbeTimeout bounds one check, answer included.
	defaultProbeTimeout = 20 * time.Second
	// unreachableAfter is the least number of checks in a row without an answer after which a
	// batch stops probing: the upstream is down, not the keys.
	unreachableAfter = 10
)

// Actions of a check, as ValidationResult.Action.
const (
	actionEnabled   = "enabled"
	actionValid     = "valid"
	actionDisabled  = "disabled"
	actionCooling   = "cooling"
	actionUnchanged = "unchanged"
)

// ValidationResult is what one key check found and what it did to the key.
type ValidationResult struct {
	KeyID int64
	// Kind is what the probe's answer means for the key: keypool.Success, Quota, KeyInvalid,
	// Transient (5xx, network trouble, timeout), ClientError (an answer that says nothing
	// about the key, such as an unknown validation model) or Canceled (the check was stopped,
	// or not made because the key is gone).
	Kind keypool.Kind
	// Status is the HTTP status of the probe's answer; 0 when none came.
	Status int
	// Reason is the upstream's explanation with keys masked; empty for a valid key.
	Reason string
	// Action is what was done: "enabled" (the key was disabled or cooling and is usable again,
	// its failures reset and cooldowns cleared), "valid" (usable already; failures reset),
	// "disabled" (a key error: the key is, or stays, disabled with Reason), "cooling" (quota
	// exhausted: usable again at Until, not disabled) or "unchanged" (no verdict, or a key an
	// operator disabled, which a check never changes).
	Action string
	// Until is when the key's cooldown for the validation model ends, for Action "cooling".
	Until time.Time
}

// validateKey checks one key now with the configured probe and applies the verdict (see
// ValidationResult). Any key may be checked, one an operator disabled too, but such a key is
// never changed. It fails when the key does not exist (store.ErrNotFound) or the verdict
// cannot be stored.
func (c *Core) validateKey(ctx context.Context, id int64) (ValidationResult, error) {
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return ValidationResult{KeyID: id}, err
	}
	for _, k := range keys {
		if k.ID == id {
			st := c.poolStates(time.Now())[id]
			return c.checkKey(ctx, k, st, c.settings.Load())
		}
	}
	return ValidationResult{KeyID: id}, fmt.Errorf("key %d: %w", id, store.ErrNotFound)
}

// validateKeys checks the keys with the given ids, at most concurrency at a time (<= 0 means
// 4), and applies each verdict as validateKey does. Unknown ids and repeats are left out; the
// results follow the order of ids. progress, if not nil, is called after every key with the
// number done and the number to do; calls never overlap. When ctx ends, or when the upstream
// has not answered many checks in a row, the keys not yet checked are reported "unchanged"
// without a probe. It fails only if the keys cannot be read.
func (c *Core) validateKeys(ctx context.Context, ids []int64, concurrency int, progress func(done, total int)) ([]ValidationResult, error) {
	if concurrency <= 0 {
		concurrency = defaultValidationConcurrency
	}
	view := &keyView{c: c}
	if err := view.refresh(ctx); err != nil {
		return nil, err
	}
	todo := make([]int64, 0, len(ids))
	seen := make(map[int64]bool, len(ids))
	for _, id := range ids {
		if _, ok := view.keys[id]; ok && !seen[id] {
			todo = append(todo, id)
			seen[id] = true
		}
	}
	s := c.settings.Load()
	results := make([]ValidationResult, len(todo))
	giveUpAfter := max(unreachableAfter, 2*concurrency)

	var (
		next   atomic.Int64
		gaveUp atomic.Bool
		mu     sync.Mutex // guards done, silent and progress calls
		done   int
		silent int // checks in a row that got no answer
		wg     sync.WaitGroup
	)
	worker := func() {
		defer wg.Done()
		for {
			i := int(next.Add(1) - 1)
			if i >= len(todo) {
				return
			}
			id := todo[i]
			r := ValidationResult{KeyID: id, Action: actionUnchanged}
			probed := false
			if ctx.Err() != nil {
				r.Kind, r.Reason = keypool.Canceled, "not checked: canceled"
			} else if gaveUp.Load() {
				r.Kind, r.Reason = keypool.Transient, "not checked: the upstream did not answer the previous checks"
			} else if k, st, ok, err := view.get(ctx, id); err != nil {
				r.Kind, r.Reason = keypool.Canceled, "not checked: reading the key: "+err.Error()
			} else if !ok {
				r.Kind, r.Reason = keypool.Canceled, "not checked: the key was deleted"
			} else {
				probed = true
				if r, err = c.checkKey(ctx, k, st, s); err != nil {
					c.logger.Error("key validation: saving the verdict failed", zap.Int64("key_id", id), zap.Error(err))
					r.Action, r.Reason = actionUnchanged, "saving the verdict failed: "+err.Error()
				}
			}
			results[i] = r
			mu.Lock()
			done++
			if probed {
				if r.Kind == keypool.Transient && r.Status == 0 {
					silent++
					if silent == giveUpAfter {
						gaveUp.Store(true)
						c.logger.Warn("key validation: the upstream did not answer, so the remaining keys are not checked",
							zap.Int("checks_without_answer", silent), zap.String("last_error", r.Reason))
					}
				} else {
					silent = 0
				}
			}
			if progress != nil {
				progress(done, len(todo))
			}
			mu.Unlock()
		}
	}
	for range min(concurrency, len(todo)) {
		wg.Add(1)
		go worker()
	}
	wg.Wait()
	return results, nil
}

// checkKey probes one key and applies the verdict:
//   - valid: a disabled key is enabled again (store and pool: failures reset, cooldowns
//     cleared); so is an enabled key that was cooling, if the probe is "generate" (which proves
//     the quota is back; the free probe cannot tell, so cooldowns stay). Otherwise the failure
//     count is reset.
//   - key error (invalid, suspended, leaked, ...): the key is disabled, or stays so, with the
//     new reason.
//   - quota (429): the key cools down for the validation model; a disabled key is enabled
//     first, since the upstream took it.
//   - anything else (network trouble, timeout, 5xx, an unexpected answer): nothing changes;
//     it is logged.
//
// A key an operator disabled is never changed. st is the key's state in the pool.
func (c *Core) checkKey(ctx context.Context, k store.Key, st keypool.KeyState, s *settings) (ValidationResult, error) {
	r := ValidationResult{KeyID: k.ID, Action: actionUnchanged}
	status, body, err := c.probe(ctx, k.Secret, s, s.validationProbe)
	now := time.Now()
	var o keypool.Outcome
	if err != nil {
		o = keypool.ClassifyError(err)
	} else {
		o = keypool.Classify(status, body, now)
	}
	r.Kind, r.Status, r.Reason = o.Kind, status, o.Reason
	if k.ManualDisabled {
		return r, nil // the operator decides
	}
	disabled := isDisabled(k, st)
	model := s.validationModel
	switch o.Kind {
	case keypool.Success:
		if disabled || (s.validationProbe == probeGenerate && len(st.Cooldowns) > 0) {
			if revived, err := c.reviveKey(ctx, k.ID); err != nil || !revived {
				return r, err // !revived: disabled by hand or deleted during the check
			}
			r.Action = actionEnabled
			c.logger.Info("upstream key valid again, enabled", zap.Int64("key_id", k.ID))
			return r, nil
		}
		c.persist(c.pool.Report(k.ID, model, o, now), "")
		if c.pool.Readmit(k.ID, now) {
			// Ejected after failures, but it answers: back into rotation now.
			c.store.SaveCooldown(store.Cooldown{KeyID: k.ID, Model: keypool.EjectAll, Until: now})
			c.logger.Info("upstream key answers again, its ejection ended early", zap.Int64("key_id", k.ID))
			r.Action = actionEnabled
			return r, nil
		}
		r.Action = actionValid
	case keypool.Quota:
		if disabled {
			if revived, err := c.reviveKey(ctx, k.ID); err != nil || !revived {
				return r, err // !revived: disabled by hand or deleted during the check
			}
			c.logger.Info("upstream key valid again, enabled but out of quota", zap.Int64("key_id", k.ID))
		}
		ch := c.pool.Report(k.ID, model, o, now)
		c.persist(ch, o.Reason)
		r.Action, r.Until = actionCooling, cooldownEnd(o, ch, st, model, now)
	case keypool.KeyInvalid:
		ch := c.pool.Report(k.ID, model, o, now)
		if ch.NewlyDisabled {
			c.persist(ch, o.Reason) // logs the newly disabled key
		} else {
			c.persist(keypool.Change{KeyID: k.ID, Project: ch.Project}, "") // a learned project only
			// Disabled already: record the upstream's current reason.
			failures := st.Failures
			if st.ID == 0 {
				failures = k.Failures // not in the pool
			}
			c.store.SaveKeyState(store.KeyState{KeyID: k.ID, Disabled: true, Reason: o.Reason,
				Failures: failures, LastError: o.Reason})
		}
		r.Action = actionDisabled
	case keypool.Canceled:
		// The check was stopped (shutdown, or the caller went away): no verdict.
	default:
		c.logger.Warn("key validation gave no verdict, the key is left as it is",
			zap.Int64("key_id", k.ID), zap.String("outcome", o.Kind.String()),
			zap.Int("status", status), zap.String("reason", o.Reason))
	}
	return r, nil
}

// probe sends a check of the given kind (probeModels or probeGenerate) for one key and returns
// the answer's status and (masked) body; a round trip that fails or times out returns the error.
func (c *Core) probe(ctx context.Context, secret string, s *settings, kind string) (int, []byte, error) {
	timeout := c.probeTimeout
	if timeout <= 0 {
		timeout = defaultProbeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl := c.upstream.Load()
	if cl == nil {
		return 0, nil, errors.New("the upstream client is not set up yet")
	}
	method, path := http.MethodGet, "/v1beta/models/"+s.validationModel
	var body io.Reader = http.NoBody
	if kind == probeGenerate {
		method, path = http.MethodPost, path+":generateContent"
		body = bytes.NewReader(generateProbeBody(s.validationModel))
	}
	req, err := http.NewRequestWithContext(ctx, method, upstreamURL(s.upstream, path, ""), body)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Goog-Api-Key", secret)
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, b, err := c.call(req, secret)
	if err != nil {
		return 0, nil, err
	}
	if b == nil {
		resp.Body.Close() // a success: its status is the verdict
	}
	return resp.StatusCode, b, nil
}

// generateProbeBody is the smallest generation request: one output token, and no thinking on
// the models that allow turning it off (2.5 Flash and Flash-Lite; Pro refuses a zero budget).
func generateProbeBody(model string) []byte {
	gen := `"maxOutputTokens":1`
	if strings.HasPrefix(model, "gemini-2.5-flash") {
		gen += `,"thinkingConfig":{"thinkingBudget":0}`
	}
	return []byte(`{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{` + gen + `}}`)
}

// enableKey puts a key back into service: in the store (status active, failures reset,
// cooldowns deleted), then in the pool (the same, in memory).
func (c *Core) enableKey(ctx context.Context, id int64) error {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	if err := c.store.SetKeyStatus(ctx, id, store.StatusActive, "", false); err != nil {
		return fmt.Errorf("enabling key %d: %w", id, err)
	}
	c.pool.SetDisabled(id, false)
	c.announce(store.Event{Kind: store.EventKeys})
	return nil
}

// reviveKey puts a key that validation found working back into service, store then pool,
// unless an operator disabled it by hand or deleted it while it was being checked; it reports
// whether it did.
func (c *Core) reviveKey(ctx context.Context, id int64) (bool, error) {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	ok, err := c.store.ReviveKey(ctx, id)
	if err != nil {
		return false, fmt.Errorf("enabling key %d: %w", id, err)
	}
	if ok {
		c.pool.SetDisabled(id, false)
		c.announce(store.Event{Kind: store.EventKeys})
	}
	return ok, nil
}

// cooldownEnd is when the key may serve model again after a quota answer: the cooldown the
// pool holds, which is the later of the new one and one it had already.
func cooldownEnd(o keypool.Outcome, ch keypool.Change, st keypool.KeyState, model string, now time.Time) time.Time {
	if !ch.CooldownUntil.IsZero() {
		return ch.CooldownUntil
	}
	until := o.Until
	if !until.After(now) {
		until = now.Add(time.Minute)
	}
	for _, cd := range st.Cooldowns {
		if cd.Model == model && cd.Until.After(until) {
			until = cd.Until
		}
	}
	return until
}

// keyViewMaxAge is how old the keys a batch acts on may be: an operator's disable or a deleted
// key is seen within this time (plus one check's) even in a batch that runs for an hour.
const keyViewMaxAge = 2 * time.Second

// keyView is a recent copy of the stored keys and of their state in the pool, read again when
// older than keyViewMaxAge. It is safe for concurrent use.
type keyView struct {
	c      *Core
	mu     sync.Mutex
	at     time.Time
	keys   map[int64]store.Key
	states map[int64]keypool.KeyState
}

// refresh reads the keys and the pool now. The caller holds mu or is alone.
func (v *keyView) refresh(ctx context.Context) error {
	keys, err := v.c.store.Keys(ctx)
	if err != nil {
		return err
	}
	v.keys = make(map[int64]store.Key, len(keys))
	for _, k := range keys {
		v.keys[k.ID] = k
	}
	v.at = time.Now()
	v.states = v.c.poolStates(v.at)
	return nil
}

// get returns key id and its pool state, no older than keyViewMaxAge; ok is false if the key
// no longer exists.
func (v *keyView) get(ctx context.Context, id int64) (k store.Key, st keypool.KeyState, ok bool, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.at) > keyViewMaxAge {
		if err := v.refresh(ctx); err != nil {
			return k, st, false, err
		}
	}
	k, ok = v.keys[id]
	return k, v.states[id], ok, nil
}

// poolStates returns the pool's state of every key at now, by id.
func (c *Core) poolStates(now time.Time) map[int64]keypool.KeyState {
	list := c.pool.Keys(now)
	m := make(map[int64]keypool.KeyState, len(list))
	for _, st := range list {
		m[st.ID] = st
	}
	return m
}

// isDisabled tells whether a key is out of service, by the store or by the pool (whose
// state may not be written yet).
func isDisabled(k store.Key, st keypool.KeyState) bool {
	return k.Status == store.StatusDisabled || st.Disabled
}
