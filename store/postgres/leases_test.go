package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// ledger is the Store as a tenant.Ledger, converted field for field as the gateway does.
type ledger struct{ s *Store }

func (l ledger) Lease(ctx context.Context, r tenant.LeaseRequest) (tenant.LeaseGrant, error) {
	g, err := l.s.Lease(ctx, store.LeaseRequest(r))
	return tenant.LeaseGrant(g), err
}

func (l ledger) Settle(ctx context.Context, instance string, ttl time.Duration, items []tenant.Settlement) error {
	in := make([]store.Settlement, len(items))
	for i, it := range items {
		in[i] = store.Settlement(it)
	}
	return l.s.Settle(ctx, instance, ttl, in)
}

// fakeClock is a clock a test moves; it starts at the real time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// instance is one gateway instance's limiter on its own connection pool to the database.
type instance struct {
	l  *tenant.Limiter
	st *Store
}

// instances starts n limiters in cluster mode on the database at url (each with its own
// pool), all with policies; cfg sets the cluster options (its Ledger is filled in). With sync
// true each runs Sync every SyncEvery in the background, as the gateway does; every one is
// released and closed when the test ends.
func instances(t *testing.T, url string, n int, policies map[int64]*tenant.Policy, cfg tenant.Cluster, sync bool) []instance {
	t.Helper()
	out := make([]instance, n)
	for i := range out {
		st := openTest(t, url, nil, nil)
		l := tenant.NewLimiter()
		l.SetLocation(time.UTC)
		c := cfg
		c.Ledger = ledger{st}
		l.SetCluster(c)
		l.Set(policies)
		out[i] = instance{l: l, st: st}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			if !sync {
				<-stop
				return
			}
			tick := time.NewTicker(l.SyncEvery())
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					l.Sync(ctx)
					cancel()
				}
			}
		}()
		t.Cleanup(func() {
			close(stop)
			<-done
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l.Release(ctx)
		})
	}
	return out
}

// burst sends per requests to each instance at once, all in parallel, and returns how many
// were admitted; each admitted one is done at once, with tokens.
func burst(insts []instance, id int64, per int, tokens int64) (admitted int64, refusals []*tenant.Refusal) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var n atomic.Int64
	start := make(chan struct{})
	for _, in := range insts {
		for range per {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				now := time.Now()
				tk, r := in.l.Admit(id, now)
				if r != nil {
					mu.Lock()
					refusals = append(refusals, r)
					mu.Unlock()
					return
				}
				n.Add(1)
				tk.Done(tokens, time.Now())
			}()
		}
	}
	close(start)
	wg.Wait()
	return n.Load(), refusals
}

