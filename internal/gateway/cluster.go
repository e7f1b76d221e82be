package gateway

// Several instances on one shared store (PostgreSQL): each keeps the pool, the access keys and
// the settings in memory, as a single instance does (the request path never queries), and the
// store's Cluster carries every change one instance makes to the others, which apply it to
// their memory. The scheduled jobs run on the one instance that leads.

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// cluster is the store's Cluster, or nil for a store of one instance.
func (c *Core) cluster() store.Cluster {
	cl, _ := c.store.(store.Cluster)
	return cl
}

// announce tells the other instances about a change; without a cluster it does nothing. It
// never waits on them.
func (c *Core) announce(ev store.Event) {
	cl := c.cluster()
	if cl == nil {
		return
	}
	if err := cl.Announce(c.ctx, ev); err != nil {
		c.logger.Warn("telling the other instances about a change failed; they catch up when their connection is restored",
			zap.String("kind", ev.Kind), zap.Error(err))
	}
}

// announceChange tells the other instances what a pool report changed (persist's counterpart).
func (c *Core) announceChange(ch keypool.Change) {
	if c.cluster() == nil {
		return
	}
	if ch.Project != "" {
		c.announce(store.Event{Kind: store.EventProject, KeyID: ch.KeyID, Project: ch.Project})
	}
	for _, id := range ch.Siblings {
		c.announce(store.Event{Kind: store.EventCooldown, KeyID: id, Model: ch.Model, Until: ch.SiblingsUntil.UnixMilli()})
	}
	if !ch.CooldownUntil.IsZero() {
		c.announce(store.Event{Kind: store.EventCooldown, KeyID: ch.KeyID, Model: ch.Model, Until: ch.CooldownUntil.UnixMilli()})
	}
	if ch.NewlyDisabled {
		c.announce(store.Event{Kind: store.EventKeyState, KeyID: ch.KeyID, Disabled: true})
	}
}

// leads tells whether this instance runs the scheduled jobs: always without a cluster.
func (c *Core) leads(ctx context.Context) bool {
	cl := c.cluster()
	return cl == nil || cl.Leader(ctx)
}

// followCluster applies the other instances' announcements until the core is destroyed.
func (c *Core) followCluster() {
	cl := c.cluster()
	if cl == nil {
		return
	}
	events := cl.Events()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		listened := false // a resync came before: the next one follows a lost connection
		for {
			select {
			case <-c.ctx.Done():
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				<-c.ready // a config is applied: the pool and the access keys are in place
				if ev.Kind == store.EventResync {
					// The store may resync once it first listens too (the state loaded at
					// start may predate it): only a later one means a lost connection.
					if listened {
						c.logger.Info("the connection to the other instances was restored: reloading the shared state")
					}
					listened = true
				}
				c.apply(ev)
			}
		}
	}()
}

// apply makes another instance's change here.
func (c *Core) apply(ev store.Event) {
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	now := time.Now()
	var err error
	switch ev.Kind {
	case store.EventCooldown:
		c.pool.Cool(ev.KeyID, ev.Model, time.UnixMilli(ev.Until), now)
	case store.EventKeyState:
		c.pool.SetDisabled(ev.KeyID, ev.Disabled)
	case store.EventProject:
		c.pool.SetProject(ev.KeyID, ev.Project)
	case store.EventKeys:
		err = c.resyncPool(ctx)
	case store.EventAccessKeys:
		c.mu.Lock()
		err = c.reloadAccessKeysLocked(ctx)
		c.mu.Unlock()
	case store.EventSettings:
		c.mu.Lock()
		err = c.reloadSettings(ctx)
		c.mu.Unlock()
	case store.EventResync:
		c.mu.Lock()
		err = c.reloadSettings(ctx)
		if err == nil {
			err = c.reloadAccessKeysLocked(ctx)
		}
		c.mu.Unlock()
		if err == nil {
			err = c.resyncPool(ctx)
		}
	default:
		c.logger.Debug("unknown announcement from another instance", zap.String("kind", ev.Kind))
		return
	}
	if err != nil {
		c.logger.Warn("applying another instance's change failed; the next change or reconnection brings it", zap.String("kind", ev.Kind), zap.Error(err))
	}
}

// resyncPool makes the pool's keys match the store's (another instance added, deleted,
// disabled, enabled or relabelled keys) and takes in the stored cooldowns. The runtime state of
// keys that stay (failure counts, cooldowns) is kept.
func (c *Core) resyncPool(ctx context.Context) error {
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	cds, err := c.store.Cooldowns(ctx, now)
	if err != nil {
		return err
	}
	live := make(map[int64]keypool.KeyState, len(keys))
	for _, k := range c.pool.Keys(now) {
		live[k.ID] = k
	}
	stored := make(map[int64]bool, len(keys))
	for _, k := range keys {
		stored[k.ID] = true
		disabled := k.Status == store.StatusDisabled
		st, known := live[k.ID]
		switch {
		case !known:
			c.pool.Add(keypool.Key{ID: k.ID, Secret: k.Secret, Project: k.Project, Disabled: disabled, Failures: k.Failures})
		case st.Disabled != disabled:
			c.pool.SetDisabled(k.ID, disabled) // enabling clears cooldowns, as on the instance that did it
		}
		if known {
			c.pool.SetProject(k.ID, k.Project)
		}
	}
	for id := range live {
		if !stored[id] {
			c.pool.Remove(id)
		}
	}
	for _, cd := range cds {
		c.pool.Cool(cd.KeyID, cd.Model, cd.Until, now)
	}
	return nil
}
