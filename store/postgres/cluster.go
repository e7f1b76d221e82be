package postgres

// The Store as a store.Cluster: several gateway instances on one database tell each other
// about the changes they keep in memory (LISTEN/NOTIFY on one channel), and elect the one
// that runs the scheduled jobs (a session advisory lock).
//
// Each of the three parts works on its own connection, so that none waits behind the others
// or behind the pool's normal use:
//   - Announce queues the event (bounded, never blocking the caller); one goroutine sends
//     what is queued with pg_notify over the pool, in order, several per round trip.
//   - Events: one dedicated connection LISTENs. When it breaks (or stays silent and fails a
//     ping) it is opened again with backoff, and once it listens again an EventResync is
//     delivered: what was announced meanwhile is lost.
//   - Leader: one dedicated connection holds pg_try_advisory_lock(leaderLockKey) for as long
//     as its session lives. A dead instance's session ends with its connection, and the lock
//     with it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

var _ store.Cluster = (*Store)(nil)

// Channel is the LISTEN/NOTIFY channel the instances announce their changes on.
const Channel = "gemini_synapse"

// leaderLockKey is the key of the session advisory lock the leading instance holds (it
// differs from schemaLockKey, which migrations hold for a moment).
const leaderLockKey int64 = 0x67656d2d73796e02 // "gem-syn" and 2

// dedicatedKeepalives are the server's TCP keepalive settings for the dedicated connections
// (sent at connect): the server ends the session of an instance that vanished without closing
// its connection (its machine or its network gone) within about 25 s, which releases the
// leadership, instead of after the system's default of two hours.
var dedicatedKeepalives = map[string]string{
	"tcp_keepalives_idle":     "10",
	"tcp_keepalives_interval": "5",
	"tcp_keepalives_count":    "3",
}

// maxNotifyPayload is the largest payload pg_notify accepts (8000 bytes by default), less a
// margin.
const maxNotifyPayload = 7900

// clusterOptions are the cluster's knobs; tests shorten them.
type clusterOptions struct {
	queueSize   int           // announcements waiting to be sent
	batch       int           // announcements sent per round trip at most
	eventBuffer int           // events received and not yet taken by the caller
	leaderRetry time.Duration // least time between two attempts to take the leadership
	idlePing    time.Duration // a listening connection silent for this long is pinged
	opTimeout   time.Duration // one round trip of the cluster's (a ping, a send, LISTEN)
	minBackoff  time.Duration // first pause before listening again after a failure
	maxBackoff  time.Duration // longest such pause
}

func defaultClusterOptions() clusterOptions {
	return clusterOptions{
		queueSize:   4096,
		batch:       128,
		eventBuffer: 1024,
		leaderRetry: time.Second,
		idlePing:    30 * time.Second,
		opTimeout:   5 * time.Second,
		minBackoff:  100 * time.Millisecond,
		maxBackoff:  5 * time.Second,
	}
}

// notice is what goes over the channel: the event and the instance that announced it.
type notice struct {
	From string `json:"from"`
	store.Event
}

// cluster is the Store's Cluster state. Its goroutines start on first use: a store opened
// only to migrate or to copy data neither listens nor announces.
type cluster struct {
	id     string          // this instance's random id: Events skips its own announcements
	cfg    *pgx.ConnConfig // for the dedicated connections (with dedicatedKeepalives)
	pool   *pgxpool.Pool
	logger *zap.Logger
	o      clusterOptions

	ctx    context.Context // ends with close: the listener stops
	cancel context.CancelFunc
	stop   chan struct{} // closed by close: the sender sends what is queued and stops
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	sending bool             // the sender runs
	events  chan store.Event // made by the first Events call
	queue   chan []byte      // announcements waiting for the sender
	dropped atomic.Int64     // announcements dropped: the queue was full or the send failed
	failing atomic.Bool      // drops are happening and were logged; cleared by a send that works
	listen  atomic.Uint32    // the backend pid of the listening connection, 0 when none
	resyncs atomic.Int64     // EventResync delivered
	sent    atomic.Int64     // announcements sent
	leader  leaderState      // Leader's connection
}

// leaderState is the connection that holds, or tries to take, the leadership.
type leaderState struct {
	mu      sync.Mutex
	conn    *pgx.Conn // holds the lock while its session lives; nil when not leading
	lastTry time.Time // the last attempt to take it, for the rate limit
	failing bool      // an attempt failed to reach the database and was logged
}

