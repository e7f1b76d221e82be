package tenant

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func location(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// newLimiter is a limiter in loc with the policies (by id).
func newLimiter(loc *time.Location, policies map[int64]*Policy) *Limiter {
	l := NewLimiter()
	l.SetLocation(loc)
	l.Set(policies)
	return l
}

func admit(t *testing.T, l *Limiter, id int64, now time.Time) Ticket {
	t.Helper()
	tk, r := l.Admit(id, now)
	if r != nil {
		t.Fatalf("at %v: refused: %+v", now, *r)
	}
	if tk.s == nil {
		t.Fatalf("at %v: admitted with the zero ticket", now)
	}
	return tk
}

// refuse checks that a request at now is refused for exactly the violations want, and that
// the refusal's RetryAt is retryAt.
func refuse(t *testing.T, l *Limiter, id int64, now time.Time, retryAt time.Time, want ...Violation) {
	t.Helper()
	tk, r := l.Admit(id, now)
	if r == nil {
		t.Fatalf("at %v: admitted, want refused for %+v", now, want)
	}
	if tk != (Ticket{}) {
		t.Errorf("at %v: refused with a ticket", now)
	}
	if !r.RetryAt.Equal(retryAt) {
		t.Errorf("at %v: RetryAt %v, want %v", now, r.RetryAt, retryAt)
	}
	if len(r.Violations) != len(want) {
		t.Fatalf("at %v: violations %+v, want %+v", now, r.Violations, want)
	}
	for i, v := range r.Violations {
		w := want[i]
		if v.Limit != w.Limit || v.Value != w.Value || v.Used != w.Used || !v.RetryAt.Equal(w.RetryAt) {
			t.Errorf("at %v: violation %d is %+v, want %+v", now, i, v, w)
		}
	}
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestAdmitUnlimited(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{
		1: {RPM: 1},
		2: {Models: []string{"gemini-*"}, Shared: true, ExpiresAt: utc("2030-01-01T00:00:00Z")},
		3: nil,
		4: {TokenBudget: &Budget{Limit: 0, Period: Daily}},
	})
	now := utc("2026-05-01T10:00:00Z")
	for _, id := range []int64{2, 3, 4, 99} {
		for range 5 {
			tk, r := l.Admit(id, now)
			if r != nil || tk != (Ticket{}) {
				t.Errorf("key %d with no limits: Admit = %+v, %+v; want the zero ticket", id, tk, r)
			}
			tk.Done(1_000_000, now)
		}
		if u := l.Usage(id, now); u != (Usage{}) {
			t.Errorf("key %d with no limits has usage %+v", id, u)
		}
	}
	Ticket{}.Done(10, now)
	admit(t, l, 1, now)
	refuse(t, l, 1, now, now.Add(time.Minute), Violation{LimitRPM, 1, 1, now.Add(time.Minute)})
	// A limiter with no policies at all admits everything.
	if tk, r := NewLimiter().Admit(1, now); r != nil || tk != (Ticket{}) {
		t.Errorf("empty limiter: Admit = %+v, %+v", tk, r)
	}
}

func TestRPMSlidingWindow(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 3}})
	t0 := utc("2026-05-01T10:00:00Z")
	s := func(d float64) time.Time { return t0.Add(time.Duration(d * float64(time.Second))) }
	admit(t, l, 1, s(0))
	admit(t, l, 1, s(10))
	admit(t, l, 1, s(20))
	// A fixed window would start over at 10:01; the window slides: the fourth request passes
	// 60 s after the first, not before.
	for _, at := range []time.Time{s(30), s(59.5), s(60).Add(-1)} {
		refuse(t, l, 1, at, s(60), Violation{LimitRPM, 3, 3, s(60)})
	}
	admit(t, l, 1, s(60))
	refuse(t, l, 1, s(60), s(70), Violation{LimitRPM, 3, 3, s(70)})
	refuse(t, l, 1, s(70).Add(-1), s(70), Violation{LimitRPM, 3, 3, s(70)})
	admit(t, l, 1, s(70))
	for _, c := range []struct {
		at   time.Time
		want int64
	}{{s(70), 3}, {s(79.9), 3}, {s(80), 2}, {s(120), 1}, {s(129.999), 1}, {s(130), 0}, {s(1000), 0}} {
		if u := l.Usage(1, c.at); u.RPM != c.want {
			t.Errorf("Usage at %v: RPM %d, want %d", c.at, u.RPM, c.want)
		}
	}
	if u := l.Usage(1, s(130)); u.RPD != 5 || u.InFlight != 5 {
		t.Errorf("refused requests counted: RPD %d, InFlight %d; want 5 and 5", u.RPD, u.InFlight)
	}
	// A request whose now is earlier than the last admitted one (callers race to the lock)
	// counts at the latest time, so the window never lets more through.
	l = newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 2}})
	admit(t, l, 1, s(10))
	admit(t, l, 1, s(5))
	refuse(t, l, 1, s(69), s(70), Violation{LimitRPM, 2, 2, s(70)})
	admit(t, l, 1, s(70))
}

func TestRPDResetsAtLocalMidnight(t *testing.T) {
	berlin := location(t, "Europe/Berlin")
	l := newLimiter(berlin, map[int64]*Policy{1: {RPD: 2}})
	at := func(d, h int) time.Time { return time.Date(2026, 6, d, h, 0, 0, 0, berlin) }
	midnight := at(16, 0)
	admit(t, l, 1, at(15, 1))
	admit(t, l, 1, at(15, 9))
	for _, now := range []time.Time{at(15, 9), at(15, 23), midnight.Add(-1)} {
		refuse(t, l, 1, now, midnight, Violation{LimitRPD, 2, 2, midnight})
	}
	if u := l.Usage(1, at(15, 12)); u.RPD != 2 || !u.DayEndsAt.Equal(midnight) || !u.PeriodEndsAt.IsZero() {
		t.Errorf("usage %+v, want RPD 2, the day ending at %v, no budget period", u, midnight)
	}
	admit(t, l, 1, midnight)
	if u := l.Usage(1, midnight); u.RPD != 1 || !u.DayEndsAt.Equal(at(17, 0)) {
		t.Errorf("usage after midnight %+v, want RPD 1 until %v", u, at(17, 0))
	}
	// Days later, the count starts over again.
	admit(t, l, 1, at(20, 12))
	admit(t, l, 1, at(20, 13))
	refuse(t, l, 1, at(20, 14), at(21, 0), Violation{LimitRPD, 2, 2, at(21, 0)})
}

