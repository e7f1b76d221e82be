package gateway

// Metrics per access key, under a bounded label: the 100 access keys with the most requests in
// the last 30 days have their own value, the rest share "other", so neither many keys nor a
// client can grow the series without bound.

import (
	"context"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// maxAccessKeyLabels is how many access keys get a label value of their own.
const maxAccessKeyLabels = 100

// accessKeyOther is the label value of every other access key.
const accessKeyOther = "other"

// tenantMetrics are the per-access-key collectors.
type tenantMetrics struct {
	requests *prometheus.CounterVec // access_key, outcome (success, failure, limited)
	tokens   *prometheus.CounterVec // access_key
	labels   atomic.Pointer[map[int64]string]
}

func newTenantMetrics() *tenantMetrics {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	t := &tenantMetrics{
		requests: prometheus.NewCounterVec(opts("access_key_requests_total",
			"Client requests by access key (its label; the 100 most used of the last 30 days, the rest as other) and outcome (success, failure, limited: refused by the key's policy)."),
			[]string{"access_key", "outcome"}),
		tokens: prometheus.NewCounterVec(opts("access_key_tokens_total",
			"Tokens charged to access keys (prompt + candidates + thoughts), by access key as in access_key_requests_total."),
			[]string{"access_key"}),
	}
	empty := map[int64]string{}
	t.labels.Store(&empty)
	return t
}

// collectors are the collectors to register.
func (t *tenantMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{t.requests, t.tokens}
}

// label is the label value of an access key.
func (t *tenantMetrics) label(id int64) string {
	if l, ok := (*t.labels.Load())[id]; ok {
		return l
	}
	return accessKeyOther
}

// observe counts one finished request of an access key.
func (t *tenantMetrics) observe(id int64, status int, limited bool, tokens int64) {
	if id == 0 {
		return
	}
	l := t.label(id)
	outcome := "success"
	switch {
	case limited:
		outcome = "limited"
	case status < 200 || status > 399:
		outcome = "failure"
	}
	t.requests.WithLabelValues(l, outcome).Inc()
	if tokens > 0 {
		t.tokens.WithLabelValues(l).Add(float64(tokens))
	}
}

// setLabels gives the access keys most used in the last 30 days a label value each (their label,
// or "#id" when it is empty or shared by another of them); the rest count as "other".
func (t *tenantMetrics) setLabels(ctx context.Context, c *Core, list []store.AccessKey) {
	now := time.Now()
	use := map[int64]int64{}
	if stats, err := c.store.AccessKeyUsage(ctx, now.Add(-30*24*time.Hour), now.Add(time.Minute)); err != nil {
		c.logger.Warn("ranking access keys for metrics labels", zap.Error(err))
	} else {
		for _, s := range stats {
			use[s.AccessKeyID] = s.Requests
		}
	}
	ranked := make([]store.AccessKey, len(list))
	copy(ranked, list)
	sort.SliceStable(ranked, func(i, j int) bool { return use[ranked[i].ID] > use[ranked[j].ID] })
	ranked = ranked[:min(len(ranked), maxAccessKeyLabels)]
	count := map[string]int{}
	for _, k := range ranked {
		count[k.Label]++
	}
	labels := make(map[int64]string, len(ranked))
	for _, k := range ranked {
		l := k.Label
		if l == "" || l == accessKeyOther || count[l] > 1 {
			l = "#" + strconv.FormatInt(k.ID, 10)
		}
		labels[k.ID] = l
	}
	t.labels.Store(&labels)
}