func newCluster(pool *pgxpool.Pool, logger *zap.Logger, o clusterOptions) *cluster {
	var b [8]byte
	_, _ = rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	cfg := pool.Config().ConnConfig
	for k, v := range dedicatedKeepalives {
		if _, set := cfg.RuntimeParams[k]; !set {
			cfg.RuntimeParams[k] = v
		}
	}
	return &cluster{
		id:     hex.EncodeToString(b[:]),
		cfg:    cfg,
		pool:   pool,
		logger: logger.Named("cluster"),
		o:      o,
		ctx:    ctx,
		cancel: cancel,
		stop:   make(chan struct{}),
		queue:  make(chan []byte, o.queueSize),
	}
}

// ---- Announce

// Announce queues ev for the other instances and returns at once: one goroutine sends the
// queue with pg_notify, in order. When the queue is full, or a send fails (the database is
// unreachable), announcements are dropped: counted (AnnouncementsDropped) and logged once per
// run of drops. The other instances make up for what they miss when their own listening
// connection is restored (EventResync). It fails only for an event too large to announce, or
// after Close.
func (s *Store) Announce(_ context.Context, ev store.Event) error {
	c := s.cl
	payload, err := json.Marshal(notice{From: c.id, Event: ev})
	if err != nil {
		return err
	}
	if len(payload) > maxNotifyPayload {
		return errors.New("postgres: announcement larger than a NOTIFY payload")
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("postgres: announce: the store is closed")
	}
	if !c.sending {
		c.sending = true
		c.wg.Add(1)
		go c.send()
	}
	c.mu.Unlock()
	select {
	case c.queue <- payload:
	default:
		c.drop(1, errors.New("the queue of announcements is full"))
	}
	return nil
}

// AnnouncementsDropped returns how many announcements were dropped since Open: the queue was
// full, or sending them failed.
func (s *Store) AnnouncementsDropped() int64 { return s.cl.dropped.Load() }

// drop counts n dropped announcements and logs the first of a run of drops.
func (c *cluster) drop(n int, why error) {
	c.dropped.Add(int64(n))
	if c.failing.CompareAndSwap(false, true) {
		c.logger.Warn("announcing changes to the other instances failed: they are dropped (counted) until it works again, and the other instances reload everything when their own connection is restored",
			zap.Int("dropped", n), zap.Error(why))
	}
}

// send sends the queued announcements until close, then what is still queued (for a moment
// at most).
func (c *cluster) send() {
	defer c.wg.Done()
	batch := make([][]byte, 0, c.o.batch)
	for {
		batch = batch[:0]
		select {
		case p := <-c.queue:
			batch = append(batch, p)
		case <-c.stop:
			c.flush()
			return
		}
	more:
		for len(batch) < c.o.batch {
			select {
			case p := <-c.queue:
				batch = append(batch, p)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.o.opTimeout)
		c.notify(ctx, batch)
		cancel()
	}
}

// flush sends what is queued when the store closes, giving up after opTimeout.
func (c *cluster) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.opTimeout)
	defer cancel()
	for {
		batch := make([][]byte, 0, c.o.batch)
	fill:
		for len(batch) < c.o.batch {
			select {
			case p := <-c.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		if ctx.Err() != nil {
			c.drop(len(batch), ctx.Err())
			continue
		}
		c.notify(ctx, batch)
	}
}

// notify sends one batch of announcements in one round trip (one implicit transaction: they
// are delivered together, in order).
func (c *cluster) notify(ctx context.Context, batch [][]byte) {
	b := &pgx.Batch{}
	for _, p := range batch {
		b.Queue(`SELECT pg_notify($1, $2)`, Channel, string(p))
	}
	if err := c.pool.SendBatch(ctx, b).Close(); err != nil {
		c.drop(len(batch), err)
		return
	}
	c.sent.Add(int64(len(batch)))
	if c.failing.CompareAndSwap(true, false) {
		c.logger.Info("announcing changes to the other instances works again", zap.Int64("dropped_so_far", c.dropped.Load()))
	}
}

// ---- Events

// Events returns the other instances' announcements, in the order each sent them (this
// instance's own are left out), and an EventResync each time the listening connection is
// established: after a break, since what was announced meanwhile is lost, and also the first
// time, since the caller may have loaded its state before the store listened. The first call
// starts listening; the channel is closed by Close.
func (s *Store) Events() <-chan store.Event {
	c := s.cl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.events == nil {
		if c.closed {
			ch := make(chan store.Event)
			close(ch)
			return ch
		}
		c.events = make(chan store.Event, c.o.eventBuffer)
		c.wg.Add(1)
		go c.listenLoop()
	}
	return c.events
}

// listenLoop keeps a listening connection until close, opening it again with backoff
// whenever it fails.
func (c *cluster) listenLoop() {
	defer c.wg.Done()
	backoff := c.o.minBackoff
	broken := false // a failure was logged; the next success says so
	for c.ctx.Err() == nil {
		conn, err := c.connectListening()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			if !broken {
				c.logger.Warn("listening for the other instances' changes failed; retrying until it works",
					zap.Error(err))
				broken = true
			}
			if !c.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, c.o.maxBackoff)
			continue
		}
		if broken {
			c.logger.Info("listening for the other instances' changes again: reloading the shared state")
			broken = false
		}
		backoff = c.o.minBackoff
		c.listen.Store(conn.PgConn().PID())
		if c.deliver(store.Event{Kind: store.EventResync}) {
			c.resyncs.Add(1)
			err = c.receive(conn)
		}
		c.listen.Store(0)
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(closeCtx)
		cancel()
		if c.ctx.Err() != nil {
			return
		}
		c.logger.Warn("the connection listening for the other instances' changes broke; opening it again", zap.Error(err))
		broken = true
		if !c.sleep(backoff) {
			return
		}
	}
}

