package gateway

// One Live API session from the client's setup to its end: the key choice and the upstream
// session's opening (with retries on another key until the client has seen something), then
// the relay both ways.
//
// The relay runs two pumps, the handler's goroutine carrying the upstream's messages to the
// client and one more goroutine the client's to the upstream. Each reads a message and writes
// it to the other side before it reads the next one, in pieces of a pooled buffer: a side that
// reads slowly slows the other down through TCP, and no message is ever held whole unless it
// fits the buffer. Payloads are written as they came, with their frame type; only the
// upstream's are looked at (usage, resumption handles) and have the pool key masked out. A
// close frame from one side is passed to the other, code and reason; the other side's answer
// comes back the same way, so both close handshakes complete end to end. Each side is pinged
// now and then, to keep the connections' NATs and load balancers from dropping an idle session;
// a peer that vanished without a word is found by TCP keepalive, one that stops reading by
// liveWriteTimeout.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

const (
	// liveCloseWait is how long a side may take to answer a close frame before its connection
	// is dropped, and the longest write of a control frame.
	liveCloseWait = 2 * time.Second
	// liveWriteTimeout is the longest a side may take to accept one message (or a piece of a
	// large one): past it, the side is taken as gone.
	liveWriteTimeout = 60 * time.Second
	// liveBufSize is the relay's buffer: a message that fits is handled whole, a larger one in
	// pieces of this size.
	liveBufSize = 32 << 10
)

// livePingEvery is how often each side of a session is pinged (a variable for the tests).
var livePingEvery = 30 * time.Second

// The sides of a session, indexes of its per-side arrays.
const (
	sideClient   = 0
	sideUpstream = 1
)

var sideNames = [2]string{"client", "upstream"}

var (
	liveBufPool = sync.Pool{New: func() any { b := make([]byte, liveBufSize); return &b }}
	// liveWritePool holds the write buffers of every Live connection, which need one only while
	// they write.
	liveWritePool sync.Pool
)

// liveSession is one Live API session.
type liveSession struct {
	x      *exchange
	client *websocket.Conn
	up     *websocket.Conn
	// secret is the pool key of the session: masked out of everything the client gets.
	secret string

	setup     []byte // the client's setup message, sent again on a retry
	setupType int
	ls        liveSetup

	closedTo  [2]atomic.Bool  // a close frame was sent to the side
	closeCode [2]atomic.Int32 // the code of the close frame the side sent, 0 before one
	relaying  atomic.Bool     // up is set and the relay runs: shutdown may close it
	ending    atomic.Bool     // the relay is over: the keepalive stops

	endMu sync.Mutex
	end   liveEnd // the first end seen, for the request log

	ping atomic.Pointer[time.Timer] // the keepalive's
}

// liveEnd is how a session ended: the first close frame or failure seen.
type liveEnd struct {
	by    string // client, upstream, gateway; "" while it runs
	code  int    // the close code; 0 when the side went away without a close frame
	text  string // the close reason (masked), or the failure
	quota bool   // the upstream closed over quota
}

// conn returns the connection of a side.
func (s *liveSession) conn(side int) *websocket.Conn {
	if side == sideClient {
		return s.client
	}
	return s.up
}

// run serves the session on the upgraded client connection.
func (s *liveSession) run() {
	x, c := s.x, s.x.core
	c.metrics.live.open.Inc()
	defer c.metrics.live.open.Dec()
	defer s.client.Close()
	stop := context.AfterFunc(c.ctx, s.shutdown)
	defer stop()
	s.client.SetReadLimit(x.set.maxBody)
	s.client.SetReadDeadline(time.Now().Add(liveSetupTimeout))
	mt, setup, err := s.client.ReadMessage()
	if err != nil {
		x.status = statusClientClosed
		x.errText = "client left before its setup message"
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			x.errText += " (close " + strconv.Itoa(ce.Code) + ")"
		}
		return
	}
	s.client.SetReadDeadline(time.Time{})
	ls, ok := parseLiveSetup(setup)
	if !ok {
		s.refuse(closeInvalidData, http.StatusBadRequest, `The first message must be a setup naming a model: {"setup":{"model":"models/…"}}.`)
		return
	}
	x.model = strings.TrimPrefix(ls.model, "models/")
	if !x.key.policy.AllowsModel(x.model) {
		x.limitHit = hitModels
		s.refuse(closePolicy, http.StatusForbidden, modelRefusal(x.model))
		return
	}
	t, refusal := c.limiter.Admit(x.access, x.start)
	if refusal != nil {
		s.refuse(closeInternalError, http.StatusTooManyRequests, x.limitRefusal(refusal))
		return
	}
	x.ticket = t
	s.setup, s.setupType, s.ls = setup, mt, ls
	first, ok := s.open()
	if !ok {
		return
	}
	s.relay(first)
}

