package gateway

import (
	"errors"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
)

// The gateway's metrics live in Caddy's metrics registry, so they appear wherever Caddy serves
// its own: the admin endpoint's /metrics (localhost:2019 by default) and any `metrics` handler.
// They belong to the core, like the pool and the log writer they describe: a reload registers
// the same collectors in the new config's registry, so counters go on counting across reloads
// and restart from zero only with the process (or another database).
//
// Label values are bounded: models are normalised (no "models/" prefix, only the characters
// model names use, at most maxModelLabelLen bytes) and capped at maxModelLabels distinct
// names, beyond which they count as "other". A name gets its label value only after an
// upstream 2xx answer for it (until then it is "other"), so names Google rejects never take
// one of the slots; requests without a model (listing models, files)
// count as "none". No label carries a key, a key id, a client or a path.

const (
	metricsNamespace = "caddy"
	metricsSubsystem = "gemini_synapse"

	// maxModelLabels is how many distinct model names get their own label value.
	maxModelLabels = 100
	// maxModelLabelLen is the longest model name used as a label value; longer ones are "other".
	maxModelLabelLen = 64

	modelOther = "other" // a model name past the cap, too long or with odd characters
	modelNone  = "none"  // a request that names no model
)

// statusClasses are the values of the status_class label, indexed by statusClass.
var statusClasses = [...]string{"2xx", "3xx", "4xx", "5xx"}

// statusClass maps an HTTP status to an index of statusClasses (499, a client that went
// away, is 4xx).
func statusClass(code int) int {
	return min(max(code/100, 2), 5) - 2
}

// Outcomes of upstream attempts, the values of the outcome label, indexed by keypool.Kind.
var attemptOutcomes = [...]keypool.Kind{
	keypool.Success, keypool.Quota, keypool.KeyInvalid, keypool.Transient, keypool.ClientError, keypool.Canceled,
}

// latencyBuckets fit Gemini calls: tens of milliseconds for a model lookup up to minutes for a
// long generation.
var latencyBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160}

// metrics holds the gateway's collectors and, per model, their pre-resolved children, so that
// the request path only increments counters: no label lookup, no allocation.
type metrics struct {
	requests    *prometheus.CounterVec
	attempts    *prometheus.CounterVec
	retries     prometheus.Counter
	upstream429 *prometheus.CounterVec
	cooldowns   *prometheus.CounterVec
	ejections   prometheus.Counter
	outages     prometheus.Counter
	refused     prometheus.Counter
	// confirmations counts the probes that confirm a key error, by verdict (dead, fine,
	// no_verdict) and the answers taken from a recent verdict (remembered).
	confirmations *prometheus.CounterVec
	// rejected counts requests refused for want of a valid credential, by reason; they
	// write no request-log row (exchange.finish).
	rejected *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	ttfb     *prometheus.HistogramVec
	state    stateCollector
	tenants  *tenantMetrics // per access key (tenantmetrics.go)
	live     liveMetrics    // Live API sessions (livesession.go)

	attemptsBy [len(attemptOutcomes)]prometheus.Counter // by keypool.Kind
	rejectedBy [numRejectReasons]prometheus.Counter     // by rejectReason
	rejections [numRejectReasons]rejectionSample        // the sampled warnings, by rejectReason

	mu     sync.Mutex                               // serialises adding a model
	models atomic.Pointer[map[string]*modelMetrics] // copy on write
	other  *modelMetrics
	none   *modelMetrics
}

// modelMetrics are the children of one model label value.
type modelMetrics struct {
	requests    [len(statusClasses)]prometheus.Counter
	upstream429 prometheus.Counter
	cooldowns   prometheus.Counter
	prompt      prometheus.Counter
	candidates  prometheus.Counter
	thoughts    prometheus.Counter
	total       prometheus.Counter
	latency     prometheus.Observer
	ttfb        prometheus.Observer
}

