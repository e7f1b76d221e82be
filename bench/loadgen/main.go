// Command loadgen is the load generator of `make bench` (see bench/run.sh). It talks
// HTTP/1.1 with keep-alive to loopback addresses only, and every run is bounded in time.
//
// Modes:
//
//	req   N concurrent clients send non-streaming requests (POST -body) for -d after a -warmup;
//	      reports requests/s, p50 and p99 latency, errors and, with -pid, the CPU time that
//	      process spent per request. Several -target flags are measured in turn, -rounds times,
//	      in a rotating order, so that targets are compared side by side.
//	sse   the same with streamed answers (Server-Sent Events): latency is the time to the
//	      first complete event; every stream is read to its end.
//	hold  opens -streams concurrent slow SSE streams to one target, waits for the first event
//	      of each, holds them for -hold and reports the memory of process -pid (VmRSS before and
//	      during the hold, VmHWM) and the bytes per open stream.
//	wait  waits until the target answers any HTTP request (GET), at most -d.
//
// Results go to stdout as markdown tables; with -metrics, "name value" lines are appended to
// that file for the driver script (requests sent and errors per target, medians, ratios).
//
//	loadgen -mode req -c 50 -d 8s -rounds 3 -target direct=http://127.0.0.1:9999/v1beta/models/gemini-2.5-flash:generateContent \
//	        -target gateway=http://127.0.0.1:8008/v1beta/models/gemini-2.5-flash:generateContent -ratio gateway/direct
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// target is one named URL under test.
type target struct{ name, url string }

// targetList collects repeated -target name=url flags.
type targetList []target

func (l *targetList) String() string { return fmt.Sprint(*l) }

func (l *targetList) Set(v string) error {
	name, u, ok := strings.Cut(v, "=")
	if !ok || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("want name=url, got %q", v)
	}
	if err := checkLoopback(u); err != nil {
		return err
	}
	*l = append(*l, target{name, u})
	return nil
}

// ratioList collects repeated -ratio a/b flags (target names).
type ratioList [][2]string

func (l *ratioList) String() string { return fmt.Sprint(*l) }

func (l *ratioList) Set(v string) error {
	a, b, ok := strings.Cut(v, "/")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("want a/b, got %q", v)
	}
	*l = append(*l, [2]string{a, b})
	return nil
}

// checkLoopback accepts only http URLs whose host is a loopback IP literal.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" {
		return fmt.Errorf("%s: only http:// is supported", raw)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: the host must be a loopback IP such as 127.0.0.1", raw)
	}
	return nil
}

type config struct {
	mode        string
	targets     targetList
	ratios      ratioList
	base        string
	rounds      int
	clients     int
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	maxRequests int64
	key         string
	body        []byte
	streams     int
	hold        time.Duration
	openTimeout time.Duration
	pid         int
	pidTargets  map[string]bool // targets served by -pid; nil: all
	varsURL     string
	metrics     string
}

