package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-co-op/gocron/v2"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// jobsEnv is an opened and configured core on a real SQLite file, with the fake upstream on
// loopback, the proxy handler in front of it, and the core's log captured.
type jobsEnv struct {
	c     *Core
	fake  *fakegemini.Server
	up    *httptest.Server
	proxy string // base URL of the proxy handler
	logs  *observer.ObservedLogs
	clock *clockwork.FakeClock // nil: real clock
	keys  []string             // the pool keys; key i has id i+1
}

type jobsSetup struct {
	keys         []string
	clock        *clockwork.FakeClock
	probeTimeout time.Duration
	wrap         func(http.Handler) http.Handler // wraps the fake upstream
	configure    func(*Config)
}

func newJobsEnv(t *testing.T, s jobsSetup) *jobsEnv {
	t.Helper()
	a := &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: s.keys}
	if s.configure != nil {
		s.configure(a)
	}
	tc := startCore(t, coreSetup{wrap: s.wrap, clock: s.clock, probeTimeout: s.probeTimeout}, a)
	return &jobsEnv{c: tc.c, fake: tc.fake, up: tc.up, proxy: serveCore(t, tc.c, nil, ""), logs: tc.logs, clock: s.clock, keys: s.keys}
}

// count returns how many log entries have the message msg.
func (e *jobsEnv) count(msg string) int {
	return e.logs.FilterMessage(msg).Len()
}

// waitCount waits until n log entries have the message msg.
func (e *jobsEnv) waitCount(t *testing.T, msg string, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, func() bool { return e.count(msg) >= n }, "%d log entries %q (have %d)", n, msg, e.count(msg))
	if got := e.count(msg); got != n {
		t.Fatalf("%d log entries %q, want %d", got, msg, n)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for "+format, args...)
		}
	}
}

// job returns the running scheduler's job of that name.
func (e *jobsEnv) job(t *testing.T, name string) gocron.Job {
	t.Helper()
	for _, j := range e.c.schedulerJobs() {
		if j.Name() == name {
			return j
		}
	}
	t.Fatalf("no job %q", name)
	return nil
}

