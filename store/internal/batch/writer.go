package batch

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Engine writes a Writer's batches.
type Engine interface {
	// Commit writes b in one transaction: all of it, or nothing and an error.
	Commit(b *Batch) error
	// Transient reports whether err, from Commit, passes with time (a busy database, a server
	// that is down or unreachable): such a batch is retried for as long as it takes (once Close
	// is waiting, for Options.CloseTimeout), any other for Options.MaxAttempts attempts.
	Transient(err error) bool
}

// Options are a Writer's settings; the engine chooses them.
type Options struct {
	QueueSize    int           // capacity of the log queue
	BatchSize    int           // rows per transaction
	Interval     time.Duration // longest wait for a batch to fill
	CloseTimeout time.Duration // how long Close keeps retrying a failing batch
	MaxBackoff   time.Duration // longest pause between two attempts of a failing batch
	MaxAttempts  int           // attempts of a batch failing for a reason that is not transient
	// RetryLogEvery is how often a batch that keeps failing is logged again after its first
	// failure; 0 logs every failed attempt.
	RetryLogEvery time.Duration
	// SkipAfterCloseTimeout drops the batches that remain at Close without an attempt once
	// Close has given up on one that failed transiently (each attempt could wait for a server
	// that does not answer).
	SkipAfterCloseTimeout bool
	// Clean makes text storable (log text, cooldown models, key state reasons and errors);
	// nil keeps it as it is.
	Clean func(string) string
	// Hold, if not nil, keeps the writer from writing anything until it is closed (or Close is
	// called): rows and key state queue meanwhile.
	Hold <-chan struct{}
}

// Writer owns the queue and the goroutine that drains it into batched transactions. It is safe
// for concurrent use.
type Writer struct {
	e      Engine
	logger *zap.Logger
	o      Options

	queue chan Entry
	nudge chan struct{} // capacity 1: key state, a cooldown or a label saved
	stop  chan struct{} // closed by Close
	done  chan struct{} // closed when run returns

	closed   atomic.Bool
	closeMu  sync.RWMutex // read-held while a row is queued, held by Close to set closed
	stopOnce sync.Once

	dropped        atomic.Uint64
	written        atomic.Uint64 // log rows committed
	lastWarn       atomic.Int64  // unix nanoseconds of the last "queue full" warning
	lastClosedWarn atomic.Int64  // unix nanoseconds of the last "store closed" warning
	failed         atomic.Uint64 // failed batch attempts

	// commitMu is held while a batch transaction runs; Exclude takes it so an operator's write
	// cannot be overtaken by older pool state.
	commitMu sync.Mutex

	stateMu     sync.Mutex
	states      map[int64]store.KeyState // saved, not yet taken
	cooldowns   map[cooldownKey]int64    // saved, not yet taken
	projects    map[int64]string         // learned project labels, saved, not yet taken
	inStates    map[int64]store.KeyState // taken by the batch being written
	inCooldowns map[cooldownKey]int64
	inProjects  map[int64]string

	// Used by the writer goroutine only.
	giveUpAt time.Time // set once Close is waiting: failing batches are dropped after it
	gaveUp   bool      // Close gave up on a batch (SkipAfterCloseTimeout): the rest is dropped
	rows     []Entry
	flushes  []chan struct{}
	b        Batch
}

// New returns a writer of e's batches, running. logger must not be nil.
func New(e Engine, logger *zap.Logger, o Options) *Writer {
	if o.Clean == nil {
		o.Clean = func(s string) string { return s }
	}
	w := &Writer{
		e:           e,
		logger:      logger,
		o:           o,
		queue:       make(chan Entry, o.QueueSize),
		nudge:       make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		states:      make(map[int64]store.KeyState),
		cooldowns:   make(map[cooldownKey]int64),
		inStates:    make(map[int64]store.KeyState),
		inCooldowns: make(map[cooldownKey]int64),
		projects:    make(map[int64]string),
		inProjects:  make(map[int64]string),
		rows:        make([]Entry, 0, o.BatchSize),
		b: Batch{
			Slots:       make(map[SlotKey]store.Usage),
			AccessSlots: make(map[AccessSlotKey]store.Usage),
			KeyUsage:    make(map[int64]KeyUsage),
			AccessUse:   make(map[int64]int64),
		},
	}
	go w.run()
	return w
}

