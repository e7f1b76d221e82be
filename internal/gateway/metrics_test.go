package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// gatherSamples gathers a registry (pedantic registries also check every metric against its
// description) and returns each sample as "name{label="value",...}" -> value; a histogram
// gives its _count and _sum.
func gatherSamples(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[name] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[strings.Replace(name, mf.GetName(), mf.GetName()+"_count", 1)] = float64(m.GetHistogram().GetSampleCount())
				out[strings.Replace(name, mf.GetName(), mf.GetName()+"_sum", 1)] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// answerUsage reads the token counts of an answer as a client would: the usageMetadata of a
// JSON answer, or of the last SSE event that has one.
func answerUsage(t *testing.T, body []byte) usage {
	t.Helper()
	type meta struct {
		Usage *struct {
			Prompt     int64 `json:"promptTokenCount"`
			Candidates int64 `json:"candidatesTokenCount"`
			Thoughts   int64 `json:"thoughtsTokenCount"`
			Total      int64 `json:"totalTokenCount"`
		} `json:"usageMetadata"`
	}
	var docs [][]byte
	if bytes.HasPrefix(body, []byte("data: ")) {
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			if d, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: ")); ok {
				docs = append(docs, append([]byte(nil), d...))
			}
		}
	} else {
		docs = [][]byte{body}
	}
	var u usage
	for _, d := range docs {
		var m meta
		if err := json.Unmarshal(d, &m); err != nil {
			t.Fatalf("answer is not JSON: %v: %s", err, d)
		}
		if m.Usage != nil {
			u = usage{m.Usage.Prompt, m.Usage.Candidates, m.Usage.Thoughts, m.Usage.Total}
		}
	}
	if u.total == 0 {
		t.Fatalf("answer has no usageMetadata: %s", body)
	}
	return u
}