func nextRun(t *testing.T, j gocron.Job) time.Time {
	t.Helper()
	next, err := j.NextRun()
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// runNext moves the fake clock to the job's next run and waits until that run has started
// (gocron sets LastRun then). It returns the time of the run.
func (e *jobsEnv) runNext(t *testing.T, name string) time.Time {
	t.Helper()
	j := e.job(t, name)
	next := nextRun(t, j)
	if next.IsZero() || next.Before(e.clock.Now()) {
		t.Fatalf("%s: next run %v, clock at %v", name, next, e.clock.Now())
	}
	e.clock.Advance(next.Sub(e.clock.Now()))
	waitFor(t, 10*time.Second, func() bool {
		last, err := j.LastRun()
		return err == nil && last.Equal(next)
	}, "%s to run at %v", name, next)
	return next
}

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestRetentionRunsAtThreeLocalAcrossDST drives the daily retention job with a fake clock in
// zones where the clocks change: it runs once a day at 03:00 local, 23 or 25 hours apart around
// a change, and right after the jump on a day without 03:00.
func TestRetentionRunsAtThreeLocalAcrossDST(t *testing.T) {
	for _, tc := range []struct {
		name, tz string
		start    [3]int // the day before the first run, at 12:00 local
		want     []string
		wantWall []int // local hour of each run
	}{
		{"new york spring forward", "America/New_York", [3]int{2026, 3, 6},
			[]string{"2026-03-07T08:00:00Z", "2026-03-08T07:00:00Z", "2026-03-09T07:00:00Z"}, []int{3, 3, 3}},
		{"new york fall back", "America/New_York", [3]int{2026, 10, 31},
			[]string{"2026-11-01T08:00:00Z", "2026-11-02T08:00:00Z"}, []int{3, 3}},
		{"helsinki 03:00 skipped", "Europe/Helsinki", [3]int{2026, 3, 27},
			[]string{"2026-03-28T01:00:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"}, []int{3, 4, 3}},
		{"helsinki 03:00 twice", "Europe/Helsinki", [3]int{2026, 10, 23},
			[]string{"2026-10-24T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-26T01:00:00Z"}, []int{3, 3, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loc := mustLoad(t, tc.tz)
			clock := clockwork.NewFakeClockAt(time.Date(tc.start[0], time.Month(tc.start[1]), tc.start[2], 12, 0, 0, 0, loc))
			e := newJobsEnv(t, jobsSetup{clock: clock, configure: func(a *Config) {
				a.Timezone = tc.tz
				a.ValidationInterval = time.Duration(1000 * time.Hour) // out of the way
			}})
			for i, want := range tc.want {
				got := e.runNext(t, jobRetention)
				if got.UTC().Format(time.RFC3339) != want || got.In(loc).Hour() != tc.wantWall[i] {
					t.Errorf("run %d at %v (%v local), want %s at %02d:00 local", i+1, got.UTC(), got.In(loc), want, tc.wantWall[i])
				}
				e.waitCount(t, msgRetentionDone, i+1)
			}
		})
	}
}

// TestRetentionJobPurgesOldRows lets the 03:00 run happen and checks what it deleted, with the
// configured retentions counted back from the run: the dashboard's per-slot sums stay for
// store.UsageRetention, longer than the request rows.
func TestRetentionJobPurgesOldRows(t *testing.T) {
	loc := mustLoad(t, "Europe/Berlin")
	clock := clockwork.NewFakeClockAt(time.Date(2026, 6, 10, 22, 0, 0, 0, loc))
	e := newJobsEnv(t, jobsSetup{clock: clock, configure: func(a *Config) {
		a.Timezone = "Europe/Berlin"
		a.RequestLogRetention = time.Duration(7 * 24 * time.Hour)
		a.ErrorLogRetention = time.Duration(2 * 24 * time.Hour)
	}})
	runAt := time.Date(2026, 6, 11, 3, 0, 0, 0, loc)
	st := e.c.store
	longAgo := runAt.Add(-store.UsageRetention)
	for _, at := range []time.Time{
		longAgo.Add(-time.Hour), longAgo.Add(time.Hour), // only their sums are purged and kept
		runAt.Add(-8 * 24 * time.Hour), runAt.Add(-7*24*time.Hour - time.Second), runAt.Add(-7 * 24 * time.Hour), runAt.Add(-time.Hour),
	} {
		st.LogRequest(store.RequestLog{Time: at, Path: "/r", Status: 200})
	}
	for _, at := range []time.Time{runAt.Add(-3 * 24 * time.Hour), runAt.Add(-2 * 24 * time.Hour), runAt.Add(-time.Hour)} {
		st.LogError(store.ErrorLog{Time: at, Path: "/e"})
	}
	st.Flush()

	if got := e.runNext(t, jobRetention); !got.Equal(runAt) {
		t.Fatalf("retention ran at %v, want %v", got, runAt)
	}
	e.waitCount(t, msgRetentionDone, 1)
	ctx := context.Background()
	reqs, _ := st.RecentRequests(ctx, store.LogQuery{})
	if len(reqs) != 2 || !reqs[1].Time.Equal(runAt.Add(-7*24*time.Hour)) {
		t.Errorf("request rows left: %+v; want the two within 7 days", reqs)
	}
	errs, _ := st.RecentErrors(ctx, store.LogQuery{})
	if len(errs) != 2 || !errs[1].Time.Equal(runAt.Add(-2*24*time.Hour)) {
		t.Errorf("error rows left: %+v; want the two within 2 days", errs)
	}
	usage, err := st.UsageBuckets(ctx, []time.Time{longAgo.Add(-2 * time.Hour), longAgo, runAt.Add(-7 * 24 * time.Hour), runAt})
	if err != nil {
		t.Fatal(err)
	}
	if usage[0].Requests != 0 || usage[1].Requests != 3 || usage[2].Requests != 2 {
		t.Errorf("usage after retention: %+v; want 0, 3 and 2 requests", usage)
	}
	entry := e.logs.FilterMessage(msgRetentionDone).All()[0]
	if f := entry.ContextMap(); f["request_rows"] != int64(4) || f["error_rows"] != int64(1) || f["usage_slots"] != int64(1) {
		t.Errorf("retention log fields: %v", f)
	}
}

// TestSettingsChangesReschedule changes the validation interval (admin edit, then Caddyfile
// reload) and the timezone: the jobs move at once, a new timezone gets a new scheduler and the
// old one is shut down, and the retention job then runs at 03:00 in the new zone only.
func TestSettingsChangesReschedule(t *testing.T) {
	t0 := time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)
	clock := clockwork.NewFakeClockAt(t0)
	e := newJobsEnv(t, jobsSetup{clock: clock})
	ctx := context.Background()
	c := e.c
	if got := nextRun(t, e.job(t, jobValidation)); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("validation next run %v, want %v (default 1h)", got, t0.Add(time.Hour))
	}
	if got := nextRun(t, e.job(t, jobRetention)); !got.Equal(time.Date(2026, 6, 2, 3, 0, 0, 0, time.UTC)) {
		t.Errorf("retention next run %v, want 03:00 UTC tomorrow", got)
	}
	first := c.jobs.sched

	// An admin edit: stored, then reloaded.
	if err := c.store.SetSetting(ctx, setValidationInterval, "10m"); err != nil {
		t.Fatal(err)
	}
	if err := c.reloadSettings(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nextRun(t, e.job(t, jobValidation)); !got.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("after the admin edit: validation next run %v, want %v", got, t0.Add(10*time.Minute))
	}
	// A Caddyfile reload with a new value.
	reload := &Config{AccessKeys: []string{testAccessKey}, Upstream: e.up.URL, ValidationInterval: time.Duration(20 * time.Minute)}
	if err := c.Apply(ctx, reload); err != nil {
		t.Fatal(err)
	}
	if got := nextRun(t, e.job(t, jobValidation)); !got.Equal(t0.Add(20 * time.Minute)) {
		t.Errorf("after the reload: validation next run %v, want %v", got, t0.Add(20*time.Minute))
	}
	if c.jobs.sched != first {
		t.Error("an interval change replaced the scheduler")
	}

	// A new timezone: 03:00 in New York is 07:00 UTC in June.
	reload.Timezone = "America/New_York"
	if err := c.Apply(ctx, reload); err != nil {
		t.Fatal(err)
	}
	if c.jobs.sched == first {
		t.Fatal("the timezone change kept the old scheduler")
	}
	if jobs := first.Jobs(); len(jobs) != 0 {
		t.Errorf("the old scheduler still has %d jobs: not shut down", len(jobs))
	}
	wantRetention := time.Date(2026, 6, 2, 7, 0, 0, 0, time.UTC)
	if got := nextRun(t, e.job(t, jobRetention)); !got.Equal(wantRetention) {
		t.Errorf("retention next run %v, want %v (03:00 New York)", got, wantRetention)
	}
	if got := nextRun(t, e.job(t, jobValidation)); !got.Equal(t0.Add(20 * time.Minute)) {
		t.Errorf("validation next run %v after the timezone change, want %v", got, t0.Add(20*time.Minute))
	}
	assertJobs(t, c)

	// Nothing runs at 03:00 UTC any more; at 03:00 New York the job runs once.
	clock.Advance(time.Date(2026, 6, 2, 3, 0, 1, 0, time.UTC).Sub(clock.Now()))
	time.Sleep(100 * time.Millisecond)
	if n := e.count(msgRetentionDone); n != 0 {
		t.Errorf("retention ran %d times at 03:00 UTC after the move to New York", n)
	}
	if got := e.runNext(t, jobRetention); !got.Equal(wantRetention) {
		t.Errorf("retention ran at %v, want %v", got, wantRetention)
	}
	e.waitCount(t, msgRetentionDone, 1)
}