func main() {
	var cfg config
	var body string
	var maxRuntime time.Duration
	var freePorts int
	var pidTargets string
	flag.StringVar(&cfg.mode, "mode", "req", "req, sse, hold or wait")
	flag.Var(&cfg.targets, "target", "name=url of a target (repeatable; loopback only)")
	flag.Var(&cfg.ratios, "ratio", "a/b: report target a relative to target b (repeatable)")
	flag.StringVar(&cfg.base, "base", "", "sse: the target whose time to first event the others are compared with")
	flag.IntVar(&cfg.rounds, "rounds", 1, "times every target is measured, in a rotating order")
	flag.IntVar(&cfg.clients, "c", 50, "concurrent clients (keep-alive connections)")
	flag.DurationVar(&cfg.duration, "d", 10*time.Second, "measured duration of one run (wait: how long to wait)")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured load before each run")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "timeout of one request")
	flag.Int64Var(&cfg.maxRequests, "n", 0, "stop a run after this many requests (0: duration only)")
	flag.StringVar(&cfg.key, "key", "bench-key", "sent as x-goog-api-key")
	flag.StringVar(&body, "body", `{"contents":[{"role":"user","parts":[{"text":"Hello"}]}]}`, "request body (JSON)")
	flag.IntVar(&cfg.streams, "streams", 1000, "hold: concurrent streams to open")
	flag.DurationVar(&cfg.hold, "hold", 5*time.Second, "hold: how long the streams are held once all are open")
	flag.DurationVar(&cfg.openTimeout, "open-timeout", 60*time.Second, "hold: how long opening all streams may take")
	flag.IntVar(&cfg.pid, "pid", 0, "process (the proxy) whose CPU time (req, sse) or memory (hold) is reported")
	flag.StringVar(&pidTargets, "pid-targets", "", "comma-separated targets served by -pid, whose CPU time per request is reported (default: all)")
	flag.StringVar(&cfg.varsURL, "vars", "", "hold: expvar URL of that process (caddy admin /debug/vars) for Go heap figures")
	flag.StringVar(&cfg.metrics, "metrics", "", "append \"name value\" result lines to this file")
	flag.DurationVar(&maxRuntime, "max-runtime", 10*time.Minute, "hard limit of the whole command")
	flag.IntVar(&freePorts, "free-ports", 0, "print this many free loopback TCP ports and exit")
	flag.Parse()
	cfg.body = []byte(body)
	if pidTargets != "" {
		cfg.pidTargets = make(map[string]bool)
		for name := range strings.SplitSeq(pidTargets, ",") {
			cfg.pidTargets[strings.TrimSpace(name)] = true
		}
	}

	if freePorts > 0 {
		ports, err := findFreePorts(freePorts)
		if err != nil {
			fatal(err)
		}
		fmt.Println(strings.Join(ports, " "))
		return
	}
	if len(cfg.targets) == 0 {
		fatal(errors.New("no -target"))
	}
	if cfg.clients < 1 || cfg.rounds < 1 || cfg.streams < 1 || cfg.duration <= 0 {
		fatal(errors.New("-c, -rounds, -streams and -d must be positive"))
	}
	if cfg.varsURL != "" {
		if err := checkLoopback(cfg.varsURL); err != nil {
			fatal(err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, maxRuntime)
	defer cancel()

	var err error
	switch cfg.mode {
	case "req", "sse":
		err = compare(ctx, &cfg)
	case "hold":
		err = holdAll(ctx, &cfg)
	case "wait":
		err = waitReady(ctx, cfg.targets[0].url, cfg.duration)
	default:
		err = fmt.Errorf("unknown -mode %q", cfg.mode)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}

// findFreePorts returns n distinct loopback ports that were free a moment ago.
func findFreePorts(n int) ([]string, error) {
	var ports []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return ports, nil
}

// newClient returns a keep-alive HTTP/1.1 client with up to conns connections that dials
// loopback addresses only and counts its dials.
func newClient(conns int, limit bool, timeout time.Duration, dials *atomic.Int64) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("refusing to dial %s: not a loopback address", addr)
			}
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	if limit {
		t.MaxConnsPerHost = conns
	}
	return &http.Client{
		Transport:     t,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// newRequest builds one POST with the configured body and key.
func (cfg *config) newRequest(ctx context.Context, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(cfg.body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Goog-Api-Key", cfg.key)
	return req, nil
}

// caller makes one request and returns the latency to report for it.
type caller func(ctx context.Context) (time.Duration, error)

// generateCaller returns a caller for non-streaming answers: latency is until the whole body
// is read; anything but a 200 with candidates is an error.
func generateCaller(cfg *config, client *http.Client, u string) caller {
	var buf bytes.Buffer
	return func(ctx context.Context) (time.Duration, error) {
		req, err := cfg.newRequest(ctx, u)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		buf.Reset()
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		lat := time.Since(start)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("status %d: %.200s", resp.StatusCode, buf.Bytes())
		}
		if !bytes.Contains(buf.Bytes(), []byte(`"candidates"`)) {
			return 0, fmt.Errorf("answer without candidates: %.200s", buf.Bytes())
		}
		return lat, nil
	}
}

// sseCaller returns a caller for streamed answers: latency is the time to the first complete
// event; the stream is then read to its end.
func sseCaller(cfg *config, client *http.Client, u string) caller {
	br := bufio.NewReaderSize(nil, 16<<10)
	return func(ctx context.Context) (time.Duration, error) {
		req, err := cfg.newRequest(ctx, u)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			return 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		br.Reset(resp.Body)
		sc := eventScanner{r: br}
		ok, err := sc.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, errors.New("stream ended without an event")
		}
		ttfe := time.Since(start)
		for {
			ok, err := sc.next()
			if err != nil {
				return 0, err
			}
			if !ok {
				break
			}
		}
		br.Reset(nil)
		return ttfe, nil
	}
}

// eventScanner finds the ends of Server-Sent Events ("data: …" lines followed by a blank line).
type eventScanner struct {
	r      *bufio.Reader
	inData bool
	events int
}

// next reads until the end of the next event: true when one ended, false at the end of the
// stream.
func (s *eventScanner) next() (bool, error) {
	atStart := true
	for {
		line, err := s.r.ReadSlice('\n')
		if atStart && len(line) > 0 {
			switch {
			case err == nil && (len(line) == 1 || (len(line) == 2 && line[0] == '\r')):
				if s.inData {
					s.inData = false
					s.events++
					return true, nil
				}
			case bytes.HasPrefix(line, []byte("data:")):
				s.inData = true
			}
		}
		atStart = err == nil
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			if s.inData { // an unterminated last event still counts
				s.inData = false
				s.events++
				return true, nil
			}
			return false, nil
		default:
			return false, err
		}
	}
}

// phaseResult is what one bounded burst of load produced.
type phaseResult struct {
	sent, errs int64
	lats       []time.Duration
	elapsed    time.Duration
	firstErr   string
}

// runPhase runs workers callers (one per worker) until d has passed or max requests were
// issued. A request in flight at the deadline is finished, not cut.
func runPhase(ctx context.Context, callers []caller, d time.Duration, max int64) phaseResult {
	deadline := time.Now().Add(d)
	var issued atomic.Int64
	results := make([]phaseResult, len(callers))
	var wg sync.WaitGroup
	start := time.Now()
	for i, call := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.lats = make([]time.Duration, 0, 4096)
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if max > 0 && issued.Add(1) > max {
					return
				}
				lat, err := call(ctx)
				r.sent++
				if err != nil {
					if ctx.Err() != nil { // interrupted, not a failure of the target
						r.sent--
						return
					}
					r.errs++
					if r.firstErr == "" {
						r.firstErr = err.Error()
					}
					continue
				}
				r.lats = append(r.lats, lat)
			}
		}()
	}
	wg.Wait()
	out := phaseResult{elapsed: time.Since(start)}
	for _, r := range results {
		out.sent += r.sent
		out.errs += r.errs
		out.lats = append(out.lats, r.lats...)
		if out.firstErr == "" {
			out.firstErr = r.firstErr
		}
	}
	slices.Sort(out.lats)
	return out
}