// TestDayBoundariesOnDSTDays runs a day through a limiter: the request just before the day
// starts counts for the day before, the one at its start for it, and the day ends when the
// next starts, on days 23 and 25 hours long and where midnight is skipped or comes twice.
func TestDayBoundariesOnDSTDays(t *testing.T) {
	for _, c := range []struct {
		zone       string
		start, end string // the day's, in UTC
	}{
		{"America/New_York", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"}, // 23 h
		{"America/New_York", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"}, // 25 h
		{"Europe/Berlin", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"},    // 23 h
		{"Europe/Berlin", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"},    // 25 h
		// Clocks jump from 00:00 to 01:00 on 2026-09-06: that day starts at the jump.
		{"America/Santiago", "2026-09-05T04:00:00Z", "2026-09-06T04:00:00Z"},
		{"America/Santiago", "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z"},
		// Clocks go back from 03:00 +11 to 00:00 +08 on 2023-03-09: the day starts at the
		// first midnight.
		{"Antarctica/Casey", "2023-03-07T13:00:00Z", "2023-03-08T13:00:00Z"},
		{"Antarctica/Casey", "2023-03-08T13:00:00Z", "2023-03-09T16:00:00Z"},
	} {
		t.Run(c.zone+" "+c.start, func(t *testing.T) {
			loc := location(t, c.zone)
			start, end := utc(c.start), utc(c.end)
			l := newLimiter(loc, map[int64]*Policy{1: {RPD: 1, TokenBudget: &Budget{Limit: 10, Period: Daily}}})
			admit(t, l, 1, start.Add(-1)).Done(10, start.Add(-1))
			tk := admit(t, l, 1, start)
			if u := l.Usage(1, start); u.RPD != 1 || u.Tokens != 0 || !u.DayEndsAt.Equal(end) || !u.PeriodEndsAt.Equal(end) {
				t.Errorf("usage at the day's start %+v, want RPD 1, no tokens, ends at %v", u, end)
			}
			tk.Done(10, start.Add(time.Hour))
			refuse(t, l, 1, end.Add(-1), end,
				Violation{LimitRPD, 1, 1, end}, Violation{LimitBudget, 10, 10, end})
			admit(t, l, 1, end)
			if s := PeriodStart(Daily, end.Add(-1), loc); !s.Equal(start) {
				t.Errorf("PeriodStart(daily, %v) = %v, want %v", end.Add(-1), s, start)
			}
		})
	}
}

func TestTPM(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {TPM: 1000}})
	t0 := utc("2026-05-01T10:00:00Z")
	s := func(d float64) time.Time { return t0.Add(time.Duration(d * float64(time.Second))) }
	a := admit(t, l, 1, s(0))
	b := admit(t, l, 1, s(1))
	a.Done(600, s(10))   // counts until 70 s
	b.Done(500, s(25.5)) // charged during the second ending at 26: counts until 86 s
	if u := l.Usage(1, s(30)); u.TPM != 1100 || u.Tokens != 1100 {
		t.Errorf("usage %+v, want 1100 tokens", u)
	}
	refuse(t, l, 1, s(30), s(70), Violation{LimitTPM, 1000, 1100, s(70)})
	refuse(t, l, 1, s(70).Add(-1), s(70), Violation{LimitTPM, 1000, 1100, s(70)})
	c := admit(t, l, 1, s(70))
	// Below the limit a request passes however many tokens it will use: it is never cut,
	// and all its tokens are charged.
	c.Done(5000, s(71))
	if u := l.Usage(1, s(71)); u.TPM != 5500 {
		t.Errorf("TPM %d, want 5500", u.TPM)
	}
	refuse(t, l, 1, s(80), s(131), Violation{LimitTPM, 1000, 5500, s(131)})
	for _, c := range []struct {
		at   time.Time
		want int64
	}{{s(86).Add(-1), 5500}, {s(86), 5000}, {s(131).Add(-1), 5000}, {s(131), 0}} {
		if u := l.Usage(1, c.at); u.TPM != c.want {
			t.Errorf("TPM at %v: %d, want %d", c.at, u.TPM, c.want)
		}
	}
	admit(t, l, 1, s(131)).Done(300, s(132))
	// After an idle hour the old buckets are gone and new charges count alone; a charge
	// dated over a minute before a later now has aged out already (but counts for the
	// budget's period).
	hour := s(3600)
	admit(t, l, 1, hour).Done(100, hour)
	admit(t, l, 1, hour).Done(1000, s(132))
	if u := l.Usage(1, hour); u.TPM != 100 || u.Tokens != 1100+5000+300+100+1000 {
		t.Errorf("usage after an idle hour %+v, want TPM 100 and every token of the day", u)
	}

	// The first moment the sum falls below the limit may need several seconds to age out.
	l = newLimiter(time.UTC, map[int64]*Policy{1: {TPM: 100}})
	tks := []Ticket{admit(t, l, 1, s(0)), admit(t, l, 1, s(0)), admit(t, l, 1, s(0))}
	for i, tk := range tks {
		tk.Done(60, s(float64(i+1)))
	}
	refuse(t, l, 1, s(5), s(62), Violation{LimitTPM, 100, 180, s(62)})
	refuse(t, l, 1, s(61), s(62), Violation{LimitTPM, 100, 120, s(62)})
	admit(t, l, 1, s(62))

	// Tokens <= 0 charge nothing.
	l = newLimiter(time.UTC, map[int64]*Policy{1: {TPM: 1}})
	admit(t, l, 1, s(0)).Done(0, s(0))
	admit(t, l, 1, s(0)).Done(-50, s(0))
	if u := l.Usage(1, s(0)); u.TPM != 0 || u.Tokens != 0 || u.InFlight != 0 {
		t.Errorf("usage %+v after charging nothing", u)
	}
	admit(t, l, 1, s(0))
}

// TestTPMMatchesNaiveSum runs random charges against a limiter and a plain list: the
// tokens of the last minute, the refusals and their RetryAt agree.
func TestTPMMatchesNaiveSum(t *testing.T) {
	const limit = 5000
	l := newLimiter(time.UTC, map[int64]*Policy{1: {TPM: limit}})
	rng := rand.New(rand.NewPCG(1, 2))
	type charge struct {
		at     time.Time
		tokens int64
	}
	var charges []charge
	// counted tells whether a charge counts at now: for 60 s from the end of its second.
	counted := func(c charge, now time.Time) bool {
		end := c.at.Truncate(time.Second)
		if !end.Equal(c.at) {
			end = end.Add(time.Second)
		}
		return now.Before(end.Add(time.Minute))
	}
	now := utc("2026-05-01T10:00:00Z")
	refused, admitted := 0, 0
	for step := range 5000 {
		switch rng.IntN(20) {
		case 0:
			now = now.Add(time.Duration(60+rng.IntN(120)) * time.Second)
		default:
			now = now.Add(time.Duration(rng.Int64N(int64(3 * time.Second))))
		}
		var sum int64
		live := charges[:0]
		for _, c := range charges {
			if counted(c, now) {
				sum += c.tokens
				live = append(live, c)
			}
		}
		charges = live // now only grows: the others never count again
		if u := l.Usage(1, now); u.TPM != sum {
			t.Fatalf("step %d at %v: TPM %d, want %d", step, now, u.TPM, sum)
		}
		tk, r := l.Admit(1, now)
		if (r == nil) != (sum < limit) {
			t.Fatalf("step %d at %v: refused %v with %d tokens of limit %d", step, now, r != nil, sum, limit)
		}
		if r != nil {
			// The first moment after now at which the sum is below the limit.
			retry := now
			for ; ; retry = retry.Add(time.Second).Truncate(time.Second) {
				var left int64
				for _, c := range charges {
					if counted(c, retry) {
						left += c.tokens
					}
				}
				if left < limit {
					break
				}
			}
			if !r.RetryAt.Equal(retry) {
				t.Fatalf("step %d at %v: RetryAt %v, want %v", step, now, r.RetryAt, retry)
			}
			refused++
			continue
		}
		admitted++
		c := charge{now.Add(time.Duration(rng.Int64N(int64(2 * time.Second)))), rng.Int64N(800)}
		tk.Done(c.tokens, c.at)
		if c.tokens > 0 {
			charges = append(charges, c)
		}
		now = c.at
	}
	if refused < 500 || admitted < 500 {
		t.Errorf("%d refused and %d admitted: the run tests too little of one", refused, admitted)
	}
}

func TestTokenBudget(t *testing.T) {
	berlin := location(t, "Europe/Berlin")
	t.Run("daily", func(t *testing.T) {
		ny := location(t, "America/New_York")
		l := newLimiter(ny, map[int64]*Policy{1: {TokenBudget: &Budget{Limit: 1000, Period: Daily}}})
		now := time.Date(2026, 3, 8, 10, 0, 0, 0, ny)
		end := utc("2026-03-09T04:00:00Z")
		a, b := admit(t, l, 1, now), admit(t, l, 1, now)
		a.Done(999, now)
		admit(t, l, 1, now).Done(0, now) // 999 < 1000: passes
		b.Done(1, now)
		refuse(t, l, 1, now, end, Violation{LimitBudget, 1000, 1000, end})
		if u := l.Usage(1, now); u.Tokens != 1000 || !u.PeriodEndsAt.Equal(end) {
			t.Errorf("usage %+v, want 1000 tokens until %v", u, end)
		}
		refuse(t, l, 1, end.Add(-1), end, Violation{LimitBudget, 1000, 1000, end})
		admit(t, l, 1, end)
		if u := l.Usage(1, end); u.Tokens != 0 {
			t.Errorf("tokens %d on the next day, want 0", u.Tokens)
		}
	})
	t.Run("weekly starts on Monday", func(t *testing.T) {
		l := newLimiter(berlin, map[int64]*Policy{1: {TokenBudget: &Budget{Limit: 1000, Period: Weekly}}})
		wed := time.Date(2026, 3, 25, 12, 0, 0, 0, berlin)
		monday := utc("2026-03-29T22:00:00Z") // Monday 2026-03-30 00:00 CEST, after the clocks changed
		admit(t, l, 1, wed).Done(400, wed)
		admit(t, l, 1, wed.Add(24*time.Hour)).Done(700, wed.Add(24*time.Hour))
		for _, now := range []time.Time{wed.Add(25 * time.Hour), time.Date(2026, 3, 29, 12, 0, 0, 0, berlin), monday.Add(-1)} {
			refuse(t, l, 1, now, monday, Violation{LimitBudget, 1000, 1100, monday})
		}
		admit(t, l, 1, monday)
		if u := l.Usage(1, monday); u.Tokens != 0 || !u.PeriodEndsAt.Equal(monday.AddDate(0, 0, 7)) {
			t.Errorf("usage on Monday %+v, want no tokens until %v", u, monday.AddDate(0, 0, 7))
		}
	})
	t.Run("monthly starts on the 1st", func(t *testing.T) {
		l := newLimiter(berlin, map[int64]*Policy{1: {TokenBudget: &Budget{Limit: 1000, Period: Monthly}}})
		oct1 := utc("2026-09-30T22:00:00Z") // 2026-10-01 00:00 CEST
		nov1 := utc("2026-10-31T23:00:00Z") // 2026-11-01 00:00 CET
		admit(t, l, 1, oct1.Add(-time.Hour)).Done(1000, oct1.Add(-1))
		refuse(t, l, 1, oct1.Add(-1), oct1, Violation{LimitBudget, 1000, 1000, oct1})
		admit(t, l, 1, oct1).Done(600, oct1.Add(time.Minute))
		admit(t, l, 1, oct1.AddDate(0, 0, 15)).Done(400, oct1.AddDate(0, 0, 20))
		refuse(t, l, 1, oct1.AddDate(0, 0, 21), nov1, Violation{LimitBudget, 1000, 1000, nov1})
		refuse(t, l, 1, nov1.Add(-1), nov1, Violation{LimitBudget, 1000, 1000, nov1})
		admit(t, l, 1, nov1)
	})
}

func TestConcurrency(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {Concurrency: 2}})
	now := utc("2026-05-01T10:00:00Z")
	retry := now.Add(time.Second)
	a, b := admit(t, l, 1, now), admit(t, l, 1, now)
	refuse(t, l, 1, now, retry, Violation{LimitConcurrency, 2, 2, retry})
	a.Done(0, now)
	c := admit(t, l, 1, now)
	// A second Done of a ticket (or of a copy) releases nothing: b and c are in flight.
	a.Done(0, now)
	refuse(t, l, 1, now, retry, Violation{LimitConcurrency, 2, 2, retry})
	bb := b
	bb.Done(0, now)
	b.Done(0, now)
	if u := l.Usage(1, now); u.InFlight != 1 {
		t.Errorf("in flight %d, want 1", u.InFlight)
	}
	d := admit(t, l, 1, now)
	refuse(t, l, 1, now, retry, Violation{LimitConcurrency, 2, 2, retry})
	c.Done(0, now)
	d.Done(0, now)
	c.Done(0, now)
	d.Done(0, now)
	if u := l.Usage(1, now); u.InFlight != 0 {
		t.Errorf("in flight %d after all done, want 0", u.InFlight)
	}
	admit(t, l, 1, now)
	admit(t, l, 1, now)
	refuse(t, l, 1, now, retry, Violation{LimitConcurrency, 2, 2, retry})
}

