package gateway

// The admin API on access keys (adminBackend implements admin.Backend).

import (
	"context"
	"fmt"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
	"go.uber.org/zap"
)

// AccessKeys implements admin.Backend: every access key with its policy and, for each limit it
// sets, the usage against it now.
func (b adminBackend) AccessKeys(ctx context.Context) ([]admin.AccessKey, error) {
	list, err := b.c.store.AccessKeys(ctx)
	if err != nil {
		return nil, err
	}
	loc := b.Location()
	now := time.Now()
	out := make([]admin.AccessKey, len(list))
	for i, k := range list {
		ak := admin.AccessKey{ID: k.ID, Label: k.Label, Enabled: k.Enabled,
			CreatedAt: inZone(k.CreatedAt, loc), LastUsedAt: inZone(k.LastUsedAt, loc)}
		if p, err := tenant.Parse(k.Policy); err == nil {
			ak.Policy = *p
			if !p.ExpiresAt.IsZero() {
				ak.ExpiresAt = p.ExpiresAt.In(loc)
				ak.Expired = !now.Before(p.ExpiresAt)
			}
			ak.Usage = b.limitUsage(k.ID, p, now, loc)
		}
		out[i] = ak
	}
	return out, nil
}

// limitUsage is the usage of an access key against each limit its policy sets, or nil.
func (b adminBackend) limitUsage(id int64, p *tenant.Policy, now time.Time, loc *time.Location) *admin.AccessKeyUsage {
	if !p.Limited() {
		return nil
	}
	u := b.c.limiter.Usage(id, now)
	lu := func(used, limit int64, resets time.Time) *admin.LimitUsage {
		if limit <= 0 {
			return nil
		}
		return &admin.LimitUsage{Used: used, Limit: limit, ResetsAt: inZone(resets, loc)}
	}
	out := &admin.AccessKeyUsage{
		RPM:         lu(u.RPM, p.RPM, time.Time{}),
		RPD:         lu(u.RPD, p.RPD, u.DayEndsAt),
		TPM:         lu(u.TPM, p.TPM, time.Time{}),
		Concurrency: lu(u.InFlight, p.Concurrency, time.Time{}),
	}
	if bu := p.TokenBudget; bu != nil {
		out.TokenBudget = lu(u.Tokens, bu.Limit, u.PeriodEndsAt)
	}
	return out
}

// accessKey returns the access key with id as the API shows it.
func (b adminBackend) accessKey(ctx context.Context, id int64) (admin.AccessKey, error) {
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

// changeAccessKeys runs change under the core's lock and reloads the proxy's access keys, so
// the change works at once.
func (b adminBackend) changeAccessKeys(ctx context.Context, change func() error) error {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := change(); err != nil {
		return err
	}
	c.announce(store.Event{Kind: store.EventAccessKeys})
	return c.reloadAccessKeysLocked(ctx)
}

// AddAccessKey implements admin.Backend.
func (b adminBackend) AddAccessKey(ctx context.Context, secret, label string, p tenant.Policy) (admin.AccessKey, error) {
	var id int64
	err := b.changeAccessKeys(ctx, func() (err error) {
		id, err = b.c.store.AddAccessKey(ctx, secret, label, p.String())
		return err
	})
	if err != nil {
		return admin.AccessKey{}, err
	}
	b.c.logger.Info("admin: access key created", zap.Int64("access_key_id", id), zap.String("label", label),
		zap.String("policy", p.String()))
	return b.accessKey(ctx, id)
}

// UpdateAccessKey implements admin.Backend: the new label or policy works at once, the usage
// counted so far included (a limit lowered below it refuses the next request).
func (b adminBackend) UpdateAccessKey(ctx context.Context, id int64, label *string, p *tenant.Policy) (admin.AccessKey, error) {
	u := store.AccessKeyUpdate{Label: label}
	if p != nil {
		s := p.String()
		u.Policy = &s
	}
	if err := b.changeAccessKeys(ctx, func() error { return b.c.store.UpdateAccessKey(ctx, id, u) }); err != nil {
		return admin.AccessKey{}, err
	}
	fields := []zap.Field{zap.Int64("access_key_id", id)}
	if label != nil {
		fields = append(fields, zap.String("label", *label))
	}
	if p != nil {
		fields = append(fields, zap.String("policy", p.String()))
	}
	b.c.logger.Info("admin: access key changed", fields...)
	return b.accessKey(ctx, id)
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
