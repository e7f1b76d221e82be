package postgres

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// maxAttempts bounds retries of a batch failing for a reason that is not transient (see
// transient); such a failure is unlikely to heal and must not stall logging forever. A
// transient failure (the server is down or unreachable) is retried for as long as it lasts.
const maxAttempts = 10

// retryLogEvery is how often a batch that keeps failing is logged again after its first failure.
const retryLogEvery = 30 * time.Second

// LogRequest queues r for writing and returns at once. If the queue is full (PostgreSQL is slow
// or unreachable for long), or the store is closed, the row is dropped, counted (see Dropped)
// and a warning logged (at most once a second). Text that PostgreSQL cannot store (NUL bytes,
// invalid UTF-8) is replaced with U+FFFD.
func (s *Store) LogRequest(r store.RequestLog) {
	s.w.enqueue(entry{
		kind:        kindRequest,
		time:        toMS(r.Time),
		accessKeyID: r.AccessKeyID,
		keyID:       r.KeyID,
		method:      store.Truncate(clean(r.Method), store.MaxMethodLen),
		path:        store.Truncate(clean(r.Path), store.MaxPathLen),
		model:       store.Truncate(clean(r.Model), store.MaxModelLen),
		stream:      r.Stream,
		status:      int32(r.Status),
		attempts:    int32(r.Attempts),
		latencyUS:   r.Latency.Microseconds(),
		ttfbUS:      r.TTFB.Microseconds(),
		prompt:      r.PromptTokens,
		candidates:  r.CandidatesTokens,
		thoughts:    r.ThoughtsTokens,
		total:       r.TotalTokens,
		text:        store.Truncate(clean(r.Error), store.MaxTextLen),
		limitHit:    store.Truncate(clean(r.LimitHit), store.MaxLimitLen),
	})
}

// LogError queues e for writing and returns at once, under the same rules as LogRequest.
func (s *Store) LogError(e store.ErrorLog) {
	s.w.enqueue(entry{
		kind:        kindError,
		time:        toMS(e.Time),
		keyID:       e.KeyID,
		accessKeyID: e.AccessKeyID,
		model:       store.Truncate(clean(e.Model), store.MaxModelLen),
		path:        store.Truncate(clean(e.Path), store.MaxPathLen),
		status:      int32(e.Status),
		text:        store.Truncate(clean(e.Message), store.MaxTextLen),
	})
}

// SaveKeyState records k for writing and returns at once. States are kept per key, newest
// wins, and are never dropped. A key disabled by an operator keeps its status and reason.
func (s *Store) SaveKeyState(k store.KeyState) {
	w := s.w
	w.stateMu.Lock()
	w.states[k.KeyID] = k
	w.stateMu.Unlock()
	w.wake()
}

// SaveCooldown records c for writing and returns at once. Cooldowns are kept per key and
// model, newest wins, and are never dropped. A cooldown for a deleted key is ignored.
func (s *Store) SaveCooldown(c store.Cooldown) {
	w := s.w
	w.stateMu.Lock()
	w.cooldowns[cooldownKey{c.KeyID, clean(c.Model)}] = toMS(c.Until)
	w.stateMu.Unlock()
	w.wake()
}