func TestDoneChargesOnce(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {TPM: 1000}})
	now := utc("2026-05-01T10:00:00Z")
	tk := admit(t, l, 1, now)
	tk.Done(100, now)
	tk.Done(100, now)
	if u := l.Usage(1, now); u.TPM != 100 || u.Tokens != 100 {
		t.Errorf("usage %+v after a ticket done twice, want 100 tokens", u)
	}
}

func TestRefusalListsEveryViolation(t *testing.T) {
	// The usage is made under loose limits, then every limit is set below it.
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 100}})
	t0 := utc("2026-05-01T10:00:00Z")
	dayEnd := utc("2026-05-02T00:00:00Z")
	admit(t, l, 1, t0).Done(200, t0.Add(time.Second))
	admit(t, l, 1, t0.Add(2*time.Second)) // stays in flight
	l.Set(map[int64]*Policy{1: {
		RPM: 2, RPD: 2, TPM: 100, Concurrency: 1, TokenBudget: &Budget{Limit: 150, Period: Daily},
	}})
	now := t0.Add(3 * time.Second)
	refuse(t, l, 1, now, dayEnd,
		Violation{LimitRPM, 2, 2, t0.Add(time.Minute)},
		Violation{LimitRPD, 2, 2, dayEnd},
		Violation{LimitTPM, 100, 200, t0.Add(61 * time.Second)},
		Violation{LimitBudget, 150, 200, dayEnd},
		Violation{LimitConcurrency, 1, 1, now.Add(time.Second)})

	// RetryAt is the latest of the violations', whichever it is.
	l = newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 1, Concurrency: 1}})
	admit(t, l, 1, t0)
	refuse(t, l, 1, t0.Add(10*time.Second), t0.Add(time.Minute),
		Violation{LimitRPM, 1, 1, t0.Add(time.Minute)},
		Violation{LimitConcurrency, 1, 1, t0.Add(11 * time.Second)})
}