// TestLeasesRPMExact: rpm 30 shared by three instances, 90 requests at once spread over them:
// exactly 30 pass, and the others are refused for rpm (none for want of the ledger).
func TestLeasesRPMExact(t *testing.T) {
	url := pgtest.URL(t)
	insts := instances(t, url, 3, map[int64]*tenant.Policy{7: {RPM: 30}}, tenant.Cluster{}, true)
	admitted, refusals := burst(insts, 7, 30, 0)
	if admitted != 30 {
		t.Fatalf("admitted %d of 90 under rpm 30 shared by three instances, want exactly 30", admitted)
	}
	for _, r := range refusals {
		if r.Unavailable || len(r.Violations) != 1 || r.Violations[0].Limit != tenant.LimitRPM {
			t.Fatalf("refusal %+v, want rpm", *r)
		}
	}
	// The ledger counts exactly the 30 units used, once the slices are settled.
	for _, in := range insts {
		if err := in.l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var units int64
	if err := insts[0].st.pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(units), 0) FROM limit_grants WHERE access_key_id = 7 AND kind = 'rpm'`).Scan(&units); err != nil {
		t.Fatal(err)
	}
	if units != 30 {
		t.Errorf("the ledger counts %d rpm units, want the 30 used", units)
	}
}

// TestLeasesRPDExact: rpd 30 shared by three instances, 90 requests at once: exactly 30.
func TestLeasesRPDExact(t *testing.T) {
	url := pgtest.URL(t)
	insts := instances(t, url, 3, map[int64]*tenant.Policy{8: {RPD: 30}}, tenant.Cluster{}, true)
	admitted, refusals := burst(insts, 8, 30, 0)
	if admitted != 30 {
		t.Fatalf("admitted %d of 90 under rpd 30 shared by three instances, want exactly 30", admitted)
	}
	for _, r := range refusals {
		if r.Unavailable || r.Violations[0].Limit != tenant.LimitRPD {
			t.Fatalf("refusal %+v, want rpd", *r)
		}
	}
	// A fourth instance started later finds the day used up.
	late := instances(t, url, 1, map[int64]*tenant.Policy{8: {RPD: 30}}, tenant.Cluster{}, true)
	if _, r := late[0].l.Admit(8, time.Now()); r == nil || r.Violations[0].Limit != tenant.LimitRPD {
		t.Fatalf("a new instance admitted a request of a day used up: %+v", r)
	}
}

// TestLeasesRPDSeededFromLog: the day's counter of the cluster starts from the request log's
// sums, as one instance's counts do at a start.
func TestLeasesRPDSeededFromLog(t *testing.T) {
	url := pgtest.URL(t)
	st := openTest(t, url, nil, nil)
	now := time.Now()
	for range 4 {
		st.LogRequest(RequestLog{Time: now, AccessKeyID: 9, Status: 200})
	}
	st.LogRequest(RequestLog{Time: now, AccessKeyID: 9, Status: 429, LimitHit: tenant.LimitRPM}) // refused: not counted
	waitLogged(t, st, 5)
	insts := instances(t, url, 2, map[int64]*tenant.Policy{9: {RPD: 10}}, tenant.Cluster{}, true)
	admitted, _ := burst(insts, 9, 10, 0)
	if admitted != 6 {
		t.Fatalf("admitted %d, want the 6 the day's 4 logged requests leave of rpd 10", admitted)
	}
}

// waitLogged waits until n request rows are written.
func waitLogged(t *testing.T, st *Store, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM request_logs`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d request rows written, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLeasesConcurrency: concurrency 5 shared by three instances under parallel load: never
// more than 5 in flight at once (counted by the requests themselves), and once they end the
// slots come back: one instance can then hold all 5.
func TestLeasesConcurrency(t *testing.T) {
	url := pgtest.URL(t)
	insts := instances(t, url, 3, map[int64]*tenant.Policy{10: {Concurrency: 5}}, tenant.Cluster{}, true)
	var inflight, peak, admitted atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(1500 * time.Millisecond)
	for _, in := range insts {
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					tk, r := in.l.Admit(10, time.Now())
					if r != nil {
						if r.Unavailable {
							t.Errorf("refused for want of the ledger: %+v", *r)
							return
						}
						time.Sleep(time.Millisecond)
						continue
					}
					n := inflight.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					admitted.Add(1)
					time.Sleep(2 * time.Millisecond)
					inflight.Add(-1)
					tk.Done(0, time.Now())
				}
			}()
		}
	}
	wg.Wait()
	if p := peak.Load(); p > 5 {
		t.Fatalf("%d requests in flight at once under concurrency 5 shared by three instances", p)
	}
	if admitted.Load() < 5 {
		t.Fatalf("only %d requests admitted", admitted.Load())
	}
	t.Logf("%d requests admitted, at most %d in flight", admitted.Load(), peak.Load())

	// The slots come back within a lease lifetime (plus a Sync) of being idle: one instance
	// then holds five requests at once.
	var tickets []tenant.Ticket
	end := time.Now().Add(10 * time.Second)
	for len(tickets) < 5 {
		tk, r := insts[0].l.Admit(10, time.Now())
		if r != nil {
			if time.Now().After(end) {
				t.Fatalf("%d slots of 5 came back to one instance after the load: %+v", len(tickets), *r)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		tickets = append(tickets, tk)
	}
	if _, r := insts[1].l.Admit(10, time.Now()); r == nil || r.Violations[0].Limit != tenant.LimitConcurrency {
		t.Fatalf("a sixth request in flight was admitted by another instance: %+v", r)
	}
	for _, tk := range tickets {
		tk.Done(0, time.Now())
	}
}

// TestLeasesSlotsOfADeadInstance: the slots of an instance that stops renewing its heartbeat
// come back after the slot TTL, not before.
func TestLeasesSlotsOfADeadInstance(t *testing.T) {
	url := pgtest.URL(t)
	cfg := tenant.Cluster{SlotTTL: 2 * time.Second}
	pol := map[int64]*tenant.Policy{11: {Concurrency: 2}}
	dead := instances(t, url, 1, pol, cfg, false) // never syncs: its heartbeat lapses
	live := instances(t, url, 1, pol, cfg, true)
	for range 2 {
		if _, r := dead[0].l.Admit(11, time.Now()); r != nil {
			t.Fatal(*r)
		}
	}
	if _, r := live[0].l.Admit(11, time.Now()); r == nil {
		t.Fatal("a third request in flight admitted under concurrency 2")
	}
	// The server has run for longer than the TTL by now, or will have; the dead instance's
	// heartbeat lapses 2 s after its last grant.
	end := time.Now().Add(15 * time.Second)
	for {
		tk, r := live[0].l.Admit(11, time.Now())
		if r == nil {
			tk.Done(0, time.Now())
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the slots of an instance whose heartbeat lapsed never came back: %+v", *r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLeasesIdleReturn: units an instance leased and left unused go back after the lease
// lifetime, and another instance then uses them; rpd 10 is never exceeded.
func TestLeasesIdleReturn(t *testing.T) {
	url := pgtest.URL(t)
	clock := newFakeClock()
	cfg := tenant.Cluster{Share: 0.5, Clock: clock.Now} // slices of up to 5
	insts := instances(t, url, 2, map[int64]*tenant.Policy{12: {RPD: 10}}, cfg, false)
	a, b := insts[0].l, insts[1].l
	// Slices used up at once double: 1, 2, then 4, of which A uses one.
	for range 4 {
		if _, r := a.Admit(12, time.Now()); r != nil {
			t.Fatal(*r)
		}
	}
	// The ledger granted 7: B gets the 3 left.
	for i := range 4 {
		_, r := b.Admit(12, time.Now())
		if (r == nil) != (i < 3) {
			t.Fatalf("B's request %d: refusal %+v; want 3 admitted, then refused", i, r)
		}
	}
	// A's 3 unused units go back once its slice's lifetime is over.
	clock.Advance(tenant.DefaultLeaseLifetime)
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		_, r := b.Admit(12, time.Now())
		if (r == nil) != (i < 3) {
			t.Fatalf("B's request %d after A gave back its units: refusal %+v; want 3 admitted, then refused", i, r)
		}
	}
	var used int64
	if err := insts[0].st.pool.QueryRow(context.Background(),
		`SELECT used FROM limit_counters WHERE access_key_id = 12 AND kind = 'rpd'`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used != 10 {
		t.Errorf("the ledger counts %d of the day's units, want 10", used)
	}
}

// TestLeasesTokenBudget: a token budget of 1000 shared by three instances, each answer
// charging 100: requests taken in turns by the instances stop at exactly 10 when each
// instance settles after its answer (as Sync does within a fraction of a second), and the
// ledger holds every token charged, in the period and in the minute.
func TestLeasesTokenBudget(t *testing.T) {
	url := pgtest.URL(t)
	pol := map[int64]*tenant.Policy{13: {TokenBudget: &tenant.Budget{Limit: 1000, Period: tenant.Monthly}, TPM: 100000}}
	insts := instances(t, url, 3, pol, tenant.Cluster{}, false)
	admitted := 0
	for i := range 30 {
		in := insts[i%3]
		tk, r := in.l.Admit(13, time.Now())
		if r == nil {
			admitted++
			tk.Done(100, time.Now())
			if err := in.l.Sync(context.Background()); err != nil { // the charge reaches the ledger
				t.Fatal(err)
			}
		} else if r.Unavailable || r.Violations[0].Limit != tenant.LimitBudget {
			t.Fatalf("refusal %+v, want token_budget", *r)
		}
	}
	if admitted != 10 {
		t.Fatalf("admitted %d requests of 100 tokens under a budget of 1000 shared by three instances, want 10", admitted)
	}
	ctx := context.Background()
	for _, in := range insts {
		if err := in.l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var used, tpm int64
	if err := insts[0].st.pool.QueryRow(ctx, `SELECT used FROM limit_counters WHERE access_key_id = 13 AND kind = 'tokens'`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if err := insts[0].st.pool.QueryRow(ctx, `SELECT sum(units) FROM limit_grants WHERE access_key_id = 13 AND kind = 'tpm'`).Scan(&tpm); err != nil {
		t.Fatal(err)
	}
	if used != 1000 || tpm != 1000 {
		t.Errorf("the ledger counts %d tokens of the period and %d of the minute, want the 1000 charged", used, tpm)
	}
}

// TestLeasesTPM: tpm 1000 shared by three instances, answers of 100 tokens taken in turns,
// each instance settling after its answer: exactly 10 within the minute.
func TestLeasesTPM(t *testing.T) {
	url := pgtest.URL(t)
	insts := instances(t, url, 3, map[int64]*tenant.Policy{16: {TPM: 1000}}, tenant.Cluster{}, false)
	admitted := 0
	for i := range 30 {
		in := insts[i%3]
		tk, r := in.l.Admit(16, time.Now())
		if r == nil {
			admitted++
			tk.Done(100, time.Now())
			if err := in.l.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
		} else if r.Unavailable || r.Violations[0].Limit != tenant.LimitTPM {
			t.Fatalf("refusal %+v, want tpm", *r)
		}
	}
	if admitted != 10 {
		t.Fatalf("admitted %d requests of 100 tokens under tpm 1000 shared by three instances, want 10", admitted)
	}
}

// TestLeasesTokensUnderLoad: under parallel load on three instances syncing in the
// background, the tokens charged go past the budget by no more than the answers in flight
// can take it (each worker has one at a time), as on one instance.
func TestLeasesTokensUnderLoad(t *testing.T) {
	url := pgtest.URL(t)
	const budget, per, workers = 5000, 50, 12
	pol := map[int64]*tenant.Policy{14: {TokenBudget: &tenant.Budget{Limit: budget, Period: tenant.Daily}}}
	insts := instances(t, url, 3, pol, tenant.Cluster{}, true)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		in := insts[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Refused for 3 s in a row: the units the others held have come back by then.
			for refused := 0; refused < 60; {
				tk, r := in.l.Admit(14, time.Now())
				if r != nil {
					refused++
					time.Sleep(50 * time.Millisecond)
					continue
				}
				refused = 0
				admitted.Add(1)
				time.Sleep(time.Millisecond)
				tk.Done(per, time.Now())
			}
		}()
	}
	wg.Wait()
	n := admitted.Load()
	t.Logf("admitted %d requests of %d tokens under a budget of %d (%d fit in it)", n, per, budget, budget/per)
	for _, in := range insts {
		if err := in.l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var used int64
	if err := insts[0].st.pool.QueryRow(context.Background(),
		`SELECT used FROM limit_counters WHERE access_key_id = 14 AND kind = 'tokens'`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used != n*per {
		t.Errorf("the ledger counts %d tokens, want the %d charged", used, n*per)
	}
	if n*per > budget+2*workers*per {
		t.Fatalf("charged %d tokens under a budget of %d: past it by more than the answers in flight", n*per, budget)
	}
	if n < budget/per {
		t.Fatalf("admitted %d requests, fewer than the %d the budget holds", n, budget/per)
	}
}

// TestLeasesOutage: with PostgreSQL stopped, the instances admit only from the slices they
// hold and refuse the rest as unavailable; once it is back they go on, and rpd 40 holds
// across the outage.
func TestLeasesOutage(t *testing.T) {
	srv := pgtest.NewServer(t)
	url := srv.URL(t)
	cfg := tenant.Cluster{Timeout: 500 * time.Millisecond}
	insts := instances(t, url, 3, map[int64]*tenant.Policy{15: {RPD: 40}}, cfg, true)
	before, _ := burst(insts, 15, 4, 0)
	if before != 12 {
		t.Fatalf("admitted %d of 12 before the outage", before)
	}
	srv.Stop(t)
	during, refusals := burst(insts, 15, 10, 0)
	unavailable := 0
	for _, r := range refusals {
		if r.Unavailable {
			unavailable++
		}
	}
	if unavailable == 0 {
		t.Fatalf("no request refused as unavailable while PostgreSQL was down (%d admitted)", during)
	}
	srv.Start(t)
	var after int64
	end := time.Now().Add(30 * time.Second)
	for {
		n, refusals := burst(insts, 15, 10, 0)
		after += n
		done := false
		for _, r := range refusals {
			if !r.Unavailable && r.Violations[0].Limit == tenant.LimitRPD {
				done = true
			}
		}
		if done {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("rpd never reached after the outage: %d+%d+%d admitted", before, during, after)
		}
		time.Sleep(200 * time.Millisecond)
	}
	total := before + during + after
	t.Logf("admitted %d before, %d during (from slices held), %d after the outage", before, during, after)
	if total > 40 {
		t.Fatalf("admitted %d requests under rpd 40 across an outage", total)
	}
}

// everyLimit is a policy with every limit, high enough never to refuse in a benchmark.
func everyLimit() *tenant.Policy {
	return &tenant.Policy{RPM: 1_000_000, RPD: 1 << 40, TPM: 1 << 40, Concurrency: 1 << 20,
		TokenBudget: &tenant.Budget{Limit: 1 << 40, Period: tenant.Monthly}}
}

// BenchmarkLeasedAdmit: three instances on one database admit requests of one access key with
// every limit but rpm set (its largest value, a million, would refuse a long run), as fast as
// they can (Admit, then Done with 100 tokens): the requests are served from the slices held;
// leases/op is the calls to the ledger per request.
func BenchmarkLeasedAdmit(b *testing.B) {
	url := pgtest.URL(b)
	p := everyLimit()
	p.RPM = 0
	insts := benchInstances(b, url, p)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		in := insts[next.Add(1)%3]
		for pb.Next() {
			tk, r := in.l.Admit(1, time.Now())
			if r != nil {
				b.Errorf("refused: %+v", *r)
				return
			}
			tk.Done(100, time.Now())
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	leases := leaseCalls(insts)
	b.ReportMetric(float64(leases)/float64(b.N), "leases/op")
	b.ReportMetric(float64(leases)/elapsed.Seconds(), "leases/s")
}

// BenchmarkLeaseSteady: three instances each admitting a steady rate of requests (every limit
// set); leases/s is the calls to the ledger per second for the cluster (Sync's calls apart),
// which depends on the lease lifetime, not on the rate, once slices have grown.
func BenchmarkLeaseSteady(b *testing.B) {
	for _, rate := range []int{20, 200, 2000} {
		b.Run(fmt.Sprintf("rate=%d/s", rate), func(b *testing.B) {
			url := pgtest.URL(b)
			insts := benchInstances(b, url, everyLimit())
			every := time.Second / time.Duration(rate)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for _, in := range insts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tick := time.NewTicker(every)
					defer tick.Stop()
					for range b.N {
						<-tick.C
						tk, r := in.l.Admit(1, time.Now())
						if r != nil {
							b.Errorf("refused: %+v", *r)
							return
						}
						tk.Done(100, time.Now())
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			leases := leaseCalls(insts)
			b.ReportMetric(float64(leases)/elapsed.Seconds(), "leases/s")
			b.ReportMetric(float64(leases)/float64(3*b.N), "leases/op")
		})
	}
}

// benchInstances starts three syncing instances with policy p on access key 1.
func benchInstances(b *testing.B, url string, p *tenant.Policy) []instance {
	out := make([]instance, 3)
	for i := range out {
		st := openTest(b, url, nil, nil)
		l := tenant.NewLimiter()
		l.SetCluster(tenant.Cluster{Ledger: ledger{st}})
		l.Set(map[int64]*tenant.Policy{1: p})
		out[i] = instance{l: l, st: st}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(l.SyncEvery())
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					l.Sync(ctx)
				}
			}
		}()
		b.Cleanup(func() {
			cancel()
			<-done
			l.Release(context.Background())
		})
	}
	return out
}

// leaseCalls is the calls to Lease the instances made.
func leaseCalls(insts []instance) int64 {
	var n int64
	for _, in := range insts {
		n += in.l.ClusterStats().Leases
	}
	return n
}