// assertJobs checks that the running scheduler has exactly one job of each kind.
func assertJobs(t *testing.T, c *Core) {
	t.Helper()
	var names []string
	for _, j := range c.schedulerJobs() {
		names = append(names, j.Name())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{jobValidation, jobRetention}) {
		t.Errorf("scheduler jobs: %q, want one %q and one %q", names, jobValidation, jobRetention)
	}
}

// TestReloadsLeaveOneScheduler applies configs again and again, with and without changes:
// there is always one scheduler with one job of each kind, and once the core is closed no
// scheduler goroutine is left.
func TestReloadsLeaveOneScheduler(t *testing.T) {
	e := newJobsEnv(t, jobsSetup{keys: testPoolKeys})
	c := e.c
	ctx := context.Background()
	before := c.jobs.sched
	assertJobs(t, c)
	for i, tz := range []string{"", "", "Europe/Berlin", "Europe/Berlin", "Asia/Tokyo", "UTC"} {
		a := &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: testPoolKeys, Upstream: e.up.URL, Timezone: tz}
		if err := c.Apply(ctx, a); err != nil {
			t.Fatal(err)
		}
		assertJobs(t, c)
		if tz == "" && c.jobs.sched != before {
			t.Errorf("reload %d without changes replaced the scheduler", i)
		}
		if !c.jobs.started {
			t.Errorf("reload %d: jobs not started", i)
		}
	}
	if got := c.settings.Load().timezone.String(); got != "UTC" {
		t.Errorf("timezone %q", got)
	}
	if err := c.Destruct(); err != nil {
		t.Fatal(err)
	}
	if jobs := c.schedulerJobs(); jobs != nil {
		t.Errorf("%d jobs after Destruct", len(jobs))
	}
	// A settings reload after shutdown schedules nothing.
	if err := c.reschedule(); err != nil || c.jobs.sched != nil {
		t.Errorf("reschedule after Destruct: %v, scheduler %v", err, c.jobs.sched)
	}
	waitFor(t, 5*time.Second, func() bool { return !strings.Contains(allStacks(), "gocron") },
		"gocron goroutines to end:\n%s", filterStacks(allStacks()))
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// TestValidationJobNeverOverlaps makes a check hang past the next due time: the run that comes
// due meanwhile is skipped, the one after runs.
func TestValidationJobNeverOverlaps(t *testing.T) {
	clock := clockwork.NewFakeClockAt(time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC))
	e := newJobsEnv(t, jobsSetup{
		keys:         testPoolKeys[:1],
		clock:        clock,
		probeTimeout: 700 * time.Millisecond,
		configure:    func(a *Config) { a.ValidationInterval = time.Duration(time.Minute) },
	})
	c := e.c
	if err := c.store.SetKeyStatus(context.Background(), 1, store.StatusDisabled, "test", false); err != nil {
		t.Fatal(err)
	}
	c.pool.SetDisabled(1, true)
	e.fake.SetKey(testPoolKeys[0], fakegemini.Hang)

	j := e.job(t, jobValidation)
	clock.Advance(nextRun(t, j).Sub(clock.Now()))
	waitFor(t, 5*time.Second, func() bool { return len(e.fake.Calls()) == 1 }, "the first probe")
	// The next run comes due while the first still waits on the upstream.
	clock.Advance(nextRun(t, j).Sub(clock.Now()))
	e.waitCount(t, msgJobSkipped, 1)
	e.waitCount(t, msgValidationDone, 1)
	if n := len(e.fake.Calls()); n != 1 {
		t.Fatalf("%d probes: a run overlapped the one in progress", n)
	}
	// The one after that runs normally.
	e.fake.SetKey(testPoolKeys[0], fakegemini.OK)
	clock.Advance(nextRun(t, j).Sub(clock.Now()))
	e.waitCount(t, msgValidationDone, 2)
	if n := len(e.fake.Calls()); n != 2 {
		t.Errorf("%d probes, want 2", n)
	}
	if _, _, disabled := c.pool.Counts(time.Now()); disabled != 0 {
		t.Errorf("the key is still disabled after a successful check")
	}
}