func TestRefusedRequestsCountNothing(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 2, RPD: 3, Concurrency: 5}})
	t0 := utc("2026-05-01T10:00:00Z")
	admit(t, l, 1, t0)
	admit(t, l, 1, t0.Add(time.Second))
	for i := range 50 {
		if _, r := l.Admit(1, t0.Add(2*time.Second+time.Duration(i)*time.Millisecond)); r == nil {
			t.Fatal("admitted over rpm")
		}
	}
	if u := l.Usage(1, t0.Add(3*time.Second)); u.RPM != 2 || u.RPD != 2 || u.InFlight != 2 {
		t.Errorf("usage %+v after refusals, want 2 requests", u)
	}
	admit(t, l, 1, t0.Add(time.Minute))
	dayEnd := utc("2026-05-02T00:00:00Z")
	refuse(t, l, 1, t0.Add(61*time.Second), dayEnd, Violation{LimitRPD, 3, 3, dayEnd})
}

// TestParallelAdmitIsExact lets 100 goroutines ask at once, many times over: exactly the
// limit passes.
func TestParallelAdmitIsExact(t *testing.T) {
	t0 := utc("2026-05-01T10:00:00Z")
	for _, c := range []struct {
		name string
		p    Policy
	}{
		{"rpm", Policy{RPM: 10}},
		{"rpd", Policy{RPD: 10}},
		{"concurrency", Policy{Concurrency: 10}},
		{"every limit", Policy{RPM: 10, RPD: 20, TPM: 1 << 40, Concurrency: 50, TokenBudget: &Budget{Limit: 1 << 40, Period: Daily}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for round := range 20 {
				l := newLimiter(time.UTC, map[int64]*Policy{7: &c.p})
				var admitted atomic.Int64
				start := make(chan struct{})
				var wg sync.WaitGroup
				for i := range 100 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						if _, r := l.Admit(7, t0.Add(time.Duration(i)*time.Millisecond)); r == nil {
							admitted.Add(1)
						}
					}()
				}
				close(start)
				wg.Wait()
				if n := admitted.Load(); n != 10 {
					t.Fatalf("round %d: %d of 100 parallel requests admitted, want 10", round, n)
				}
				if u := l.Usage(7, t0.Add(time.Second)); u.RPD != 10 || u.InFlight != 10 {
					t.Fatalf("round %d: usage %+v, want 10 requests", round, u)
				}
			}
		})
	}
}

