package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// maxAttempts bounds retries of a batch failing for a reason other than a busy database; such a
// failure is unlikely to heal and must not stall logging forever.
const maxAttempts = 10

// LogRequest queues r for writing and returns at once. If the queue is full, or the store is
// closed, the row is dropped, counted (see Dropped) and a warning logged (at most once a second).
func (s *Store) LogRequest(r store.RequestLog) {
	s.w.enqueue(entry{
		kind:        kindRequest,
		time:        toMS(r.Time),
		accessKeyID: r.AccessKeyID,
		keyID:       r.KeyID,
		method:      store.Truncate(r.Method, store.MaxMethodLen),
		path:        store.Truncate(r.Path, store.MaxPathLen),
		model:       store.Truncate(r.Model, store.MaxModelLen),
		stream:      r.Stream,
		status:      int32(r.Status),
		attempts:    int32(r.Attempts),
		latencyUS:   r.Latency.Microseconds(),
		ttfbUS:      r.TTFB.Microseconds(),
		prompt:      r.PromptTokens,
		candidates:  r.CandidatesTokens,
		thoughts:    r.ThoughtsTokens,
		total:       r.TotalTokens,
		text:        store.Truncate(r.Error, store.MaxTextLen),
		limitHit:    store.Truncate(r.LimitHit, store.MaxLimitLen),
	})
}

// LogError queues e for writing and returns at once, under the same rules as LogRequest.
func (s *Store) LogError(e store.ErrorLog) {
	s.w.enqueue(entry{
		kind:        kindError,
		time:        toMS(e.Time),
		keyID:       e.KeyID,
		accessKeyID: e.AccessKeyID,
		model:       store.Truncate(e.Model, store.MaxModelLen),
		path:        store.Truncate(e.Path, store.MaxPathLen),
		status:      int32(e.Status),
		text:        store.Truncate(e.Message, store.MaxTextLen),
	})
}

// SaveKeyState records k for writing and returns at once. States are kept per key, newest
// wins, and are never dropped.
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
	w.cooldowns[cooldownKey{c.KeyID, c.Model}] = toMS(c.Until)
	w.stateMu.Unlock()
	w.wake()
}

// Flush blocks until everything queued or saved before the call is committed. After Close it
// returns at once.
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
// was closed, or (after repeated non-transient database errors) they could not be written.
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

type cooldownRow struct {
	cooldownKey
	until int64
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
	db     *sql.DB
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
	rows        []entry
	flushes     []chan struct{}
	stateBuf    []store.KeyState
	coolBuf     []cooldownRow
	projBuf     []store.KeyProject
	keyUsage    map[int64]keyUsage
	slotUse     map[slotKey]store.Usage
	accessSlots map[accessSlotKey]store.Usage // the batch's sums for access_key_usage
	args        []any
	reqs        []*entry
	errs        []*entry
	accessUse   map[int64]int64
}