// Log is the part of store.Store a Writer answers: log rows, runtime key state, Flush and
// the counters. An engine's Store embeds it (see Writer.Log).
type Log struct{ w *Writer }

// Log returns the store.Store methods of w.
func (w *Writer) Log() Log { return Log{w} }

// LogRequest queues r for writing and returns at once. If the queue is full (the database is
// slow, busy or unreachable for long), or the store is closed, the row is dropped, counted (see
// Dropped) and a warning logged (at most once a second). Its text is made storable (see
// Options.Clean) and cut to the store's limits.
func (l Log) LogRequest(r store.RequestLog) { l.w.enqueue(requestEntry(r, l.w.o.Clean)) }

// LogError queues e for writing and returns at once, under the same rules as LogRequest.
func (l Log) LogError(e store.ErrorLog) { l.w.enqueue(errorEntry(e, l.w.o.Clean)) }

// SaveKeyState records k for writing and returns at once. States are kept per key, newest
// wins, and are never dropped. A key disabled by an operator keeps its status and reason.
func (l Log) SaveKeyState(k store.KeyState) {
	w := l.w
	if k.Disabled {
		k.Reason = w.o.Clean(k.Reason)
	} else {
		k.Reason = ""
	}
	k.LastError = store.Truncate(w.o.Clean(k.LastError), store.MaxTextLen)
	w.stateMu.Lock()
	w.states[k.KeyID] = k
	w.stateMu.Unlock()
	w.wake()
}

// SaveCooldown records c for writing and returns at once. Cooldowns are kept per key and
// model, newest wins, and are never dropped. A cooldown for a deleted key is ignored.
func (l Log) SaveCooldown(c store.Cooldown) {
	w := l.w
	w.stateMu.Lock()
	w.cooldowns[cooldownKey{c.KeyID, w.o.Clean(c.Model)}] = sqlkit.ToMS(c.Until)
	w.stateMu.Unlock()
	w.wake()
}

// SaveKeyProject records a project label the gateway learned for key id and returns at once;
// it is stored only if the key has no label then (an operator's label always wins). Labels are
// kept per key, newest wins, and are never dropped. An empty label or one store.CheckProject
// refuses (after trimming) is ignored.
func (l Log) SaveKeyProject(id int64, project string) {
	project = strings.TrimSpace(project)
	if project == "" || store.CheckProject(project) != nil {
		return
	}
	w := l.w
	w.stateMu.Lock()
	w.projects[id] = project
	w.stateMu.Unlock()
	w.wake()
}

// Flush blocks until everything queued or saved before the call is committed (or given up;
// while the database is unreachable, until it is back). After Close it returns at once.
func (l Log) Flush() {
	w := l.w
	if w.closed.Load() {
		return
	}
	done := make(chan struct{})
	select {
	case w.queue <- Entry{Kind: flush, done: done}:
	case <-w.done:
		return
	}
	select {
	case <-done:
	case <-w.done:
	}
}

// Dropped returns how many log rows were dropped so far because the queue was full, the store
// was closed, or they could not be written (after repeated errors that are not transient, or
// a failing batch at Close).
func (l Log) Dropped() uint64 { return l.w.dropped.Load() }

// Written returns how many log rows (request and error rows) were committed so far.
func (l Log) Written() uint64 { return l.w.written.Load() }

// FailedAttempts returns how many batch transactions failed so far.
func (w *Writer) FailedAttempts() uint64 { return w.failed.Load() }

// Close writes everything queued (giving up on a failing batch after Options.CloseTimeout)
// and stops the writer. Rows logged after it are dropped and counted. Calls after the first
// wait for the first.
func (w *Writer) Close() {
	w.closeMu.Lock()
	w.closed.Store(true)
	w.closeMu.Unlock()
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
}