// TestParallelConcurrencyHolds admits and ends requests from many goroutines: never more
// than the limit are in flight, and all slots come back.
func TestParallelConcurrencyHolds(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {Concurrency: 3, TPM: 1 << 40}})
	now := utc("2026-05-01T10:00:00Z")
	var inFlight, most, admitted atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				tk, r := l.Admit(1, now)
				if r != nil {
					continue
				}
				admitted.Add(1)
				n := inFlight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				inFlight.Add(-1)
				tk.Done(1, now)
				tk.Done(1, now) // a second Done must not free another slot
			}
		}()
	}
	wg.Wait()
	if most.Load() > 3 {
		t.Errorf("%d requests in flight at once, limit 3", most.Load())
	}
	u := l.Usage(1, now)
	if u.InFlight != 0 || u.TPM != admitted.Load() {
		t.Errorf("usage %+v after %d requests done, want none in flight and %d tokens", u, admitted.Load(), admitted.Load())
	}
}

func TestSetKeepsCounters(t *testing.T) {
	t0 := utc("2026-05-01T10:00:00Z")
	s := func(d int) time.Time { return t0.Add(time.Duration(d) * time.Second) }
	dayEnd := utc("2026-05-02T00:00:00Z")
	t.Run("rpm", func(t *testing.T) {
		l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 10}})
		for i := range 5 {
			admit(t, l, 1, s(i))
		}
		// Lowered below the usage: refused at once; the newest times are kept.
		l.Set(map[int64]*Policy{1: {RPM: 3}})
		refuse(t, l, 1, s(5), s(62), Violation{LimitRPM, 3, 3, s(62)})
		// Raised: the times so far still count.
		l.Set(map[int64]*Policy{1: {RPM: 5}})
		admit(t, l, 1, s(6))
		admit(t, l, 1, s(7))
		refuse(t, l, 1, s(8), s(62), Violation{LimitRPM, 5, 5, s(62)})
		if u := l.Usage(1, s(8)); u.RPM != 5 || u.RPD != 7 {
			t.Errorf("usage %+v, want RPM 5 (the ring's), RPD 7", u)
		}
		// Dropping the rpm limit while another stays keeps the other counters.
		l.Set(map[int64]*Policy{1: {RPD: 8}})
		admit(t, l, 1, s(9))
		refuse(t, l, 1, s(9), dayEnd, Violation{LimitRPD, 8, 8, dayEnd})
	})
	t.Run("rpd, budget and tpm", func(t *testing.T) {
		l := newLimiter(time.UTC, map[int64]*Policy{1: {RPD: 100, TPM: 10_000, TokenBudget: &Budget{Limit: 10_000, Period: Daily}}})
		for i := range 4 {
			admit(t, l, 1, s(i)).Done(200, s(i))
		}
		l.Set(map[int64]*Policy{1: {RPD: 4, TPM: 800, TokenBudget: &Budget{Limit: 500, Period: Daily}}})
		refuse(t, l, 1, s(5), dayEnd,
			Violation{LimitRPD, 4, 4, dayEnd},
			Violation{LimitTPM, 800, 800, s(60)}, // when the first 200 age out
			Violation{LimitBudget, 500, 800, dayEnd})
	})
	t.Run("concurrency", func(t *testing.T) {
		l := newLimiter(time.UTC, map[int64]*Policy{1: {Concurrency: 5}})
		a, b := admit(t, l, 1, s(0)), admit(t, l, 1, s(0))
		l.Set(map[int64]*Policy{1: {Concurrency: 2, RPM: 100}})
		refuse(t, l, 1, s(1), s(2), Violation{LimitConcurrency, 2, 2, s(2)})
		a.Done(0, s(1))
		admit(t, l, 1, s(1))
		b.Done(0, s(1))
		// Requests admitted before the limit existed still count, and their Done releases.
		l = newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 100}})
		c := admit(t, l, 1, s(0))
		l.Set(map[int64]*Policy{1: {RPM: 100, Concurrency: 1}})
		refuse(t, l, 1, s(1), s(2), Violation{LimitConcurrency, 1, 1, s(2)})
		c.Done(0, s(1))
		admit(t, l, 1, s(1))
	})
	t.Run("budget period changed", func(t *testing.T) {
		l := newLimiter(time.UTC, map[int64]*Policy{1: {TokenBudget: &Budget{Limit: 1000, Period: Daily}}})
		admit(t, l, 1, s(0)).Done(600, s(0))
		l.Set(map[int64]*Policy{1: {TokenBudget: &Budget{Limit: 500, Period: Monthly}}})
		june := utc("2026-06-01T00:00:00Z")
		refuse(t, l, 1, s(1), june, Violation{LimitBudget, 500, 600, june})
		if u := l.Usage(1, s(1)); !u.PeriodEndsAt.Equal(june) || !u.DayEndsAt.Equal(dayEnd) {
			t.Errorf("usage %+v, want the month to end at %v", u, june)
		}
	})
}