func newMetrics(c *Core) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	hist := func(name, help string) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: name, Help: help, Buckets: latencyBuckets}
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts(opts("requests_total",
			"Client requests to the Gemini API, by model and status class of the answer.")),
			[]string{"model", "status_class"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts(opts("upstream_attempts_total",
			"Upstream calls, by what the answer meant for the key (success, quota, key_invalid, transient, client_error, canceled).")),
			[]string{"outcome"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts(opts("upstream_retries_total",
			"Upstream calls that retried a request on another key."))),
		upstream429: prometheus.NewCounterVec(prometheus.CounterOpts(opts("upstream_429_total",
			"Upstream answers with status 429, by model.")), []string{"model"}),
		cooldowns: prometheus.NewCounterVec(prometheus.CounterOpts(opts("cooldowns_started_total",
			"Key cooldowns started or extended after quota errors, by model.")), []string{"model"}),
		ejections: prometheus.NewCounter(prometheus.CounterOpts(opts("key_ejections_total",
			"Keys taken out of rotation for a while after consecutive failures while other keys served."))),
		outages: prometheus.NewCounter(prometheus.CounterOpts(opts("model_outages_total",
			"Times a model's circuit opened because most attempts with every key failed."))),
		refused: prometheus.NewCounter(prometheus.CounterOpts(opts("outage_refused_total",
			"Client requests answered 503 at once because their model's circuit was open."))),
		confirmations: prometheus.NewCounterVec(prometheus.CounterOpts(opts("key_error_probes_total",
			"Probes confirming a key error before the key is disabled, by verdict (dead, fine, no_verdict; remembered: a recent fine verdict reused).")),
			[]string{"verdict"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts(opts("rejected_total",
			"Client requests refused for want of a valid credential (they write no request-log row), by reason (missing_key, wrong_key, disabled_key, expired_key, unknown_upload_session).")),
			[]string{"reason"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts(opts("tokens_total",
			"Tokens of successful answers as the upstream reported them, by model and type (prompt, candidates, thoughts, total).")),
			[]string{"model", "type"}),
		latency: prometheus.NewHistogramVec(hist("upstream_latency_seconds",
			"Time from sending an upstream call to its response headers (or its network error), by model."),
			[]string{"model"}),
		ttfb: prometheus.NewHistogramVec(hist("time_to_first_byte_seconds",
			"Time from a client request's arrival to the first byte of a successful answer's body, retries included, by model."),
			[]string{"model"}),
		state:   stateCollector{c},
		tenants: newTenantMetrics(),
		live:    newLiveMetrics(),
	}
	for i, k := range attemptOutcomes {
		m.attemptsBy[i] = m.attempts.WithLabelValues(k.String())
	}
	for r := rejectNone + 1; r < numRejectReasons; r++ {
		m.rejectedBy[r] = m.rejected.WithLabelValues(rejectReasons[r])
	}
	empty := map[string]*modelMetrics{}
	m.models.Store(&empty)
	m.other = m.newModel(modelOther)
	m.none = m.newModel(modelNone)
	return m
}

func (m *metrics) newModel(name string) *modelMetrics {
	mm := &modelMetrics{
		upstream429: m.upstream429.WithLabelValues(name),
		cooldowns:   m.cooldowns.WithLabelValues(name),
		prompt:      m.tokens.WithLabelValues(name, "prompt"),
		candidates:  m.tokens.WithLabelValues(name, "candidates"),
		thoughts:    m.tokens.WithLabelValues(name, "thoughts"),
		total:       m.tokens.WithLabelValues(name, "total"),
		latency:     m.latency.WithLabelValues(name),
		ttfb:        m.ttfb.WithLabelValues(name),
	}
	for i, class := range statusClasses {
		mm.requests[i] = m.requests.WithLabelValues(name, class)
	}
	return mm
}

// forModel returns the children for a model named by a request, and whether that answer is
// final. Known names cost one map lookup. A new name is added (copy on write) only when admit
// is true, that is once the upstream answered 2xx for it, and only until maxModelLabels are
// known; before that it counts as "other" and the answer is not final. So a client cannot fill
// the label values with names Google rejects.
func (m *metrics) forModel(model string, admit bool) (*modelMetrics, bool) {
	name, ok := modelLabel(model)
	switch {
	case !ok:
		return m.other, true
	case name == "":
		return m.none, true
	}
	if mm := (*m.models.Load())[name]; mm != nil {
		return mm, true
	}
	if !admit {
		return m.other, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.models.Load()
	if mm := cur[name]; mm != nil {
		return mm, true
	}
	if len(cur) >= maxModelLabels {
		return m.other, true
	}
	name = strings.Clone(name) // not a view into the request
	mm := m.newModel(name)
	next := maps.Clone(cur)
	next[name] = mm
	m.models.Store(&next)
	return mm, true
}

// modelLabel normalises a model name for a label: "models/" is dropped, and a name that is too
// long or has characters model names do not use is not ok. The empty name is ok ("none").
func modelLabel(model string) (string, bool) {
	model = strings.TrimPrefix(model, "models/")
	if len(model) > maxModelLabelLen {
		return "", false
	}
	for i := 0; i < len(model); i++ {
		switch c := model[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		default:
			return "", false
		}
	}
	return model, true
}

// RegisterMetrics adds the gateway's collectors to a config's registry. A registry that has
// them already (the same core registered twice in one config) is fine.
func (c *Core) RegisterMetrics(reg *prometheus.Registry) error {
	return c.metrics.register(reg)
}

// register adds the collectors to reg.
func (m *metrics) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range append([]prometheus.Collector{
		m.requests, m.attempts, m.retries, m.upstream429, m.cooldowns, m.tokens, m.latency, m.ttfb, m.state,
		m.ejections, m.outages, m.refused, m.confirmations, m.rejected,
	}, append(m.tenants.collectors(), m.live.collectors()...)...) {
		if err := reg.Register(c); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
				continue
			}
			return err
		}
	}
	return nil
}