// Flush blocks until everything queued or saved before the call is committed (while
// PostgreSQL is unreachable, until it is back). After Close it returns at once.
func (s *Store) Flush() {
	w := s.w
	if w.closed.Load() {
		return
	}
	done := make(chan struct{})
	select {
	case w.queue <- entry{kind: kindFlush, done: done}:
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
func (s *Store) Dropped() uint64 { return s.w.dropped.Load() }

// Written returns how many log rows (request and error rows) were committed so far.
func (s *Store) Written() uint64 { return s.w.written.Load() }

type entryKind uint8

const (
	kindRequest entryKind = iota + 1
	kindError
	kindFlush
)

// entry is a queued log row or flush marker: one flat struct for both row kinds, so queueing
// allocates nothing. An error row uses text for its message.
type entry struct {
	time, accessKeyID, keyID            int64
	latencyUS, ttfbUS                   int64
	prompt, candidates, thoughts, total int64
	method, path, model, text, limitHit string
	done                                chan struct{} // kindFlush: closed once committed
	status, attempts                    int32
	kind                                entryKind
	stream                              bool
}

type cooldownKey struct {
	keyID int64
	model string
}

// keyUsage is one batch's contribution to a key's counters.
type keyUsage struct {
	requests, failed, lastUsed int64
}

// slotKey names a request_usage row: a 15-minute slot and a model.
type slotKey struct {
	slot  int64
	model string
}

// accessSlotKey names an access_key_usage row: a 15-minute slot, an access key, a model and
// the limit that refused the requests.
type accessSlotKey struct {
	slot, accessKeyID int64
	model, limitHit   string
}

// writer owns the queue and the goroutine that drains it into batched transactions.
type writer struct {
	pool   *pgxpool.Pool
	logger *zap.Logger
	o      options

	queue chan entry
	nudge chan struct{} // capacity 1: key state or cooldown saved
	stop  chan struct{} // closed by close
	done  chan struct{} // closed when run returns

	closed   atomic.Bool
	closeMu  sync.RWMutex // read-held while a row is queued, held by close to set closed
	stopOnce sync.Once

	dropped        atomic.Uint64
	written        atomic.Uint64 // log rows committed
	lastWarn       atomic.Int64  // unix nanoseconds of the last "queue full" warning
	lastClosedWarn atomic.Int64  // unix nanoseconds of the last "store closed" warning
	failedTxs      atomic.Uint64 // failed batch attempts

	// commitMu is held while a batch transaction runs; exclude takes it so an operator's
	// write cannot be overtaken by older pool state.
	commitMu sync.Mutex

	stateMu     sync.Mutex
	states      map[int64]store.KeyState // saved, not yet taken
	cooldowns   map[cooldownKey]int64    // saved, not yet taken
	projects    map[int64]string         // learned project labels, saved, not yet taken
	inStates    map[int64]store.KeyState // taken by the batch being written
	inCooldowns map[cooldownKey]int64
	inProjects  map[int64]string

	// Used by the writer goroutine only.
	giveUpAt    time.Time // set once Close is waiting: failing batches are dropped after it
	gaveUp      bool      // Close gave up on a batch: the rest is dropped without an attempt
	rows        []entry
	flushes     []chan struct{}
	keyUsage    map[int64]keyUsage
	slotUse     map[slotKey]store.Usage
	accessSlots map[accessSlotKey]store.Usage // the batch's sums for access_key_usage
	accessUse   map[int64]int64
	reqs        []*entry
	errs        []*entry
}

func newWriter(pool *pgxpool.Pool, logger *zap.Logger, o options) *writer {
	w := &writer{
		pool:        pool,
		logger:      logger,
		o:           o,
		queue:       make(chan entry, o.queueSize),
		nudge:       make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		states:      make(map[int64]store.KeyState),
		cooldowns:   make(map[cooldownKey]int64),
		inStates:    make(map[int64]store.KeyState),
		inCooldowns: make(map[cooldownKey]int64),
		projects:    make(map[int64]string),
		inProjects:  make(map[int64]string),
		rows:        make([]entry, 0, o.batchSize),
		keyUsage:    make(map[int64]keyUsage),
		slotUse:     make(map[slotKey]store.Usage),
		accessUse:   make(map[int64]int64),
		accessSlots: make(map[accessSlotKey]store.Usage),
	}
	return w
}

// enqueue queues e, or drops and counts it when the queue is full or the store is closed.
// closeMu makes closing and queueing exclusive, so a row is either queued before close (and
// written by drain) or refused after it, never left in the queue unseen.
func (w *writer) enqueue(e entry) {
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
func (w *writer) drop(last *atomic.Int64, msg string) {
	n := w.dropped.Add(1)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev >= int64(time.Second) && last.CompareAndSwap(prev, now) {
		w.logger.Warn(msg, zap.Uint64("dropped_total", n))
	}
}

func (w *writer) wake() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

// close writes everything queued and stops the goroutine.
func (w *writer) close() {
	w.closeMu.Lock()
	w.closed.Store(true)
	w.closeMu.Unlock()
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
}

func (w *writer) stopping() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// exclude waits for a running batch transaction, discards key state for id that is saved but
// not yet written (and its cooldowns if dropCooldowns), and keeps batches out until the returned
// func is called.
func (w *writer) exclude(id int64, dropCooldowns bool) (unlock func()) {
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

// excludeProjects is exclude for an operator's project labels: it waits for a running batch
// transaction, discards the learned labels of ids not yet written, and keeps batches out until
// the returned func is called.
func (w *writer) excludeProjects(ids []int64) (unlock func()) {
	w.commitMu.Lock()
	w.stateMu.Lock()
	for _, id := range ids {
		delete(w.projects, id)
		delete(w.inProjects, id)
	}
	w.stateMu.Unlock()
	return w.commitMu.Unlock
}

// run collects up to batchSize rows, waiting at most interval after the first one (less if a
// Flush arrives), and writes them in one transaction together with the saved key states and
// cooldowns.
func (w *writer) run() {
	defer close(w.done)
	if w.o.hold != nil {
		select {
		case <-w.o.hold:
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
			timer.Reset(w.o.interval)
		gather:
			for len(w.rows) < w.o.batchSize && len(w.flushes) == 0 {
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
func (w *writer) drain() {
	for {
		select {
		case e := <-w.queue:
			w.add(e)
			if len(w.rows) >= w.o.batchSize || len(w.flushes) > 0 {
				w.write()
			}
		default:
			w.write()
			return
		}
	}
}

func (w *writer) add(e entry) {
	if e.kind == kindFlush {
		w.flushes = append(w.flushes, e.done)
		return
	}
	w.rows = append(w.rows, e)
}

// write commits the collected rows and the saved state, retrying with backoff, then releases
// waiting Flush calls. Rows are kept across retries: while PostgreSQL is down or unreachable
// the batch is retried for as long as it takes (the queue fills meanwhile, and rows it cannot
// take are dropped and counted), or, once Close is waiting, until closeTimeout has passed
// (then this and later failing batches are dropped and counted). A failure that is not
// transient is given up after maxAttempts.
//
// A commit whose answer is lost (the connection breaks after the server committed) is retried
// like any other, so such a batch can be written twice: at least once, never silently lost.
func (w *writer) write() {
	w.stateMu.Lock()
	w.states, w.inStates = w.inStates, w.states // inStates is empty here
	w.cooldowns, w.inCooldowns = w.inCooldowns, w.cooldowns
	w.projects, w.inProjects = w.inProjects, w.projects
	w.stateMu.Unlock()

	backoff := 50 * time.Millisecond
	var lastLog time.Time
	for attempt := 1; ; attempt++ {
		if w.gaveUp {
			// Close waited its closeTimeout for a server that did not answer; trying each of
			// the remaining batches (each up to a connect timeout) would hold it up longer.
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
		w.failedTxs.Add(1)
		if w.giveUpAt.IsZero() && w.stopping() {
			w.giveUpAt = time.Now().Add(w.o.closeTimeout)
		}
		timedOut := !w.giveUpAt.IsZero() && time.Now().After(w.giveUpAt)
		if (!transient(err) && attempt >= maxAttempts) || timedOut {
			w.logger.Error("giving up writing a batch of logs",
				zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("attempts", attempt))
			w.dropBatch()
			w.gaveUp = timedOut && transient(err)
			break
		}
		if time.Since(lastLog) >= retryLogEvery {
			lastLog = time.Now()
			w.logger.Error("writing a batch of logs failed, will retry",
				zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("queued", len(w.queue)),
				zap.Int("attempt", attempt), zap.Duration("retry_in", backoff))
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, w.o.maxBackoff)
	}

	clear(w.rows) // drop string references
	w.rows = w.rows[:0]
	for _, done := range w.flushes {
		close(done)
	}
	clear(w.flushes)
	w.flushes = w.flushes[:0]
}

// dropBatch counts the batch's rows as dropped and forgets the key state it took.
func (w *writer) dropBatch() {
	w.dropped.Add(uint64(len(w.rows)))
	w.stateMu.Lock()
	clear(w.inStates)
	clear(w.inCooldowns)
	clear(w.inProjects)
	w.stateMu.Unlock()
}

// commit writes the batch in one transaction. It holds commitMu, and on success empties the
// taken state.
func (w *writer) commit() error {
	w.commitMu.Lock()
	defer w.commitMu.Unlock()

	w.stateMu.Lock()
	states := make([]store.KeyState, 0, len(w.inStates))
	for _, k := range w.inStates {
		states = append(states, k)
	}
	cools := make([]cooldownKey, 0, len(w.inCooldowns))
	for k := range w.inCooldowns {
		cools = append(cools, k)
	}
	until := make([]int64, len(cools))
	for i, k := range cools {
		until[i] = w.inCooldowns[k]
	}
	projects := make([]store.KeyProject, 0, len(w.inProjects))
	for id, project := range w.inProjects {
		projects = append(projects, store.KeyProject{KeyID: id, Project: project})
	}
	w.stateMu.Unlock()

	if len(w.rows) == 0 && len(states) == 0 && len(cools) == 0 && len(projects) == 0 {
		return nil
	}
	if err := w.commitTx(states, cools, until, projects); err != nil {
		return err
	}
	w.stateMu.Lock()
	clear(w.inStates)
	clear(w.inCooldowns)
	clear(w.inProjects)
	w.stateMu.Unlock()
	return nil
}

// The columns COPY fills, in the order of appendRequest and appendError.
var (
	requestColumns = []string{"time", "access_key_id", "key_id", "method", "path", "model", "stream",
		"status", "attempts", "latency_us", "ttfb_us", "prompt_tokens", "candidates_tokens", "thoughts_tokens",
		"total_tokens", "error", "limit_hit"}
	errorColumns = []string{"time", "key_id", "access_key_id", "model", "path", "status", "message"}
)

// The statements adding a batch to the rollups and to the keys' state, each taking its rows
// as arrays (one round trip whatever their number). Rows are sorted by their key, so that two
// instances writing the same rows lock them in the same order.
const (
	sqlSlotUsage = `
		INSERT INTO request_usage (slot, model, requests, failures, prompt_tokens, candidates_tokens, total_tokens)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
		ON CONFLICT (slot, model) DO UPDATE SET requests = request_usage.requests + excluded.requests,
			failures = request_usage.failures + excluded.failures,
			prompt_tokens = request_usage.prompt_tokens + excluded.prompt_tokens,
			candidates_tokens = request_usage.candidates_tokens + excluded.candidates_tokens,
			total_tokens = request_usage.total_tokens + excluded.total_tokens`
	sqlAccessSlotUsage = `
		INSERT INTO access_key_usage (slot, access_key_id, model, limit_hit, requests, failures, prompt_tokens,
			candidates_tokens, total_tokens)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
			$7::bigint[], $8::bigint[], $9::bigint[])
		ON CONFLICT (slot, access_key_id, model, limit_hit) DO UPDATE SET
			requests = access_key_usage.requests + excluded.requests,
			failures = access_key_usage.failures + excluded.failures,
			prompt_tokens = access_key_usage.prompt_tokens + excluded.prompt_tokens,
			candidates_tokens = access_key_usage.candidates_tokens + excluded.candidates_tokens,
			total_tokens = access_key_usage.total_tokens + excluded.total_tokens`
	sqlKeyUsage = `
		UPDATE keys k SET requests = k.requests + u.requests, failed_requests = k.failed_requests + u.failed,
			last_used_at = GREATEST(k.last_used_at, u.last)
		FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u (id, requests, failed, last)
		WHERE k.id = u.id`
	sqlAccessKeyUsed = `
		UPDATE access_keys a SET last_used_at = GREATEST(a.last_used_at, u.last)
		FROM unnest($1::bigint[], $2::bigint[]) AS u (id, last) WHERE a.id = u.id`
	// The pool never overrides an operator: a manually disabled key keeps status and reason.
	sqlKeyState = `
		UPDATE keys k SET
			status = CASE WHEN k.manual_disabled THEN k.status WHEN u.disabled THEN 'disabled' ELSE 'active' END,
			disabled_reason = CASE WHEN k.manual_disabled THEN k.disabled_reason WHEN u.disabled THEN u.reason ELSE '' END,
			failure_count = u.failures, last_error = u.last_error
		FROM unnest($1::bigint[], $2::boolean[], $3::text[], $4::int[], $5::text[])
			AS u (id, disabled, reason, failures, last_error)
		WHERE k.id = u.id`
	// A cooldown of a key deleted meanwhile is skipped rather than failing the batch on the
	// foreign key.
	sqlCooldown = `
		INSERT INTO cooldowns (key_id, model, until)
		SELECT u.key_id, u.model, u.until FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u (key_id, model, until)
		WHERE EXISTS (SELECT 1 FROM keys WHERE id = u.key_id)
		ON CONFLICT (key_id, model) DO UPDATE SET until = excluded.until`
	// A learned project label fills an empty one only: an operator's label always wins.
	sqlLearnedProject = `
		UPDATE keys k SET project = u.project FROM unnest($1::bigint[], $2::text[]) AS u (id, project)
		WHERE k.id = u.id AND k.project = ''`
)

// commitTx writes the batch in one transaction: the rows with COPY, then their sums and the
// saved key state in one batch of statements.
func (w *writer) commitTx(states []store.KeyState, cools []cooldownKey, until []int64, projects []store.KeyProject) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.o.commitTimeout)
	defer cancel()

	clear(w.keyUsage)
	clear(w.accessUse)
	clear(w.slotUse)
	clear(w.accessSlots)
	reqs, errs := w.reqs[:0], w.errs[:0]
	defer func() {
		clear(reqs)
		clear(errs)
		clear(w.slotUse) // drop string references
		clear(w.accessSlots)
		w.reqs, w.errs = reqs[:0], errs[:0]
	}()
	for i := range w.rows {
		e := &w.rows[i]
		switch e.kind {
		case kindRequest:
			reqs = append(reqs, e)
			// The request rows' sums per slot and model go in with them, and per slot, access
			// key, model and limit hit.
			slot := slotOf(e.time)
			k := slotKey{slot, e.model}
			w.slotUse[k] = e.addTo(w.slotUse[k])
			if e.accessKeyID != 0 {
				k := accessSlotKey{slot, e.accessKeyID, e.model, e.limitHit}
				w.accessSlots[k] = e.addTo(w.accessSlots[k])
			}
			// A failed final attempt has its own error row, which counts it; only an attempt
			// that got an answer (or was cut short by the client) counts here.
			if e.keyID != 0 && (e.status < 400 || e.status == store.StatusClientClosed) {
				u := w.keyUsage[e.keyID]
				u.requests++
				u.lastUsed = max(u.lastUsed, e.time)
				w.keyUsage[e.keyID] = u
			}
		case kindError:
			errs = append(errs, e)
			if e.keyID != 0 {
				u := w.keyUsage[e.keyID]
				u.requests++
				u.failed++
				u.lastUsed = max(u.lastUsed, e.time)
				w.keyUsage[e.keyID] = u
			}
		}
		if e.accessKeyID != 0 {
			w.accessUse[e.accessKeyID] = max(w.accessUse[e.accessKeyID], e.time)
		}
	}

	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.Background())
		}
	}()
	if len(reqs) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"request_logs"}, requestColumns,
			&copySource{rows: reqs, row: appendRequest}); err != nil {
			return fmt.Errorf("copy request rows: %w", err)
		}
	}
	if len(errs) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"error_logs"}, errorColumns,
			&copySource{rows: errs, row: appendError}); err != nil {
			return fmt.Errorf("copy error rows: %w", err)
		}
	}

	var b pgx.Batch
	w.queueSums(&b)
	queueKeyState(&b, states, cools, until, projects)
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return fmt.Errorf("sums and key state: %w", err)
		}
	}
	if err = tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// queueSums queues the statements adding the batch's sums to request_usage, access_key_usage,