func TestSetDropsKeys(t *testing.T) {
	now := utc("2026-05-01T10:00:00Z")
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 1, Concurrency: 1}, 2: {RPM: 1}, 3: {RPM: 1}})
	a := admit(t, l, 1, now)
	admit(t, l, 2, now)
	admit(t, l, 3, now)
	l.Set(map[int64]*Policy{2: {Models: []string{"gemini-*"}}, 3: nil})
	for _, id := range []int64{1, 2, 3} {
		for range 3 {
			if tk, r := l.Admit(id, now); r != nil || tk != (Ticket{}) {
				t.Errorf("dropped key %d: Admit = %+v, %+v", id, tk, r)
			}
		}
		if u := l.Usage(id, now); u != (Usage{}) {
			t.Errorf("dropped key %d has usage %+v", id, u)
		}
	}
	// The ticket of a dropped key stays safe to end, and touches no later counters.
	a.Done(500, now)
	a.Done(500, now)
	l.Set(map[int64]*Policy{1: {RPM: 1, Concurrency: 1}})
	b := admit(t, l, 1, now)
	a.Done(500, now)
	if u := l.Usage(1, now); u.RPM != 1 || u.InFlight != 1 || u.TPM != 0 {
		t.Errorf("usage %+v of a key limited again, want only its new request", u)
	}
	b.Done(0, now)
}

func TestSeed(t *testing.T) {
	berlin := location(t, "Europe/Berlin")
	l := newLimiter(berlin, map[int64]*Policy{1: {RPD: 10, TokenBudget: &Budget{Limit: 1000, Period: Weekly}}})
	l.Seed(1, 10, 900)
	l.Seed(2, 5, 5)                                    // no limits: ignored
	now := time.Date(2026, 3, 11, 15, 0, 0, 0, berlin) // a Wednesday
	midnight := time.Date(2026, 3, 12, 0, 0, 0, 0, berlin)
	monday := time.Date(2026, 3, 16, 0, 0, 0, 0, berlin)
	refuse(t, l, 1, now, midnight, Violation{LimitRPD, 10, 10, midnight})
	if u := l.Usage(1, now); u.RPD != 10 || u.Tokens != 900 || !u.PeriodEndsAt.Equal(monday) {
		t.Errorf("seeded usage %+v, want 10 requests and 900 tokens until %v", u, monday)
	}
	if tk, r := l.Admit(2, now); r != nil || tk != (Ticket{}) || l.Usage(2, now) != (Usage{}) {
		t.Error("a key with no limits was seeded")
	}
	// The next day the requests start over; the week's tokens stay.
	admit(t, l, 1, midnight).Done(100, midnight)
	refuse(t, l, 1, midnight, monday, Violation{LimitBudget, 1000, 1000, monday})
	// Negative counts are taken as none.
	l.Seed(1, -4, -4)
	if u := l.Usage(1, midnight); u.RPD != 0 || u.Tokens != 0 {
		t.Errorf("usage %+v after a negative seed, want zeros", u)
	}
}

func TestSetLocation(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPD: 1, TokenBudget: &Budget{Limit: 10, Period: Daily}}})
	now := utc("2026-05-01T20:00:00Z")
	admit(t, l, 1, now).Done(10, now)
	utcMidnight := utc("2026-05-02T00:00:00Z")
	if u := l.Usage(1, now); !u.DayEndsAt.Equal(utcMidnight) || !u.PeriodEndsAt.Equal(utcMidnight) {
		t.Errorf("usage %+v, want the UTC day", u)
	}
	// 20:00 UTC is 05:00 on 2 May in Tokyo: the counts stay, the day ends at Tokyo's midnight.
	l.SetLocation(location(t, "Asia/Tokyo"))
	tokyoMidnight := utc("2026-05-02T15:00:00Z")
	refuse(t, l, 1, now.Add(time.Second), tokyoMidnight,
		Violation{LimitRPD, 1, 1, tokyoMidnight}, Violation{LimitBudget, 10, 10, tokyoMidnight})
	if u := l.Usage(1, now); u.RPD != 1 || u.Tokens != 10 || !u.DayEndsAt.Equal(tokyoMidnight) || !u.PeriodEndsAt.Equal(tokyoMidnight) {
		t.Errorf("usage %+v, want the counts in the Tokyo day", u)
	}
	admit(t, l, 1, tokyoMidnight)
	// Past the day's end (15:00 UTC on 3 May), a change of zone starts the day over.
	l.SetLocation(time.UTC)
	utcDayEnd := utc("2026-05-04T00:00:00Z")
	later := utc("2026-05-03T16:00:00Z")
	admit(t, l, 1, later)
	if u := l.Usage(1, later); u.RPD != 1 || !u.DayEndsAt.Equal(utcDayEnd) {
		t.Errorf("usage %+v, want one request of the UTC day", u)
	}
}

func TestUsageWithoutBudgetCountsTheDaysTokens(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {RPM: 100}})
	now := utc("2026-05-01T23:00:00Z")
	admit(t, l, 1, now).Done(70, now)
	u := l.Usage(1, now)
	if u.Tokens != 70 || u.TPM != 70 || !u.PeriodEndsAt.IsZero() || !u.DayEndsAt.Equal(utc("2026-05-02T00:00:00Z")) {
		t.Errorf("usage %+v, want 70 tokens of the day and no period", u)
	}
	// A daily budget added later applies to the day's tokens at once.
	l.Set(map[int64]*Policy{1: {RPM: 100, TokenBudget: &Budget{Limit: 70, Period: Daily}}})
	end := utc("2026-05-02T00:00:00Z")
	refuse(t, l, 1, now, end, Violation{LimitBudget, 70, 70, end})
	if u := l.Usage(1, end); u.Tokens != 0 {
		t.Errorf("tokens %d the next day, want 0", u.Tokens)
	}
}