// Exclude waits for a running batch transaction, discards the key state of id saved but not
// yet written (and its cooldowns if dropCooldowns), and keeps batches out until unlock is
// called: an operator's write to the key is then not overtaken by older pool state.
func (w *Writer) Exclude(id int64, dropCooldowns bool) (unlock func()) {
	w.commitMu.Lock()
	w.stateMu.Lock()
	delete(w.states, id)
	delete(w.inStates, id)
	if dropCooldowns {
		for k := range w.cooldowns {
			if k.keyID == id {
				delete(w.cooldowns, k)
			}
		}
		for k := range w.inCooldowns {
			if k.keyID == id {
				delete(w.inCooldowns, k)
			}
		}
	}
	w.stateMu.Unlock()
	return w.commitMu.Unlock
}

// ExcludeProjects is Exclude for an operator's project labels: it waits for a running batch
// transaction, discards the learned labels of ids not yet written, and keeps batches out until
// unlock is called.
func (w *Writer) ExcludeProjects(ids []int64) (unlock func()) {
	w.commitMu.Lock()
	w.stateMu.Lock()
	for _, id := range ids {
		delete(w.projects, id)
		delete(w.inProjects, id)
	}
	w.stateMu.Unlock()
	return w.commitMu.Unlock
}

// enqueue queues e, or drops and counts it when the queue is full or the writer is closed.
// closeMu makes closing and queueing exclusive, so a row is either queued before Close (and
// written by drain) or refused after it, never left in the queue unseen.
func (w *Writer) enqueue(e Entry) {
	w.closeMu.RLock()
	defer w.closeMu.RUnlock()
	if w.closed.Load() {
		w.drop(&w.lastClosedWarn, "log store closed, dropping rows")
		return
	}
	select {
	case w.queue <- e:
	default:
		w.drop(&w.lastWarn, "log queue full, dropping rows")
	}
}

// drop counts one dropped row and warns with msg, at most once a second per last (the unix
// nanoseconds of that warning's previous time).
func (w *Writer) drop(last *atomic.Int64, msg string) {
	n := w.dropped.Add(1)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev >= int64(time.Second) && last.CompareAndSwap(prev, now) {
		w.logger.Warn(msg, zap.Uint64("dropped_total", n))
	}
}

func (w *Writer) wake() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