// the keys' counters and the access keys' last use.
func (w *writer) queueSums(b *pgx.Batch) {
	if n := len(w.slotUse); n > 0 {
		keys := slices.SortedFunc(maps.Keys(w.slotUse), func(a, b slotKey) int {
			return cmp.Or(cmp.Compare(a.slot, b.slot), strings.Compare(a.model, b.model))
		})
		slot, model := make([]int64, n), make([]string, n)
		var u usageArrays
		for i, k := range keys {
			slot[i], model[i] = k.slot, k.model
			u.add(w.slotUse[k])
		}
		b.Queue(sqlSlotUsage, slot, model, u.requests, u.failures, u.prompt, u.candidates, u.total)
	}
	if n := len(w.accessSlots); n > 0 {
		keys := slices.SortedFunc(maps.Keys(w.accessSlots), func(a, b accessSlotKey) int {
			return cmp.Or(cmp.Compare(a.slot, b.slot), cmp.Compare(a.accessKeyID, b.accessKeyID),
				strings.Compare(a.model, b.model), strings.Compare(a.limitHit, b.limitHit))
		})
		slot, id, model, limit := make([]int64, n), make([]int64, n), make([]string, n), make([]string, n)
		var u usageArrays
		for i, k := range keys {
			slot[i], id[i], model[i], limit[i] = k.slot, k.accessKeyID, k.model, k.limitHit
			u.add(w.accessSlots[k])
		}
		b.Queue(sqlAccessSlotUsage, slot, id, model, limit, u.requests, u.failures, u.prompt, u.candidates, u.total)
	}
	if n := len(w.keyUsage); n > 0 {
		ids := slices.Sorted(maps.Keys(w.keyUsage))
		requests, failed, last := make([]int64, n), make([]int64, n), make([]int64, n)
		for i, id := range ids {
			u := w.keyUsage[id]
			requests[i], failed[i], last[i] = u.requests, u.failed, u.lastUsed
		}
		b.Queue(sqlKeyUsage, ids, requests, failed, last)
	}
	if n := len(w.accessUse); n > 0 {
		ids := slices.Sorted(maps.Keys(w.accessUse))
		last := make([]int64, n)
		for i, id := range ids {
			last[i] = w.accessUse[id]
		}
		b.Queue(sqlAccessKeyUsed, ids, last)
	}
}

