package admin

import (
	"slices"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// FuzzExtractKeys checks the paste import (extractKeys) and the list import (checkList) on
// any text:
//   - every key returned has the key pattern, occurs in the text and is returned once; every
//     label is a good project label that occurs in the text;
//   - every run of key characters that is a key (alone, or first on a "<key> <label>" line
//     with a good label) is returned, and each such run counts as a key or a repeat;
//   - the keys pasted again, one per line with their labels, give the same keys;
//   - each entry of a list is a key, a repeat or invalid, exactly once.
func FuzzExtractKeys(f *testing.F) {
	keys := contractKeys(0, 3)
	for _, s := range []string{
		keys[0] + "\n" + keys[1] + " prod-eu\n" + keys[2] + "," + keys[0],
		"GEMINI_API_KEY=" + keys[0] + "\nexport KEY2=\"" + keys[1] + "\"",
		keys[0] + " " + keys[1],
		keys[0] + " bad label!",
		keys[0] + "x " + keys[1][:20] + " AIza",
		"{\"keys\":[\"" + keys[0] + "\"]}\r\n" + keys[2] + "\tteam-a\r\n",
		keys[0] + " AIzaNotALabel",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		got, repeats, invalid := extractKeys(text)
		if repeats < 0 || invalid < 0 {
			t.Fatalf("repeats %d, invalid %d", repeats, invalid)
		}
		seen := map[string]bool{}
		for _, k := range got {
			if !geminiKey.MatchString(k.Secret) || !strings.Contains(text, k.Secret) || seen[k.Secret] {
				t.Fatalf("%q gives the key %q", text, k.Secret)
			}
			seen[k.Secret] = true
			if k.Project != "" && (store.CheckProject(k.Project) != nil || !strings.Contains(text, k.Project)) {
				t.Fatalf("%q gives the label %q", text, k.Project)
			}
		}
		accepted := 0
		for _, line := range strings.Split(text, "\n") {
			if key, _, ok, bad := labeledLine(line); ok {
				if !bad {
					accepted++
					if !seen[key] {
						t.Fatalf("%q: the labelled key %q is missing", text, key)
					}
				}
				continue
			}
			for _, tok := range keyTokens(line) {
				if geminiKey.MatchString(tok) {
					accepted++
					if !seen[tok] {
						t.Fatalf("%q: the key %q is missing", text, tok)
					}
				}
			}
		}
		if accepted != len(got)+repeats {
			t.Fatalf("%q: %d keys found, %d returned and %d repeats", text, accepted, len(got), repeats)
		}
		var again strings.Builder
		for _, k := range got {
			again.WriteString(k.Secret + " " + k.Project + "\n")
		}
		if got2, _, inv := extractKeys(again.String()); !slices.Equal(got2, got) || inv != 0 {
			t.Fatalf("%q gives %v; pasted again %q gives %v (%d invalid)", text, got, again.String(), got2, inv)
		}
		list := strings.Split(text, "\n")
		lk, lr, li := checkList(list)
		if len(lk)+lr+li != len(list) {
			t.Fatalf("list %q: %d keys, %d repeats, %d invalid", list, len(lk), lr, li)
		}
		for _, k := range lk {
			if !geminiKey.MatchString(k.Secret) || !strings.Contains(text, k.Secret) ||
				(k.Project != "" && store.CheckProject(k.Project) != nil) {
				t.Fatalf("list %q gives %+v", list, k)
			}
		}
	})
}
