package store

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckProject(t *testing.T) {
	for _, good := range []string{"", "my-project", "proj_1.eu:2", "578829824020", strings.Repeat("a", MaxProjectLen)} {
		if err := CheckProject(good); err != nil {
			t.Errorf("CheckProject(%q) = %v, want nil", good, err)
		}
	}
	for _, c := range []struct {
		label string
		want  error
	}{
		{strings.Repeat("a", MaxProjectLen+1), ErrProjectTooLong},
		{"my project", ErrProjectChars},
		{" padded", ErrProjectChars},
		{"proj/1", ErrProjectChars},
		{"projé", ErrProjectChars},
		{"a\nb", ErrProjectChars},
		{"<script>", ErrProjectChars},
	} {
		if err := CheckProject(c.label); !errors.Is(err, c.want) {
			t.Errorf("CheckProject(%q) = %v, want %v", c.label, err, c.want)
		}
	}
}