// queueKeyState queues the statements writing the saved key states, cooldowns and learned
// project labels.
func queueKeyState(b *pgx.Batch, states []store.KeyState, cools []cooldownKey, until []int64, projects []store.KeyProject) {
	if n := len(states); n > 0 {
		slices.SortFunc(states, func(a, b store.KeyState) int { return cmp.Compare(a.KeyID, b.KeyID) })
		ids, disabled, reason, failures, lastErr := make([]int64, n), make([]bool, n), make([]string, n),
			make([]int32, n), make([]string, n)
		for i, k := range states {
			ids[i], disabled[i], failures[i] = k.KeyID, k.Disabled, int32(k.Failures)
			if k.Disabled {
				reason[i] = clean(k.Reason)
			}
			lastErr[i] = store.Truncate(clean(k.LastError), store.MaxTextLen)
		}
		b.Queue(sqlKeyState, ids, disabled, reason, failures, lastErr)
	}
	if n := len(cools); n > 0 {
		ids, model := make([]int64, n), make([]string, n)
		for i, c := range cools {
			ids[i], model[i] = c.keyID, c.model
		}
		b.Queue(sqlCooldown, ids, model, until)
	}
	if n := len(projects); n > 0 {
		ids, project := make([]int64, n), make([]string, n)
		for i, p := range projects {
			ids[i], project[i] = p.KeyID, p.Project
		}
		b.Queue(sqlLearnedProject, ids, project)
	}
}

