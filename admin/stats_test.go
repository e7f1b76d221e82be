package admin

import (
	"slices"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// TestStatsBoundsAcrossDST checks the hourly and six-hour buckets on and after both DST
// changes in a European and an American zone: six-hour blocks start at 00, 06, 12 and 18 local
// (the one holding the change lasts 5 or 7 hours), hours start on the local hour (the repeated
// one appears twice, the skipped one not at all), and the last bucket holds now.
func TestStatsBoundsAcrossDST(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	newYork := mustZone(t, "America/New_York")
	// at builds an instant from the local wall clock with an explicit UTC offset (in hours),
	// so the ambiguous hour after clocks go back can be named either way.
	at := func(loc *time.Location, y int, m time.Month, d, h, min, offset int) time.Time {
		return time.Date(y, m, d, h, min, 0, 0, time.FixedZone("", offset*3600)).In(loc)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		// lastBlock is the local start of the six-hour block holding now.
		lastBlock string
		// hours are the local labels (15:04) of the last hourly buckets, now's last.
		hours []string
	}{
		// Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST.
		{"berlin spring, day after", at(berlin, 2026, 3, 30, 15, 40, 2), "2026-03-30 12:00",
			[]string{"13:00", "14:00", "15:00"}},
		{"berlin spring, change day", at(berlin, 2026, 3, 29, 4, 30, 2), "2026-03-29 00:00",
			[]string{"00:00", "01:00", "03:00", "04:00"}},
		{"berlin spring, before the change", at(berlin, 2026, 3, 29, 1, 30, 1), "2026-03-29 00:00",
			[]string{"23:00", "00:00", "01:00"}},
		// Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET.
		{"berlin autumn, day after", at(berlin, 2026, 10, 26, 7, 5, 1), "2026-10-26 06:00",
			[]string{"05:00", "06:00", "07:00"}},
		{"berlin autumn, first 02:xx", at(berlin, 2026, 10, 25, 2, 30, 2), "2026-10-25 00:00",
			[]string{"00:00", "01:00", "02:00"}},
		{"berlin autumn, second 02:xx", at(berlin, 2026, 10, 25, 2, 30, 1), "2026-10-25 00:00",
			[]string{"00:00", "01:00", "02:00", "02:00"}},
		{"berlin autumn, after the change", at(berlin, 2026, 10, 25, 5, 10, 1), "2026-10-25 00:00",
			[]string{"01:00", "02:00", "02:00", "03:00", "04:00", "05:00"}},
		// New York, 2026-03-08: 02:00 EST becomes 03:00 EDT.
		{"new york spring, day after", at(newYork, 2026, 3, 9, 20, 0, -4), "2026-03-09 18:00",
			[]string{"18:00", "19:00", "20:00"}},
		{"new york spring, change day", at(newYork, 2026, 3, 8, 3, 15, -4), "2026-03-08 00:00",
			[]string{"00:00", "01:00", "03:00"}},
		// New York, 2026-11-01: 02:00 EDT becomes 01:00 EST.
		{"new york autumn, day after", at(newYork, 2026, 11, 2, 0, 20, -5), "2026-11-02 00:00",
			[]string{"22:00", "23:00", "00:00"}},
		{"new york autumn, second 01:xx", at(newYork, 2026, 11, 1, 1, 45, -5), "2026-11-01 00:00",
			[]string{"00:00", "01:00", "01:00"}},
		{"new york autumn, after the change", at(newYork, 2026, 11, 1, 6, 30, -5), "2026-11-01 06:00",
			[]string{"00:00", "01:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loc := tc.now.Location()
			checkBounds := func(kind string, b []time.Time, want int) {
				t.Helper()
				if len(b) != want {
					t.Fatalf("%s: %d bounds, want %d", kind, len(b), want)
				}
				for i := 1; i < len(b); i++ {
					if !b[i].After(b[i-1]) {
						t.Errorf("%s: bound %d (%v) not after %v", kind, i, b[i], b[i-1])
					}
				}
				if last := b[len(b)-2]; last.After(tc.now) || !b[len(b)-1].After(tc.now) {
					t.Errorf("%s: the last bucket [%v, %v) does not hold %v", kind, last, b[len(b)-1], tc.now)
				}
			}

			six := statsBounds(statsRanges["7d"], tc.now, loc)
			checkBounds("7d", six, 29)
			for _, b := range six {
				if l := b.In(loc); l.Hour()%6 != 0 || l.Minute() != 0 {
					t.Errorf("7d: bound %v is not at 00, 06, 12 or 18 local", l)
				}
			}
			if got := six[27].In(loc).Format("2006-01-02 15:04"); got != tc.lastBlock {
				t.Errorf("7d: now's block starts %s, want %s", got, tc.lastBlock)
			}
			// Every block is 6 h but the one holding a DST change (5 or 7 h).
			odd := 0
			for i := 1; i < len(six); i++ {
				switch six[i].Sub(six[i-1]) {
				case 6 * time.Hour:
				case 5 * time.Hour, 7 * time.Hour:
					odd++
				default:
					t.Errorf("7d: block %d lasts %v", i, six[i].Sub(six[i-1]))
				}
			}
			if odd != 1 {
				t.Errorf("7d: %d blocks of 5 or 7 h, want 1", odd)
			}

			hours := statsBounds(statsRanges["24h"], tc.now, loc)
			checkBounds("24h", hours, 25)
			for i := 1; i < len(hours); i++ {
				if d := hours[i].Sub(hours[i-1]); d != time.Hour {
					t.Errorf("24h: bucket %d lasts %v", i, d)
				}
			}
			var labels []string
			for _, b := range hours[24-len(tc.hours) : 24] {
				labels = append(labels, b.In(loc).Format("15:04"))
			}
			if !slices.Equal(labels, tc.hours) {
				t.Errorf("24h: last labels %q, want %q", labels, tc.hours)
			}
		})
	}
}

// TestStatsBoundsOnUsageSlots checks that every bound of every range falls on a start of the
// store's usage slots, so the stats are read from the per-slot sums and not from every request
// row: in zones with DST (a half-hour shift at Lord Howe) and offsets of +05:30, +05:45, +12:45
// and -09:30, at nows spread over two years.
func TestStatsBoundsOnUsageSlots(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, name := range []string{"UTC", "Europe/Berlin", "America/New_York", "America/St_Johns", "Asia/Kolkata",
		"Asia/Kathmandu", "Australia/Eucla", "Australia/Lord_Howe", "Pacific/Chatham", "Pacific/Marquesas"} {
		loc := mustZone(t, name)
		// 7h 7m 7s steps hit every hour of the day and every minute offset over two years.
		for now := start; now.Year() < 2027; now = now.Add(7*time.Hour + 7*time.Minute + 7*time.Second) {
			for rg, r := range statsRanges {
				for _, b := range statsBounds(r, now, loc) {
					if b.UnixMilli()%store.UsageSlot.Milliseconds() != 0 {
						t.Fatalf("%s, %s at %v: bound %v is not on a usage slot", name, rg, now.In(loc), b.In(loc))
					}
				}
			}
		}
	}
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestStatsBoundsFollowTheLocalCalendar checks bucket bounds across a DST change: days start
// at local midnight (the day clocks go back has 25 hours), hours on the local hour.
func TestStatsBoundsFollowTheLocalCalendar(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	// 2025-10-26: clocks go back from 03:00 to 02:00 in Berlin.
	now := time.Date(2025, 10, 28, 15, 40, 0, 0, berlin)
	days := statsBounds(statsRanges["30d"], now, berlin)
	if len(days) != 31 {
		t.Fatalf("%d bounds for 30 days", len(days))
	}
	for i, b := range days {
		if l := b.In(berlin); l.Hour() != 0 || l.Minute() != 0 {
			t.Errorf("day bound %d is %v, not local midnight", i, l)
		}
	}
	if last := days[30]; !last.Equal(time.Date(2025, 10, 29, 0, 0, 0, 0, berlin)) {
		t.Errorf("last bound %v, want the next local midnight", last)
	}
	long := 0
	for i := 1; i < len(days); i++ {
		if d := days[i].Sub(days[i-1]); d == 25*time.Hour {
			long++
		} else if d != 24*time.Hour {
			t.Errorf("day %d lasts %v", i, d)
		}
	}
	if long != 1 {
		t.Errorf("%d days of 25 h, want 1 (the DST change)", long)
	}

	hours := statsBounds(statsRanges["24h"], now, berlin)
	if len(hours) != 25 || !hours[24].Equal(time.Date(2025, 10, 28, 16, 0, 0, 0, berlin)) {
		t.Fatalf("hour bounds: %d, last %v", len(hours), hours[len(hours)-1])
	}
	for i := 1; i < len(hours); i++ {
		if hours[i].Sub(hours[i-1]) != time.Hour {
			t.Errorf("hour bucket %d lasts %v", i, hours[i].Sub(hours[i-1]))
		}
	}
	// Six-hour blocks start at 00, 06, 12 or 18 local, India's half-hour offset included.
	kolkata := mustZone(t, "Asia/Kolkata")
	six := statsBounds(statsRanges["7d"], now, kolkata)
	if len(six) != 29 {
		t.Fatalf("%d bounds for 7 days", len(six))
	}
	for _, b := range six {
		if l := b.In(kolkata); l.Hour()%6 != 0 || l.Minute() != 0 {
			t.Errorf("six-hour bound %v is not on a block start", l)
		}
	}
	if !six[27].Before(now) || six[28].Before(now) {
		t.Errorf("the last block [%v, %v) does not hold now", six[27], six[28])
	}
}
