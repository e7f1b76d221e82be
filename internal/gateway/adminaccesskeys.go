package gateway

// The admin API on access keys (adminBackend implements admin.Backend).

import (
	"context"
	"fmt"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"go.uber.org/zap"
)

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