func TestDoneChargesWhateverThePolicyBecame(t *testing.T) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: {TPM: 1000, TokenBudget: &Budget{Limit: 1000, Period: Daily}}})
	now := utc("2026-05-01T10:00:00Z")
	tk := admit(t, l, 1, now)
	l.Set(map[int64]*Policy{1: {RPM: 100}})
	tk.Done(700, now)
	if u := l.Usage(1, now); u.TPM != 700 || u.Tokens != 700 {
		t.Errorf("usage %+v, want the 700 tokens charged", u)
	}
	l.Set(map[int64]*Policy{1: {TPM: 700, TokenBudget: &Budget{Limit: 1000, Period: Daily}}})
	refuse(t, l, 1, now, now.Add(time.Minute), Violation{LimitTPM, 700, 700, now.Add(time.Minute)})
}

func TestAdmitDoesNotAllocate(t *testing.T) {
	l := newLimiter(location(t, "Europe/Berlin"), map[int64]*Policy{1: everyLimit()})
	now := utc("2026-05-01T10:00:00Z")
	if n := testing.AllocsPerRun(10_000, func() {
		now = now.Add(time.Millisecond)
		tk, r := l.Admit(1, now)
		if r != nil {
			t.Fatalf("refused: %+v", *r)
		}
		tk.Done(100, now)
	}); n != 0 {
		t.Errorf("Admit and Done allocate %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() { l.Admit(2, now) }); n != 0 {
		t.Errorf("Admit of a key with no limits allocates %v times", n)
	}
}

func TestPeriodStartEnd(t *testing.T) {
	berlin := location(t, "Europe/Berlin")
	ny := location(t, "America/New_York")
	for _, c := range []struct {
		period     string
		loc        *time.Location
		now        time.Time
		start, end string
	}{
		{Daily, berlin, time.Date(2026, 3, 29, 12, 0, 0, 0, berlin), "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"},
		{Daily, time.UTC, utc("2026-05-01T00:00:00Z"), "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"},
		{"", time.UTC, utc("2026-05-01T12:00:00Z"), "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"},
		{"hourly", time.UTC, utc("2026-05-01T12:00:00Z"), "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"},
		// Weeks start on Monday: from a Wednesday, the Monday itself, a Sunday night, over
		// a year's end and over a change of the clocks.
		{Weekly, berlin, time.Date(2026, 3, 11, 12, 0, 0, 0, berlin), "2026-03-08T23:00:00Z", "2026-03-15T23:00:00Z"},
		{Weekly, berlin, time.Date(2026, 3, 9, 0, 0, 0, 0, berlin), "2026-03-08T23:00:00Z", "2026-03-15T23:00:00Z"},
		{Weekly, berlin, time.Date(2026, 3, 15, 23, 59, 59, 999999999, berlin), "2026-03-08T23:00:00Z", "2026-03-15T23:00:00Z"},
		{Weekly, time.UTC, utc("2026-01-01T08:00:00Z"), "2025-12-29T00:00:00Z", "2026-01-05T00:00:00Z"},
		{Weekly, berlin, time.Date(2026, 3, 29, 10, 0, 0, 0, berlin), "2026-03-22T23:00:00Z", "2026-03-29T22:00:00Z"},
		// Months start on the 1st.
		{Monthly, ny, time.Date(2026, 3, 15, 12, 0, 0, 0, ny), "2026-03-01T05:00:00Z", "2026-04-01T04:00:00Z"},
		{Monthly, ny, time.Date(2026, 3, 1, 0, 0, 0, 0, ny), "2026-03-01T05:00:00Z", "2026-04-01T04:00:00Z"},
		{Monthly, time.UTC, utc("2026-12-31T23:59:59Z"), "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{Monthly, time.UTC, utc("2028-02-29T12:00:00Z"), "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		// Santiago skips midnight on 2026-09-06: that day starts at 01:00 -03.
		{Daily, location(t, "America/Santiago"), utc("2026-09-06T03:30:00Z"), "2026-09-05T04:00:00Z", "2026-09-06T04:00:00Z"},
		{Daily, location(t, "America/Santiago"), utc("2026-09-06T05:00:00Z"), "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z"},
		// St. John's went back from 00:01 to 23:01 on 2010-11-07: in the repeated hour the
		// day of the 6th ends at the second midnight.
		{Daily, location(t, "America/St_Johns"), utc("2010-11-07T02:00:00Z"), "2010-11-06T02:30:00Z", "2010-11-07T02:30:00Z"},
		{Daily, location(t, "America/St_Johns"), utc("2010-11-07T03:00:00Z"), "2010-11-06T02:30:00Z", "2010-11-07T03:30:00Z"},
	} {
		if got := PeriodStart(c.period, c.now, c.loc); !got.Equal(utc(c.start)) {
			t.Errorf("PeriodStart(%q, %v) = %v, want %s", c.period, c.now, got.UTC(), c.start)
		}
		if got := PeriodEnd(c.period, c.now, c.loc); !got.Equal(utc(c.end)) {
			t.Errorf("PeriodEnd(%q, %v) = %v, want %s", c.period, c.now, got.UTC(), c.end)
		}
	}
}

// TestPeriodBoundsAroundTransitions checks, around every change of the clocks from 2000 to
// 2037 in zones with odd ones, that each period holds now and lasts what it should.
func TestPeriodBoundsAroundTransitions(t *testing.T) {
	for _, zone := range []string{"America/New_York", "Europe/Berlin", "Europe/London", "America/Santiago",
		"America/Havana", "Asia/Beirut", "America/St_Johns", "America/Goose_Bay", "Australia/Lord_Howe",
		"Pacific/Apia", "Pacific/Chatham", "America/Asuncion", "Africa/Casablanca", "Asia/Tehran",
		"Antarctica/Casey"} {
		loc := location(t, zone)
		checked := 0
		for at := time.Date(2000, 1, 1, 0, 0, 0, 0, loc); at.Year() < 2038; {
			_, next := at.ZoneBounds()
			if next.IsZero() {
				break
			}
			for _, d := range []time.Duration{-time.Nanosecond, 0, 30 * time.Minute, 90 * time.Minute, 25 * time.Hour} {
				now := next.Add(d)
				for _, c := range []struct {
					period   string
					min, max time.Duration
				}{{Daily, 20 * time.Hour, 28 * time.Hour}, {Weekly, 6*24*time.Hour - 4*time.Hour, 7*24*time.Hour + 4*time.Hour},
					{Monthly, 27*24*time.Hour - 4*time.Hour, 31*24*time.Hour + 4*time.Hour}} {
					// (Apia skipped 30 December 2011: that week had 6 days, that month 30.)
					start, end := PeriodStart(c.period, now, loc), PeriodEnd(c.period, now, loc)
					if start.After(now) || !end.After(now) || end.Sub(start) < c.min || end.Sub(start) > c.max {
						t.Errorf("%s at %v: %s period [%v, %v)", zone, now, c.period, start, end)
					}
				}
				checked++
			}
			at = next
		}
		if checked == 0 {
			t.Errorf("%s: no change of the clocks found", zone)
		}
	}
}

// everyLimit is a policy with every limit set, high enough never to refuse a benchmark.
func everyLimit() *Policy {
	return &Policy{
		Models:      []string{"gemini-2.5-flash*"},
		RPM:         maxRPM,
		RPD:         maxLimit,
		TPM:         maxLimit,
		TokenBudget: &Budget{Limit: maxLimit, Period: Monthly},
		Concurrency: maxLimit,
	}
}

// BenchmarkAdmit is one request of a key with every limit set: Admit, then Done.
func BenchmarkAdmit(b *testing.B) {
	l := newLimiter(location(b, "Europe/Berlin"), map[int64]*Policy{1: everyLimit()})
	now := utc("2026-05-01T10:00:00Z")
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(100 * time.Microsecond) // 600k a minute, within rpm
		tk, r := l.Admit(1, now)
		if r != nil {
			b.Fatalf("refused: %+v", *r)
		}
		tk.Done(100, now)
	}
}

// BenchmarkAdmitParallel is BenchmarkAdmit from every core at once, on one key.
func BenchmarkAdmitParallel(b *testing.B) {
	l := newLimiter(location(b, "Europe/Berlin"), map[int64]*Policy{1: everyLimit()})
	t0 := utc("2026-05-01T10:00:00Z")
	var tick atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := t0.Add(time.Duration(tick.Add(1)) * 100 * time.Microsecond)
			tk, r := l.Admit(1, now)
			if r != nil {
				b.Errorf("refused: %+v", *r)
				return
			}
			tk.Done(100, now)
		}
	})
}

