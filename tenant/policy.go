// Package tenant holds what an access key may do: its policy (the models it may use, its
// request and token limits, its expiry, whether it sees resources the gateway did not create)
// and the limiter that enforces the limits exactly. Pure logic, no I/O: the gateway feeds it
// the time and the tokens an answer used, the store keeps the policies as JSON.
package tenant

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Token budget periods. A day starts at midnight in the gateway's timezone, a week on Monday,
// a month on its first day.
const (
	Daily   = "daily"
	Weekly  = "weekly"
	Monthly = "monthly"
)

// maxLimit bounds every limit: far above any real quota, low enough that sums never overflow.
const maxLimit = 1 << 50

// maxRPM bounds requests per minute: the limiter keeps one timestamp per allowed request of
// the last minute, so this bounds its memory per access key (8 bytes each).
const maxRPM = 1_000_000

// maxModels bounds the globs of one policy.
const maxModels = 100

// Budget is a hard cap on the tokens an access key may use per period.
type Budget struct {
	// Limit is the number of tokens (prompt + candidates + thoughts) per period.
	Limit int64 `json:"limit"`
	// Period is daily, weekly or monthly, in the gateway's timezone.
	Period string `json:"period"`
}

// Policy is what one access key may do. The zero Policy allows everything, limits nothing and
// never expires; a zero limit means "no limit".
type Policy struct {
	// Models are globs of the model names the key may use ("gemini-2.5-flash*"): `*` matches
	// any run of characters, `?` one. Empty allows every model.
	Models []string `json:"models,omitempty"`
	// RPM is the most requests in any 60 seconds.
	RPM int64 `json:"rpm,omitempty"`
	// RPD is the most requests per day (from midnight in the gateway's timezone).
	RPD int64 `json:"rpd,omitempty"`
	// TPM is the most tokens in any 60 seconds, charged when an answer's usageMetadata
	// arrives: a request is refused while the last minute's tokens are at or above it.
	TPM int64 `json:"tpm,omitempty"`
	// TokenBudget is a hard stop once the period's tokens reach its limit.
	TokenBudget *Budget `json:"token_budget,omitempty"`
	// Concurrency is the most requests in flight at once; a stream counts until it ends.
	Concurrency int64 `json:"concurrency,omitempty"`
	// ExpiresAt is when the key stops working (zero: never).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Shared lets the key see and use resources the gateway did not create (made outside it,
	// or before resources recorded their access key). Resources of other access keys stay
	// out of its reach.
	Shared bool `json:"shared,omitempty"`
}

// Limited tells whether the policy sets any limit the limiter must count.
func (p *Policy) Limited() bool {
	return p != nil && (p.RPM > 0 || p.RPD > 0 || p.TPM > 0 || p.Concurrency > 0 ||
		(p.TokenBudget != nil && p.TokenBudget.Limit > 0))
}

// IsZero tells whether the policy allows everything (no models list, no limit, no expiry, not
// shared).
func (p *Policy) IsZero() bool {
	return p == nil || (len(p.Models) == 0 && !p.Limited() && p.ExpiresAt.IsZero() && !p.Shared)
}

// FieldError is one bad field of a policy: its JSON name and what is wrong.
type FieldError struct {
	Field       string
	Description string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Description }

// Check returns what is wrong with the policy, one error per bad field (each a FieldError),
// joined; nil when it is good.
func (p *Policy) Check() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{field, fmt.Sprintf(format, args...)})
	}
	if len(p.Models) > maxModels {
		bad("models", "at most %d globs", maxModels)
	}
	for _, m := range p.Models {
		if m == "" || len(m) > 200 || strings.ContainsAny(m, " \t\r\n\"\\") {
			bad("models", "%q is not a model glob such as gemini-2.5-flash*", m)
			break
		}
	}
	for _, l := range []struct {
		name string
		v    int64
		max  int64
	}{{"rpm", p.RPM, maxRPM}, {"rpd", p.RPD, maxLimit}, {"tpm", p.TPM, maxLimit}, {"concurrency", p.Concurrency, maxLimit}} {
		if l.v < 0 || l.v > l.max {
			bad(l.name, "must be between 0 (no limit) and %d", l.max)
		}
	}
	if b := p.TokenBudget; b != nil {
		if b.Limit <= 0 || b.Limit > maxLimit {
			bad("token_budget", "the limit must be between 1 and %d tokens", int64(maxLimit))
		}
		switch b.Period {
		case Daily, Weekly, Monthly:
		default:
			bad("token_budget", "the period must be daily, weekly or monthly, not %q", b.Period)
		}
	}
	return errors.Join(errs...)
}

// normalize drops "models/" from the globs, so a glob matches as the model names are compared.
func (p *Policy) normalize() {
	for i, m := range p.Models {
		p.Models[i] = strings.TrimPrefix(m, "models/")
	}
}

// Parse reads a policy stored as JSON ("" is the zero policy) and checks it.
func Parse(s string) (*Policy, error) {
	p := new(Policy)
	if s == "" {
		return p, nil
	}
	if err := json.Unmarshal([]byte(s), p); err != nil {
		return nil, fmt.Errorf("policy: %v", err)
	}
	p.normalize()
	if err := p.Check(); err != nil {
		return nil, err
	}
	return p, nil
}

// String is the policy as stored: JSON, "" for the zero policy.
func (p *Policy) String() string {
	if p.IsZero() {
		return ""
	}
	b, _ := json.Marshal(p)
	return string(b)
}

// AllowsModel tells whether the policy lets the key use model (with or without "models/").
// An empty model (a request that names none, such as a files call) is always allowed.
func (p *Policy) AllowsModel(model string) bool {
	if p == nil || len(p.Models) == 0 || model == "" {
		return true
	}
	model = strings.TrimPrefix(model, "models/")
	for _, g := range p.Models {
		if Glob(g, model) {
			return true
		}
	}
	return false
}

// Glob reports whether name matches pattern, where `*` matches any run of characters (`/`
// included) and `?` any one byte. It does not allocate.
func Glob(pattern, name string) bool {
	// The classic two-pointer match with backtracking to the last star.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*': // first: a star also where the name has one
			star, mark = p, n
			p++
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == name[n]):
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// ParseCount reads a count such as 5000, 200k, 10M or 1G (SI: k = 1000).
func ParseCount(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult = 1_000
		case 'm', 'M':
			mult = 1_000_000
		case 'g', 'G', 'b', 'B':
			mult = 1_000_000_000
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > maxLimit/mult {
		return 0, fmt.Errorf("%q is not a count such as 5000, 200k or 10M", s)
	}
	return n * mult, nil
}

// ParseBudget reads a token budget such as "10M daily" (the period defaults to daily).
func ParseBudget(limit, period string) (*Budget, error) {
	n, err := ParseCount(limit)
	if err != nil {
		return nil, err
	}
	if period == "" {
		period = Daily
	}
	b := &Budget{Limit: n, Period: period}
	p := Policy{TokenBudget: b}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return b, nil
}