func (w *Writer) stopping() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// run collects up to BatchSize rows, waiting at most Interval after the first one (less if a
// Flush arrives), and writes them in one transaction together with the saved key states,
// cooldowns and labels.
func (w *Writer) run() {
	defer close(w.done)
	if w.o.Hold != nil {
		select {
		case <-w.o.Hold:
		case <-w.stop:
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		stopping := false
		select {
		case e := <-w.queue:
			w.add(e)
		case <-w.nudge:
		case <-w.stop:
			stopping = true
		}
		if !stopping {
			timer.Reset(w.o.Interval)
		gather:
			for len(w.rows) < w.o.BatchSize && len(w.flushes) == 0 {
				select {
				case e := <-w.queue:
					w.add(e)
				case <-timer.C:
					break gather
				case <-w.stop:
					stopping = true
					break gather
				}
			}
			timer.Stop()
		}
		w.write()
		if stopping {
			w.drain()
			return
		}
	}
}

// drain writes whatever is left in the queue; rows logged once closed is set are dropped and
// counted by enqueue.
func (w *Writer) drain() {
	for {
		select {
		case e := <-w.queue:
			w.add(e)
			if len(w.rows) >= w.o.BatchSize || len(w.flushes) > 0 {
				w.write()
			}
		default:
			w.write()
			return
		}
	}
}

func (w *Writer) add(e Entry) {
	if e.Kind == flush {
		w.flushes = append(w.flushes, e.done)
		return
	}
	w.rows = append(w.rows, e)
}

// write commits the collected rows and the saved state, retrying with backoff, then releases
// waiting Flush calls. Rows are kept across retries: a transient failure is retried for as long
// as it takes (the queue fills meanwhile, and rows it cannot take are dropped and counted), or,
// once Close is waiting, until CloseTimeout has passed (then this batch is dropped and counted,
// and later failing ones too). Any other failure is given up after MaxAttempts.
//
// A commit whose answer is lost (the connection breaks after the server committed) is retried
// like any other, so such a batch can be written twice: at least once, never silently lost.
func (w *Writer) write() {
	w.stateMu.Lock()
	w.states, w.inStates = w.inStates, w.states // inStates is empty here
	w.cooldowns, w.inCooldowns = w.inCooldowns, w.cooldowns
	w.projects, w.inProjects = w.inProjects, w.projects
	w.stateMu.Unlock()
	for i := range w.rows {
		w.b.add(&w.rows[i])
	}

	backoff := 50 * time.Millisecond
	var lastLog time.Time
	for attempt := 1; ; attempt++ {
		if w.gaveUp {
			w.dropBatch()
			break
		}
		err := w.commit()
		if err == nil {
			w.written.Add(uint64(len(w.rows)))
			if attempt > 1 {
				w.logger.Info("writing logs again after failures", zap.Int("rows", len(w.rows)), zap.Int("attempts", attempt))
			}
			break
		}
		w.failed.Add(1)
		if w.giveUpAt.IsZero() && w.stopping() {
			w.giveUpAt = time.Now().Add(w.o.CloseTimeout)
		}
		timedOut := !w.giveUpAt.IsZero() && time.Now().After(w.giveUpAt)
		transient := w.e.Transient(err)
		if (!transient && attempt >= w.o.MaxAttempts) || timedOut {
			w.logger.Error("giving up writing a batch of logs",
				zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("attempts", attempt))
			w.dropBatch()
			w.gaveUp = w.o.SkipAfterCloseTimeout && timedOut && transient
			break
		}
		if time.Since(lastLog) >= w.o.RetryLogEvery {
			lastLog = time.Now()
			w.logger.Error("writing a batch of logs failed, will retry",
				zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("queued", len(w.queue)),
				zap.Int("attempt", attempt), zap.Duration("retry_in", backoff))
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, w.o.MaxBackoff)
	}

	w.b.reset()
	clear(w.rows) // drop string references
	w.rows = w.rows[:0]
	for _, done := range w.flushes {
		close(done)
	}
	clear(w.flushes)
	w.flushes = w.flushes[:0]
}

// dropBatch counts the batch's rows as dropped and forgets the key state it took.
func (w *Writer) dropBatch() {
	w.dropped.Add(uint64(len(w.rows)))
	w.stateMu.Lock()
	clear(w.inStates)
	clear(w.inCooldowns)
	clear(w.inProjects)
	w.stateMu.Unlock()
}

// commit writes the batch in one transaction. It holds commitMu, and on success empties the
// taken state.
func (w *Writer) commit() error {
	w.commitMu.Lock()
	defer w.commitMu.Unlock()

	b := &w.b
	w.stateMu.Lock()
	b.States = b.States[:0]
	for _, k := range w.inStates {
		b.States = append(b.States, k)
	}
	b.Cooldowns = b.Cooldowns[:0]
	for k, until := range w.inCooldowns {
		b.Cooldowns = append(b.Cooldowns, Cooldown{KeyID: k.keyID, Model: k.model, Until: until})
	}
	b.Projects = b.Projects[:0]
	for id, project := range w.inProjects {
		b.Projects = append(b.Projects, store.KeyProject{KeyID: id, Project: project})
	}
	w.stateMu.Unlock()

	if b.empty() {
		return nil
	}
	if err := w.e.Commit(b); err != nil {
		return err
	}
	w.stateMu.Lock()
	clear(w.inStates)
	clear(w.inCooldowns)
	clear(w.inProjects)
	w.stateMu.Unlock()
	return nil
}