// runStats is one measured run of one target.
type runStats struct {
	target    string
	round     int
	sent      int64 // including the warm-up
	errs      int64 // including the warm-up
	measured  phaseResult
	dials     int64
	cpuPerReq time.Duration // of -pid, 0 when unknown
}

func (s runStats) rps() float64 {
	ok := int64(len(s.measured.lats))
	return float64(ok) / s.measured.elapsed.Seconds()
}

func (s runStats) pct(p float64) time.Duration { return percentile(s.measured.lats, p) }

// percentile returns the p-th percentile (0..1, nearest rank) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// measure runs one target: warm-up, then the measured phase.
func measure(ctx context.Context, cfg *config, t target, round int) runStats {
	var dials atomic.Int64
	client := newClient(cfg.clients, true, cfg.timeout, &dials)
	defer client.CloseIdleConnections()
	callers := make([]caller, cfg.clients)
	for i := range callers {
		if cfg.mode == "sse" {
			callers[i] = sseCaller(cfg, client, t.url)
		} else {
			callers[i] = generateCaller(cfg, client, t.url)
		}
	}
	st := runStats{target: t.name, round: round}
	if cfg.warmup > 0 {
		w := runPhase(ctx, callers, cfg.warmup, 0)
		st.sent += w.sent
		st.errs += w.errs
		if w.firstErr != "" {
			fmt.Fprintf(os.Stderr, "loadgen: %s warm-up: %d errors, first: %s\n", t.name, w.errs, w.firstErr)
		}
	}
	pid := cfg.pid
	if cfg.pidTargets != nil && !cfg.pidTargets[t.name] {
		pid = 0 // the process does not serve this target: its CPU time says nothing about it
	}
	cpu0, cpuErr := procCPU(pid)
	st.measured = runPhase(ctx, callers, cfg.duration, cfg.maxRequests)
	cpu1, cpuErr2 := procCPU(pid)
	st.sent += st.measured.sent
	st.errs += st.measured.errs
	st.dials = dials.Load()
	if n := len(st.measured.lats); pid > 0 && cpuErr == nil && cpuErr2 == nil && n > 0 {
		st.cpuPerReq = (cpu1 - cpu0) / time.Duration(n)
	}
	if st.measured.firstErr != "" {
		fmt.Fprintf(os.Stderr, "loadgen: %s round %d: %d errors, first: %s\n", t.name, round, st.measured.errs, st.measured.firstErr)
	}
	return st
}

