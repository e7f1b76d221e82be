package batch

import (
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// recorder is an Engine keeping what each batch it commits holds. The engines' own tests (and
// store/storetest, which both run) check what a batch writes to a database; this one checks
// what the writer hands an engine.
type recorder struct {
	mu      sync.Mutex
	batches []recorded
}

type recorded struct {
	rows      int
	states    []store.KeyState
	cooldowns []Cooldown
	projects  []store.KeyProject
}

func (r *recorder) Commit(b *Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, recorded{b.Rows(), slices.Clone(b.States), slices.Clone(b.Cooldowns), slices.Clone(b.Projects)})
	return nil
}

func (r *recorder) Transient(error) bool { return false }

// TestSavedStateIsCoalesced: key state saved while the writer is held is kept per key (and per
// key and model, for cooldowns), newest wins, so the batch after carries one of each.
func TestSavedStateIsCoalesced(t *testing.T) {
	hold := make(chan struct{})
	r := &recorder{}
	w := New(r, zap.NewNop(), Options{QueueSize: 16, BatchSize: 16, Interval: time.Millisecond, MaxAttempts: 1, Hold: hold})
	defer w.Close()
	l := w.Log()
	for i := range 100 {
		l.SaveKeyState(store.KeyState{KeyID: 1, Disabled: i%2 == 1, Reason: "r", Failures: i})
		l.SaveCooldown(store.Cooldown{KeyID: 1, Model: "m", Until: time.UnixMilli(int64(1000 + i))})
	}
	l.SaveKeyState(store.KeyState{KeyID: 2, Reason: "kept only when disabled", Failures: 1})
	l.SaveKeyProject(1, "first")
	l.SaveKeyProject(1, " second ")
	l.SaveKeyProject(2, "not a label")
	l.LogRequest(store.RequestLog{Status: 200})
	close(hold)
	l.Flush()

	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.batches) != 1 {
		t.Fatalf("%d batches, want 1: %+v", len(r.batches), r.batches)
	}
	b := r.batches[0]
	slices.SortFunc(b.states, func(x, y store.KeyState) int { return int(x.KeyID - y.KeyID) })
	want := []store.KeyState{{KeyID: 1, Disabled: true, Reason: "r", Failures: 99}, {KeyID: 2, Failures: 1}}
	if b.rows != 1 || !slices.Equal(b.states, want) {
		t.Errorf("batch of %d rows with states %+v; want 1 row and %+v", b.rows, b.states, want)
	}
	if !slices.Equal(b.cooldowns, []Cooldown{{KeyID: 1, Model: "m", Until: 1099}}) {
		t.Errorf("cooldowns %+v, want the newest only", b.cooldowns)
	}
	if !slices.Equal(b.projects, []store.KeyProject{{KeyID: 1, Project: "second"}}) {
		t.Errorf("labels %+v, want the newest valid one, trimmed", b.projects)
	}
}