// TestMetricsFollowTraffic sends known traffic through the proxy and checks every figure the
// gateway's collectors report against it.
func TestMetricsFollowTraffic(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.metrics.register(reg); err != nil {
		t.Fatal(err)
	}
	const flash, pro = "gemini-2.5-flash", "gemini-2.5-pro"
	var flashUsage usage
	flashOK := 0
	okFlash := func(b []byte) {
		u := answerUsage(t, b)
		flashUsage.prompt += u.prompt
		flashUsage.candidates += u.candidates
		flashUsage.thoughts += u.thoughts
		flashUsage.total += u.total
		flashOK++
	}

	// Four plain 200s on flash, one on pro.
	for range 4 {
		resp, b, used := e.generate(flash)
		if resp.StatusCode != 200 || len(used) != 1 {
			t.Fatalf("%d after %d calls: %s", resp.StatusCode, len(used), b)
		}
		okFlash(b)
	}
	resp, b, _ := e.generate(pro)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	proUsage := answerUsage(t, b)

	// One key answers 429: the request that meets it is retried on another key, and the key
	// cools down for flash.
	cooled := e.keys[0]
	e.fake.SetKey(cooled, fakegemini.QuotaMinute)
	retried := false
	for i := 0; i < 3 && !retried; i++ {
		resp, b, used := e.generate(flash)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		okFlash(b)
		retried = len(used) == 2 && used[0] == cooled
		if !retried && len(used) != 1 {
			t.Fatalf("upstream calls on keys %v", used)
		}
	}
	if !retried {
		t.Fatal("the 429 key was never tried")
	}

	// A stream.
	e.fake.SetStream(3, 0)
	resp, b = e.do("POST", "/v1beta/models/"+flash+":streamGenerateContent?alt=sse", helloBody)
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	okFlash(b)

	// A client the gateway turns away (no model known yet, and no request-log row), and a
	// model name that is not a label value (the upstream answers 404, a client error).
	req, _ := http.NewRequest("POST", e.url+genPath(flash), strings.NewReader(helloBody))
	req.Header.Set("x-goog-api-key", "not-an-access-key")
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 401 {
		t.Fatalf("wrong key: %d", r.StatusCode)
	}
	if resp, b := e.do("POST", "/v1beta/models/gemini%21odd:generateContent", helloBody); resp.StatusCode != 404 {
		t.Fatalf("odd model: %d %s", resp.StatusCode, b)
	}

	rows, errs := e.requests(), e.errorRows()
	if want := flashOK + 2; len(rows) != want {
		t.Fatalf("%d request rows, want %d", len(rows), want)
	}
	if len(errs) != 1 {
		t.Fatalf("%d error rows, want the 429 only", len(errs))
	}
	got := gatherSamples(t, reg)
	for name, want := range map[string]float64{
		`caddy_gemini_synapse_requests_total{model="gemini-2.5-flash",status_class="2xx"}`: float64(flashOK),
		`caddy_gemini_synapse_requests_total{model="gemini-2.5-pro",status_class="2xx"}`:   1,
		`caddy_gemini_synapse_requests_total{model="none",status_class="4xx"}`:             1,
		`caddy_gemini_synapse_rejected_total{reason="wrong_key"}`:                          1,
		`caddy_gemini_synapse_rejected_total{reason="missing_key"}`:                        0,
		`caddy_gemini_synapse_requests_total{model="other",status_class="4xx"}`:            1,
		`caddy_gemini_synapse_requests_total{model="gemini-2.5-flash",status_class="4xx"}`: 0,
		`caddy_gemini_synapse_upstream_attempts_total{outcome="success"}`:                  float64(flashOK + 1),
		`caddy_gemini_synapse_upstream_attempts_total{outcome="quota"}`:                    1,
		`caddy_gemini_synapse_upstream_attempts_total{outcome="client_error"}`:             1,
		`caddy_gemini_synapse_upstream_attempts_total{outcome="transient"}`:                0,
		`caddy_gemini_synapse_upstream_retries_total`:                                      1,
		`caddy_gemini_synapse_upstream_429_total{model="gemini-2.5-flash"}`:                1,
		`caddy_gemini_synapse_cooldowns_started_total{model="gemini-2.5-flash"}`:           1,
		`caddy_gemini_synapse_cooldowns_started_total{model="gemini-2.5-pro"}`:             0,
		`caddy_gemini_synapse_tokens_total{model="gemini-2.5-flash",type="prompt"}`:        float64(flashUsage.prompt),
		`caddy_gemini_synapse_tokens_total{model="gemini-2.5-flash",type="candidates"}`:    float64(flashUsage.candidates),
		`caddy_gemini_synapse_tokens_total{model="gemini-2.5-flash",type="thoughts"}`:      float64(flashUsage.thoughts),
		`caddy_gemini_synapse_tokens_total{model="gemini-2.5-flash",type="total"}`:         float64(flashUsage.total),
		`caddy_gemini_synapse_tokens_total{model="gemini-2.5-pro",type="total"}`:           float64(proUsage.total),
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="gemini-2.5-flash"}`:    float64(flashOK + 1),
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="gemini-2.5-pro"}`:      1,
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="other"}`:               1,
		`caddy_gemini_synapse_time_to_first_byte_seconds_count{model="gemini-2.5-flash"}`:  float64(flashOK),
		`caddy_gemini_synapse_time_to_first_byte_seconds_count{model="gemini-2.5-pro"}`:    1,
		`caddy_gemini_synapse_keys{state="active"}`:                                        2,
		`caddy_gemini_synapse_keys{state="cooling"}`:                                       1,
		`caddy_gemini_synapse_keys{state="disabled"}`:                                      0,
		`caddy_gemini_synapse_log_rows_written_total`:                                      float64(len(rows) + len(errs)),
		`caddy_gemini_synapse_log_rows_dropped_total`:                                      0,
	} {
		if g, ok := got[name]; !ok || g != want {
			t.Errorf("%s = %v (present: %v), want %v", name, g, ok, want)
		}
	}
	if flashUsage.total == 0 || proUsage.total == 0 {
		t.Errorf("the fake reported no tokens: %+v %+v", flashUsage, proUsage)
	}
	// No label value is a key, a path or a client credential.
	for name := range got {
		for _, k := range e.keys {
			if strings.Contains(name, k) {
				t.Errorf("a metric carries a pool key: %s", name)
			}
		}
		if strings.Contains(name, "/v1") || strings.Contains(name, testAccessKey) || strings.Contains(name, "odd") {
			t.Errorf("a metric carries a path, a raw model or the access key: %s", name)
		}
	}
}

// TestModelLabelsAreBounded: model names are normalised and capped, so a client cannot grow
// the label set without bound.
func TestModelLabelsAreBounded(t *testing.T) {
	m := newMetrics(&Core{})
	// admitted is the children of a name the upstream answered 2xx for.
	admitted := func(name string) *modelMetrics {
		mm, final := m.forModel(name, true)
		if !final {
			t.Fatalf("forModel(%q, admit) is not final", name)
		}
		return mm
	}
	if admitted("models/gemini-2.5-flash") != admitted("gemini-2.5-flash") {
		t.Error(`"models/" is not stripped`)
	}
	for _, odd := range []string{"gemini 2.5", "a/b", "x{y}", "é", strings.Repeat("m", maxModelLabelLen+1)} {
		if admitted(odd) != m.other {
			t.Errorf("%q got its own label value", odd)
		}
	}
	if admitted("") != m.none || admitted("models/") != m.none {
		t.Error("a request without a model is not counted as none")
	}
	if mm := admitted(strings.Repeat("m", maxModelLabelLen)); mm == m.other {
		t.Error("a name of the longest allowed length is other")
	}
	for i := 0; len(*m.models.Load()) < maxModelLabels; i++ {
		if mm := admitted(fmt.Sprintf("model-%d", i)); mm == m.other {
			t.Fatalf("model %d is other before the cap", i)
		}
	}
	if admitted("one-too-many") != m.other {
		t.Error("a model past the cap got its own label value")
	}
	if admitted("model-0") == m.other {
		t.Error("a known model lost its label value at the cap")
	}
	reg := prometheus.NewPedanticRegistry()
	if err := m.register(reg); err != nil {
		t.Fatal(err)
	}
	models := map[string]bool{}
	for name := range gatherSamples(t, reg) {
		if i := strings.Index(name, `model="`); i >= 0 {
			models[strings.SplitN(name[i+7:], `"`, 2)[0]] = true
		}
	}
	if len(models) != maxModelLabels+2 { // + other and none
		t.Errorf("%d model label values, want %d", len(models), maxModelLabels+2)
	}
}