// compare measures every target -rounds times in a rotating order and prints the tables.
func compare(ctx context.Context, cfg *config) error {
	var runs []runStats
	n := len(cfg.targets)
	for r := range cfg.rounds {
		for i := range n {
			if ctx.Err() != nil {
				break
			}
			t := cfg.targets[(r+i)%n]
			st := measure(ctx, cfg, t, r+1)
			runs = append(runs, st)
			fmt.Fprintf(os.Stderr, "loadgen: %s %-8s round %d: %8.0f req/s  p50 %s  p99 %s  errors %d\n",
				cfg.mode, t.name, r+1, st.rps(), fmtMS(st.pct(0.50)), fmtMS(st.pct(0.99)), st.errs)
		}
	}
	m := newMetrics()
	for _, t := range cfg.targets {
		var sent, errs int64
		for _, s := range runs {
			if s.target == t.name {
				sent += s.sent
				errs += s.errs
			}
		}
		m.add("sent."+t.name, float64(sent))
		m.add("errors."+t.name, float64(errs))
	}
	if cfg.mode == "sse" {
		printSSE(cfg, runs, m)
	} else {
		printReq(cfg, runs, m)
	}
	if err := m.write(cfg.metrics); err != nil {
		return err
	}
	return ctx.Err()
}

// byTarget returns the runs of one target, in round order.
func byTarget(runs []runStats, name string) []runStats {
	var out []runStats
	for _, s := range runs {
		if s.target == name {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b runStats) int { return a.round - b.round })
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func collect(runs []runStats, f func(runStats) float64) []float64 {
	out := make([]float64, len(runs))
	for i, s := range runs {
		out[i] = f(s)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtMS(d time.Duration) string { return fmt.Sprintf("%.3f ms", ms(d)) }

func joinFloats(v []float64, format string) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, ", ")
}

func printReq(cfg *config, runs []runStats, m *metrics) {
	fmt.Printf("Non-streaming generateContent, %d keep-alive clients, %s per run after a %s warm-up, %d rounds in rotating order.\n\n",
		cfg.clients, cfg.duration, cfg.warmup, cfg.rounds)
	fmt.Println("| round | target | req/s | p50 ms | p99 ms | errors | client conns | proxy CPU µs/req |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, s := range runs {
		fmt.Printf("| %d | %s | %.0f | %.3f | %.3f | %d | %d | %s |\n", s.round, s.target, s.rps(),
			ms(s.pct(0.50)), ms(s.pct(0.99)), s.errs, s.dials, cpuCell(s.cpuPerReq))
	}
	fmt.Printf("\nMedians over %d rounds (requests and errors: totals, warm-ups included):\n\n", cfg.rounds)
	fmt.Println("| target | req/s | p50 ms | p99 ms | requests | errors | proxy CPU µs/req |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, t := range cfg.targets {
		rs := byTarget(runs, t.name)
		rps := median(collect(rs, runStats.rps))
		p50 := median(collect(rs, func(s runStats) float64 { return ms(s.pct(0.50)) }))
		p99 := median(collect(rs, func(s runStats) float64 { return ms(s.pct(0.99)) }))
		cpu := median(collect(rs, func(s runStats) float64 { return float64(s.cpuPerReq) }))
		var sent, errs int64
		for _, s := range rs {
			sent += s.sent
			errs += s.errs
		}
		fmt.Printf("| %s | %.0f | %.3f | %.3f | %d | %d | %s |\n", t.name, rps, p50, p99, sent, errs, cpuCell(time.Duration(cpu)))
		m.add("req."+t.name+".rps", rps)
		m.add("req."+t.name+".p50_ms", p50)
		m.add("req."+t.name+".p99_ms", p99)
		m.add("req."+t.name+".cpu_us_per_req", cpu/1e3)
	}
	if len(cfg.ratios) == 0 {
		return
	}
	fmt.Printf("\nRatios of runs measured one after the other in the same round (median of the per-round ratios):\n\n")
	fmt.Println("| ratio | per round | median |")
	fmt.Println("|---|---|---:|")
	for _, r := range cfg.ratios {
		a, b := byTarget(runs, r[0]), byTarget(runs, r[1])
		k := min(len(a), len(b))
		if k == 0 {
			continue
		}
		rows := []struct {
			label, metric string
			f             func(runStats) float64
		}{
			{"req/s", "rps", runStats.rps},
			{"p50", "p50", func(s runStats) float64 { return ms(s.pct(0.50)) }},
			{"p99", "p99", func(s runStats) float64 { return ms(s.pct(0.99)) }},
			{"proxy CPU/req", "cpu", func(s runStats) float64 { return float64(s.cpuPerReq) }},
		}
		for _, row := range rows {
			var v []float64
			for i := range k {
				if x, y := row.f(a[i]), row.f(b[i]); x > 0 && y > 0 {
					v = append(v, x/y)
				}
			}
			if len(v) == 0 {
				continue
			}
			med := median(v)
			fmt.Printf("| %s/%s %s | %s | **%.2f** |\n", r[0], r[1], row.label, joinFloats(v, "%.2f"), med)
			m.add(fmt.Sprintf("req.ratio.%s_%s.%s", r[0], r[1], row.metric), med)
		}
	}
}

func cpuCell(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond))
}

