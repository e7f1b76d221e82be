package gateway

import (
	"context"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

func TestAccessKeyMetricsHaveABoundedLabel(t *testing.T) {
	e := newProxyEnv(t, 2, withPolicy(tenantKey, tenant.Policy{RPM: 2}))
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.doAs(tenantKey, "POST", genPath("gemini-2.5-flash"), helloBody)
	}
	got := gatherSamples(t, reg)
	label := "t-6789" // withPolicy's label for tenantKey
	if got[`caddy_gemini_synapse_access_key_requests_total{access_key="`+label+`",outcome="success"}`] != 2 ||
		got[`caddy_gemini_synapse_access_key_requests_total{access_key="`+label+`",outcome="limited"}`] != 1 ||
		got[`caddy_gemini_synapse_access_key_tokens_total{access_key="`+label+`"}`] <= 0 {
		t.Errorf("per-access-key samples: %v", got)
	}

	// Past 100 access keys, the least used share "other"; labels used twice become "#id".
	var list []store.AccessKey
	for i := range maxAccessKeyLabels + 2 {
		l := "team-" + strconv.Itoa(i)
		if i < 2 {
			l = "same"
		}
		list = append(list, store.AccessKey{ID: int64(1000 + i), Label: l})
	}
	tm := e.core.metrics.tenants
	tm.setLabels(context.Background(), e.core, list)
	named := 0
	for _, k := range list {
		if l := tm.label(k.ID); l != accessKeyOther {
			named++
		}
	}
	if named != maxAccessKeyLabels {
		t.Errorf("%d access keys have a label value of their own, want %d", named, maxAccessKeyLabels)
	}
	if tm.label(1000) != "#1000" || tm.label(1001) != "#1001" {
		t.Errorf("a label shared by two keys: %q, %q, want #id", tm.label(1000), tm.label(1001))
	}
	if tm.label(99999) != accessKeyOther {
		t.Errorf("an unknown access key is %q, want other", tm.label(99999))
	}
}