// TestMadeUpModelsTakeNoLabelSlot: a client sending more made-up model names than there are
// label slots (the upstream answers 404 to each) leaves every slot free; they count as
// "other", and a real model still gets its own label value after them.
func TestMadeUpModelsTakeNoLabelSlot(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.metrics.register(reg); err != nil {
		t.Fatal(err)
	}
	const madeUp = maxModelLabels + 5
	for i := range madeUp {
		resp, b, _ := e.generate(fmt.Sprintf("gemini-made-up-%d", i))
		if resp.StatusCode != 404 {
			t.Fatalf("made-up model %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if n := len(*e.core.metrics.models.Load()); n != 0 {
		t.Errorf("%d label values taken by models the upstream rejected", n)
	}
	if resp, b, _ := e.generate("gemini-2.5-flash"); resp.StatusCode != 200 {
		t.Fatalf("real model: %d %s", resp.StatusCode, b)
	}
	got := gatherSamples(t, reg)
	for name, want := range map[string]float64{
		`caddy_gemini_synapse_requests_total{model="other",status_class="4xx"}`:            madeUp,
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="other"}`:               madeUp,
		`caddy_gemini_synapse_requests_total{model="gemini-2.5-flash",status_class="2xx"}`: 1,
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="gemini-2.5-flash"}`:    1,
	} {
		if g, ok := got[name]; !ok || g != want {
			t.Errorf("%s = %v (present: %v), want %v", name, g, ok, want)
		}
	}
	for name := range got {
		if strings.Contains(name, "made-up") {
			t.Errorf("a rejected model name is a label value: %s", name)
		}
	}
}

// TestMetricsRegisterAcrossReloads: a reload registers the same core's collectors in the new
// config's registry (and twice in one is harmless); the counts carry over.
func TestMetricsRegisterAcrossReloads(t *testing.T) {
	m := newMetrics(&Core{})
	mm, _ := m.forModel("gemini-2.5-flash", true)
	mm.requests[0].Inc()
	first, second := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	for _, reg := range []*prometheus.Registry{first, first, second} {
		if err := m.register(reg); err != nil {
			t.Fatalf("register: %v", err)
		}
	}
	const name = `caddy_gemini_synapse_requests_total{model="gemini-2.5-flash",status_class="2xx"}`
	if got := gatherSamples(t, second)[name]; got != 1 {
		t.Errorf("%s = %v in the new registry, want 1", name, got)
	}
	// The key gauge of a core that is not open yet (caddy validate) reports nothing.
	if _, ok := gatherSamples(t, second)[`caddy_gemini_synapse_keys{state="active"}`]; ok {
		t.Error("a core that was never opened reports keys")
	}
}

// TestMetricsHotPathDoesNotAllocate: what the proxy calls per request and per attempt only
// adds to pre-resolved counters.
func TestMetricsHotPathDoesNotAllocate(t *testing.T) {
	c := &Core{}
	c.metrics = newMetrics(c)
	x := &exchange{core: c, model: "gemini-2.5-flash", status: 200, attempts: 2,
		ttfb: 120 * time.Millisecond, usage: usage{prompt: 3, candidates: 5, total: 8}}
	x.attempted(keypool.Success, 200, time.Millisecond) // the first 2xx of a model adds its label value
	ch := keypool.Change{CooldownUntil: time.Now()}
	allocs := testing.AllocsPerRun(200, func() {
		x.metrics = nil
		x.attempted(keypool.Quota, 429, 80*time.Millisecond)
		x.reported(ch)
		x.attempted(keypool.Success, 200, 90*time.Millisecond)
		x.recordRequest()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request", allocs)
	}
}

// BenchmarkMetricsPerRequest measures the metrics work of one request with a retry.
func BenchmarkMetricsPerRequest(b *testing.B) {
	c := &Core{}
	c.metrics = newMetrics(c)
	x := &exchange{core: c, model: "gemini-2.5-flash", status: 200, attempts: 2,
		ttfb: 120 * time.Millisecond, usage: usage{prompt: 3, candidates: 5, total: 8}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := *x
		for pb.Next() {
			x.metrics = nil
			x.attempted(keypool.Success, 200, 90*time.Millisecond)
			x.recordRequest()
		}
	})
}

// TestMetricsCountEveryUpstreamCall: the calls of an upload's chunks, of requests bound to a
// resource's key and of a files listing across keys are counted like the pooled ones: one
// attempt and one latency sample each, none of them a retry.
func TestMetricsCountEveryUpstreamCall(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.metrics.register(reg); err != nil {
		t.Fatal(err)
	}
	before := len(e.fake.Calls())
	name, _ := e.upload(strings.Repeat("0123456789", 100), "", 300) // start + 4 chunks
	// Bound to the file's key: a generation naming it, and a lookup of the file itself.
	if resp, b := e.do("POST", genPath("gemini-2.5-flash"), fileBody(name)); resp.StatusCode != 200 {
		t.Fatalf("generate: %d %s", resp.StatusCode, b)
	}
	if resp, b := e.do("GET", "/v1beta/"+name, ""); resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", name, resp.StatusCode, b)
	}
	if resp, b := e.do("DELETE", "/v1beta/"+name, ""); resp.StatusCode != 200 {
		t.Fatalf("DELETE %s: %d %s", name, resp.StatusCode, b)
	}
	if resp, b := e.do("GET", "/v1beta/files?pageSize=10", ""); resp.StatusCode != 200 {
		t.Fatalf("list: %d %s", resp.StatusCode, b)
	}
	calls := len(e.fake.Calls()) - before
	if calls != 5+1+1+1+3 {
		t.Fatalf("%d upstream calls, want 11 (upload 5, generate, get, delete, a list page per key)", calls)
	}
	got := gatherSamples(t, reg)
	for name, want := range map[string]float64{
		`caddy_gemini_synapse_upstream_attempts_total{outcome="success"}`:               float64(calls),
		`caddy_gemini_synapse_upstream_retries_total`:                                   0,
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="gemini-2.5-flash"}`: 1,
		`caddy_gemini_synapse_upstream_latency_seconds_count{model="none"}`:             float64(calls - 1),
		`caddy_gemini_synapse_requests_total{model="none",status_class="2xx"}`:          float64(calls - 1 - 2),
	} {
		if g, ok := got[name]; !ok || g != want {
			t.Errorf("%s = %v (present: %v), want %v", name, g, ok, want)
		}
	}
}