func newWriter(db *sql.DB, logger *zap.Logger, o options) *writer {
	w := &writer{
		db:          db,
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
// waiting Flush calls. Rows are kept across retries: a busy database (another process writing)
// is waited out for as long as it takes, or, once Close is waiting, until closeTimeout has
// passed (then this and later failing batches are dropped and counted).
func (w *writer) write() {
	w.stateMu.Lock()
	w.states, w.inStates = w.inStates, w.states // inStates is empty here
	w.cooldowns, w.inCooldowns = w.inCooldowns, w.cooldowns
	w.projects, w.inProjects = w.inProjects, w.projects
	w.stateMu.Unlock()

	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := w.commit()
		if err == nil {
			w.written.Add(uint64(len(w.rows)))
			break
		}
		w.failedTxs.Add(1)
		if w.giveUpAt.IsZero() && w.stopping() {
			w.giveUpAt = time.Now().Add(w.o.closeTimeout)
		}
		if (!isBusy(err) && attempt >= maxAttempts) || (!w.giveUpAt.IsZero() && time.Now().After(w.giveUpAt)) {
			w.dropped.Add(uint64(len(w.rows)))
			w.logger.Error("giving up writing a batch of logs",
				zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("attempts", attempt))
			w.stateMu.Lock()
			clear(w.inStates)
			clear(w.inCooldowns)
			clear(w.inProjects)
			w.stateMu.Unlock()
			break
		}
		w.logger.Error("writing a batch of logs failed, will retry",
			zap.Error(err), zap.Int("rows", len(w.rows)), zap.Int("attempt", attempt),
			zap.Duration("retry_in", backoff))
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}

	clear(w.rows) // drop string references
	w.rows = w.rows[:0]
	for _, done := range w.flushes {
		close(done)
	}
	clear(w.flushes)
	w.flushes = w.flushes[:0]
}

// commit writes the batch in one transaction. It holds commitMu, and on success empties the
// taken state.
func (w *writer) commit() error {
	w.commitMu.Lock()
	defer w.commitMu.Unlock()

	w.stateMu.Lock()
	w.stateBuf = w.stateBuf[:0]
	for _, k := range w.inStates {
		w.stateBuf = append(w.stateBuf, k)
	}
	w.coolBuf = w.coolBuf[:0]
	for k, until := range w.inCooldowns {
		w.coolBuf = append(w.coolBuf, cooldownRow{k, until})
	}
	w.projBuf = w.projBuf[:0]
	for id, project := range w.inProjects {
		w.projBuf = append(w.projBuf, store.KeyProject{KeyID: id, Project: project})
	}
	w.stateMu.Unlock()

	if len(w.rows) == 0 && len(w.stateBuf) == 0 && len(w.coolBuf) == 0 && len(w.projBuf) == 0 {
		return nil
	}
	if err := w.commitTx(); err != nil {
		return err
	}
	w.stateMu.Lock()
	clear(w.inStates)
	clear(w.inCooldowns)
	clear(w.inProjects)
	w.stateMu.Unlock()
	return nil
}

const (
	// Row inserts; insertRows appends one "(?, ...)" group per row.
	sqlInsertRequest = `INSERT INTO request_logs (time, access_key_id, key_id, method, path, model, stream,
		status, attempts, latency_us, ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens,
		total_tokens, error, limit_hit) VALUES `
	requestColumns = 17
	sqlInsertError = `INSERT INTO error_logs (time, key_id, access_key_id, model, path, status, message) VALUES `
	errorColumns   = 7
	sqlKeyUsage    = `UPDATE keys SET requests = requests + ?, failed_requests = failed_requests + ?,
		last_used_at = MAX(last_used_at, ?) WHERE id = ?`
	sqlAccessKeyUsed = `UPDATE access_keys SET last_used_at = MAX(last_used_at, ?) WHERE id = ?`
	sqlSlotUsage     = `INSERT INTO request_usage (slot, model, requests, failures, prompt_tokens,
		candidates_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (slot, model) DO UPDATE SET requests = requests + excluded.requests,
		failures = failures + excluded.failures, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
		candidates_tokens = candidates_tokens + excluded.candidates_tokens,
		total_tokens = total_tokens + excluded.total_tokens`
	sqlAccessSlotUsage = `INSERT INTO access_key_usage (slot, access_key_id, model, limit_hit, requests,
		failures, prompt_tokens, candidates_tokens, total_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (slot, access_key_id, model, limit_hit) DO UPDATE SET requests = requests + excluded.requests,
		failures = failures + excluded.failures, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
		candidates_tokens = candidates_tokens + excluded.candidates_tokens,
		total_tokens = total_tokens + excluded.total_tokens`
	// The pool never overrides an operator: a manually disabled key keeps status and reason.
	sqlKeyState = `UPDATE keys SET
		status = CASE WHEN manual_disabled THEN status WHEN ? THEN 'disabled' ELSE 'active' END,
		disabled_reason = CASE WHEN manual_disabled THEN disabled_reason WHEN ? THEN ? ELSE '' END,
		failure_count = ?, last_error = ? WHERE id = ?`
	// A cooldown of a key deleted meanwhile is skipped rather than failing the batch on the
	// foreign key.
	sqlCooldown = `INSERT INTO cooldowns (key_id, model, until)
		SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?)
		ON CONFLICT (key_id, model) DO UPDATE SET until = excluded.until`
	// A learned project label fills an empty one only: an operator's label always wins.
	sqlLearnedProject = `UPDATE keys SET project = ? WHERE id = ? AND project = ''`
)

func (w *writer) commitTx() (err error) {
	ctx := context.Background()
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	// Rows go in multi-row INSERTs of up to rowsPerInsert rows: SQLite's per-statement overhead
	// (and database/sql's) dominates single-row inserts.
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
			// The request rows' sums per slot and model go in with them (schema step 4), and
			// per slot, access key, model and limit hit (step 6).
			slot := store.SlotOf(e.time)
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
	if err := w.insertRows(ctx, tx, sqlInsertRequest, requestColumns, reqs, appendRequest); err != nil {
		return err
	}
	if err := w.insertRows(ctx, tx, sqlInsertError, errorColumns, errs, appendError); err != nil {
		return err
	}

	if len(w.slotUse) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlSlotUsage)
		if err != nil {
			return err
		}
		for k, u := range w.slotUse {
			if _, err := stmt.ExecContext(ctx, k.slot, k.model, u.Requests, u.Failures,
				u.PromptTokens, u.CandidatesTokens, u.TotalTokens); err != nil {
				return err
			}
		}
	}
	if len(w.accessSlots) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlAccessSlotUsage)
		if err != nil {
			return err
		}
		for k, u := range w.accessSlots {
			if _, err := stmt.ExecContext(ctx, k.slot, k.accessKeyID, k.model, k.limitHit, u.Requests,
				u.Failures, u.PromptTokens, u.CandidatesTokens, u.TotalTokens); err != nil {
				return err
			}
		}
	}
	if len(w.keyUsage) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlKeyUsage)
		if err != nil {
			return err
		}
		for id, u := range w.keyUsage {
			if _, err := stmt.ExecContext(ctx, u.requests, u.failed, u.lastUsed, id); err != nil {
				return err
			}
		}
	}
	if len(w.accessUse) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlAccessKeyUsed)
		if err != nil {
			return err
		}
		for id, last := range w.accessUse {
			if _, err := stmt.ExecContext(ctx, last, id); err != nil {
				return err
			}
		}
	}
	if len(w.stateBuf) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlKeyState)
		if err != nil {
			return err
		}
		for _, k := range w.stateBuf {
			reason := ""
			if k.Disabled {
				reason = k.Reason
			}
			if _, err := stmt.ExecContext(ctx, k.Disabled, k.Disabled, reason, k.Failures,
				store.Truncate(k.LastError, store.MaxTextLen), k.KeyID); err != nil {
				return err
			}
		}
	}
	if len(w.coolBuf) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlCooldown)
		if err != nil {
			return err
		}
		for _, c := range w.coolBuf {
			if _, err := stmt.ExecContext(ctx, c.keyID, c.model, c.until, c.keyID); err != nil {
				return err
			}
		}
	}
	if len(w.projBuf) > 0 {
		stmt, err := tx.PrepareContext(ctx, sqlLearnedProject)
		if err != nil {
			return err
		}
		for _, p := range w.projBuf {
			if _, err := stmt.ExecContext(ctx, p.Project, p.KeyID); err != nil {
				return err
			}
		}
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rowsPerInsert is the number of rows of one INSERT statement (times 17 columns, well under
// SQLite's limit of 32766 bound parameters).
const rowsPerInsert = 64

func appendRequest(args []any, e *entry) []any {
	return append(args, e.time, e.accessKeyID, e.keyID, e.method, e.path, e.model, e.stream,
		e.status, e.attempts, e.latencyUS, e.ttfbUS, e.prompt, e.candidates, e.thoughts, e.total, e.text,
		e.limitHit)
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

func appendError(args []any, e *entry) []any {
	return append(args, e.time, e.keyID, e.accessKeyID, e.model, e.path, e.status, e.text)
}

// insertRows inserts rows with the INSERT prefix, rowsPerInsert rows per statement.
func (w *writer) insertRows(ctx context.Context, tx *sql.Tx, prefix string, columns int,
	rows []*entry, appendArgs func([]any, *entry) []any) error {
	var full *sql.Stmt
	for len(rows) > 0 {
		n := min(len(rows), rowsPerInsert)
		var stmt *sql.Stmt
		var err error
		if n == rowsPerInsert && full != nil {
			stmt = full
		} else {
			stmt, err = tx.PrepareContext(ctx, insertSQL(prefix, columns, n))
			if err != nil {
				return err
			}
			if n == rowsPerInsert {
				full = stmt
			}
		}
		args := w.args[:0]
		for _, e := range rows[:n] {
			args = appendArgs(args, e)
		}
		_, err = stmt.ExecContext(ctx, args...)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// insertSQL returns prefix followed by n groups of columns placeholders.
func insertSQL(prefix string, columns, n int) string {
	group := "(" + strings.Repeat("?, ", columns-1) + "?)"
	var b strings.Builder
	b.Grow(len(prefix) + n*(len(group)+2))
	b.WriteString(prefix)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(group)
	}
	return b.String()
}