// recover keeps a panic on one of the session's goroutines from ending the process (the
// server recovers its handlers' panics, not those of goroutines they start): the session's
// connections are dropped and the panic logged with its stack.
func (s *liveSession) recover() {
	v := recover()
	if v == nil {
		return
	}
	s.client.UnderlyingConn().Close()
	if s.up != nil {
		s.up.UnderlyingConn().Close()
	}
	s.x.status, s.x.errText = http.StatusInternalServerError, "the Live session failed in the gateway (see its log)"
	s.x.core.logger.Error("a Live session panicked", zap.Any("panic", v), zap.Stack("stack"))
}

// refuse ends the session before the relay with a close frame; status is what the request log
// says of it.
func (s *liveSession) refuse(code, status int, msg string) {
	s.x.status, s.x.errText = status, msg
	s.closeClient(code, msg)
}

// closeClient sends a close frame to the client and waits a little for its answer, so that the
// frame is read before the connection goes.
func (s *liveSession) closeClient(code int, reason string) {
	s.client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(reason)), time.Now().Add(liveCloseWait))
	s.client.SetReadDeadline(time.Now().Add(liveCloseWait))
	for {
		if _, _, err := s.client.NextReader(); err != nil {
			return
		}
	}
}

// liveFrame is one whole message.
type liveFrame struct {
	mt   int
	data []byte
}

// open opens the upstream session: on the key that owns the session's token or resumption
// handle, else on a pool key for the model, retried on another while the client has seen
// nothing. It reports false once it has closed the client's session instead.
func (s *liveSession) open() (liveFrame, bool) {
	x := s.x
	if x.ownerOf == kindAuthTokens {
		return s.openBound(x.owner, "", liveToken(x.r))
	}
	if h := s.ls.handle; h != "" {
		name := kindLiveSessions + "/" + h
		now := time.Now()
		owners, err := x.core.store.ResourceOwners(context.WithoutCancel(x.r.Context()), []string{name}, now)
		if err != nil {
			s.refuse(closeInternalError, http.StatusServiceUnavailable, "The session resumption handle could not be looked up; try again.")
			return liveFrame{}, false
		}
		x.core.pending.owners([]string{name}, now, owners)
		o, found := owners[name]
		if !x.mayUse(o, found) {
			s.refuse(closePolicy, http.StatusNotFound, "The session resumption handle is not valid.")
			return liveFrame{}, false
		}
		if found {
			x.ownerOf = kindLiveSessions
			return s.openBound(o.KeyID, x.model, "")
		}
	}
	return s.openPooled()
}

// openBound opens the session on key id, once: a token or a resumption handle works on its
// own key's project only. With a token, the token is the upstream credential.
func (s *liveSession) openBound(id int64, model, token string) (liveFrame, bool) {
	x := s.x
	now := time.Now()
	x.keyID, x.owner = id, id
	secret, err := x.core.pool.Get(id, model, now)
	if err != nil {
		what := "The session belongs to upstream key #" + strconv.FormatInt(id, 10) + ", which " + keyUnusable(err)
		var ce *keypool.CoolingError
		if errors.As(err, &ce) {
			s.refuse(closeInternalError, http.StatusTooManyRequests, what+"; retry later.")
			return liveFrame{}, false
		}
		s.refuse(closeInternalError, http.StatusServiceUnavailable, what+".")
		return liveFrame{}, false
	}
	x.attempts = 1
	first, fail := s.attempt(id, secret, token)
	if fail != nil {
		s.failClient(fail)
		return liveFrame{}, false
	}
	s.secret = secret
	return first, true
}