var (
	keysDesc = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "keys"),
		"Upstream keys by state: active, cooling (a live cooldown for some model) or disabled.",
		[]string{"state"}, nil)
	rowsWrittenDesc = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "log_rows_written_total"),
		"Request- and error-log rows committed to the database.", nil, nil)
	rowsDroppedDesc = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "log_rows_dropped_total"),
		"Request- and error-log rows dropped because the queue was full, the database kept failing or the store was already closed.", nil, nil)
)

// stateCollector reads the key pool and the log writer when scraped.
type stateCollector struct{ c *Core }

// Describe implements prometheus.Collector.
func (s stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keysDesc
	ch <- rowsWrittenDesc
	ch <- rowsDroppedDesc
}

// Collect implements prometheus.Collector. Before the database is open (caddy validate, or
// a scrape racing the first start) there is nothing to report.
func (s stateCollector) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	if !c.opened.Load() {
		return
	}
	active, cooling, disabled := c.pool.Counts(time.Now())
	ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(active), "active")
	ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(cooling), "cooling")
	ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(disabled), "disabled")
	ch <- prometheus.MustNewConstMetric(rowsWrittenDesc, prometheus.CounterValue, float64(c.store.Written()))
	ch <- prometheus.MustNewConstMetric(rowsDroppedDesc, prometheus.CounterValue, float64(c.store.Dropped()))
}

// The hooks below are what the proxy calls; each is a few atomic adds.

// modelMetrics returns the children of the exchange's model, resolved once it is final (a
// name not admitted yet is "other" and looked up again, as a 2xx may admit it).
func (x *exchange) modelMetrics() *modelMetrics {
	if x.metrics == nil {
		mm, final := x.core.metrics.forModel(x.model, false)
		if !final {
			return mm
		}
		x.metrics = mm
	}
	return x.metrics
}

// attempted records one attempt at the client's call: as called does, and whether it was a
// retry on another key.
func (x *exchange) attempted(kind keypool.Kind, status int, took time.Duration) {
	if x.attempts > 1 {
		x.core.metrics.retries.Inc()
	}
	x.called(kind, status, took)
}