// usageArrays are the sums of several rollup rows, column by column.
type usageArrays struct {
	requests, failures, prompt, candidates, total []int64
}

func (a *usageArrays) add(u store.Usage) {
	a.requests = append(a.requests, u.Requests)
	a.failures = append(a.failures, u.Failures)
	a.prompt = append(a.prompt, u.PromptTokens)
	a.candidates = append(a.candidates, u.CandidatesTokens)
	a.total = append(a.total, u.TotalTokens)
}

// copySource feeds entries to CopyFrom, one reused slice of values per row (pgx encodes each
// row before asking for the next).
type copySource struct {
	rows   []*entry
	values []any
	row    func([]any, *entry) []any
	i      int
}

func (c *copySource) Next() bool {
	c.i++
	return c.i <= len(c.rows)
}

func (c *copySource) Values() ([]any, error) {
	c.values = c.row(c.values[:0], c.rows[c.i-1])
	return c.values, nil
}

func (c *copySource) Err() error { return nil }

func appendRequest(v []any, e *entry) []any {
	return append(v, e.time, e.accessKeyID, e.keyID, e.method, e.path, e.model, e.stream,
		e.status, e.attempts, e.latencyUS, e.ttfbUS, e.prompt, e.candidates, e.thoughts, e.total, e.text,
		e.limitHit)
}

func appendError(v []any, e *entry) []any {
	return append(v, e.time, e.keyID, e.accessKeyID, e.model, e.path, e.status, e.text)
}

// addTo returns u with the request row e added (a failure when its status is not 2xx or 3xx).
func (e *entry) addTo(u store.Usage) store.Usage {
	u.Requests++
	if store.Failed(int(e.status)) {
		u.Failures++
	}
	u.PromptTokens += e.prompt
	u.CandidatesTokens += e.candidates
	u.TotalTokens += e.total
	return u
}
