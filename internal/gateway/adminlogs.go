package gateway

// The admin API's statistics and logs (adminBackend implements admin.Backend).

import (
	"context"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Usage implements admin.Backend.
func (b adminBackend) Usage(ctx context.Context, bounds []time.Time, accessKeyID int64) ([]store.Usage, error) {
	if accessKeyID != 0 {
		return b.c.store.UsageBucketsOf(ctx, accessKeyID, bounds)
	}
	return b.c.store.UsageBuckets(ctx, bounds)
}

// UsageByModel implements admin.Backend.
func (b adminBackend) UsageByModel(ctx context.Context, from, to time.Time, accessKeyID int64) ([]store.ModelUsage, error) {
	if accessKeyID != 0 {
		return b.c.store.UsageByModelOf(ctx, accessKeyID, from, to, 50)
	}
	return b.c.store.UsageByModel(ctx, from, to, 50)
}

// AccessKeyStats implements admin.Backend.
func (b adminBackend) AccessKeyStats(ctx context.Context, from, to time.Time) ([]store.AccessKeyUsage, error) {
	return b.c.store.AccessKeyUsage(ctx, from, to)
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