// called records one upstream call: its outcome, a 429, and (unless the client went away) how
// long the upstream took to answer. Calls that are not retries of one another (the pages of a
// files listing across keys) use it directly.
func (x *exchange) called(kind keypool.Kind, status int, took time.Duration) {
	m := x.core.metrics
	if int(kind) < len(m.attemptsBy) {
		m.attemptsBy[kind].Inc()
	}
	if status/100 == 2 && x.metrics == nil {
		// The upstream knows the model: it may get a label value of its own.
		x.metrics, _ = m.forModel(x.model, true)
	}
	mm := x.modelMetrics()
	if status == 429 {
		mm.upstream429.Inc()
	}
	if kind != keypool.Canceled {
		mm.latency.Observe(took.Seconds())
	}
}

// reported records what a pool report changed.
func (x *exchange) reported(ch keypool.Change) {
	if !ch.CooldownUntil.IsZero() && !ch.Ejected {
		x.modelMetrics().cooldowns.Inc()
	}
	if ch.Ejected {
		x.core.metrics.ejections.Inc()
	}
	if ch.Opened {
		x.core.metrics.outages.Inc()
	}
}

// recordRequest records the finished client request: its status class, tokens and time to
// first byte.
func (x *exchange) recordRequest() {
	mm := x.modelMetrics()
	mm.requests[statusClass(x.status)].Inc()
	if x.ttfb > 0 {
		mm.ttfb.Observe(x.ttfb.Seconds())
	}
	u := x.usage
	if u.prompt > 0 {
		mm.prompt.Add(float64(u.prompt))
	}
	if u.candidates > 0 {
		mm.candidates.Add(float64(u.candidates))
	}
	if u.thoughts > 0 {
		mm.thoughts.Add(float64(u.thoughts))
	}
	if u.total > 0 {
		mm.total.Add(float64(u.total))
	}
}

// rejectReason is why a request was refused before it was authenticated; the zero value is
// an authenticated request (or one not decided yet).
type rejectReason uint8

// The reasons, values of the reason label of rejected_total (rejectReasons).
const (
	rejectNone          rejectReason = iota
	rejectMissingKey                 // no access key at all
	rejectWrongKey                   // an access key the gateway does not know
	rejectDisabledKey                // a disabled access key (or an upload session started by one)
	rejectExpiredKey                 // an access key past its policy's expiry (or an upload session started by one)
	rejectUnknownUpload              // an upload chunk without a key, for a session the gateway does not know
	numRejectReasons
)

var rejectReasons = [numRejectReasons]string{"", "missing_key", "wrong_key", "disabled_key", "expired_key", "unknown_upload_session"}

// rejectedLogEvery is the least time between two warnings about refused requests of one reason.
const rejectedLogEvery = 10 * time.Second

// rejectedLogMessage is the sampled warning about refused requests.
const rejectedLogMessage = "client requests refused for want of a valid access key (at most one line per reason every 10s; count is the number since the last line)"

// rejectionSample is the sampling state of one reason's warning.
type rejectionSample struct {
	last  atomic.Int64 // when the last line was written, Unix nanoseconds; 0 before the first
	count atomic.Int64 // refusals not yet in a line
}

// noteRejected counts a refused request r and writes a warning unless one for the same reason
// was written less than rejectedLogEvery before now. The line says how many refusals it stands
// for, and the client address of this one when the server knows it (Hooks.ClientIP); never a
// key or a path. A flood costs a few atomic operations per request and one line per interval.
func (m *metrics) noteRejected(c *Core, why rejectReason, r *http.Request, now time.Time) {
	if why == rejectNone || why >= numRejectReasons {
		return
	}
	m.rejectedBy[why].Inc()
	s := &m.rejections[why]
	s.count.Add(1)
	t := now.UnixNano()
	last := s.last.Load()
	if last != 0 && t-last < int64(rejectedLogEvery) || !s.last.CompareAndSwap(last, t) {
		return
	}
	fields := []zap.Field{zap.String("reason", rejectReasons[why]), zap.Int64("count", s.count.Swap(0))}
	if last != 0 {
		fields = append(fields, zap.Duration("since_last", time.Duration(t-last)))
	}
	if c.hooks.ClientIP != nil {
		if ip := c.hooks.ClientIP(r); ip != "" {
			fields = append(fields, zap.String("client_ip", ip))
		}
	}
	c.logger.Warn(rejectedLogMessage, fields...)
}
