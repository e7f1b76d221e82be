package gateway

// The admin API on the live settings (adminBackend implements admin.Backend).

import (
	"context"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"go.uber.org/zap"
)

// liveSettings are the settings the panel may change, in the order the panel lists them.
var liveSettings = []string{
	setUpstream, setProxy, setMaxFailures, setMaxEjectionPercent, setMaxRetries, setMaxBody,
	setValidationModel, setValidationProbe, setValidationInterval,
	setTimezone, setErrorRetention, setRequestRetention,
}

// formatDuration writes d in the largest whole unit caddy's duration syntax has (15d, 1h).
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d%day == 0:
		return strconv.FormatInt(int64(d/day), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// redactProxy hides the password of a proxy URL.
func redactProxy(p string) string {
	u, err := url.Parse(p)
	if err != nil || p == "" {
		return p
	}
	return u.Redacted()
}

// Settings returns the effective live settings: numbers as numbers, durations in caddy's
// syntax, the proxy's password hidden.
func (b adminBackend) Settings(ctx context.Context) (map[string]any, error) {
	s := b.c.settings.Load()
	return map[string]any{
		setUpstream:           s.upstream.String(),
		setProxy:              redactProxy(s.proxy),
		setMaxFailures:        s.maxFailures,
		setMaxEjectionPercent: s.maxEjectionPercent,
		setMaxRetries:         s.maxRetries,
		setMaxBody:            s.maxBody,
		setValidationModel:    s.validationModel,
		setValidationProbe:    s.validationProbe,
		setValidationInterval: formatDuration(s.validationInterval),
		setTimezone:           s.timezone.String(),
		setErrorRetention:     formatDuration(s.errorRetention),
		setRequestRetention:   formatDuration(s.requestRetention),
	}, nil
}

// UpdateSettings checks each value with the rules of the Caddyfile's; if all are good it
// stores them as panel edits (they win until the Caddyfile's own value changes) and applies
// them at once, without a reload.
func (b adminBackend) UpdateSettings(ctx context.Context, values map[string]string) ([]admin.FieldError, error) {
	c := b.c
	cur := c.settings.Load()
	edits := make(map[string]string, len(values))
	var bad []admin.FieldError
	for name, v := range values {
		v = strings.TrimSpace(v)
		if !slices.Contains(liveSettings, name) {
			bad = append(bad, admin.FieldError{Field: name, Description: "is not a setting the panel can change; those are " + strings.Join(liveSettings, ", ")})
			continue
		}
		if name == setProxy && v != "" && v == redactProxy(cur.proxy) && v != cur.proxy {
			continue // the redacted form sent back unchanged: keep the real value
		}
		if _, err := parseSettings(map[string]string{name: v}); err != nil {
			bad = append(bad, admin.FieldError{Field: name, Description: strings.TrimPrefix(err.Error(), name+": ")})
			continue
		}
		edits[name] = v
	}
	if len(bad) > 0 {
		slices.SortFunc(bad, func(x, y admin.FieldError) int { return strings.Compare(x.Field, y.Field) })
		return bad, nil
	}
	if len(edits) == 0 {
		return nil, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.store.SetSettings(ctx, edits); err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(edits))
	// Names only: the proxy's value may hold a password.
	c.logger.Info("admin: settings changed", zap.Strings("settings", names))
	if err := c.reloadSettings(ctx); err != nil {
		return nil, err
	}
	c.announce(store.Event{Kind: store.EventSettings})
	if now := c.settings.Load(); now.upstream.String() != cur.upstream.String() {
		c.logger.Warn("admin: the upstream was changed; every upstream key now goes there",
			zap.String("old_host", cur.upstream.Host), zap.String("new_host", now.upstream.Host))
	}
	if now := c.settings.Load(); now.proxy != cur.proxy {
		c.logger.Warn("admin: the outbound proxy was changed",
			zap.String("old_host", urlHost(cur.proxy)), zap.String("new_host", urlHost(now.proxy)))
	}
	return nil, nil
}

// urlHost is the host of a URL (no user, password or path), or "" when there is none.
func urlHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}
