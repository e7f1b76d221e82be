// Package batch is the batched log writer the SQL engines (store/sqlite, store/postgres) share:
// a bounded queue of log rows that never blocks the caller, runtime key state kept per key
// (newest wins, never dropped), batching by size and interval, Flush and Close, the Written
// and Dropped counters, retries with backoff, and the sums a batch adds to the rollups. What
// is SQL (writing one batch in one transaction) and which errors pass with time are the
// engine's, behind Engine.
package batch

import (
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// Kind is what a queued Entry is.
type Kind uint8

// The kinds of Entry.
const (
	Request Kind = iota + 1 // a request row (store.RequestLog)
	Error                   // an error row (store.ErrorLog)
	flush                   // a Flush marker
)

// Entry is a queued log row: one flat struct for both row kinds, so that queueing allocates
// nothing. Times are unix milliseconds, durations microseconds; an error row keeps its message
// in Text. Text is already cut to the store's limits (and cleaned by Options.Clean).
type Entry struct {
	Time, AccessKeyID, KeyID            int64
	LatencyUS, TTFBUS                   int64
	Prompt, Candidates, Thoughts, Total int64
	Method, Path, Model, Text, LimitHit string
	done                                chan struct{} // flush: closed once committed
	Status, Attempts                    int32
	Kind                                Kind
	Stream                              bool
}

// Cooldown is a saved cooldown of a key for a model, until unix milliseconds.
type Cooldown struct {
	KeyID int64
	Model string
	Until int64
}

// cooldownKey names a cooldown: newest wins per key and model.
type cooldownKey struct {
	keyID int64
	model string
}

// KeyUsage is one batch's contribution to an upstream key's counters.
type KeyUsage struct {
	Requests, Failed, LastUsed int64
}

// SlotKey names a request_usage row: a 15-minute slot (see store.UsageSlot) and a model.
type SlotKey struct {
	Slot  int64
	Model string
}

// AccessSlotKey names an access_key_usage row: a 15-minute slot, an access key, a model and
// the limit that refused the requests ("" for none).
type AccessSlotKey struct {
	Slot, AccessKeyID int64
	Model, LimitHit   string
}

// Batch is what one transaction writes: the log rows, their sums, and the key state saved
// since the last batch. The engine writes all of it or none of it; it must not keep or change
// the batch (Commit may be called again with the same batch after a failure).
type Batch struct {
	Requests, Errors []*Entry // the rows, in the order they were logged

	// Slots sums the request rows per slot and model (table request_usage).
	Slots map[SlotKey]store.Usage
	// AccessSlots sums the request rows with an access key per slot, access key, model and
	// limit hit (table access_key_usage).
	AccessSlots map[AccessSlotKey]store.Usage
	// KeyUsage is what the rows add to each upstream key's counters: a request row counts when
	// its status is below 400 or store.StatusClientClosed (a failed final attempt has its own
	// error row, which counts it as a request and a failure).
	KeyUsage map[int64]KeyUsage
	// AccessUse is the newest row time of each access key, for its last use.
	AccessUse map[int64]int64

	States    []store.KeyState // the newest state of each key (Reason empty unless Disabled)
	Cooldowns []Cooldown       // the newest cooldown of each key and model
	Projects  []store.KeyProject
}

// Rows returns the number of log rows in b.
func (b *Batch) Rows() int { return len(b.Requests) + len(b.Errors) }

// empty reports whether b writes nothing.
func (b *Batch) empty() bool {
	return b.Rows() == 0 && len(b.States) == 0 && len(b.Cooldowns) == 0 && len(b.Projects) == 0
}

// reset empties b, keeping its memory.
func (b *Batch) reset() {
	clear(b.Requests) // drop references to the rows
	clear(b.Errors)
	b.Requests, b.Errors = b.Requests[:0], b.Errors[:0]
	clear(b.Slots) // and to their strings
	clear(b.AccessSlots)
	clear(b.KeyUsage)
	clear(b.AccessUse)
	clear(b.States)
	clear(b.Cooldowns)
	clear(b.Projects)
	b.States, b.Cooldowns, b.Projects = b.States[:0], b.Cooldowns[:0], b.Projects[:0]
}

// add adds the row e to the batch and to its sums.
func (b *Batch) add(e *Entry) {
	switch e.Kind {
	case Request:
		b.Requests = append(b.Requests, e)
		slot := store.SlotOf(e.Time)
		k := SlotKey{slot, e.Model}
		b.Slots[k] = e.addTo(b.Slots[k])
		if e.AccessKeyID != 0 {
			k := AccessSlotKey{slot, e.AccessKeyID, e.Model, e.LimitHit}
			b.AccessSlots[k] = e.addTo(b.AccessSlots[k])
		}
		// A failed final attempt has its own error row, which counts it; only an attempt that
		// got an answer (or was cut short by the client) counts here.
		if e.KeyID != 0 && (e.Status < 400 || e.Status == store.StatusClientClosed) {
			u := b.KeyUsage[e.KeyID]
			u.Requests++
			u.LastUsed = max(u.LastUsed, e.Time)
			b.KeyUsage[e.KeyID] = u
		}
	case Error:
		b.Errors = append(b.Errors, e)
		if e.KeyID != 0 {
			u := b.KeyUsage[e.KeyID]
			u.Requests++
			u.Failed++
			u.LastUsed = max(u.LastUsed, e.Time)
			b.KeyUsage[e.KeyID] = u
		}
	}
	if e.AccessKeyID != 0 {
		b.AccessUse[e.AccessKeyID] = max(b.AccessUse[e.AccessKeyID], e.Time)
	}
}

// addTo returns u with the request row e added (a failure when its status is not 2xx or 3xx).
func (e *Entry) addTo(u store.Usage) store.Usage {
	u.Requests++
	if store.Failed(int(e.Status)) {
		u.Failures++
	}
	u.PromptTokens += e.Prompt
	u.CandidatesTokens += e.Candidates
	u.TotalTokens += e.Total
	return u
}

// RequestValues appends to v the values of the request row e, in the order of the columns
// (time, access_key_id, key_id, method, path, model, stream, status, attempts, latency_us,
// ttfb_us, prompt_tokens, candidates_tokens, thoughts_tokens, total_tokens, error, limit_hit).
func RequestValues(v []any, e *Entry) []any {
	return append(v, e.Time, e.AccessKeyID, e.KeyID, e.Method, e.Path, e.Model, e.Stream,
		e.Status, e.Attempts, e.LatencyUS, e.TTFBUS, e.Prompt, e.Candidates, e.Thoughts, e.Total, e.Text,
		e.LimitHit)
}

// ErrorValues appends to v the values of the error row e, in the order of the columns (time,
// key_id, access_key_id, model, path, status, message).
func ErrorValues(v []any, e *Entry) []any {
	return append(v, e.Time, e.KeyID, e.AccessKeyID, e.Model, e.Path, e.Status, e.Text)
}

// requestEntry is the queued row of r, its text passed through clean and cut to the limits.
func requestEntry(r store.RequestLog, clean func(string) string) Entry {
	return Entry{
		Kind:        Request,
		Time:        sqlkit.ToMS(r.Time),
		AccessKeyID: r.AccessKeyID,
		KeyID:       r.KeyID,
		Method:      store.Truncate(clean(r.Method), store.MaxMethodLen),
		Path:        store.Truncate(clean(r.Path), store.MaxPathLen),
		Model:       store.Truncate(clean(r.Model), store.MaxModelLen),
		Stream:      r.Stream,
		Status:      int32(r.Status),
		Attempts:    int32(r.Attempts),
		LatencyUS:   r.Latency.Microseconds(),
		TTFBUS:      r.TTFB.Microseconds(),
		Prompt:      r.PromptTokens,
		Candidates:  r.CandidatesTokens,
		Thoughts:    r.ThoughtsTokens,
		Total:       r.TotalTokens,
		Text:        store.Truncate(clean(r.Error), store.MaxTextLen),
		LimitHit:    store.Truncate(clean(r.LimitHit), store.MaxLimitLen),
	}
}

// errorEntry is the queued row of e, under the rules of requestEntry.
func errorEntry(e store.ErrorLog, clean func(string) string) Entry {
	return Entry{
		Kind:        Error,
		Time:        sqlkit.ToMS(e.Time),
		KeyID:       e.KeyID,
		AccessKeyID: e.AccessKeyID,
		Model:       store.Truncate(clean(e.Model), store.MaxModelLen),
		Path:        store.Truncate(clean(e.Path), store.MaxPathLen),
		Status:      int32(e.Status),
		Text:        store.Truncate(clean(e.Message), store.MaxTextLen),
	}
}
