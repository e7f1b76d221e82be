package admin

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

func TestExtractKeys(t *testing.T) {
	k1 := "AIza" + strings.Repeat("a", 35)
	k2 := "AIza" + strings.Repeat("B", 30) + "_-9x0"
	text := "GEMINI_API_KEY=" + k1 + "\n  - \"" + k2 + "\",\n" + k1 + " again; " +
		"short AIzaTooShort, long " + k1 + "x, embedded x" + k1 + "."
	keys, repeats, invalid := extractKeys(text)
	if !slices.Equal(keys, []store.NewKey{{Secret: k1}, {Secret: k2}}) || repeats != 1 || invalid != 2 {
		t.Errorf("extractKeys = %q, %d repeats, %d invalid; want [k1 k2], 1, 2", keys, repeats, invalid)
	}
	keys, repeats, invalid = checkList([]string{" " + k1 + " ", k1, "nope", k2 + "x"})
	if !slices.Equal(keys, []store.NewKey{{Secret: k1}}) || repeats != 1 || invalid != 2 {
		t.Errorf("checkList = %q, %d, %d", keys, repeats, invalid)
	}
}

func TestExtractKeysWithProjects(t *testing.T) {
	k := func(c string) string { return "AIza" + strings.Repeat(c, 35) }
	text := strings.Join([]string{
		k("a") + " proj-a",                     // labelled
		"  " + k("b") + "\tproj_b.eu:1 ",       // tabs and padding
		k("c"),                                 // no label
		k("d") + " bad/label",                  // invalid line: nothing added
		k("e") + " " + k("f"),                  // two keys, no label
		k("g") + " two words",                  // free text: the key, no label
		k("c") + " proj-c",                     // a repeat that labels the key
		k("h") + " " + strings.Repeat("x", 65), // label too long: invalid
	}, "\r\n")
	keys, repeats, invalid := extractKeys(text)
	want := []store.NewKey{
		{Secret: k("a"), Project: "proj-a"}, {Secret: k("b"), Project: "proj_b.eu:1"},
		{Secret: k("c"), Project: "proj-c"}, {Secret: k("e")}, {Secret: k("f")}, {Secret: k("g")},
	}
	if !slices.Equal(keys, want) || repeats != 1 || invalid != 2 {
		t.Errorf("extractKeys = %+v, %d repeats, %d invalid; want %+v, 1, 2", keys, repeats, invalid, want)
	}
	keys, repeats, invalid = checkList([]string{k("a") + " proj-a", " " + k("b") + " ", k("a"), k("c") + " no good", k("d") + " a/b"})
	want = []store.NewKey{{Secret: k("a"), Project: "proj-a"}, {Secret: k("b")}}
	if !slices.Equal(keys, want) || repeats != 1 || invalid != 2 {
		t.Errorf("checkList = %+v, %d, %d; want %+v, 1, 2", keys, repeats, invalid, want)
	}
}

func TestSameOrigin(t *testing.T) {
	for _, c := range []struct {
		origin, site string
		want         bool
	}{
		{"", "", true},
		{"https://gw.example", "", true},
		{"https://gw.example", "same-origin", true},
		{"https://evil.example", "", false},
		{"null", "", false},
		{"", "cross-site", false},
		{"", "same-site", false},
		{"https://gw.example", "cross-site", false},
	} {
		r := httptest.NewRequest("POST", "https://gw.example/admin/api/keys", nil)
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if c.site != "" {
			r.Header.Set("Sec-Fetch-Site", c.site)
		}
		if got := sameOrigin(r, ""); got != c.want {
			t.Errorf("Origin %q, Sec-Fetch-Site %q: sameOrigin = %v, want %v", c.origin, c.site, got, c.want)
		}
	}
}

// fail is one wrong admin key from client.
func (t *Throttle) fail(client string, now time.Time) {
	if _, ok := t.begin(client, now); ok {
		t.end(client, now, false)
	}
}

func TestThrottleLocksOutAndDoubles(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	h := &Throttle{}
	for range loginFailuresAllowed - 1 {
		h.fail("1.2.3.4", now)
	}
	if d := h.lockedFor("1.2.3.4", now); d != 0 {
		t.Fatalf("locked after %d failures: %v", loginFailuresAllowed-1, d)
	}
	h.fail("1.2.3.4", now)
	if d := h.lockedFor("1.2.3.4", now); d != firstLockout {
		t.Fatalf("lockout %v, want %v", d, firstLockout)
	}
	if d := h.lockedFor("5.6.7.8", now); d != 0 {
		t.Errorf("another IP is locked: %v", d)
	}
	if _, ok := h.begin("1.2.3.4", now); ok {
		t.Fatal("a locked IP may try")
	}
	now = now.Add(firstLockout)
	h.fail("1.2.3.4", now)
	if d := h.lockedFor("1.2.3.4", now); d != 2*firstLockout {
		t.Errorf("second lockout %v, want %v", d, 2*firstLockout)
	}
	for range 20 {
		now = now.Add(h.lockedFor("1.2.3.4", now))
		h.fail("1.2.3.4", now)
	}
	if d := h.lockedFor("1.2.3.4", now); d != maxLockout {
		t.Errorf("lockout %v, want the cap %v", d, maxLockout)
	}
	now = now.Add(maxLockout)
	if d := h.lockedFor("1.2.3.4", now); d != 0 {
		t.Errorf("still locked after the lockout: %v", d)
	}
	if _, ok := h.begin("1.2.3.4", now); !ok {
		t.Fatal("no try after the lockout")
	}
	h.end("1.2.3.4", now, true)
	h.fail("1.2.3.4", now)
	if d := h.lockedFor("1.2.3.4", now); d != 0 {
		t.Errorf("a success did not clear the record: %v", d)
	}
}