// openPooled is the attempt loop of proxy (attempt.go) for a session.
func (s *liveSession) openPooled() (liveFrame, bool) {
	x, c := s.x, s.x.core
	if ok, retryAt := c.pool.Admit(x.model, time.Now()); !ok {
		c.metrics.refused.Inc()
		s.refuse(closeInternalError, http.StatusServiceUnavailable, "The upstream is failing for model "+x.model+
			" with every key; the gateway holds sessions back. Retry after "+retryAt.UTC().Format(time.RFC3339)+".")
		return liveFrame{}, false
	}
	var skipBuf [8]int64
	skip := skipBuf[:0]
	var last *liveFailure
	transientRetried := false
	for {
		now := time.Now()
		id, secret, err := c.pool.Next(x.model, now, skip)
		if err != nil {
			if last != nil {
				s.failClient(last)
				return liveFrame{}, false
			}
			var ce *keypool.CoolingError
			if errors.As(err, &ce) {
				s.refuse(closeInternalError, http.StatusTooManyRequests, "Every upstream key is cooling down for model "+ce.Model+"; retry after "+ce.Until.UTC().Format(time.RFC3339)+".")
				return liveFrame{}, false
			}
			s.refuse(closeInternalError, http.StatusServiceUnavailable, "No upstream key is available: add or enable keys in the admin panel.")
			return liveFrame{}, false
		}
		x.attempts++
		x.keyID = id
		first, fail := s.attempt(id, secret, "")
		if fail == nil {
			s.secret = secret
			return first, true
		}
		last = fail
		retryable := fail.outcome.Retryable()
		if fail.outcome.Kind == keypool.Transient {
			if transientRetried || fail.outage {
				retryable = false
			}
			transientRetried = true
		}
		if retryable && x.attempts <= x.set.maxRetries {
			skip = append(skip, id)
			continue
		}
		s.failClient(last)
		return liveFrame{}, false
	}
}

// failClient tells the client why its session could not be opened, as writeUpstreamError does
// over HTTP: keys the upstream refused are the gateway's business (the client learns the
// ErrorInfo reason at most); any other refusal goes through with Google's code and words,
// masked.
func (s *liveSession) failClient(f *liveFailure) {
	x := s.x
	switch {
	case f.outcome.Kind == keypool.KeyInvalid:
		msg := "No upstream key could serve the session: the keys tried were rejected by the upstream"
		if r := publicKeyReason(f.outcome.Reason); r != "" {
			msg += " (" + r + ")"
		}
		s.refuse(closeInternalError, http.StatusServiceUnavailable, msg+".")
		x.errText = "the keys tried were rejected by the upstream: " + f.outcome.Reason
	case f.code != 0:
		x.status = f.status
		x.errText = "the upstream closed the session before setupComplete: " + strconv.Itoa(f.code) + " " + f.text
		s.closeClient(f.code, f.text)
	case f.body != nil:
		msg := errorMessage(f.status, f.body)
		x.status = f.status
		x.errText = "the upstream refused the WebSocket handshake: " + keypoolReason(f)
		s.closeClient(closeCodeFor(f.status), msg)
	default:
		id := x.requestID()
		if !f.logged {
			x.logError(x.keyID, f.status, f.reason)
		}
		x.status = f.status
		x.errText = "request " + id + ": " + f.reason
		s.closeClient(closeInternalError, "The upstream could not be reached (request id "+id+"); the gateway's error log has the details.")
	}
}

// keypoolReason is the classified reason of a failure, or its status.
func keypoolReason(f *liveFailure) string {
	if f.outcome.Reason != "" {
		return f.outcome.Reason
	}
	return strconv.Itoa(f.status)
}