// connectListening opens a dedicated connection and LISTENs on Channel.
func (c *cluster) connectListening() (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(c.ctx, c.cfg.Copy())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.o.opTimeout)
	defer cancel()
	if _, err := conn.Exec(ctx, `LISTEN `+Channel); err != nil {
		_ = conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// receive delivers the notifications conn receives until it fails or close. A connection
// silent for idlePing is pinged, so that one the network lost is noticed.
func (c *cluster) receive(conn *pgx.Conn) error {
	for {
		ctx, cancel := context.WithTimeout(c.ctx, c.o.idlePing)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if c.ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !pgconn.Timeout(err) || conn.IsClosed() {
				return err
			}
			pctx, cancel := context.WithTimeout(c.ctx, c.o.opTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			continue
		}
		var msg notice
		if err := json.Unmarshal([]byte(n.Payload), &msg); err != nil || msg.Kind == "" {
			c.logger.Debug("a notification on the channel is not an announcement", zap.String("payload", n.Payload))
			continue
		}
		if msg.From == c.id {
			continue
		}
		if !c.deliver(msg.Event) {
			return nil
		}
	}
}

// deliver hands ev to the caller of Events, waiting for room; false after close.
func (c *cluster) deliver(ev store.Event) bool {
	select {
	case c.events <- ev:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// sleep waits d, or less when the store closes; false then.
func (c *cluster) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// ---- Leader

// Leader reports whether this instance leads: whether its dedicated connection is alive (a
// ping) and so still holds the session advisory lock. When it does not lead it tries to take
// the lock, at most once per second; a broken connection counts as not leading, and is
// replaced at the next attempt. A leader whose process dies loses the lock with its session,
// so another instance takes it at its next call.
func (s *Store) Leader(ctx context.Context) bool {
	c := s.cl
	l := &c.leader
	l.mu.Lock()
	defer l.mu.Unlock()
	if ctx.Err() != nil || c.ctx.Err() != nil {
		return false
	}
	if l.conn != nil {
		pctx, cancel := context.WithTimeout(c.ctx, c.o.opTimeout)
		err := l.conn.Ping(pctx)
		cancel()
		if err == nil {
			return true
		}
		c.logger.Warn("the connection holding the cluster's leadership broke: this instance no longer runs the scheduled jobs until it takes the leadership again",
			zap.Error(err))
		c.closeLeaderLocked()
	}
	now := time.Now()
	if now.Sub(l.lastTry) < c.o.leaderRetry {
		return false
	}
	l.lastTry = now
	cctx, cancel := context.WithTimeout(c.ctx, c.o.opTimeout+c.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, c.cfg.Copy())
	if err == nil {
		var got bool
		if err = conn.QueryRow(cctx, `SELECT pg_try_advisory_lock($1)`, leaderLockKey).Scan(&got); err == nil && got {
			l.conn, l.failing = conn, false
			c.logger.Info("this instance leads the cluster now: it runs the scheduled jobs")
			return true
		}
		_ = conn.Close(context.Background())
	}
	if err != nil && !l.failing {
		l.failing = true
		c.logger.Warn("taking the cluster's leadership failed: the database cannot be reached", zap.Error(err))
	} else if err == nil {
		l.failing = false
	}
	return false
}

// closeLeaderLocked closes the leader's connection, which releases the lock (l.mu held).
func (c *cluster) closeLeaderLocked() {
	l := &c.leader
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = l.conn.Close(ctx)
	cancel()
	l.conn = nil
}

// close stops the cluster: what is queued is sent (for a moment at most), listening stops
// and Events' channel is closed, the leadership is released.
func (c *cluster) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop) // the sender flushes
	c.cancel()    // the listener stops; Leader calls fail from now on
	c.wg.Wait()
	c.mu.Lock()
	if c.events != nil {
		close(c.events)
	}
	c.mu.Unlock()
	c.leader.mu.Lock()
	c.closeLeaderLocked()
	c.leader.mu.Unlock()
}
