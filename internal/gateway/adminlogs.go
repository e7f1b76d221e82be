package gateway

// The admin API's statistics and logs (adminBackend implements admin.Backend).

import (
	"context"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

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
