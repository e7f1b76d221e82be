package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// The slow-client suite: clients that hold connections without making progress, against a
// caddy whose server timeouts follow the examples' policy (read_header, read_body_idle with a
// minimum rate, idle; write_idle is caddy's default policy), only shorter so that the test is
// quick. The gateway has no timeouts of its own for clients: it relies on caddy's.

const (
	slowStreamers = 200 // open a stream and never read it
	slowSenders   = 200 // send their body one byte a second
	slowHeaders   = 100 // send their headers one byte a second
	slowNormal    = 50  // ordinary requests served meanwhile
	// Every stream has this many events this far apart: about 3.6 s, longer than every timeout
	// below, so that a well-behaved stream outliving them shows that they do not cut streams.
	// Few events: the fake runs in the test's process, under -race in `make test`.
	slowEvents     = 10
	slowEventDelay = 400 * time.Millisecond
	// The prompt the fake echoes back: each unread stream carries this much text, which the
	// socket buffers hold (the kernel grows caddy's send buffer to a few MiB), so caddy's
	// writes do not block and the stream ends when the upstream's does. Phase two covers
	// streams too large for that.
	slowPromptSize = 4 << 10
	slowTimeout    = 2 * time.Second // read_header, read_body_idle and write_idle below
	// slowCutBy bounds when a trickling client must have been cut off: the timeout, plus the
	// time for this process to see it on a machine busy with other tests (under -race). Sent
	// whole, their requests would take a minute.
	slowCutBy     = slowTimeout + 13*time.Second
	slowRSSGrowth = 128 << 20
	// slowWait bounds the waits for streams to end: far more than they take (a few seconds),
	// for a machine busy with other tests.
	slowWait = 30 * time.Second
	// Phase two: streams far larger than the socket buffers (the kernel grows caddy's send
	// buffer to a few MiB), read by nobody, so that caddy's writes block and write_idle ends
	// them.
	slowStalled       = 2
	slowStalledEvents = 20000 // about 6.5 MB of events
	slowStalledRSS    = 16 << 20
)

// slowTimeouts are the test's server timeouts: the examples' policy, scaled down.
var slowTimeouts = []string{
	"timeouts {",
	"\tread_header 2s",
	"\tread_body_idle 2s 4096",
	"\twrite_idle 2s",
	"\tidle 5s",
	"}",
}

