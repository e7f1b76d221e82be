// Package keypool decides which upstream key serves the next request and what an
// upstream answer means for the key that got it.
//
// It is pure logic: the caller loads keys and cooldowns from its store, asks Next
// for a key, classifies the upstream answer with Classify or ClassifyError, hands
// the Outcome to Report and persists the Change it gets back.
package keypool

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// defaultQuotaCooldown is used by Report when a Quota outcome carries no usable Until.
const defaultQuotaCooldown = 60 * time.Second

// Key is one upstream key as loaded into the pool.
type Key struct {
	ID     int64
	Secret string
	// Project labels the Google Cloud project the key belongs to ("" when unknown). A
	// per-project quota answer cools down every enabled key with the same label.
	Project  string
	Disabled bool // disabled keys stay in the pool but are never picked
	Failures int  // consecutive transient failures so far
}

// Cooldown is a (key, model) pair that must not be used before Until.
type Cooldown struct {
	KeyID int64
	Model string
	Until time.Time
}

// KeyState is a snapshot of one key's runtime state (no Secret).
type KeyState struct {
	ID       int64
	Project  string
	Disabled bool
	Failures int
	// Cooldowns are the live ones only, ordered by model; an ejection is a cooldown on model
	// EjectAll ("*").
	Cooldowns []Cooldown
}

// ErrNoKeys is returned by Next when no enabled key is left to try: none is
// loaded, all are disabled, or all are in the skip list.
var ErrNoKeys = errors.New("keypool: no usable key")

// CoolingError is returned by Next when every enabled, non-skipped key is
// cooling down for the model. Until is the earliest cooldown end among them.
type CoolingError struct {
	Model string
	Until time.Time
}

// Error describes the model and when the first key becomes usable again.
func (e *CoolingError) Error() string {
	return fmt.Sprintf("keypool: every usable key is cooling down for model %q until %s",
		e.Model, e.Until.UTC().Format(time.RFC3339))
}

// Change tells the caller what a Report changed, so it can persist it.
type Change struct {
	KeyID         int64
	Failures      int       // consecutive failures after the report
	Disabled      bool      // the key is now disabled
	NewlyDisabled bool      // this report disabled it
	Reason        string    // disable reason when NewlyDisabled, ejection reason when Ejected
	Model         string    // the model of the cooldowns set (EjectAll for an ejection)
	CooldownUntil time.Time // non-zero when this report set a cooldown on the key itself
	// Siblings are the other keys of the key's project that this report cooled down for Model
	// until SiblingsUntil (a per-project quota).
	Siblings      []int64
	SiblingsUntil time.Time
	Ejected       bool   // this report ejected the key until CooldownUntil (Model EjectAll)
	Outage        bool   // the failure was not counted: the model is in an outage (circuit open)
	Opened        bool   // this report opened the model's circuit
	Closed        bool   // this report closed the model's circuit
	Project       string // a project label learned from the answer (the key had none); not counted in Changed
	Changed       bool   // false when nothing needs persisting (e.g. Success on a key already at 0 failures)
}

// cooldown is the in-pool form of a Cooldown; until is in Unix nanoseconds.
type cooldown struct {
	model string
	until int64
}

// entry is one key in the pool. id and secret never change after the entry is
// published; the rest is mutated with atomics. The cooldown slice behind the
// pointer is immutable and replaced as a whole.
type entry struct {
	id        int64
	secret    string
	project   atomic.Pointer[string]
	disabled  atomic.Bool
	failures  atomic.Int32
	cooldowns atomic.Pointer[[]cooldown]
	// streakStart is when the current run of failures began (unix ns; 0: none).
	streakStart atomic.Int64
	// ejections counts consecutive ejections; ejectedUntil is when the last one ends.
	ejections    atomic.Int32
	ejectedUntil atomic.Int64
}