func printSSE(cfg *config, runs []runStats, m *metrics) {
	fmt.Printf("Streamed generateContent (alt=sse), %d client(s), %s per run after a %s warm-up, %d rounds; TTFE = time to the first complete event.\n\n",
		cfg.clients, cfg.duration, cfg.warmup, cfg.rounds)
	fmt.Println("| target | streams (incl. warm-up) | TTFE p50 ms | TTFE p99 ms | TTFE mean ms | errors | added p50 ms | added p99 ms |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	base := byTarget(runs, cfg.base)
	for _, t := range cfg.targets {
		rs := byTarget(runs, t.name)
		p50 := median(collect(rs, func(s runStats) float64 { return ms(s.pct(0.50)) }))
		p99 := median(collect(rs, func(s runStats) float64 { return ms(s.pct(0.99)) }))
		mean := median(collect(rs, func(s runStats) float64 { return ms(meanOf(s.measured.lats)) }))
		var sent, errs int64
		for _, s := range rs {
			sent += s.sent
			errs += s.errs
		}
		added50, added99 := "-", "-"
		if len(base) > 0 && t.name != cfg.base {
			// Added latency per round (target minus base, measured one after the other).
			var d50, d99 []float64
			for i := range min(len(rs), len(base)) {
				d50 = append(d50, ms(rs[i].pct(0.50))-ms(base[i].pct(0.50)))
				d99 = append(d99, ms(rs[i].pct(0.99))-ms(base[i].pct(0.99)))
			}
			added50 = fmt.Sprintf("**%.3f** (%s)", median(d50), joinFloats(d50, "%.3f"))
			added99 = fmt.Sprintf("%.3f (%s)", median(d99), joinFloats(d99, "%.3f"))
			m.add("sse.added."+t.name+".p50_ms", median(d50))
			m.add("sse.added."+t.name+".p99_ms", median(d99))
		}
		fmt.Printf("| %s | %d | %.3f | %.3f | %.3f | %d | %s | %s |\n", t.name, sent, p50, p99, mean, errs, added50, added99)
		m.add("sse."+t.name+".ttfe_p50_ms", p50)
		m.add("sse."+t.name+".ttfe_p99_ms", p99)
	}
	if cfg.base != "" {
		fmt.Printf("\nAdded = this target minus %s in the same round; median over rounds (per-round values in brackets).\n", cfg.base)
	}
}

func meanOf(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range v {
		sum += d
	}
	return sum / time.Duration(len(v))
}

// memSample is the memory of the measured process at one moment.
type memSample struct {
	rss, hwm           int64 // bytes, from /proc/<pid>/status
	heapInuse, stackIn int64 // bytes, from expvar memstats; 0 when unknown
	goroutines         int64
}

// holdAll runs holdStreams for every target in turn, in one table.
func holdAll(ctx context.Context, cfg *config) error {
	fmt.Printf("%d concurrent SSE streams held for %s per target, one target after the other; memory of pid %d.\n\n", cfg.streams, cfg.hold, cfg.pid)
	fmt.Println("| target | open | opened in | VmRSS before | VmRSS peak | VmHWM | RSS / stream | Go heap+stack / stream | goroutines / stream | errors |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for i, t := range cfg.targets {
		if i > 0 { // let the closed streams wind down before the next baseline
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
		}
		if err := holdStreams(ctx, cfg, t); err != nil {
			return err
		}
	}
	fmt.Println("\nRSS / stream = (peak VmRSS during the hold - VmRSS before) / open streams. Go heap+stack = HeapInuse+StackInuse from /debug/vars, each read after a forced GC (live memory).")
	return nil
}

// holdStreams opens cfg.streams concurrent SSE streams to t, holds them and reports memory.
func holdStreams(ctx context.Context, cfg *config, t target) error {
	if cfg.pid <= 0 {
		return errors.New("hold needs -pid")
	}
	before, err := sampleMem(ctx, cfg)
	if err != nil {
		return err
	}
	var dials atomic.Int64
	client := newClient(cfg.streams, false, 0, &dials)
	defer client.CloseIdleConnections()

	holdCtx, release := context.WithCancel(ctx)
	defer release()
	var opened, failed, endedEarly atomic.Int64
	var errMu sync.Mutex
	firstErr := ""
	fail := func(err error) {
		failed.Add(1)
		errMu.Lock()
		if firstErr == "" {
			firstErr = err.Error()
		}
		errMu.Unlock()
	}
	progress := make(chan struct{}, 2*cfg.streams) // opened, ended: never blocks
	sem := make(chan struct{}, 64)                 // streams being opened at once
	var wg sync.WaitGroup
	var sent atomic.Int64
	start := time.Now()
	for range cfg.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { progress <- struct{}{} }()
			select {
			case sem <- struct{}{}:
			case <-holdCtx.Done():
				return
			}
			resp, ok := openStream(holdCtx, cfg, client, t.url, &sent, fail)
			<-sem
			if !ok {
				return
			}
			defer resp.Body.Close()
			opened.Add(1)
			progress <- struct{}{} // opened: counted once more below
			_, err := io.Copy(io.Discard, resp.Body)
			if holdCtx.Err() == nil {
				endedEarly.Add(1)
				if err == nil {
					err = errors.New("stream ended before the hold was over (make the upstream stream longer)")
				}
				fail(err)
			}
		}()
	}
	// Each stream reports once when opened and once when it ends; wait for every stream to be
	// opened or to have failed.
	openDeadline := time.After(cfg.openTimeout)
