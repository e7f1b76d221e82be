package postgres

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// waitLong bounds how long a test waits for something that happens in the background; it
// is no timing assertion, only a bound on a hang.
const waitLong = 20 * time.Second

// nextEvent returns the next event of ch, failing t when none comes or ch is closed.
func nextEvent(t testing.TB, ch <-chan store.Event, what string) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("%s: the channel was closed", what)
		}
		return ev
	case <-time.After(waitLong):
		t.Fatalf("%s: no event", what)
	}
	return store.Event{}
}

// listening returns the events of s once its listener is up: the first event is the
// EventResync of the first LISTEN.
func listening(t testing.TB, s *Store) <-chan store.Event {
	t.Helper()
	ch := s.Events()
	if ev := nextEvent(t, ch, "first event"); ev.Kind != store.EventResync {
		t.Fatalf("first event %+v, want a resync", ev)
	}
	return ch
}

// terminate ends the backend pid from another connection, as an operator or a failover
// would, and waits until it is gone.
func terminate(t testing.TB, url string, pid uint32) {
	t.Helper()
	if pid == 0 {
		t.Fatal("no backend to terminate")
	}
	p := rawPool(t, url)
	ctx := context.Background()
	if _, err := p.Exec(ctx, `SELECT pg_terminate_backend($1)`, int32(pid)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	for {
		var n int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, int32(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d still there", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually polls cond until it holds, failing t after waitLong.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, waitLong)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClusterEventsReachOthersInOrderNotSelf(t *testing.T) {
	url := pgtest.URL(t)
	a, b := openTest(t, url, nil, nil), openTest(t, url, nil, nil)
	evA, evB := listening(t, a), listening(t, b)
	ctx := context.Background()

	sent := []store.Event{
		{Kind: store.EventCooldown, KeyID: 7, Model: "gemini-2.5-flash", Until: 1_800_000_000_000},
		{Kind: store.EventKeyState, KeyID: 7, Disabled: true},
		{Kind: store.EventProject, KeyID: 8, Project: "proj-1"},
		{Kind: store.EventKeys},
		{Kind: store.EventAccessKeys},
		{Kind: store.EventSettings},
	}
	for i := range 100 {
		sent = append(sent, store.Event{Kind: store.EventCooldown, KeyID: int64(100 + i), Model: "m", Until: int64(i)})
	}
	for _, ev := range sent {
		if err := a.Announce(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range sent {
		if got := nextEvent(t, evB, fmt.Sprintf("event %d", i)); got != want {
			t.Fatalf("B's event %d = %+v, want %+v", i, got, want)
		}
	}
	// A's own announcements were committed before B received them, so before B's marker:
	// were they delivered to A, they would come first.
	marker := store.Event{Kind: store.EventSettings}
	if err := b.Announce(ctx, marker); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, evA, "B's marker"); got != marker {
		t.Fatalf("A received %+v before B's marker: its own announcement?", got)
	}
	select {
	case ev := <-evB:
		t.Fatalf("B received its own announcement %+v", ev)
	default:
	}
	if d := a.AnnouncementsDropped() + b.AnnouncementsDropped(); d != 0 {
		t.Errorf("%d announcements dropped", d)
	}
}

func TestClusterCloseEndsEvents(t *testing.T) {
	s := newStore(t, nil)
	ch := listening(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range ch { // drained, then closed
	}
	if _, ok := <-s.Events(); ok {
		t.Error("Events after Close is open")
	}
	if err := s.Announce(context.Background(), store.Event{Kind: store.EventKeys}); err == nil {
		t.Error("Announce after Close worked")
	}
	if s.Leader(context.Background()) {
		t.Error("a closed store leads")
	}
}

func TestClusterAnnouncementsSentBeforeClose(t *testing.T) {
	url := pgtest.URL(t)
	a, b := openTest(t, url, nil, nil), openTest(t, url, nil, nil)
	evB := listening(t, b)
	ctx := context.Background()
	for i := range 50 {
		if err := a.Announce(ctx, store.Event{Kind: store.EventCooldown, KeyID: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if ev := nextEvent(t, evB, "announcement queued before Close"); ev.KeyID != int64(i+1) {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
}

func TestClusterLeaderIsExclusiveAndMovesWhenItsSessionEnds(t *testing.T) {
	url := pgtest.URL(t)
	noWait := func(o *options) { o.cluster.leaderRetry = 0 }
	a, b, c := openTest(t, url, nil, noWait), openTest(t, url, nil, noWait), openTest(t, url, nil, noWait)
	ctx := context.Background()
	if !a.Leader(ctx) {
		t.Fatal("the first to ask does not lead")
	}
	for range 3 {
		if b.Leader(ctx) || c.Leader(ctx) || !a.Leader(ctx) {
			t.Fatal("the leadership is not exclusive")
		}
	}
	// The server notices a leader that vanished (no FIN) within seconds, not hours.
	var idle string
	if err := a.cl.leader.conn.QueryRow(ctx, `SHOW tcp_keepalives_idle`).Scan(&idle); err != nil || idle != "10" {
		t.Errorf("the leader's session: tcp_keepalives_idle %q, %v", idle, err)
	}

	// The leader's session ends (the server killed it, or the network lost it): the next call
	// of another instance takes the leadership, and the old leader knows it lost it.
	terminate(t, url, a.cl.leader.conn.PgConn().PID())
	if !b.Leader(ctx) {
		t.Fatal("B did not take the leadership of a dead session")
	}
	if a.Leader(ctx) || c.Leader(ctx) {
		t.Fatal("two leaders")
	}
	// Close gives it up at once.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !c.Leader(ctx) {
		t.Fatal("C did not take the leadership B gave up")
	}
	if a.Leader(ctx) || !c.Leader(ctx) {
		t.Fatal("the leadership is not exclusive")
	}
}

func TestClusterLeaderTriesAtMostOncePerInterval(t *testing.T) {
	url := pgtest.URL(t)
	a, b := openTest(t, url, nil, nil), openTest(t, url, nil, func(o *options) { o.cluster.leaderRetry = time.Hour })
	ctx := context.Background()
	if !a.Leader(ctx) {
		t.Fatal("A does not lead")
	}
	if b.Leader(ctx) {
		t.Fatal("B leads too")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// The lock is free, but B tried less than its interval ago: it does not try again yet.
	for range 5 {
		if b.Leader(ctx) {
			t.Fatal("B tried again within its interval")
		}
	}
	b.cl.leader.mu.Lock()
	b.cl.leader.lastTry = time.Time{}
	b.cl.leader.mu.Unlock()
	if !b.Leader(ctx) {
		t.Fatal("B did not take the free leadership once its interval passed")
	}
}

func TestClusterListenerResyncsAfterItsConnectionIsKilled(t *testing.T) {
	url := pgtest.URL(t)
	obs, logs := observer.New(zapcore.InfoLevel)
	a, b := openTest(t, url, nil, nil), openTest(t, url, zap.New(obs), nil)
	evB := listening(t, b)
	terminate(t, url, b.cl.listen.Load())
	if ev := nextEvent(t, evB, "after the kill"); ev.Kind != store.EventResync {
		t.Fatalf("after the listener was killed: %+v, want a resync", ev)
	}
	// Listening again: announcements flow.
	want := store.Event{Kind: store.EventKeyState, KeyID: 3, Disabled: true}
	if err := a.Announce(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, evB, "after the resync"); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if logs.FilterMessageSnippet("listening for the other instances' changes broke").Len() == 0 &&
		logs.FilterMessageSnippet("connection listening for the other instances' changes broke").Len() == 0 {
		t.Error("the break was not logged")
	}
}

func TestClusterListenerPingsASilentConnection(t *testing.T) {
	url := pgtest.URL(t)
	a := openTest(t, url, nil, nil)
	b := openTest(t, url, nil, func(o *options) { o.cluster.idlePing = 20 * time.Millisecond })
	evB := listening(t, b)
	pid := b.cl.listen.Load()
	time.Sleep(200 * time.Millisecond) // several idle pings
	if got := b.cl.listen.Load(); got != pid {
		t.Fatalf("a silent but healthy connection was replaced (%d, now %d)", pid, got)
	}
	want := store.Event{Kind: store.EventSettings}
	if err := a.Announce(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, evB, "after idle pings"); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// TestClusterRidesOutAStoppedServer: while the server is down, announcements are dropped
// (counted, logged once), not queued without end nor blocking; nobody leads; once it is
// back, the listeners resync and announcements and the leadership work again.
func TestClusterRidesOutAStoppedServer(t *testing.T) {
	srv := pgtest.NewServer(t)
	url := srv.URL(t) + "&connect_timeout=2"
	obs, logs := observer.New(zapcore.InfoLevel)
	fast := func(o *options) {
		o.cluster.leaderRetry = 0
		o.cluster.maxBackoff = 200 * time.Millisecond
	}
	a, b := openTest(t, url, zap.New(obs), fast), openTest(t, url, nil, fast)
	evB := listening(t, b)
	ctx := context.Background()
	if !a.Leader(ctx) {
		t.Fatal("A does not lead")
	}

	srv.Stop(t)
	const n = 200
	start := time.Now()
	for i := range n {
		if err := a.Announce(ctx, store.Event{Kind: store.EventCooldown, KeyID: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d announcements to a stopped server took %s to queue", n, time.Since(start))
	eventually(t, "every announcement to the stopped server counted as dropped", func() bool { return a.AnnouncementsDropped() == n })
	if got := logs.FilterMessageSnippet("announcing changes to the other instances failed").Len(); got != 1 {
		t.Errorf("the failures were logged %d times, want once", got)
	}
	if a.Leader(ctx) || b.Leader(ctx) {
		t.Error("an instance leads while the database is down")
	}

	srv.Start(t)
	for {
		ev := nextEvent(t, evB, "resync after the restart")
		if ev.Kind == store.EventResync {
			break
		}
		t.Fatalf("before the resync: %+v (sent while the server was down?)", ev)
	}
	want := store.Event{Kind: store.EventKeys}
	if err := a.Announce(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, evB, "after the restart"); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	eventually(t, "the recovery logged", func() bool {
		return logs.FilterMessageSnippet("announcing changes to the other instances works again").Len() == 1
	})
	eventually(t, "someone leads again", func() bool { return a.Leader(ctx) || b.Leader(ctx) })
}

// BenchmarkClusterPropagation measures one announcement's way from one instance to another:
// Announce on A until B's Events delivers it (ns/op is the latency of one, sent alone); the
// p50 and p99 are reported as metrics.
func BenchmarkClusterPropagation(b *testing.B) {
	url := pgtest.URL(b)
	x, y := openTest(b, url, nil, nil), openTest(b, url, nil, nil)
	ev := listening(b, y)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if err := x.Announce(ctx, store.Event{Kind: store.EventCooldown, KeyID: int64(i + 1)}); err != nil {
			b.Fatal(err)
		}
		if got := nextEvent(b, ev, "propagation"); got.KeyID != int64(i+1) {
			b.Fatalf("got %+v", got)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
