package admin

import (
	"testing"
)

// Every new AI Studio key is an authorization key ("AQ." with dots inside): the paste import
// and the list of keys take them as they take "AIza" keys.
func TestAuthorizationKeysAreKeys(t *testing.T) {
	const aq = "AQ.Ab8RN6K2x_yZ-0123456789abcdef.ghijKLMN"
	const aiza = "AIzaSyA1b2C3d4E5f6G7h8I9j0K_L-mnopqrstu"
	text := "GEMINI_KEY=" + aq + "\nThe old one was " + aiza + ".\nAnd again: " + aq + ".\n" +
		"AQ.short\n" + // cut short: malformed
		"xAQ.Ab8RN6K2x_yZ-0123456789abcdef\n" + // inside a longer word: not a key
		"AQ.Zz8RN6K2x_yZ-0123456789abcdef-label my-project\n"
	keys, repeats, invalid := extractKeys(text)
	want := []string{aq, aiza, "AQ.Zz8RN6K2x_yZ-0123456789abcdef-label"}
	if len(keys) != len(want) || repeats != 1 || invalid != 1 {
		t.Fatalf("extractKeys = %+v, %d repeats, %d invalid; want %v, 1, 1", keys, repeats, invalid, want)
	}
	for i, k := range keys {
		if k.Secret != want[i] {
			t.Errorf("key %d = %q, want %q", i, k.Secret, want[i])
		}
	}
	if keys[2].Project != "my-project" {
		t.Errorf("the labelled authorization key has project %q", keys[2].Project)
	}
	listed, _, bad := checkList([]string{aq, " " + aq + " team-a ", "AQ.short"})
	if len(listed) != 1 || listed[0].Secret != aq || listed[0].Project != "team-a" || bad != 1 {
		t.Errorf("checkList = %+v, %d invalid", listed, bad)
	}
}