wait:
	for {
		if opened.Load()+failed.Load() >= int64(cfg.streams) {
			break
		}
		select {
		case <-progress:
		case <-openDeadline:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	openTime := time.Since(start)
	open := opened.Load()
	fmt.Fprintf(os.Stderr, "loadgen: hold %s: %d of %d streams open after %s\n", t.name, open, cfg.streams, openTime.Round(time.Millisecond))

	// Hold: sample VmRSS every 100ms, the Go heap once midway.
	var peak memSample
	holdEnd := time.Now().Add(cfg.hold)
	tick := time.NewTicker(100 * time.Millisecond)
	heapTaken := false
	for time.Now().Before(holdEnd) && ctx.Err() == nil {
		s, err := readProcStatus(cfg.pid)
		if err == nil && s.rss > peak.rss {
			peak.rss = s.rss
		}
		if !heapTaken && time.Until(holdEnd) < cfg.hold/2 {
			heapTaken = true
			if h, err := sampleMem(ctx, cfg); err == nil {
				peak.heapInuse, peak.stackIn, peak.goroutines = h.heapInuse, h.stackIn, h.goroutines
				peak.rss = max(peak.rss, h.rss)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	tick.Stop()
	alive := open - endedEarly.Load()
	release()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		fmt.Fprintln(os.Stderr, "loadgen: streams still closing after 20s")
	}
	after, _ := readProcStatus(cfg.pid)

	errs := failed.Load()
	if firstErr != "" {
		fmt.Fprintf(os.Stderr, "loadgen: hold %s: %d errors, first: %s\n", t.name, errs, firstErr)
	}
	perStream := func(delta int64) string {
		if alive <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f KiB", float64(delta)/float64(alive)/1024)
	}
	rssDelta := peak.rss - before.rss
	fmt.Printf("| %s | %d/%d | %s | %.1f MiB | %.1f MiB | %.1f MiB | %s | %s | %s | %d |\n",
		t.name, alive, cfg.streams, openTime.Round(time.Millisecond), mib(before.rss), mib(peak.rss), mib(after.hwm),
		perStream(rssDelta),
		perStream(peak.heapInuse+peak.stackIn-before.heapInuse-before.stackIn),
		goroutinesPerStream(peak.goroutines-before.goroutines, alive), errs)

	m := newMetrics()
	m.add("sent."+t.name, float64(sent.Load()))
	m.add("errors."+t.name, float64(errs))
	m.add("hold."+t.name+".open", float64(alive))
	m.add("hold."+t.name+".rss_before", float64(before.rss))
	m.add("hold."+t.name+".rss_peak", float64(peak.rss))
	m.add("hold."+t.name+".hwm", float64(after.hwm))
	if alive > 0 {
		m.add("hold."+t.name+".bytes_per_stream", float64(rssDelta)/float64(alive))
		m.add("hold."+t.name+".go_bytes_per_stream", float64(peak.heapInuse+peak.stackIn-before.heapInuse-before.stackIn)/float64(alive))
	}
	if err := m.write(cfg.metrics); err != nil {
		return err
	}
	return ctx.Err()
}

func goroutinesPerStream(delta, streams int64) string {
	if streams <= 0 || delta <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(delta)/float64(streams))
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// openStream sends one streaming request and reads until its first event, so that the stream
// is established through every hop.
func openStream(ctx context.Context, cfg *config, client *http.Client, u string, sent *atomic.Int64, fail func(error)) (*http.Response, bool) {
	req, err := cfg.newRequest(ctx, u)
	if err != nil {
		fail(err)
		return nil, false
	}
	sent.Add(1)
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			fail(err)
		}
		return nil, false
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		fail(fmt.Errorf("status %d: %s", resp.StatusCode, b))
		return nil, false
	}
	sc := eventScanner{r: bufio.NewReaderSize(resp.Body, 4<<10)}
	ok, err := sc.next()
	if err != nil || !ok {
		resp.Body.Close()
		if ctx.Err() == nil {
			if err == nil {
				err = errors.New("stream ended without an event")
			}
			fail(err)
		}
		return nil, false
	}
	// The rest of the stream is read by the caller straight from the body; what the scanner
	// buffered beyond the first event is dropped, which is fine for holding.
	return resp, true
}

// sampleMem reads VmRSS/VmHWM of the process and, with -vars, its live Go heap and stacks (after
// a forced garbage collection) and its goroutines.
func sampleMem(ctx context.Context, cfg *config) (memSample, error) {
	s, err := readProcStatus(cfg.pid)
	if err != nil {
		return s, err
	}
	if cfg.varsURL == "" {
		return s, nil
	}
	c := &http.Client{Timeout: 5 * time.Second}
	admin := strings.TrimSuffix(cfg.varsURL, "/debug/vars")
	// A heap profile with gc=1 runs a garbage collection first, so that the heap figures below
	// are live memory rather than live memory plus whatever garbage is not yet collected.
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/debug/pprof/heap?gc=1", nil); err == nil {
		if resp, err := c.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.varsURL, nil)
	if err != nil {
		return s, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	var v struct {
		Memstats struct {
			HeapInuse  int64
			StackInuse int64
		} `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return s, fmt.Errorf("%s: %v", cfg.varsURL, err)
	}
	s.heapInuse, s.stackIn = v.Memstats.HeapInuse, v.Memstats.StackInuse
	// The goroutine count comes from pprof's summary line, next to expvar on caddy's admin.
	gURL := admin + "/debug/pprof/goroutine?debug=1"
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, gURL, nil); err == nil {
		if resp, err := c.Do(req); err == nil {
			line, _ := bufio.NewReader(resp.Body).ReadString('\n')
			resp.Body.Close()
			if _, n, ok := strings.Cut(strings.TrimSpace(line), "total "); ok {
				s.goroutines, _ = strconv.ParseInt(n, 10, 64)
			}
		}
	}
	return s, nil
}

// readProcStatus reads VmRSS and VmHWM of pid.
func readProcStatus(pid int) (memSample, error) {
	var s memSample
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(val) // "123456 kB"
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if name == "VmRSS" {
			s.rss = kb << 10
		} else {
			s.hwm = kb << 10
		}
	}
	if s.rss == 0 {
		return s, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return s, nil
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const clockTicks = 100

// procCPU returns the user+system CPU time pid has used, or an error when unknown.
func procCPU(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat")
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// waitReady polls u with GET until any HTTP answer arrives or d has passed.
func waitReady(ctx context.Context, u string, d time.Duration) error {
	var dials atomic.Int64
	client := newClient(1, true, time.Second, &dials)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(d)
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v", u, d, lastErr)
}

// metrics are "name value" lines for the driver script.
type metrics struct{ lines []string }

func newMetrics() *metrics { return &metrics{} }

func (m *metrics) add(name string, v float64) {
	m.lines = append(m.lines, name+" "+strconv.FormatFloat(v, 'f', -1, 64))
}

func (m *metrics) write(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, strings.Join(m.lines, "\n")+"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
