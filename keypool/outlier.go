package keypool

import (
	"sync"
	"sync/atomic"
	"time"
)

// Transient failures (5xx, network errors, timeouts) are about the service or the model, not
// one key. They are handled as Envoy's outlier detection does, with a per-model circuit in
// front:
//
//   - each model keeps a 10-second window of attempts and failures; when at least
//     outageMinAttempts attempts were made and outagePercent of them failed, the model is in an
//     outage: its circuit opens, nothing is counted against any key and Admit lets one trial
//     request through per trialEvery until one succeeds;
//   - otherwise a failure counts against its key, and a key that fails maxFailures times in a
//     row while another key succeeded for the same model since its streak began is ejected:
//     cooling on every model ("*") for baseEjection, doubling on each consecutive ejection up to
//     maxEjection, never more than the pool's max ejection percent of the enabled keys at once.
const (
	// healthWindow is how far back a model's attempts are looked at.
	healthWindow = 10 * time.Second
	// outageMinAttempts is the fewest attempts in healthWindow that can reveal an outage.
	outageMinAttempts = 10
	// outagePercent is the share of failed attempts that makes an outage.
	outagePercent = 80
	// trialEvery is how often an open circuit lets a trial request through.
	trialEvery = time.Second
	// baseEjection is how long a first ejection lasts.
	baseEjection = time.Minute
	// maxEjection caps the doubling of consecutive ejections.
	maxEjection = time.Hour
	// EjectAll is the model of an ejection's cooldown: it covers every model.
	EjectAll = "*"
	// maxTrackedModels bounds the models whose health is tracked; the rest share one entry.
	maxTrackedModels = 1024
	// sharedHealth names the entry of models past maxTrackedModels.
	sharedHealth  = "\x00other"
	healthBuckets = int64(healthWindow / time.Second) // one bucket a second
)

// bucket counts one second of a model's attempts. Its fields are updated with atomics: a
// count that lands in a bucket as it turns over is lost, which the heuristic tolerates.
type bucket struct {
	sec      atomic.Int64 // unix second the counts belong to
	attempts atomic.Int32
	failures atomic.Int32
}

// modelHealth is the recent history and the circuit of one model. Successes touch only
// atomics; failures and the circuit take mu.
type modelHealth struct {
	open    atomic.Bool
	buckets [healthBuckets]bucket
	// okKey/okAt are the latest key that succeeded and when; prevKey/prevAt the one before it
	// that was another key.
	okKey, okAt, prevKey, prevAt atomic.Int64

	mu        sync.Mutex // failures and the circuit
	nextTrial int64
}

// add records one attempt at now (unix nanoseconds).
func (h *modelHealth) add(now int64, failed bool) {
	sec := now / int64(time.Second)
	b := &h.buckets[sec%healthBuckets]
	if old := b.sec.Load(); old != sec && b.sec.CompareAndSwap(old, sec) {
		b.attempts.Store(0)
		b.failures.Store(0)
	}
	b.attempts.Add(1)
	if failed {
		b.failures.Add(1)
	}
}

// counts sums the window ending at now.
func (h *modelHealth) counts(now int64) (attempts, failures int) {
	sec := now / int64(time.Second)
	for i := range h.buckets {
		b := &h.buckets[i]
		if s := b.sec.Load(); s > sec-healthBuckets && s <= sec {
			attempts += int(b.attempts.Load())
			failures += int(b.failures.Load())
		}
	}
	return attempts, failures
}