// BenchmarkAdmitParallelKeys is BenchmarkAdmit from every core at once, a key each.
func BenchmarkAdmitParallelKeys(b *testing.B) {
	policies := make(map[int64]*Policy)
	for id := range int64(64) {
		policies[id] = everyLimit()
	}
	l := newLimiter(location(b, "Europe/Berlin"), policies)
	t0 := utc("2026-05-01T10:00:00Z")
	var ids atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := ids.Add(1) % 64
		now := t0
		for pb.Next() {
			now = now.Add(100 * time.Microsecond)
			tk, r := l.Admit(id, now)
			if r != nil {
				b.Errorf("refused: %+v", *r)
				return
			}
			tk.Done(100, now)
		}
	})
}

// BenchmarkAdmitUnlimited is a request of a key with no limits.
func BenchmarkAdmitUnlimited(b *testing.B) {
	l := newLimiter(time.UTC, map[int64]*Policy{1: everyLimit()})
	now := utc("2026-05-01T10:00:00Z")
	b.ReportAllocs()
	for b.Loop() {
		tk, _ := l.Admit(2, now)
		tk.Done(100, now)
	}
}

// BenchmarkRefuse is a request refused for rpm (and more).
func BenchmarkRefuse(b *testing.B) {
	p := everyLimit()
	p.RPM, p.Concurrency = 10, 10
	l := newLimiter(time.UTC, map[int64]*Policy{1: p})
	now := utc("2026-05-01T10:00:00Z")
	for range 10 {
		l.Admit(1, now)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, r := l.Admit(1, now); r == nil {
			b.Fatal("admitted")
		}
	}
}

func ExampleLimiter() {
	l := NewLimiter()
	l.SetLocation(time.UTC)
	l.Set(map[int64]*Policy{1: {RPM: 2}})
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	for i := range 3 {
		tk, r := l.Admit(1, now)
		if r != nil {
			fmt.Println(i, r.Violations[0].Limit, "retry at", r.RetryAt.Format(time.TimeOnly))
			continue
		}
		fmt.Println(i, "admitted")
		tk.Done(120, now) // tokens of the answer
	}
	// Output:
	// 0 admitted
	// 1 admitted
	// 2 rpm retry at 10:01:00
}

func TestZeroLimiter(t *testing.T) {
	var l Limiter
	now := utc("2026-05-01T10:00:00Z")
	if tk, r := l.Admit(1, now); r != nil || tk != (Ticket{}) {
		t.Errorf("zero limiter: Admit = %+v, %+v", tk, r)
	}
	l.Set(map[int64]*Policy{1: {RPD: 1}})
	admit(t, &l, 1, now)
	end := PeriodEnd(Daily, now, time.Local)
	refuse(t, &l, 1, now, end, Violation{LimitRPD, 1, 1, end})
}
