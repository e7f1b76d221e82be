package keypool

import (
	"errors"
	"testing"
	"time"
)

func TestGetGivesOneKeyOrSaysWhyNot(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	p := New(3)
	p.Load([]Key{{ID: 1, Secret: "s1"}, {ID: 2, Secret: "s2", Disabled: true}, {ID: 3, Secret: "s3"}},
		[]Cooldown{{KeyID: 3, Model: "m", Until: now.Add(time.Minute)}})
	if s, err := p.Get(1, "m", now); err != nil || s != "s1" {
		t.Errorf("Get(1) = %q, %v", s, err)
	}
	if _, err := p.Get(2, "m", now); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("Get(disabled) err = %v", err)
	}
	if _, err := p.Get(9, "m", now); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Get(unknown) err = %v", err)
	}
	var ce *CoolingError
	if _, err := p.Get(3, "m", now); !errors.As(err, &ce) || !ce.Until.Equal(now.Add(time.Minute)) {
		t.Errorf("Get(cooling) err = %v", err)
	}
	// Another model, or no model (uploads, listing), is not held up by the cooldown.
	if s, err := p.Get(3, "", now); err != nil || s != "s3" {
		t.Errorf("Get(3, no model) = %q, %v", s, err)
	}
	if s, err := p.Get(3, "other", now); err != nil || s != "s3" {
		t.Errorf("Get(3, other model) = %q, %v", s, err)
	}
}
