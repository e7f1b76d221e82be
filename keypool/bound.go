package keypool

import (
	"errors"
	"time"
)

// ErrKeyDisabled is returned by Get when the key is disabled.
var ErrKeyDisabled = errors.New("keypool: key is disabled")

// ErrUnknownKey is returned by Get when no key has the id.
var ErrUnknownKey = errors.New("keypool: no such key")

// Get returns the secret of one given key, for calls that must use it (a resource it owns, an
// upload session it started): ErrUnknownKey if it is not loaded, ErrKeyDisabled if it is
// disabled, and a *CoolingError if it is cooling down for model at now (model "" never cools).
func (p *Pool) Get(id int64, model string, now time.Time) (secret string, err error) {
	e := find(p.list(), id)
	if e == nil {
		return "", ErrUnknownKey
	}
	if e.disabled.Load() {
		return "", ErrKeyDisabled
	}
	if model != "" {
		// An ejection is a preference of the rotation, not a ban: only this key can serve.
		if until, cooling := e.coolingFor(model, now.UnixNano(), false); cooling {
			return "", &CoolingError{Model: model, Until: time.Unix(0, until).In(now.Location())}
		}
	}
	return e.secret, nil
}
