package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
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

// Interface guards
var (
	_ admin.Backend = adminBackend{}
)