// Pool hands out upstream keys round-robin, skipping disabled keys and keys
// cooling down for the requested model. It is safe for concurrent use.
type Pool struct {
	mu          sync.Mutex // serialises writers of keys
	keys        atomic.Pointer[[]*entry]
	maxFailures atomic.Int32
	maxEjectPct atomic.Int32
	ejectMu     sync.Mutex                              // serialises ejections, so the max ejection percent holds
	health      atomic.Pointer[map[string]*modelHealth] // copied on write (outlier.go)
	healthMu    sync.Mutex                              // serialises writers of health
	_           [64]byte                                // keep the hot cursor off the read-mostly fields' cache line
	cursor      atomic.Uint64
	_           [56]byte
}

// New returns an empty pool that ejects a key after maxFailures consecutive
// transient failures (values below 1 count as 1), at most half of the enabled keys at once.
func New(maxFailures int) *Pool {
	p := &Pool{}
	p.SetMaxFailures(maxFailures)
	p.SetMaxEjectionPercent(50)
	return p
}

// SetMaxFailures sets how many consecutive transient failures eject a key;
// n < 1 is treated as 1. Keys already past the new limit are ejected on their
// next transient failure.
func (p *Pool) SetMaxFailures(n int) {
	p.maxFailures.Store(int32(min(max(n, 1), math.MaxInt32)))
}

// Load replaces the whole key set. The runtime state of every key is taken from
// the given Key (Disabled, Failures) and from the given cooldowns; cooldowns of
// IDs not in keys are ignored. When an ID appears twice the last one wins.
func (p *Pool) Load(keys []Key, cooldowns []Cooldown) {
	list := make([]*entry, 0, len(keys))
	for _, k := range keys {
		list = append(list, newEntry(k))
	}
	// Stable sort so that, among duplicates, the last given stays last and wins.
	slices.SortStableFunc(list, func(a, b *entry) int { return cmp.Compare(a.id, b.id) })
	uniq := list[:0]
	for _, e := range list {
		if n := len(uniq); n > 0 && uniq[n-1].id == e.id {
			uniq[n-1] = e
			continue
		}
		uniq = append(uniq, e)
	}
	list = uniq
	for _, c := range cooldowns {
		if e := find(list, c.KeyID); e != nil {
			e.mergeCooldown(c.Model, toNano(c.Until))
		}
	}
	p.mu.Lock()
	p.keys.Store(&list)
	p.mu.Unlock()
}

// Add inserts k, or updates Secret, Disabled and Failures of the key with the
// same ID (its cooldowns are kept).
func (p *Pool) Add(k Key) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.list()
	i, found := search(list, k.ID)
	if found {
		old := list[i]
		if old.secret == k.Secret {
			old.failures.Store(clampFailures(k.Failures))
			old.disabled.Store(k.Disabled)
			old.setProject(k.Project)
			return
		}
		e := newEntry(k)
		e.cooldowns.Store(old.cooldowns.Load())
		next := slices.Clone(list)
		next[i] = e
		p.keys.Store(&next)
		return
	}
	next := make([]*entry, 0, len(list)+1)
	next = append(next, list[:i]...)
	next = append(next, newEntry(k))
	next = append(next, list[i:]...)
	p.keys.Store(&next)
}

// Remove drops the key with the given ID; unknown IDs are ignored.
func (p *Pool) Remove(id int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.list()
	i, found := search(list, id)
	if !found {
		return
	}
	next := make([]*entry, 0, len(list)-1)
	next = append(next, list[:i]...)
	next = append(next, list[i+1:]...)
	p.keys.Store(&next)
}

// SetDisabled disables or enables a key. Enabling also resets its failure count
// to 0 and clears its cooldowns. Unknown IDs are ignored.
func (p *Pool) SetDisabled(id int64, disabled bool) {
	e := find(p.list(), id)
	if e == nil {
		return
	}
	if disabled {
		e.disabled.Store(true)
		return
	}
	// Reset first so the key is never seen enabled with stale state.
	e.failures.Store(0)
	e.streakStart.Store(0)
	e.ejections.Store(0)
	e.cooldowns.Store(nil)
	e.disabled.Store(false)
}