// raiseFileLimit lifts the soft limit on open files towards want (caddy, started later,
// inherits it) and returns the limit in force.
func raiseFileLimit(t *testing.T, want uint64) uint64 {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if lim.Cur < want {
		lim.Cur = min(want, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Logf("setrlimit: %v", err)
		}
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

// dialSmallBuffer connects with a 4 KiB receive buffer, set before connect so that the window
// stays small: a client that does not read then holds the server's writes back early.
func dialSmallBuffer(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	return d.Dial("tcp", addr)
}

// goroutines reads go_goroutines from caddy's metrics.
func (g *gateway) goroutines() float64 {
	return g.scrapeMetrics()["go_goroutines"]
}

// percentile returns the p-th percentile (0-100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p/100)]
}

// slowResult is what one trickling client saw.
type slowResult struct {
	resp  *http.Response // nil: no answer, the connection was closed
	body  []byte
	after time.Duration // from the client's first byte to the answer or the close
	err   error
}

// dialSend connects and sends head at once, in the caller's goroutine: hundreds of goroutines
// dialling at once under -race can leave a connection silent for longer than read_header.
func dialSend(t *testing.T, addr, head string, small bool) (net.Conn, time.Time) {
	t.Helper()
	var c net.Conn
	var err error
	if small {
		c, err = dialSmallBuffer(addr)
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_ = c.SetWriteDeadline(began.Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c, began
}

// trickle sends rest on c one byte a second, until caddy answers or closes the connection, or
// stop is closed.
func trickle(c net.Conn, began time.Time, rest string, out *slowResult, stop <-chan struct{}) {
	answered := make(chan struct{})
	defer func() {
		c.Close()
		<-answered // the reader is done with out
	}()
	go func() {
		defer close(answered)
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		out.after = time.Since(began)
		if err != nil {
			out.err = err
			return
		}
		out.body, out.err = io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		out.resp = resp
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; i < len(rest); i++ {
		select {
		case <-answered:
			return
		case <-stop:
			return
		case <-tick.C:
		}
		if _, err := c.Write([]byte{rest[i]}); err != nil {
			break
		}
	}
	select {
	case <-answered:
	case <-stop:
	}
}

// TestSlowClients holds 200 streams that are never read, 200 requests whose body comes one byte
// a second and 100 whose headers do, while one stream is read properly and 50 ordinary requests
// are timed. The ordinary requests are served at once, the trickling clients are cut off by
// caddy's timeouts within seconds, the well-behaved stream outlives every timeout, and caddy's
// memory stays bounded. Then, phase two: streams of 6.5 MB that nobody reads, more than the
// socket buffers hold, are ended by caddy's write_idle (the gateway's handler gives up, the
// client has a part of the stream and a closed connection) without caddy buffering them. Once
// the clients are gone caddy holds no goroutine for them.
func TestSlowClients(t *testing.T) {
	streamers, senders, headerers := slowStreamers, slowSenders, slowHeaders
	// Each client is a socket here and one or two in caddy (and the fake's side of a stream).
	need := uint64(3*(streamers+senders+headerers) + 1024)
	if lim := raiseFileLimit(t, need); lim < need {
		// Scaled down to the limit rather than fail on a small machine.
		f := float64(lim) / float64(need)
		streamers, senders, headerers = int(f*float64(streamers)), int(f*float64(senders)), int(f*float64(headerers))
		t.Logf("open-file limit %d: scaled down to %d streams, %d slow bodies, %d slow headers", lim, streamers, senders, headerers)
		if streamers < 10 {
			t.Skipf("open-file limit %d is too low", lim)
		}
	}
	fake, up := newFake(t)
	fake.SetStream(slowEvents, slowEventDelay)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Site: abuseSite,
		Options: []string{serversOption(slowTimeouts...)}})
	host := strings.TrimPrefix(g.URL, "http://")
	pid := g.cmd.Process.Pid
	for range 10 {
		wantOK(t, g.generate(modelFlash, accessKey))
	}
	g.Client.CloseIdleConnections()
	up.CloseClientConnections()
	var gorBefore float64
	eventually(5*time.Second, func() bool { gorBefore = g.goroutines(); return gorBefore < 40 })
	rssBefore, hwmBefore := rss(t, pid)
	sampler := sampleRSS(pid, 50*time.Millisecond)
	defer sampler.Stop()
	start := time.Now()

	// 1. Streams nobody reads.
	prompt := strings.Repeat("slow ", slowPromptSize/5)
	streamBody := `{"contents":[{"role":"user","parts":[{"text":"` + prompt + `"}]}]}`
	streamReq := fmt.Sprintf("POST /v1beta/models/%s:streamGenerateContent?alt=sse HTTP/1.1\r\nHost: %s\r\nX-Goog-Api-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		modelFlash, host, accessKey, len(streamBody), streamBody)
	streamConns := make([]net.Conn, 0, streamers)
	defer func() {
		for _, c := range streamConns {
			c.Close()
		}
	}()
	var mu sync.Mutex
	for range streamers {
		c, _ := dialSend(t, host, streamReq, true)
		streamConns = append(streamConns, c)
	}

	// 2. Bodies sent one byte a second, and 3. headers sent one byte a second.
	stop := make(chan struct{})
	bodyRes := make([]slowResult, senders)
	headRes := make([]slowResult, headerers)
	var trickling sync.WaitGroup
	bodyHead := fmt.Sprintf("POST /v1beta/models/%s:generateContent HTTP/1.1\r\nHost: %s\r\nX-Goog-Api-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		modelFlash, host, accessKey, len(genBody))
	for i := range bodyRes {
		c, began := dialSend(t, host, bodyHead, false)
		trickling.Add(1)
		go func() { defer trickling.Done(); trickle(c, began, genBody, &bodyRes[i], stop) }()
	}
	headHead := fmt.Sprintf("GET /v1beta/models/%s HTTP/1.1\r\nHost: %s\r\n", modelFlash, host)
	for i := range headRes {
		c, began := dialSend(t, host, headHead, false)
		trickling.Add(1)
		go func() {
			defer trickling.Done()
			trickle(c, began, "X-Goog-Api-Key: "+accessKey+"\r\n\r\n", &headRes[i], stop)
		}()
	}

	// 4. Meanwhile: one stream read as it comes, and ordinary requests one after another.
	type streamRead struct {
		events int
		took   time.Duration
		err    error
	}
	readStream := make(chan streamRead, 1)
	go func() {
		began := time.Now()
		resp, err := g.openStream(t.Context(), accessKey)
		if err != nil {
			readStream <- streamRead{err: err}
			return
		}
		defer resp.Body.Close()
		events, _, err := readSSE(resp.Body, nil)
		readStream <- streamRead{events: len(events), took: time.Since(began), err: err}
	}()
	var lat []time.Duration
	for range slowNormal {
		began := time.Now()
		wantOK(t, g.generate(modelFlash, accessKey))
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	openDuring := fake.OpenStreams()
	gorDuring := g.goroutines()

	// The trickling clients are cut off; the unread streams end.
	trickled := make(chan struct{})
	go func() { trickling.Wait(); close(trickled) }()
	select {
	case <-trickled:
	case <-time.After(slowCutBy + 5*time.Second):
		t.Errorf("trickling clients still connected %v after they began", time.Since(start).Round(time.Millisecond))
	}
	close(stop)
	<-trickled
	streamCalls := func() int {
		return fake.Count(func(c fakegemini.Call) bool { return strings.HasSuffix(c.Path, ":streamGenerateContent") })
	}
	var released time.Duration
	if eventually(slowWait, func() bool { return streamCalls() >= streamers+1 && fake.OpenStreams() == 0 }) {
		released = time.Since(start)
	} else {
		t.Errorf("%d upstream streams still open %v after the unread streams began", fake.OpenStreams(), time.Since(start).Round(time.Millisecond))
	}
	sr := <-readStream

	// What the unread streams got, read now from the socket buffers: the whole stream, or a
	// part if caddy's write_idle ended it.
	var whole, cut int
	streamStatus := map[string]int{}
	var reading sync.WaitGroup
	for _, c := range streamConns {
		reading.Add(1)
		go func() {
			defer reading.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var b []byte
			buf := make([]byte, 32<<10)
			for !bytes.Contains(b, []byte(`"finishReason":"STOP"`)) {
				n, err := c.Read(buf)
				b = append(b, buf[:n]...)
				if err != nil {
					break
				}
			}
			mu.Lock()
			defer mu.Unlock()
			status, _, _ := bytes.Cut(b, []byte("\r\n"))
			streamStatus[string(status)]++
			if bytes.Contains(b, []byte(`"finishReason":"STOP"`)) {
				whole++
			} else {
				cut++
			}
		}()
	}
	reading.Wait()

	// Phase two: streams too large for the socket buffers, read by nobody.
	fake.SetStream(slowStalledEvents, 0)
	whole2 := directCall(t, up.URL, pool[0], http.MethodPost, "/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse", genBody)
	stalledReq := fmt.Sprintf("POST /v1beta/models/%s:streamGenerateContent?alt=sse HTTP/1.1\r\nHost: %s\r\nX-Goog-Api-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		modelFlash, host, accessKey, len(genBody), genBody)
	calledBefore := streamCalls()
	rssStalled := vmRSS(pid)
	stalledStart := time.Now()
	stalled := make([]net.Conn, 0, slowStalled)
	for range slowStalled {
		c, _ := dialSend(t, host, stalledReq, true)
		stalled = append(stalled, c)
	}
	// The fake may be done long before: the kernel buffers on the upstream side take a few
	// MiB of its stream too. The gateway's request-log rows say when its handlers gave up.
	var stalledEnded time.Duration
	var stalledRSS int64
	if eventually(slowWait, func() bool {
		stalledRSS = max(stalledRSS, vmRSS(pid))
		return streamCalls() >= calledBefore+slowStalled && clientWentAway(t, g) >= slowStalled
	}) {
		stalledEnded = time.Since(stalledStart)
	} else {
		t.Errorf("%d of %d large unread streams ended by the gateway %v after they began", clientWentAway(t, g), slowStalled, time.Since(stalledStart).Round(time.Millisecond))
	}
	var stalledGot []int
	for _, c := range stalled {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("a large unread stream's connection was not closed: %v", err)
		}
		stalledGot = append(stalledGot, len(b))
		c.Close()
	}
	slices.Sort(stalledGot)

	// Caddy serves on, and once the clients and its idle upstream connections are gone it
	// holds no goroutine for them.
	wantOK(t, g.generate(modelFlash, accessKey))
	g.Client.CloseIdleConnections()
	up.CloseClientConnections()
	var gorAfter float64
	settled := eventually(10*time.Second, func() bool { gorAfter = g.goroutines(); return gorAfter <= gorBefore+10 })
	peak := sampler.Stop()
	rssAfter, hwmAfter := rss(t, pid)
	took := time.Since(start)

	// The report.
	slowBodies, slowHeads := cutReport(t, "bodies sent one byte a second", bodyRes), cutReport(t, "headers sent one byte a second", headRes)
	t.Logf("%d unread streams: %d upstream streams open during the ordinary requests; all ended %v after the start; answers %v; %d had been sent whole, %d were cut",
		streamers, openDuring, released.Round(time.Millisecond), streamStatus, whole, cut)
	t.Logf("read stream: %d events in %v", sr.events, sr.took.Round(time.Millisecond))
	t.Logf("%d ordinary requests meanwhile: p50 %v, p99 %v, max %v", len(lat),
		percentile(lat, 50).Round(time.Microsecond), percentile(lat, 99).Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	t.Logf("caddy goroutines: %v before, %v during, %v after", gorBefore, gorDuring, gorAfter)
	t.Logf("caddy RSS: %s before, %s highest sampled, %s after; peak (VmHWM) %s before, %s after (growth %s)",
		mib(rssBefore), mib(peak), mib(rssAfter), mib(hwmBefore), mib(hwmAfter), mib(hwmAfter-hwmBefore))
	t.Logf("%d large unread streams (%d bytes each): ended by the gateway %v after they began; the clients had %d to %d bytes when they read; caddy RSS %s before, %s highest",
		slowStalled, len(whole2.Body), stalledEnded.Round(time.Millisecond), stalledGot[0], stalledGot[len(stalledGot)-1], mib(rssStalled), mib(stalledRSS))
	t.Logf("the clients' part of the test took %v", took.Round(time.Millisecond))

	// The verdicts.
	if p50 := percentile(lat, 50); p50 > 500*time.Millisecond {
		t.Errorf("ordinary requests took %v (median) while slow clients held connections", p50)
	}
	if m := lat[len(lat)-1]; m > 10*time.Second {
		t.Errorf("an ordinary request took %v while slow clients held connections", m)
	}
	if sr.err != nil || sr.events != slowEvents {
		t.Errorf("the stream read as it came got %d of %d events: %v", sr.events, slowEvents, sr.err)
	}
	if sr.took < slowTimeout {
		t.Errorf("the stream read as it came took only %v, less than the timeouts it is meant to outlive", sr.took)
	}
	if slowBodies > 0 || slowHeads > 0 {
		t.Errorf("%d slow bodies and %d slow headers were not cut off within %v", slowBodies, slowHeads, slowCutBy)
	}
	if stalledGot[len(stalledGot)-1] >= len(whole2.Body) {
		t.Errorf("a large unread stream was sent whole (%d bytes): caddy's writes never blocked long enough for write_idle", stalledGot[len(stalledGot)-1])
	}
	if stalledRSS-rssStalled > slowStalledRSS {
		t.Errorf("caddy's RSS grew by %s while %d large streams went unread: the answer is being buffered", mib(stalledRSS-rssStalled), slowStalled)
	}
	if streamStatus["HTTP/1.1 200 OK"] != streamers {
		t.Errorf("the unread streams were answered %v, want %d × 200", streamStatus, streamers)
	}
	if !settled {
		t.Errorf("caddy runs %v goroutines after the slow clients left, %v before they came", gorAfter, gorBefore)
	}
	if growth := max(hwmAfter-hwmBefore, peak-rssBefore); growth > slowRSSGrowth {
		t.Errorf("caddy's RSS grew by %s with %d slow clients (limit %s)", mib(growth), streamers+senders+headerers, mib(slowRSSGrowth))
	}
}

// clientWentAway counts the request-log rows of answers the gateway gave up on because it could
// not write to the client.
func clientWentAway(t *testing.T, g *gateway) int {
	t.Helper()
	var logs struct {
		Items []struct {
			Path  string `json:"path"`
			Error string `json:"error"`
		} `json:"items"`
	}
	adminGET(t, g, "logs?kind=request&page_size=50", &logs)
	n := 0
	for _, it := range logs.Items {
		if strings.HasSuffix(it.Path, ":streamGenerateContent") && strings.Contains(it.Error, "went away mid-response") {
			n++
		}
	}
	return n
}

// cutReport logs how the trickling clients of one kind were cut off, checks each answer, and
// returns how many were not cut off in time.
//
// An answer is Go's own refusal of a request whose headers did not arrive in time (400,
// text/plain), the gateway's error envelope (408 for a body the read timeout cut), or a closed
// connection. An empty "200 OK" (the gateway taking the timeout for a client that left, which
// this suite found) fails the test.
func cutReport(t *testing.T, name string, rs []slowResult) (late int) {
	t.Helper()
	kinds := map[string]int{}
	var times []time.Duration
	for _, r := range rs {
		var kind string
		switch {
		case r.resp == nil:
			kind = "connection closed"
		case r.resp.StatusCode == http.StatusOK && len(r.body) == 0:
			kind = "200 with an empty body"
			t.Errorf("%s: a client cut off by the read timeout got an empty 200, not an error", name)
		case r.resp.Header.Get("Server") == "" && r.resp.StatusCode == http.StatusBadRequest:
			kind = "400 from Go's server"
		case r.resp.StatusCode >= 400 && isEnvelope(r.body, r.resp.StatusCode):
			kind = fmt.Sprintf("%d error envelope", r.resp.StatusCode)
		default:
			kind = "UNEXPECTED " + r.resp.Status
			t.Errorf("%s: answer %s %q", name, r.resp.Status, r.body)
		}
		kinds[kind]++
		times = append(times, r.after)
		if r.after > slowCutBy {
			late++
		}
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(ks)
	slices.Sort(times)
	t.Logf("%d %s: %s; cut off after %v (first), %v (median), %v (last)", len(rs), name, strings.Join(ks, ", "),
		times[0].Round(time.Millisecond), percentile(times, 50).Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	return late
}
