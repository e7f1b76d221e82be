package gateway

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Owner records the store could not take. A client that got a new file must find it on its
// owner's key even when the database failed at that moment: such records wait here, where
// routing finds them too, and a background retry writes them (Destruct flushes what is left).

// recordBackoff are the waits before each try to record new owners while the client waits.
var recordBackoff = [...]time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond, 200 * time.Millisecond}

// defaultPendingRetry is how often the background retry tries to write pending records.
const defaultPendingRetry = 5 * time.Second

// pendingOwners are owner records not yet in the store, by name.
type pendingOwners struct {
	mu      sync.Mutex
	rows    map[string]store.Resource
	running bool // the background retry runs
	stopped bool // Destruct began: no new background retry
	stop    chan struct{}
	wg      sync.WaitGroup
}

// recordResources stores the owners of new resources, retrying a few times with a short
// backoff; what still fails is kept pending (see pendingOwners).
func (c *Core) recordResources(ctx context.Context, rs []store.Resource) {
	if len(rs) == 0 {
		return
	}
	var err error
	for _, wait := range recordBackoff {
		time.Sleep(wait)
		if err = c.store.AddResources(ctx, rs...); err == nil {
			c.pending.drop(rs, false) // an older pending record of these names is superseded
			return
		}
	}
	c.logger.Error("recording the owner of a new resource failed; kept in memory and retried", zap.Error(err))
	p := &c.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rows == nil {
		p.rows = make(map[string]store.Resource)
	}
	for _, r := range rs {
		p.rows[r.Name] = r
	}
	if p.running || p.stopped {
		return
	}
	if p.stop == nil {
		p.stop = make(chan struct{})
	}
	every := c.pendingRetry
	if every <= 0 {
		every = defaultPendingRetry
	}
	p.running = true
	p.wg.Add(1)
	go c.retryPending(every)
}

// retryPending writes pending records every interval until none is left or Destruct stops it.
func (c *Core) retryPending(every time.Duration) {
	defer c.pending.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.pending.stop:
			return
		case <-t.C:
		}
		if c.flushPending(context.Background()) {
			return
		}
	}
}

// flushPending tries to write every pending record once. It reports true, with the background
// retry marked as ended, when none is left.
func (c *Core) flushPending(ctx context.Context) (empty bool) {
	p := &c.pending
	p.mu.Lock()
	rs := make([]store.Resource, 0, len(p.rows))
	for _, r := range p.rows {
		rs = append(rs, r)
	}
	p.mu.Unlock()
	if len(rs) > 0 {
		if err := c.store.AddResources(ctx, rs...); err != nil {
			c.logger.Warn("recording pending resource owners", zap.Int("pending", len(rs)), zap.Error(err))
		} else {
			p.drop(rs, true)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.rows) == 0 {
		p.running = false
		return true
	}
	return false
}

// drop removes the pending records of the names of rs, which were written; with onlySame, a
// record replaced since rs was taken stays.
func (p *pendingOwners) drop(rs []store.Resource, onlySame bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range rs {
		if cur, ok := p.rows[r.Name]; ok && (!onlySame || cur == r) {
			delete(p.rows, r.Name)
		}
	}
}

// forget removes a pending record (the resource was deleted).
func (p *pendingOwners) forget(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.rows, name)
}

// owners adds to owners the pending owner of each of names not expired at now.
func (p *pendingOwners) owners(names []string, now time.Time, owners map[string]store.Owner) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.rows) == 0 {
		return
	}
	for _, n := range names {
		if r, ok := p.rows[n]; ok && (r.ExpiresAt.IsZero() || r.ExpiresAt.After(now)) {
			owners[n] = store.Owner{KeyID: r.KeyID, AccessKeyID: r.AccessKeyID}
		}
	}
}

// stopPending ends the background retry and makes one last try to write what is pending (for
// Destruct, before the store closes).
func (c *Core) stopPending() {
	p := &c.pending
	p.mu.Lock()
	already := p.stopped
	p.stopped = true
	if p.stop != nil && !already {
		close(p.stop)
	}
	p.mu.Unlock()
	p.wg.Wait()
	if !already {
		c.flushPending(context.Background())
	}
}