// relay carries the session both ways from the upstream's first message on.
func (s *liveSession) relay(first liveFrame) {
	x, c := s.x, s.x.core
	defer s.up.Close()
	s.relaying.Store(true)
	for _, conn := range [2]*websocket.Conn{s.client, s.up} {
		// Close frames are passed on by the pumps, not answered here. (Pings are answered by
		// gorilla's default handler.)
		conn.SetCloseHandler(func(int, string) error { return nil })
	}
	s.client.SetReadLimit(x.set.maxBody)
	c.metrics.live.frames[sideUpstream].Inc()
	c.metrics.live.bytes[sideUpstream].Add(float64(len(first.data)))
	s.client.SetWriteDeadline(time.Now().Add(liveWriteTimeout))
	if err := s.client.WriteMessage(first.mt, s.inspect(first.data)); err != nil {
		x.status = statusClientClosed
		x.errText = "client left before setupComplete reached it"
		s.up.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeGoingAway, ""), time.Now().Add(liveCloseWait))
		return
	}
	x.status = http.StatusOK
	x.ttfb = time.Since(x.start)

	if c.ctx.Err() != nil {
		s.shutdown() // the core went while the session was being opened
	}
	every := livePingEvery
	s.ping.Store(time.AfterFunc(every, func() { s.keepalive(every) }))
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer s.recover()
		s.pump(sideClient)
	}()
	s.pump(sideUpstream)
	<-done
	s.ending.Store(true)
	s.ping.Load().Stop()
	s.logEnd()
}

// pump carries the messages of side from to the other side until from ends.
func (s *liveSession) pump(from int) {
	src, dst := s.conn(from), s.conn(1-from)
	m := &s.x.core.metrics.live
	for {
		mt, r, err := src.NextReader()
		if err != nil {
			s.ended(from, err)
			return
		}
		n, rerr, werr := s.copyMessage(from, dst, mt, r)
		m.frames[from].Inc()
		m.bytes[from].Add(float64(n))
		switch {
		case rerr != nil:
			s.ended(from, rerr)
			return
		case werr != nil:
			// The other side does not take what it is sent: it is gone (or stalled past
			// liveWriteTimeout). Its connection is dropped, which ends its pump too.
			s.ended(1-from, werr)
			dst.UnderlyingConn().Close()
			return
		}
	}
}

// copyMessage copies one message of side from, read from r, to dst. A message that fits the
// buffer is written whole; a larger one in pieces as it is read.
func (s *liveSession) copyMessage(from int, dst *websocket.Conn, mt int, r io.Reader) (n int64, rerr, werr error) {
	bp := liveBufPool.Get().(*[]byte)
	defer liveBufPool.Put(bp)
	buf := *bp
	k, err := io.ReadFull(r, buf)
	n = int64(k)
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		msg := buf[:k]
		if from == sideUpstream {
			msg = s.inspect(msg)
		}
		dst.SetWriteDeadline(time.Now().Add(liveWriteTimeout))
		return n, nil, dst.WriteMessage(mt, msg)
	case nil:
	default:
		return n, err, nil
	}
	dst.SetWriteDeadline(time.Now().Add(liveWriteTimeout))
	w, err := dst.NextWriter(mt)
	if err != nil {
		return n, nil, err
	}
	var kf keyFilter
	var t *tail
	if from == sideUpstream {
		kf.secret = []byte(s.secret)
		t = tailPool.Get().(*tail)
		t.reset()
		defer tailPool.Put(t)
	}
	chunk := buf[:k]
	for {
		if t != nil {
			chunk = kf.filter(chunk)
			if err == io.EOF {
				chunk = append(chunk, kf.flush()...)
			}
			t.write(chunk)
		}
		if len(chunk) > 0 {
			dst.SetWriteDeadline(time.Now().Add(liveWriteTimeout))
			if _, werr := w.Write(chunk); werr != nil {
				return n, nil, werr
			}
		}
		if err == io.EOF {
			break
		}
		k, err = r.Read(buf)
		n += int64(k)
		if err != nil && err != io.EOF {
			return n, err, nil
		}
		chunk = buf[:k]
	}
	if t != nil {
		t.finish()
		if u, ok := liveUsageIn(t.buf); ok {
			s.addUsage(u)
		}
	}
	return n, nil, w.Close()
}

// Markers of the upstream messages the gateway reads.
var (
	usageMarker  = []byte(`"usageMetadata"`)
	resumeMarker = []byte(`"sessionResumptionUpdate"`)
)

// liveUsage is a Live usageMetadata: the tokens of the turn it ends.
type liveUsage struct {
	Prompt     int64 `json:"promptTokenCount"`
	Response   int64 `json:"responseTokenCount"`
	Candidates int64 `json:"candidatesTokenCount"`
	Thoughts   int64 `json:"thoughtsTokenCount"`
	ToolUse    int64 `json:"toolUsePromptTokenCount"`
	Total      int64 `json:"totalTokenCount"`
}