// succeeded records a success of key at now and closes the circuit; it reports whether the
// circuit was open.
func (h *modelHealth) succeeded(key, now int64) (closed bool) {
	h.add(now, false)
	if last := h.okKey.Load(); last != key {
		h.prevKey.Store(last)
		h.prevAt.Store(h.okAt.Load())
		h.okKey.Store(key)
		h.okAt.Store(now)
	} else if now-h.okAt.Load() > int64(time.Millisecond) {
		h.okAt.Store(now) // a millisecond's precision is plenty, and spares the shared line a write
	}
	if !h.open.Load() {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.open.Load() {
		return false
	}
	// The trial passed: the model serves again. The window starts afresh so the outage's
	// failures cannot open the circuit again at once.
	for i := range h.buckets {
		h.buckets[i].sec.Store(0)
	}
	h.open.Store(false)
	return true
}

// failed records a failure at now and tells whether the model is in an outage (its circuit was
// open, or this failure opened it); opened is true when this failure opened it.
func (h *modelHealth) failed(now int64) (outage, opened bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.add(now, true)
	if h.open.Load() {
		return true, false
	}
	attempts, failures := h.counts(now)
	if attempts >= outageMinAttempts && failures*100 >= outagePercent*attempts {
		h.open.Store(true)
		h.nextTrial = now + int64(trialEvery)
		return true, true
	}
	return false, false
}

// otherOKSince reports whether a key other than key succeeded at or after since.
func (h *modelHealth) otherOKSince(key, since int64) bool {
	if k := h.okKey.Load(); k != 0 && k != key && h.okAt.Load() >= since {
		return true
	}
	k := h.prevKey.Load()
	return k != 0 && k != key && h.prevAt.Load() >= since
}

// admit lets a request through a closed circuit, or one trial per trialEvery through an open
// one; else it returns when the next trial may pass.
func (h *modelHealth) admit(now int64) (bool, int64) {
	if !h.open.Load() {
		return true, 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.open.Load() {
		return true, 0
	}
	if now >= h.nextTrial {
		h.nextTrial = now + int64(trialEvery)
		return true, 0
	}
	return false, h.nextTrial
}

// healthOf returns the health of model; create adds it when missing (past maxTrackedModels
// models share one entry). Without create a missing model yields nil. The map is copied on
// write, so the lookup on the request path takes no lock and allocates nothing.
func (p *Pool) healthOf(model string, create bool) *modelHealth {
	if m := p.health.Load(); m != nil {
		if h := (*m)[model]; h != nil {
			return h
		}
		if !create {
			if len(*m) >= maxTrackedModels {
				return (*m)[sharedHealth]
			}
			return nil
		}
	} else if !create {
		return nil
	}
	p.healthMu.Lock()
	defer p.healthMu.Unlock()
	var cur map[string]*modelHealth
	if m := p.health.Load(); m != nil {
		cur = *m
	}
	if h := cur[model]; h != nil {
		return h
	}
	if len(cur) >= maxTrackedModels {
		model = sharedHealth
		if h := cur[model]; h != nil {
			return h
		}
	}
	next := make(map[string]*modelHealth, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	h := new(modelHealth)
	next[model] = h
	p.health.Store(&next)
	return h
}

// Admit tells whether a request for model may go upstream now. While the model is in an outage
// (see healthWindow) it lets one trial request through per trialEvery and refuses the others
// with the time the next trial may pass.
func (p *Pool) Admit(model string, now time.Time) (ok bool, retryAt time.Time) {
	h := p.healthOf(model, false)
	if h == nil {
		return true, time.Time{}
	}
	ok, next := h.admit(now.UnixNano())
	if ok {
		return true, time.Time{}
	}
	return false, time.Unix(0, next).In(now.Location())
}

// SetMaxEjectionPercent sets the largest share of the enabled keys that may be ejected at once
// (0 turns ejection off; values are clamped to 0..100).
func (p *Pool) SetMaxEjectionPercent(n int) {
	p.maxEjectPct.Store(int32(min(max(n, 0), 100)))
}

// ejectionFor is how long the k-th consecutive ejection lasts.
func ejectionFor(k int32) time.Duration {
	d := baseEjection
	for i := int32(1); i < k && d < maxEjection; i++ {
		d *= 2
	}
	return min(d, maxEjection)
}

// tryEject ejects e at now unless that would put more than the max ejection percent of the
// enabled keys out at once; it returns the ejection's end.
func (p *Pool) tryEject(e *entry, now time.Time) (time.Time, bool) {
	p.ejectMu.Lock()
	defer p.ejectMu.Unlock()
	pct := int(p.maxEjectPct.Load())
	if pct == 0 || e.disabled.Load() {
		return time.Time{}, false
	}
	nowNano := now.UnixNano()
	enabled, ejected := 0, 0
	for _, o := range p.list() {
		if o.disabled.Load() {
			continue
		}
		enabled++
		if o.ejectedAt(nowNano) {
			ejected++
		}
	}
	if e.ejectedAt(nowNano) {
		return time.Time{}, false // already out (a racing report)
	}
	if (ejected+1)*100 > enabled*pct {
		return time.Time{}, false
	}
	k := e.ejections.Add(1)
	until := now.Add(ejectionFor(k))
	e.setCooldown(EjectAll, toNano(until), nowNano)
	e.ejectedUntil.Store(toNano(until))
	e.failures.Store(0)
	e.streakStart.Store(0)
	return until, true
}

// ejectedAt tells whether e is ejected at now.
func (e *entry) ejectedAt(now int64) bool {
	cds := e.cooldowns.Load()
	if cds == nil {
		return false
	}
	for _, c := range *cds {
		if c.model == EjectAll && c.until > now {
			return true
		}
	}
	return false
}

// Readmit ends a key's ejection early (a probe found it working) and resets its failure count;
// it reports whether the key was ejected. Its quota cooldowns stay.
func (p *Pool) Readmit(id int64, now time.Time) bool {
	e := find(p.list(), id)
	if e == nil || !e.ejectedAt(now.UnixNano()) {
		return false
	}
	for {
		old := e.cooldowns.Load()
		next := make([]cooldown, 0, len(*old))
		for _, c := range *old {
			if c.model != EjectAll {
				next = append(next, c)
			}
		}
		if e.cooldowns.CompareAndSwap(old, &next) {
			break
		}
	}
	e.failures.Store(0)
	e.streakStart.Store(0)
	return true
}