// Next picks the next usable key for model: enabled, not cooling down for model
// at now, and not in skip. Keys are taken round-robin in ID order.
//
// When no key is usable it returns a *CoolingError if at least one enabled,
// non-skipped key is cooling down for model, and ErrNoKeys otherwise.
func (p *Pool) Next(model string, now time.Time, skip []int64) (id int64, secret string, err error) {
	list := p.list()
	n := uint64(len(list))
	if n == 0 {
		return 0, "", ErrNoKeys
	}
	nowNano := now.UnixNano()
	// Each look takes a fresh cursor position, so a key that cannot serve passes its turn to
	// the next position in the shared order: sequential picks stay exactly fair, and under
	// contention the turns of cooling keys spread over all the others instead of piling onto
	// the key after them.
	for range n {
		e := list[(p.cursor.Add(1)-1)%n]
		if e.usable(model, nowNano, skip) {
			return e.id, e.secret, nil
		}
	}
	// Nothing found in n looks (other callers moved the cursor, or few keys can serve):
	// check every key once, which also finds the earliest cooldown end.
	var earliest int64
	cooling := false
	for _, e := range list {
		if e.disabled.Load() || slices.Contains(skip, e.id) {
			continue
		}
		until, ok := e.coolingUntil(model, nowNano)
		if !ok {
			return e.id, e.secret, nil
		}
		if !cooling || until < earliest {
			earliest, cooling = until, true
		}
	}
	if cooling {
		return 0, "", &CoolingError{Model: model, Until: time.Unix(0, earliest).In(now.Location())}
	}
	return 0, "", ErrNoKeys
}

// usable reports whether the key may serve model now.
func (e *entry) usable(model string, nowNano int64, skip []int64) bool {
	if e.disabled.Load() || slices.Contains(skip, e.id) {
		return false
	}
	_, cooling := e.coolingUntil(model, nowNano)
	return !cooling
}

// SetProject sets the project label of a key ("" clears it); unknown IDs are ignored.
func (p *Pool) SetProject(id int64, project string) {
	if e := find(p.list(), id); e != nil {
		e.setProject(project)
	}
}

func (e *entry) setProject(project string) {
	e.project.Store(&project)
}

// projectName returns the key's project label, or "".
func (e *entry) projectName() string {
	if p := e.project.Load(); p != nil {
		return *p
	}
	return ""
}