// liveServerMessage is what the gateway reads of an upstream message that fits the buffer.
type liveServerMessage struct {
	UsageMetadata           *liveUsage `json:"usageMetadata"`
	SessionResumptionUpdate *struct {
		NewHandle string `json:"newHandle"`
	} `json:"sessionResumptionUpdate"`
}

// inspect reads an upstream message that fits the buffer (its usage, a new resumption handle,
// recorded before the client can use it) and returns it with the pool key masked out.
func (s *liveSession) inspect(msg []byte) []byte {
	if bytes.Contains(msg, usageMarker) || bytes.Contains(msg, resumeMarker) {
		var m liveServerMessage
		if json.Unmarshal(msg, &m) == nil {
			if m.UsageMetadata != nil {
				s.addUsage(*m.UsageMetadata)
			}
			if r := m.SessionResumptionUpdate; r != nil && r.NewHandle != "" && len(r.NewHandle) <= maxHandleLen {
				x := s.x
				x.core.recordResources(context.WithoutCancel(x.r.Context()), []store.Resource{x.liveResource(r.NewHandle, time.Now())})
			}
		}
	}
	return maskSecret(msg, s.secret)
}

// liveUsageIn reads the last usageMetadata object in the tail of a large message.
func liveUsageIn(b []byte) (liveUsage, bool) {
	i := bytes.LastIndex(b, usageMarker)
	if i < 0 {
		return liveUsage{}, false
	}
	rest := b[i+len(usageMarker):]
	j := bytes.IndexByte(rest, '{')
	if j < 0 {
		return liveUsage{}, false
	}
	var u liveUsage
	if json.NewDecoder(bytes.NewReader(rest[j:])).Decode(&u) != nil {
		return liveUsage{}, false
	}
	return u, true
}

// addUsage adds one turn's usage to the session's (the upstream pump's goroutine only; the
// request log reads it once both pumps are over).
func (s *liveSession) addUsage(u liveUsage) {
	x := s.x
	x.usage.prompt += u.Prompt + u.ToolUse
	x.usage.candidates += u.Response + u.Candidates
	x.usage.thoughts += u.Thoughts
	x.usage.total += u.Total
}

// ended handles the end of what side from sends: a close frame is passed on to the other side,
// a connection gone is told to the other side with going away (to the upstream) or an error
// (to the client).
func (s *liveSession) ended(from int, err error) {
	to := 1 - from
	var ce *websocket.CloseError
	// gorilla reports a connection that ended without a close frame as 1006, which no frame
	// may carry.
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
		text := ce.Text
		if from == sideUpstream {
			text = string(maskSecret([]byte(text), s.secret))
		}
		s.closeCode[from].Store(int32(ce.Code))
		s.noteEnd(liveEnd{by: sideNames[from], code: ce.Code, text: text})
		s.sendClose(to, ce.Code, text)
	} else {
		s.noteEnd(liveEnd{by: sideNames[from], text: err.Error()})
		switch {
		case s.closeCode[to].Load() != 0:
			// from did not answer to's close frame in time: the gateway answers it.
			s.sendClose(to, int(s.closeCode[to].Load()), "")
		case from == sideClient:
			s.sendClose(to, closeGoingAway, "")
		default:
			s.sendClose(to, closeInternalError, "The upstream connection was lost.")
		}
	}
	// The other side has liveCloseWait to answer, and a write to it that waits (the pump of
	// a side that failed may be stuck writing to a side that no longer reads) as long.
	nc := s.conn(to).UnderlyingConn()
	nc.SetReadDeadline(time.Now().Add(liveCloseWait))
	nc.SetWriteDeadline(time.Now().Add(liveCloseWait))
}

// sendClose sends a close frame to a side, once.
func (s *liveSession) sendClose(to, code int, text string) {
	if !s.closedTo[to].CompareAndSwap(false, true) {
		return
	}
	s.conn(to).WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(text)), time.Now().Add(liveCloseWait))
}

// noteEnd keeps the first end of the session.
func (s *liveSession) noteEnd(e liveEnd) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	if s.end.by == "" {
		s.end = e
	}
}

