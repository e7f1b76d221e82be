package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// scrapeMetrics reads caddy's admin /metrics (Prometheus text format) into
// `name{labels}` -> value.
func (g *gateway) scrapeMetrics() map[string]float64 {
	g.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", g.adminPort))
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		g.t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			g.t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		g.t.Fatal(err)
	}
	return out
}

// tokensOf returns the totalTokenCount of a JSON answer, or of the last SSE event with usage.
func tokensOf(t *testing.T, body []byte) (prompt, candidates, total float64) {
	t.Helper()
	docs := [][]byte{body}
	if bytes.HasPrefix(body, []byte("data: ")) {
		docs = nil
		for _, ev := range bytes.Split(body, []byte("\r\n\r\n")) {
			if d, ok := bytes.CutPrefix(bytes.TrimSpace(ev), []byte("data: ")); ok {
				docs = append(docs, d)
			}
		}
	}
	for _, d := range docs {
		var m struct {
			U *struct {
				P int `json:"promptTokenCount"`
				C int `json:"candidatesTokenCount"`
				T int `json:"totalTokenCount"`
			} `json:"usageMetadata"`
		}
		if err := json.Unmarshal(d, &m); err != nil {
			t.Fatalf("answer is not JSON: %v: %s", err, d)
		}
		if m.U != nil {
			prompt, candidates, total = float64(m.U.P), float64(m.U.C), float64(m.U.T)
		}
	}
	if total == 0 {
		t.Fatalf("no usageMetadata in %s", body)
	}
	return prompt, candidates, total
}

// TestMetricsEndpoint sends known traffic (200s, a 429 that forces a retry, a stream, a
// rejected client), scrapes caddy's own admin /metrics and checks that the gateway's figures
// are exactly that traffic; then reloads caddy and checks they carry over and go on counting.
func TestMetricsEndpoint(t *testing.T) {
	fake, up := newFake(t)
	fake.SetStream(3, 0)
	pool := poolKeys(2)
	cfg := gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}}
	g := startGateway(t, cfg)

	var ok, prompt, candidates, total float64
	count := func(body []byte) {
		p, c, tt := tokensOf(t, body)
		ok++
		prompt += p
		candidates += c
		total += tt
	}
	for range 3 {
		r := g.generate(modelFlash, accessKey)
		wantOK(t, r)
		count(r.Body)
	}
	// The first pool key answers 429 from now on: the request that meets it is retried on
	// the other key, and the key cools down for the model.
	fake.SetKey(pool[0], fakegemini.QuotaMinute)
	retried := false
	for i := 0; i < 2 && !retried; i++ {
		before := len(clientCalls(fake.Calls()))
		r := g.generate(modelFlash, accessKey)
		wantOK(t, r)
		count(r.Body)
		calls := clientCalls(fake.Calls())[before:]
		retried = len(calls) == 2 && calls[0].Key == pool[0]
		if !retried && len(calls) != 1 {
			t.Fatalf("%d upstream calls for one request", len(calls))
		}
	}
	if !retried {
		t.Fatal("the 429 key was never tried")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := g.openStream(ctx, accessKey)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %d %v", resp.StatusCode, err)
	}
	count(body)
	wantEnvelope(t, g.generate(modelFlash, wrongKey), http.StatusUnauthorized, "UNAUTHENTICATED")

	const p = "caddy_gemini_synapse_"
	flash := `model="` + modelFlash + `"`
	want := map[string]float64{
		p + `requests_total{` + flash + `,status_class="2xx"}`: ok,
		p + `requests_total{model="none",status_class="4xx"}`:  1,
		p + `upstream_attempts_total{outcome="success"}`:       ok,
		p + `upstream_attempts_total{outcome="quota"}`:         1,
		p + `upstream_attempts_total{outcome="transient"}`:     0,
		p + `upstream_retries_total`:                           1,
		p + `upstream_429_total{` + flash + `}`:                1,
		p + `cooldowns_started_total{` + flash + `}`:           1,
		p + `tokens_total{` + flash + `,type="prompt"}`:        prompt,
		p + `tokens_total{` + flash + `,type="candidates"}`:    candidates,
		p + `tokens_total{` + flash + `,type="total"}`:         total,
		p + `upstream_latency_seconds_count{` + flash + `}`:    ok + 1,
		p + `time_to_first_byte_seconds_count{` + flash + `}`:  ok,
		p + `keys{state="active"}`:                             1,
		p + `keys{state="cooling"}`:                            1,
		p + `keys{state="disabled"}`:                           0,
		p + `log_rows_dropped_total`:                           0,
		"caddy_config_last_reload_successful":                  1, // caddy's own metrics are on the same page
	}
	// Rows are written in batches: every request row plus the error row of the 429; the refused
	// client writes none (it is counted in rejected_total).
	rows := ok + 1
	var got map[string]float64
	if !eventually(10*time.Second, func() bool {
		got = g.scrapeMetrics()
		return got[p+"log_rows_written_total"] == rows
	}) {
		t.Errorf("log_rows_written_total = %v, want %v", got[p+"log_rows_written_total"], rows)
	}
	check := func(got map[string]float64) {
		t.Helper()
		for name, w := range want {
			v, present := got[name]
			switch {
			case !present:
				t.Errorf("%s missing from /metrics", name)
			case v != w:
				t.Errorf("%s = %v, want %v", name, v, w)
			}
		}
		for name := range got {
			for _, k := range append(pool, accessKey) {
				if strings.Contains(name, k) {
					t.Errorf("a metric carries a key: %s", strings.ReplaceAll(name, k, mask(k)))
				}
			}
		}
	}
	check(got)

	// A reload registers the collectors in the new config's registry: same figures, and they
	// go on counting.
	// The new config differs (an access key more), so caddy really loads it.
	reloaded := cfg
	reloaded.AccessKeys = []string{accessKey, accessKey2}
	g.Reload(reloaded)
	check(g.scrapeMetrics())
	var r response
	if !eventually(10*time.Second, func() bool {
		r = g.do(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey2), genBody)
		return r.Status == 200
	}) {
		t.Fatalf("after the reload: %d %s", r.Status, r.Body)
	}
	after := g.scrapeMetrics()
	if v := after[p+`requests_total{`+flash+`,status_class="2xx"}`]; v != ok+1 {
		t.Errorf("after the reload, 2xx requests = %v, want %v", v, ok+1)
	}
}
