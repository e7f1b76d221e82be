package store

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestSlots(t *testing.T) {
	for _, c := range []struct{ ms, slot int64 }{
		{0, 0}, {1, 0}, {SlotMS - 1, 0}, {SlotMS, SlotMS},
		{-1, -SlotMS}, {-SlotMS, -SlotMS}, {-SlotMS - 1, -2 * SlotMS}, // rounding down before 1970 too
	} {
		if got := SlotOf(c.ms); got != c.slot {
			t.Errorf("SlotOf(%d) = %d, want %d", c.ms, got, c.slot)
		}
	}
	kathmandu := time.FixedZone("+05:45", 5*3600+45*60)
	for _, c := range []struct {
		t    time.Time
		want bool
	}{
		{time.Time{}, true},
		{time.Date(2026, 3, 10, 0, 0, 0, 0, kathmandu), true}, // a local midnight
		{time.Date(2026, 3, 10, 13, 15, 0, 0, time.UTC), true},
		{time.Date(2026, 3, 10, 13, 15, 0, int(time.Millisecond), time.UTC), false},
		{time.Date(2026, 3, 10, 13, 15, 0, int(time.Microsecond), time.UTC), true}, // to the millisecond
		{time.Date(2026, 3, 10, 13, 10, 0, 0, time.UTC), false},
	} {
		if got := OnSlot(c.t); got != c.want {
			t.Errorf("OnSlot(%v) = %v, want %v", c.t, got, c.want)
		}
	}
}

func TestCheckBuckets(t *testing.T) {
	t0 := time.UnixMilli(SlotOf(1_750_000_000_000))
	if on, err := CheckBuckets([]time.Time{t0, t0.Add(UsageSlot), t0.Add(time.Hour)}); err != nil || !on {
		t.Errorf("bounds on slots = %v, %v", on, err)
	}
	if on, err := CheckBuckets([]time.Time{t0, t0.Add(time.Minute)}); err != nil || on {
		t.Errorf("a bound off a slot = %v, %v", on, err)
	}
	many := make([]time.Time, MaxBuckets+2)
	for i := range many {
		many[i] = t0.Add(time.Duration(i) * time.Hour)
	}
	for _, bad := range [][]time.Time{nil, {t0}, {t0, t0}, {t0.Add(time.Hour), t0}, many} {
		if _, err := CheckBuckets(bad); err == nil {
			t.Errorf("%d bounds accepted", len(bad))
		}
	}
	if _, err := CheckBuckets(many[:MaxBuckets+1]); err != nil {
		t.Errorf("%d buckets refused: %v", MaxBuckets, err)
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("short", 10); got != "short" {
		t.Errorf("Truncate(short) = %q", got)
	}
	long := strings.Repeat("é", 10) // 2 bytes each
	if got := Truncate(long, 5); got != "éé" || !utf8.ValidString(got) {
		t.Errorf("Truncate cut inside a rune: %q", got)
	}
}

func TestLogQueryPage(t *testing.T) {
	for _, c := range []struct {
		q             LogQuery
		limit, offset int
	}{
		{LogQuery{}, 100, 0},
		{LogQuery{Limit: -3, Offset: -1}, 100, 0},
		{LogQuery{Limit: 20, Offset: 40}, 20, 40},
		{LogQuery{Limit: 50000}, 10000, 0},
	} {
		if l, o := c.q.Page(); l != c.limit || o != c.offset {
			t.Errorf("%+v.Page() = %d, %d; want %d, %d", c.q, l, o, c.limit, c.offset)
		}
	}
}