// shutdown closes the session when the core is destroyed (caddy stop): going away, both ways
// once the relay runs; before, to the client, whose session then fails to open.
func (s *liveSession) shutdown() {
	s.noteEnd(liveEnd{by: "gateway", code: closeGoingAway, text: "the gateway is shutting down"})
	sides := []int{sideClient}
	if s.relaying.Load() {
		sides = append(sides, sideUpstream)
	}
	for _, side := range sides {
		reason := "" // the upstream needs no explanation
		if side == sideClient {
			reason = "The gateway is shutting down."
		}
		s.sendClose(side, closeGoingAway, reason)
		nc := s.conn(side).UnderlyingConn()
		nc.SetReadDeadline(time.Now().Add(liveCloseWait))
		nc.SetWriteDeadline(time.Now().Add(liveCloseWait))
	}
}

// keepalive pings both sides.
func (s *liveSession) keepalive(every time.Duration) {
	if s.ending.Load() {
		return
	}
	for _, conn := range [2]*websocket.Conn{s.client, s.up} {
		conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(liveCloseWait))
	}
	if t := s.ping.Load(); t != nil && !s.ending.Load() {
		t.Reset(every)
	}
}

// logEnd puts how the session ended into its request-log row: ended by the client, or by
// the upstream with a normal close code (1000, 1001, or none), the row has no error; otherwise
// it says who ended it and how. An upstream close over quota also cools the key down for the model, and any other
// abnormal upstream close goes to the error log.
func (s *liveSession) logEnd() {
	x := s.x
	s.endMu.Lock()
	e := s.end
	s.endMu.Unlock()
	switch {
	case e.by == "gateway":
		x.errText = "closed by the gateway: " + e.text
	case e.code == closeNormal || e.code == closeGoingAway || e.code == closeNoStatus:
	case e.code != 0:
		x.errText = "closed by the " + e.by + ": " + strconv.Itoa(e.code) + " " + e.text
	case e.by == sideNames[sideClient]:
		// A client that goes without a close frame (the Go SDK's Session.Close does) ends its
		// session as well as one that says goodbye.
	default:
		x.errText = "the upstream connection was lost: " + e.text
	}
	if e.by != sideNames[sideUpstream] || e.code == 0 || e.code == closeNormal || e.code == closeGoingAway || e.code == closeNoStatus {
		return
	}
	o, status := liveCloseOutcome(e.code, e.text, time.Now())
	if o.Kind == keypool.Quota && x.ownerOf != kindAuthTokens {
		x.report(x.keyID, o, status) // writes the error-log row too
		return
	}
	x.logError(x.keyID, status, "Live session closed by the upstream: "+strconv.Itoa(e.code)+" "+e.text)
}

// report accounts for one attempt as the pool loop does; a token's session (toPool false) only
// logs what failed, as nothing about the token says anything of the pool key.
func (s *liveSession) report(id int64, o keypool.Outcome, status int, toPool bool) keypool.Change {
	x := s.x
	if toPool {
		return x.report(id, o, status)
	}
	if o.Kind != keypool.Success && o.Kind != keypool.ClientError && o.Kind != keypool.Canceled {
		x.logError(id, status, "ephemeral token session: "+o.Kind.String()+": "+o.Reason)
	}
	return keypool.Change{}
}

// liveMetrics are the Live API's collectors.
type liveMetrics struct {
	open      prometheus.Gauge
	framesVec *prometheus.CounterVec
	bytesVec  *prometheus.CounterVec
	frames    [2]prometheus.Counter // by the side that sent them
	bytes     [2]prometheus.Counter
}

func newLiveMetrics() liveMetrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	m := liveMetrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts(opts("live_sessions",
			"Live API WebSocket sessions open now (upgraded and not yet closed)."))),
		framesVec: prometheus.NewCounterVec(prometheus.CounterOpts(opts("live_frames_total",
			"Live API messages relayed (a fragmented message counts once), by the side that sent them (client, upstream).")),
			[]string{"from"}),
		bytesVec: prometheus.NewCounterVec(prometheus.CounterOpts(opts("live_bytes_total",
			"Live API payload bytes relayed, by the side that sent them (client, upstream).")),
			[]string{"from"}),
	}
	for side, name := range sideNames {
		m.frames[side] = m.framesVec.WithLabelValues(name)
		m.bytes[side] = m.bytesVec.WithLabelValues(name)
	}
	return m
}

func (m *liveMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.open, m.framesVec, m.bytesVec}
}