// Report applies the outcome of one upstream attempt with key id for model and
// tells what changed:
//   - Success resets the failure count and closes the model's circuit if it was open.
//   - Quota cools (id, model) down until o.Until (the later one is kept if a
//     cooldown exists; an Until not after now means now+60s), and, when o.PerProject,
//     every other enabled key with the same project label. It never disables.
//   - KeyInvalid disables the key at once with o.Reason; the caller confirms it first
//     when o.Confirm is set.
//   - Transient counts a failure unless the model is in an outage (see outlier.go), and
//     ejects the key when the count reaches the pool's maximum while other keys succeed
//     for the model. It never disables.
//   - ClientError and Canceled change nothing.
//
// Any outcome naming a project (o.Project) labels a key that has no label yet.
// An unknown id yields the zero Change.
func (p *Pool) Report(id int64, model string, o Outcome, now time.Time) Change {
	e := find(p.list(), id)
	if e == nil {
		return Change{}
	}
	c := Change{KeyID: id}
	if o.Project != "" {
		// Learn the project of a key that has no label; an operator's label is never replaced.
		if old := e.project.Load(); old == nil || *old == "" {
			learned := o.Project // a copy: taking o's address would move every Outcome to the heap
			if e.project.CompareAndSwap(old, &learned) {
				c.Project = learned // persisted on its own: Changed is about the key's state
			}
		}
	}
	nowNano := now.UnixNano()
	switch o.Kind {
	case Success:
		if e.failures.Swap(0) > 0 {
			c.Changed = true
		}
		e.streakStart.Store(0)
		if e.ejections.Load() > 0 && nowNano > e.ejectedUntil.Load()+int64(baseEjection) {
			// Back in service for a while without a new ejection: the next one starts short.
			e.ejections.Store(0)
		}
		c.Closed = p.healthOf(model, true).succeeded(id, nowNano)
	case Quota:
		until := o.Until
		if !until.After(now) {
			until = now.Add(defaultQuotaCooldown)
		}
		c.Model = model
		if e.setCooldown(model, toNano(until), nowNano) {
			c.Changed, c.CooldownUntil = true, until
		}
		if proj := e.projectName(); o.PerProject && proj != "" {
			for _, s := range p.list() {
				if s != e && !s.disabled.Load() && s.projectName() == proj && s.setCooldown(model, toNano(until), nowNano) {
					c.Siblings = append(c.Siblings, s.id)
				}
			}
			if len(c.Siblings) > 0 {
				c.SiblingsUntil = until
			}
		}
	case KeyInvalid:
		if e.disabled.CompareAndSwap(false, true) {
			c.Changed, c.NewlyDisabled = true, true
			c.Reason = sanitize(o.Reason)
			if c.Reason == "" {
				c.Reason = "key rejected by upstream"
			}
		}
	case Transient:
		outage, opened := p.healthOf(model, true).failed(nowNano)
		c.Opened = opened
		if opened {
			// The failures that led up to the outage were the outage's, not the keys': no key
			// starts the recovery a failure or two from ejection.
			for _, k := range p.list() {
				k.failures.Store(0)
				k.streakStart.Store(0)
			}
		}
		if outage {
			// Every key fails for this model: the model or the service is down, not the key.
			c.Outage = true
			break
		}
		n := e.failures.Add(1)
		if n == 1 {
			e.streakStart.Store(nowNano)
		}
		c.Changed = true
		if n >= p.maxFailures.Load() && p.healthOf(model, true).otherOKSince(id, e.streakStart.Load()) {
			if until, ok := p.tryEject(e, now); ok {
				c.Ejected, c.Model, c.CooldownUntil = true, EjectAll, until
				c.Reason = sanitize(fmt.Sprintf("ejected for %s after %d consecutive failures while other keys served %s; last: %s",
					until.Sub(now).Round(time.Second), n, modelWords(model), o.Reason))
			}
		}
	}
	c.Failures = int(e.failures.Load())
	c.Disabled = e.disabled.Load()
	return c
}

// modelWords names a model in a reason.
func modelWords(model string) string {
	if model == "" {
		return "the same calls"
	}
	return model
}

// Keys returns a snapshot of every key's state, ordered by ID, with only the
// cooldowns still live at now.
func (p *Pool) Keys(now time.Time) []KeyState {
	list := p.list()
	nowNano := now.UnixNano()
	out := make([]KeyState, 0, len(list))
	for _, e := range list {
		ks := KeyState{ID: e.id, Project: e.projectName(), Disabled: e.disabled.Load(), Failures: int(e.failures.Load())}
		if cds := e.cooldowns.Load(); cds != nil {
			for _, c := range *cds {
				if c.until > nowNano {
					ks.Cooldowns = append(ks.Cooldowns, Cooldown{
						KeyID: e.id, Model: c.model, Until: time.Unix(0, c.until).In(now.Location()),
					})
				}
			}
			slices.SortFunc(ks.Cooldowns, func(a, b Cooldown) int { return cmp.Compare(a.Model, b.Model) })
		}
		out = append(out, ks)
	}
	return out
}

// Counts tells how many keys are active (enabled, no live cooldown), cooling
// (enabled with at least one live cooldown) and disabled at now.
func (p *Pool) Counts(now time.Time) (active, cooling, disabled int) {
	nowNano := now.UnixNano()
	for _, e := range p.list() {
		switch {
		case e.disabled.Load():
			disabled++
		case e.hasLiveCooldown(nowNano):
			cooling++
		default:
			active++
		}
	}
	return active, cooling, disabled
}

