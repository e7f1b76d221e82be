package gateway

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// hub is an in-process stand-in for the store's cluster channel (PostgreSQL's LISTEN/NOTIFY
// and advisory lock): every member's announcement reaches every other member, and the first
// member to ask leads until it leaves.
type hub struct {
	mu      sync.Mutex
	members []*member
	leader  *member
}

// member is one core's store, with the hub as its Cluster.
type member struct {
	store.Store
	hub    *hub
	events chan store.Event
}

func (h *hub) join(s store.Store) store.Store {
	m := &member{Store: s, hub: h, events: make(chan store.Event, 64)}
	h.mu.Lock()
	h.members = append(h.members, m)
	h.mu.Unlock()
	return m
}

func (m *member) Announce(_ context.Context, ev store.Event) error {
	m.hub.mu.Lock()
	defer m.hub.mu.Unlock()
	for _, o := range m.hub.members {
		if o != m {
			o.events <- ev
		}
	}
	return nil
}

func (m *member) Events() <-chan store.Event { return m.events }

func (m *member) Leader(context.Context) bool {
	m.hub.mu.Lock()
	defer m.hub.mu.Unlock()
	if m.hub.leader == nil {
		m.hub.leader = m
	}
	return m.hub.leader == m
}

// leave makes m's leadership free, as a dead instance's session ends.
func (m *member) leave() {
	m.hub.mu.Lock()
	defer m.hub.mu.Unlock()
	if m.hub.leader == m {
		m.hub.leader = nil
	}
}

// eventually polls cond for up to 5 s (announcements are applied in the background).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClusterSharesHotState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shared.db")
	h := &hub{}
	fake := fakegemini.New()
	keys := proxyKeys(2)
	start := func() testCore {
		return startCore(t, coreSetup{path: path, upstream: fake, wrapStore: h.join},
			&Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: keys})
	}
	a, b := start(), start()
	urlA := serveCore(t, a.c, nil, "")
	ctx := context.Background()
	stored, err := a.c.store.Keys(ctx)
	if err != nil || len(stored) != 2 {
		t.Fatalf("keys: %v %v", stored, err)
	}
	id := map[string]int64{}
	for _, k := range stored {
		id[k.Secret] = k.ID
	}

	// A quota answer met on A cools the key down on B too.
	fake.SetKey(keys[0], fakegemini.QuotaMinute)
	for range 2 {
		req, _ := http.NewRequest("POST", urlA+genPath("gemini-2.5-flash"), strings.NewReader(helloBody))
		req.Header.Set("x-goog-api-key", testAccessKey)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	eventually(t, "B sees the cooldown A met", func() bool {
		for _, k := range b.c.pool.Keys(time.Now()) {
			if k.ID == id[keys[0]] && len(k.Cooldowns) > 0 {
				return true
			}
		}
		return false
	})

	// An operator's disable on A, and an access key made on A, work on B.
	if err := (adminBackend{a.c}).SetKeyEnabled(ctx, id[keys[1]], false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B sees the key A disabled", func() bool {
		for _, k := range b.c.pool.Keys(time.Now()) {
			if k.ID == id[keys[1]] {
				return k.Disabled
			}
		}
		return false
	})
	if _, err := (adminBackend{a.c}).AddAccessKey(ctx, tenantKey, "made on A", tenant.Policy{RPM: 5}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B knows the access key made on A", func() bool {
		k := (*b.c.accessKeys.Load())[store.HashSecret(tenantKey)]
		return k != nil && k.policy.RPM == 5
	})
	// A setting changed on A applies on B.
	if _, err := (adminBackend{a.c}).UpdateSettings(ctx, map[string]string{setMaxRetries: "7"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B's settings follow A's", func() bool { return b.c.settings.Load().maxRetries == 7 })
	// Re-enabled on B: A follows.
	if err := (adminBackend{b.c}).SetKeyEnabled(ctx, id[keys[1]], true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A sees the key B enabled", func() bool {
		for _, k := range a.c.pool.Keys(time.Now()) {
			if k.ID == id[keys[1]] {
				return !k.Disabled
			}
		}
		return false
	})

	// One instance leads the scheduled jobs; when it leaves, the next to ask leads.
	if !a.c.leads(ctx) || b.c.leads(ctx) {
		t.Fatalf("leadership: A %v, B %v; want A only", a.c.leads(ctx), b.c.leads(ctx))
	}
	a.c.store.(*member).leave()
	if !b.c.leads(ctx) || a.c.leads(ctx) {
		t.Errorf("after A left: A %v, B %v; want B only", a.c.leads(ctx), b.c.leads(ctx))
	}
}