// Len returns the number of keys in the pool, disabled ones included.
func (p *Pool) Len() int {
	return len(p.list())
}

// list returns the current immutable key snapshot (nil for a zero Pool).
func (p *Pool) list() []*entry {
	if l := p.keys.Load(); l != nil {
		return *l
	}
	return nil
}

func newEntry(k Key) *entry {
	e := &entry{id: k.ID, secret: k.Secret}
	e.setProject(k.Project)
	e.disabled.Store(k.Disabled)
	e.failures.Store(clampFailures(k.Failures))
	return e
}

func clampFailures(n int) int32 {
	return int32(min(max(n, 0), math.MaxInt32))
}

// coolingUntil reports whether e is cooling down for model at now (a quota cooldown of the
// model or an ejection), and until when.
func (e *entry) coolingUntil(model string, now int64) (int64, bool) {
	return e.coolingFor(model, now, true)
}

// coolingFor is coolingUntil; withEjection false looks at quota cooldowns only.
func (e *entry) coolingFor(model string, now int64, withEjection bool) (int64, bool) {
	cds := e.cooldowns.Load()
	if cds == nil {
		return 0, false
	}
	var until int64
	found := false
	for _, c := range *cds {
		if c.until > now && (c.model == model || (withEjection && c.model == EjectAll)) && c.until > until {
			until, found = c.until, true
		}
	}
	return until, found
}

func (e *entry) hasLiveCooldown(now int64) bool {
	if cds := e.cooldowns.Load(); cds != nil {
		for _, c := range *cds {
			if c.until > now {
				return true
			}
		}
	}
	return false
}

// setCooldown sets the cooldown of model to until unless a later one exists,
// pruning cooldowns expired at now. It reports whether it stored anything.
func (e *entry) setCooldown(model string, until, now int64) bool {
	for {
		old := e.cooldowns.Load()
		var cur []cooldown
		if old != nil {
			cur = *old
		}
		next := make([]cooldown, 0, len(cur)+1)
		for _, c := range cur {
			if c.model == model {
				if c.until >= until {
					return false
				}
				continue
			}
			if c.until > now {
				next = append(next, c)
			}
		}
		next = append(next, cooldown{model: model, until: until})
		if e.cooldowns.CompareAndSwap(old, &next) {
			return true
		}
	}
}

// mergeCooldown is setCooldown without pruning, for entries not yet published.
func (e *entry) mergeCooldown(model string, until int64) {
	var next []cooldown
	if old := e.cooldowns.Load(); old != nil {
		next = *old
	}
	for i, c := range next {
		if c.model == model {
			next[i].until = max(c.until, until)
			return
		}
	}
	next = append(next, cooldown{model: model, until: until})
	e.cooldowns.Store(&next)
}

// search finds id in list, which is sorted by ID.
func search(list []*entry, id int64) (int, bool) {
	return slices.BinarySearchFunc(list, id, func(e *entry, id int64) int { return cmp.Compare(e.id, id) })
}

func find(list []*entry, id int64) *entry {
	if i, ok := search(list, id); ok {
		return list[i]
	}
	return nil
}

// toNano converts t to Unix nanoseconds, saturating outside the int64 range.
func toNano(t time.Time) int64 {
	switch {
	case t.Before(minNanoTime):
		return math.MinInt64
	case t.After(maxNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minNanoTime = time.Unix(0, math.MinInt64)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

// Cool sets the cooldown of key id for model (EjectAll for every model) to until unless a later
// one exists, as a report made by another instance sharing the pool did. Unknown ids are
// ignored. It reports whether it changed anything.
func (p *Pool) Cool(id int64, model string, until, now time.Time) bool {
	e := find(p.list(), id)
	if e == nil || !until.After(now) {
		return false
	}
	return e.setCooldown(model, toNano(until), toNano(now))
}
