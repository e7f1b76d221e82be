package admin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// fakeBackend is an in-memory Backend for the contract tests of the admin API. It is as
// small as it can be while still real: a change shows in the next answer, refused input can be
// seen to change nothing, and unknown ids are store.ErrNotFound, as the gateway's backend does.
type fakeBackend struct {
	mu sync.Mutex

	adminKey string
	loc      *time.Location
	now      func() time.Time       // the clock of expiries and of the live usage
	sessions map[[32]byte]time.Time // by the SHA-256 of the token

	keys       []fakeKey // ordered by id
	nextKey    int64
	access     []fakeAccessKey // ordered by id
	nextAccess int64
	settings   map[string]string // the effective values, as the panel would store them

	run           ValidationRun
	runIDs        []int64                    // the keys of the last run started
	noRun         string                     // when set, no validation run can start, for this reason
	verdicts      map[int64]KeyCheck         // what ValidateKey finds; a success when absent
	requests      []store.RequestLog         // oldest first
	limitHits     map[int]string             // the limit that refused requests[i], if one did
	live          map[int64]map[string]int64 // the use now of each access key, by limit
	accessUpdates []accessUpdate             // what UpdateAccessKey was given
	accessAdds    []tenant.Policy            // the policies AddAccessKey was given
	errorLogs     []store.ErrorLog           // oldest first
	fail          error                      // when set, Keys fails with it
	calls         map[string]int             // changing calls by method name
	adds          [][]store.NewKey           // what AddLabeledKeys was given
	updates       []map[string]string        // what UpdateSettings stored
	usageCalls    []int64                    // the access key id of each Usage and UsageByModel call
}

// fakeKey is an upstream key: what the API shows and the secret it never shows.
type fakeKey struct {
	Key
	secret string
}

// accessUpdate is one call of UpdateAccessKey.
type accessUpdate struct {
	id     int64
	label  *string
	policy *tenant.Policy
}

// fakeAccessKey is an access key with the hash of its secret.
type fakeAccessKey struct {
	AccessKey
	hash [32]byte
}

// fakeSettings are the live settings and their values at the start.
var fakeSettings = map[string]string{
	"upstream": "https://generativelanguage.googleapis.com", "proxy": "",
	"max_failures": "5", "max_ejection_percent": "50", "max_retries": "3", "max_request_body": "52428800",
	"validation_model": "gemini-2.5-flash", "validation_probe": "count_tokens", "validation_interval": "1h",
	"timezone": "UTC", "error_log_retention": "15d", "request_log_retention": "30d",
}

// newFakeBackend returns a backend whose admin key is adminKey, holding the upstream keys
// secrets (ids from 1, active, unlabelled) and one access key labelled "Caddyfile".
func newFakeBackend(adminKey string, secrets ...string) *fakeBackend {
	b := &fakeBackend{
		adminKey:  adminKey,
		loc:       time.UTC,
		sessions:  make(map[[32]byte]time.Time),
		settings:  make(map[string]string, len(fakeSettings)),
		verdicts:  make(map[int64]KeyCheck),
		calls:     make(map[string]int),
		now:       time.Now,
		limitHits: make(map[int]string),
		live:      make(map[int64]map[string]int64),
	}
	for name, v := range fakeSettings {
		b.settings[name] = v
	}
	for _, s := range secrets {
		b.addKey(s, "")
	}
	b.nextAccess++
	b.access = append(b.access, fakeAccessKey{AccessKey{ID: b.nextAccess, Label: "Caddyfile", Enabled: true,
		CreatedAt: Time(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}, sha256.Sum256([]byte("caddyfile-access-key"))})
	return b
}

// addKey stores a new key; called with b.mu held or before the backend is shared.
func (b *fakeBackend) addKey(secret, project string) {
	b.nextKey++
	b.keys = append(b.keys, fakeKey{Key{ID: b.nextKey, Masked: secret[:6] + "…" + secret[len(secret)-4:],
		Project: project, Status: KeyActive, Cooldowns: []Cooldown{}}, secret})
}

// changed counts a call that changes something.
func (b *fakeBackend) changed(name string) { b.calls[name]++ }

// changes returns how many changing calls were made, by name ("" for all).
func (b *fakeBackend) changes(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for k, v := range b.calls {
		if name == "" || k == name {
			n += v
		}
	}
	return n
}

func (b *fakeBackend) key(id int64) *fakeKey {
	for i := range b.keys {
		if b.keys[i].ID == id {
			return &b.keys[i]
		}
	}
	return nil
}

func (b *fakeBackend) accessKey(id int64) *fakeAccessKey {
	for i := range b.access {
		if b.access[i].ID == id {
			return &b.access[i]
		}
	}
	return nil
}

func notFound(what string, id int64) error {
	return fmt.Errorf("%s %d: %w", what, id, store.ErrNotFound)
}

// CheckAdminKey implements Backend.
func (b *fakeBackend) CheckAdminKey(key string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	got, want := sha256.Sum256([]byte(key)), sha256.Sum256([]byte(b.adminKey))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1, nil
}

// SetAdminKey implements Backend.
func (b *fakeBackend) SetAdminKey(_ context.Context, key string, keep [32]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("SetAdminKey")
	b.adminKey = key
	for h := range b.sessions {
		if h != keep {
			delete(b.sessions, h)
		}
	}
	return nil
}

// Status implements Backend.
func (b *fakeBackend) Status() any {
	b.mu.Lock()
	defer b.mu.Unlock()
	counts := map[string]int{KeyActive: 0, KeyCooling: 0, KeyDisabled: 0}
	for _, k := range b.keys {
		counts[k.Status]++
	}
	return map[string]any{"keys": counts, "log_rows_dropped": 0}
}

// Location implements Backend.
func (b *fakeBackend) Location() *time.Location {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.loc
}

// CreateSession implements Backend.
func (b *fakeBackend) CreateSession(_ context.Context, tokenHash [32]byte, expires time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sessions[tokenHash] = expires
	return nil
}

// SessionExpiry implements Backend.
func (b *fakeBackend) SessionExpiry(_ context.Context, tokenHash [32]byte, now time.Time) (time.Time, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	exp, ok := b.sessions[tokenHash]
	if !ok || !exp.After(now) {
		return time.Time{}, false, nil
	}
	return exp, true, nil
}

// DeleteSession implements Backend.
func (b *fakeBackend) DeleteSession(_ context.Context, tokenHash [32]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.sessions, tokenHash)
	return nil
}

// sessionCount returns how many sessions are stored.
func (b *fakeBackend) sessionCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sessions)
}

// Keys implements Backend.
func (b *fakeBackend) Keys(context.Context) ([]Key, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return nil, b.fail
	}
	out := make([]Key, len(b.keys))
	for i, k := range b.keys {
		out[i] = k.Key
		out[i].Cooldowns = slices.Clone(k.Cooldowns)
	}
	return out, nil
}

// AddLabeledKeys implements Backend as store.Store.AddLabeledKeys does.
func (b *fakeBackend) AddLabeledKeys(_ context.Context, keys []store.NewKey) (added, relabeled int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("AddLabeledKeys")
	b.adds = append(b.adds, slices.Clone(keys))
	for _, nk := range keys {
		i := slices.IndexFunc(b.keys, func(k fakeKey) bool { return k.secret == nk.Secret })
		switch {
		case i < 0:
			b.addKey(nk.Secret, nk.Project)
			added++
		case nk.Project != "" && b.keys[i].Project != nk.Project:
			b.keys[i].Project = nk.Project
			relabeled++
		}
	}
	return added, relabeled, nil
}

// SetKeysProject implements Backend: an unknown id changes nothing.
func (b *fakeBackend) SetKeysProject(_ context.Context, ids []int64, project string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("SetKeysProject")
	var missing []int64
	for _, id := range ids {
		if b.key(id) == nil && !slices.Contains(missing, id) {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return 0, &UnknownKeysError{IDs: missing}
	}
	changed := 0
	for _, id := range ids {
		if k := b.key(id); k.Project != project {
			k.Project = project
			changed++
		}
	}
	return changed, nil
}

// DeleteKey implements Backend.
func (b *fakeBackend) DeleteKey(_ context.Context, id int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("DeleteKey")
	i := slices.IndexFunc(b.keys, func(k fakeKey) bool { return k.ID == id })
	if i < 0 {
		return notFound("key", id)
	}
	b.keys = slices.Delete(b.keys, i, i+1)
	return nil
}

// SetKeyEnabled implements Backend: an operator's disable is manual, enabling clears the
// reason, the failures and the cooldowns.
func (b *fakeBackend) SetKeyEnabled(_ context.Context, id int64, enabled bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("SetKeyEnabled")
	k := b.key(id)
	if k == nil {
		return notFound("key", id)
	}
	if enabled {
		k.Status, k.DisabledReason, k.ManualDisabled, k.FailureCount, k.Cooldowns = KeyActive, "", false, 0, []Cooldown{}
	} else {
		k.Status, k.DisabledReason, k.ManualDisabled = KeyDisabled, "disabled by an operator", true
	}
	return nil
}

// ValidateKey implements Backend: the key's verdict (a success unless set) is applied.
func (b *fakeBackend) ValidateKey(_ context.Context, id int64) (KeyCheck, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("ValidateKey")
	k := b.key(id)
	if k == nil {
		return KeyCheck{}, notFound("key", id)
	}
	check, ok := b.verdicts[id]
	if !ok {
		check = KeyCheck{Result: "success", HTTPStatus: 200, Action: "valid"}
	}
	check.KeyID = id
	if check.Action == "disabled" {
		k.Status, k.DisabledReason = KeyDisabled, check.Reason
	}
	return check, nil
}

// StartValidation implements Backend. The run goes on until the test calls finishRun.
func (b *fakeBackend) StartValidation(ids []int64) (ValidationRun, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.noRun != "" {
		return ValidationRun{Error: b.noRun}, false
	}
	if b.run.Running {
		return b.run, false
	}
	b.changed("StartValidation")
	b.runIDs = nil
	for _, k := range b.keys {
		if ids == nil || slices.Contains(ids, k.ID) {
			b.runIDs = append(b.runIDs, k.ID)
		}
	}
	b.run = ValidationRun{Running: true, Total: len(b.runIDs), StartedAt: Time(time.Now().In(b.loc))}
	return b.run, true
}

// finishRun ends the validation run: every key of it checked and found valid.
func (b *fakeBackend) finishRun() {
	b.mu.Lock()
	defer b.mu.Unlock()
	results := make([]KeyCheck, len(b.runIDs))
	for i, id := range b.runIDs {
		results[i] = KeyCheck{KeyID: id, Result: "success", HTTPStatus: 200, Action: "valid"}
	}
	b.run.Running, b.run.Done = false, len(results)
	b.run.FinishedAt = Time(time.Now().In(b.loc))
	b.run.Summary, b.run.Results = map[string]int{"valid": len(results)}, results
}

// Validation implements Backend.
func (b *fakeBackend) Validation() ValidationRun {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.run
}

// KeySecrets implements Backend.
func (b *fakeBackend) KeySecrets(_ context.Context, status string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, k := range b.keys {
		if status == "" || k.Status == status {
			out = append(out, k.secret)
		}
	}
	return out, nil
}

// clonePolicy returns a deep copy of p.
func clonePolicy(p tenant.Policy) tenant.Policy {
	p.Models = slices.Clone(p.Models)
	if p.TokenBudget != nil {
		b := *p.TokenBudget
		p.TokenBudget = &b
	}
	return p
}

// nextStart returns the start of the next day (daily), week from Monday (weekly) or month
// (monthly) after now in loc.
func nextStart(period string, now time.Time, loc *time.Location) time.Time {
	now = now.In(loc)
	y, m, d := now.Date()
	switch period {
	case tenant.Weekly:
		return time.Date(y, m, d+7-(int(now.Weekday())+6)%7, 0, 0, 0, 0, loc)
	case tenant.Monthly:
		return time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	}
	return time.Date(y, m, d+1, 0, 0, 0, 0, loc)
}

// shown is an access key as AccessKeys answers it: a copy, with whether it expired and its
// use now against each limit its policy sets; called with b.mu held.
func (b *fakeBackend) shown(k fakeAccessKey) AccessKey {
	a := k.AccessKey
	a.Policy = clonePolicy(a.Policy)
	now := b.now()
	a.Expired = !a.ExpiresAt.IsZero() && !now.Before(a.ExpiresAt)
	used := b.live[a.ID]
	limit := func(name string, n int64, resets time.Time) *LimitUsage {
		if n <= 0 {
			return nil
		}
		return &LimitUsage{Used: used[name], Limit: n, ResetsAt: Time(resets)}
	}
	u := AccessKeyUsage{
		RPM:         limit("rpm", a.RPM, time.Time{}),
		RPD:         limit("rpd", a.RPD, nextStart(tenant.Daily, now, b.loc)),
		TPM:         limit("tpm", a.TPM, time.Time{}),
		Concurrency: limit("concurrency", a.Concurrency, time.Time{}),
	}
	if tb := a.TokenBudget; tb != nil {
		u.TokenBudget = limit("token_budget", tb.Limit, nextStart(tb.Period, now, b.loc))
	}
	if u != (AccessKeyUsage{}) {
		a.Usage = &u
	}
	return a
}

// AccessKeys implements Backend.
func (b *fakeBackend) AccessKeys(context.Context) ([]AccessKey, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]AccessKey, len(b.access))
	for i, k := range b.access {
		out[i] = b.shown(k)
	}
	return out, nil
}

// AddAccessKey implements Backend; a secret stored already is store.ErrDuplicate.
func (b *fakeBackend) AddAccessKey(_ context.Context, secret, label string, p tenant.Policy) (AccessKey, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("AddAccessKey")
	b.accessAdds = append(b.accessAdds, clonePolicy(p))
	h := sha256.Sum256([]byte(secret))
	if slices.ContainsFunc(b.access, func(k fakeAccessKey) bool { return k.hash == h }) {
		return AccessKey{}, store.ErrDuplicate
	}
	b.nextAccess++
	k := fakeAccessKey{AccessKey{ID: b.nextAccess, Label: label, Enabled: true, CreatedAt: Time(b.now().In(b.loc)), Policy: clonePolicy(p)}, h}
	b.access = append(b.access, k)
	return b.shown(k), nil
}

// UpdateAccessKey implements Backend: nil leaves the label or the policy as it is.
func (b *fakeBackend) UpdateAccessKey(_ context.Context, id int64, label *string, p *tenant.Policy) (AccessKey, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("UpdateAccessKey")
	up := accessUpdate{id: id}
	if label != nil {
		l := *label
		up.label = &l
	}
	if p != nil {
		c := clonePolicy(*p)
		up.policy = &c
	}
	b.accessUpdates = append(b.accessUpdates, up)
	k := b.accessKey(id)
	if k == nil {
		return AccessKey{}, notFound("access key", id)
	}
	if label != nil {
		k.Label = *label
	}
	if p != nil {
		k.Policy = clonePolicy(*p)
	}
	return b.shown(*k), nil
}

// DeleteAccessKey implements Backend.
func (b *fakeBackend) DeleteAccessKey(_ context.Context, id int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("DeleteAccessKey")
	i := slices.IndexFunc(b.access, func(k fakeAccessKey) bool { return k.ID == id })
	if i < 0 {
		return notFound("access key", id)
	}
	b.access = slices.Delete(b.access, i, i+1)
	return nil
}

// SetAccessKeyEnabled implements Backend.
func (b *fakeBackend) SetAccessKeyEnabled(_ context.Context, id int64, enabled bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changed("SetAccessKeyEnabled")
	k := b.accessKey(id)
	if k == nil {
		return notFound("access key", id)
	}
	k.Enabled = enabled
	return nil
}

// Settings implements Backend: whole numbers as numbers, the proxy's password hidden.
func (b *fakeBackend) Settings(context.Context) (map[string]any, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]any, len(b.settings))
	for name, v := range b.settings {
		switch {
		case name == "proxy":
			out[name] = redacted(v)
		case fakeSettingRules[name] == nil:
			out[name] = v
		default:
			if n, err := strconv.Atoi(v); err == nil {
				out[name] = n
			} else {
				out[name] = v
			}
		}
	}
	return out, nil
}

// redacted hides the password of a proxy URL.
func redacted(p string) string {
	u, err := url.Parse(p)
	if err != nil || p == "" {
		return p
	}
	return u.Redacted()
}

// wholeNumber is the rule of a setting that is a whole number from lo to hi.
func wholeNumber(lo, hi int) func(string) string {
	return func(v string) string {
		n, err := strconv.Atoi(v)
		switch {
		case err != nil:
			return "must be a whole number"
		case n < lo || n > hi:
			return fmt.Sprintf("%d is out of range (%d to %d)", n, lo, hi)
		}
		return ""
	}
}

// duration is the rule of a setting that is a duration in caddy's syntax ("15d", "1h") of at
// least lo.
func duration(lo time.Duration) func(string) string {
	return func(v string) string {
		var d time.Duration
		var err error
		if days, ok := strings.CutSuffix(v, "d"); ok {
			var n int
			n, err = strconv.Atoi(days)
			d = time.Duration(n) * 24 * time.Hour
		} else {
			d, err = time.ParseDuration(v)
		}
		switch {
		case err != nil:
			return "must be a duration such as 1h or 15d"
		case d < lo:
			return "must be at least " + lo.String()
		}
		return ""
	}
}

// httpURL is the rule of a setting that is an http or https URL ("" allowed when empty is).
func httpURL(empty bool) func(string) string {
	return func(v string) string {
		if v == "" && empty {
			return ""
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "must be an http or https URL"
		}
		return ""
	}
}

// fakeSettingRules check a value of each live setting; nil takes any text but the empty one.
var fakeSettingRules = map[string]func(string) string{
	"upstream":              httpURL(false),
	"proxy":                 httpURL(true),
	"max_failures":          wholeNumber(1, 1000),
	"max_ejection_percent":  wholeNumber(0, 100),
	"max_retries":           wholeNumber(0, 10),
	"max_request_body":      wholeNumber(1, 1<<30),
	"validation_model":      nil,
	"validation_probe":      nil,
	"validation_interval":   duration(time.Minute),
	"timezone":              nil,
	"error_log_retention":   duration(time.Hour),
	"request_log_retention": duration(time.Hour),
}

// UpdateSettings implements Backend: every value is checked, one bad value changes nothing,
// the redacted proxy sent back keeps the stored one.
func (b *fakeBackend) UpdateSettings(_ context.Context, values map[string]string) ([]FieldError, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	edits := make(map[string]string, len(values))
	var bad []FieldError
	for name, v := range values {
		v = strings.TrimSpace(v)
		rule, known := fakeSettingRules[name]
		why := ""
		switch {
		case !known:
			why = "is not a setting the panel can change"
		case name == "proxy" && v != "" && v == redacted(b.settings[name]) && v != b.settings[name]:
			continue // the hidden form sent back: keep the stored value
		case name == "timezone":
			if _, err := time.LoadLocation(v); err != nil || v == "" {
				why = "must be an IANA time zone such as Europe/Berlin"
			}
		case rule != nil:
			why = rule(v)
		case v == "":
			why = "must not be empty"
		}
		if why != "" {
			bad = append(bad, FieldError{Field: name, Description: why})
			continue
		}
		edits[name] = v
	}
	if len(bad) > 0 {
		slices.SortFunc(bad, func(x, y FieldError) int { return cmp.Compare(x.Field, y.Field) })
		return bad, nil
	}
	b.changed("UpdateSettings")
	b.updates = append(b.updates, edits)
	for name, v := range edits {
		b.settings[name] = v
		if name == "timezone" {
			b.loc, _ = time.LoadLocation(v)
		}
	}
	return nil, nil
}

// setting returns the stored value of a setting.
func (b *fakeBackend) setting(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.settings[name]
}

// failed reports whether a request log row counts as a failure: not 2xx or 3xx.
func failed(status int) bool { return status < 200 || status > 399 }

// addUsage adds r to u.
func addUsage(u *store.Usage, r store.RequestLog) {
	u.Requests++
	if failed(r.Status) {
		u.Failures++
	}
	u.PromptTokens += r.PromptTokens
	u.CandidatesTokens += r.CandidatesTokens
	u.TotalTokens += r.TotalTokens
}

// Usage implements Backend from the request rows.
func (b *fakeBackend) Usage(_ context.Context, bounds []time.Time, accessKeyID int64) ([]store.Usage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.usageCalls = append(b.usageCalls, accessKeyID)
	out := make([]store.Usage, max(len(bounds)-1, 0))
	for _, r := range b.requests {
		if accessKeyID != 0 && r.AccessKeyID != accessKeyID {
			continue
		}
		for i := range out {
			if !r.Time.Before(bounds[i]) && r.Time.Before(bounds[i+1]) {
				addUsage(&out[i], r)
			}
		}
	}
	return out, nil
}

// UsageByModel implements Backend from the request rows, most requested first.
func (b *fakeBackend) UsageByModel(_ context.Context, from, to time.Time, accessKeyID int64) ([]store.ModelUsage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.usageCalls = append(b.usageCalls, accessKeyID)
	var out []store.ModelUsage
	for _, r := range b.requests {
		if r.Time.Before(from) || !r.Time.Before(to) || (accessKeyID != 0 && r.AccessKeyID != accessKeyID) {
			continue
		}
		i := slices.IndexFunc(out, func(m store.ModelUsage) bool { return m.Model == r.Model })
		if i < 0 {
			out = append(out, store.ModelUsage{Model: r.Model})
			i = len(out) - 1
		}
		addUsage(&out[i].Usage, r)
	}
	slices.SortStableFunc(out, func(x, y store.ModelUsage) int { return cmp.Compare(y.Requests, x.Requests) })
	return out, nil
}

// AccessKeyStats implements Backend from the request rows and the limits that refused them.
func (b *fakeBackend) AccessKeyStats(_ context.Context, from, to time.Time) ([]store.AccessKeyUsage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []store.AccessKeyUsage
	for i, r := range b.requests {
		if r.Time.Before(from) || !r.Time.Before(to) {
			continue
		}
		j := slices.IndexFunc(out, func(u store.AccessKeyUsage) bool { return u.AccessKeyID == r.AccessKeyID })
		if j < 0 {
			out = append(out, store.AccessKeyUsage{AccessKeyID: r.AccessKeyID, LimitsHit: map[string]int64{}})
			j = len(out) - 1
		}
		u := &out[j]
		var sum store.Usage
		addUsage(&sum, r)
		u.Requests += sum.Requests
		u.Failures += sum.Failures
		u.PromptTokens += sum.PromptTokens
		u.CandidatesTokens += sum.CandidatesTokens
		u.TotalTokens += sum.TotalTokens
		if hit := b.limitHits[i]; hit != "" {
			u.Limited++
			u.LimitsHit[hit]++
		}
	}
	return out, nil
}

// matches reports whether a log row with these fields passes q's filters.
func matches(q store.LogQuery, model string, keyID, accessKeyID int64, status int) bool {
	return (q.Model == "" || q.Model == model) && (q.KeyID == 0 || q.KeyID == keyID) &&
		(q.AccessKeyID == 0 || q.AccessKeyID == accessKeyID) && (q.Status == 0 || q.Status == status)
}

// page returns the rows of one page, newest first, from rows oldest first that pass keep.
func page[T any](rows []T, q store.LogQuery, keep func(T) bool) ([]T, int64) {
	var all []T
	for i := len(rows) - 1; i >= 0; i-- {
		if keep(rows[i]) {
			all = append(all, rows[i])
		}
	}
	from := min(q.Offset, len(all))
	return all[from:min(from+q.Limit, len(all))], int64(len(all))
}

// RequestLogs implements Backend.
func (b *fakeBackend) RequestLogs(_ context.Context, q store.LogQuery) ([]store.RequestLog, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rows, n := page(b.requests, q, func(r store.RequestLog) bool { return matches(q, r.Model, r.KeyID, r.AccessKeyID, r.Status) })
	return rows, n, nil
}

// ErrorLogs implements Backend.
func (b *fakeBackend) ErrorLogs(_ context.Context, q store.LogQuery) ([]store.ErrorLog, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rows, n := page(b.errorLogs, q, func(r store.ErrorLog) bool { return matches(q, r.Model, r.KeyID, r.AccessKeyID, r.Status) })
	return rows, n, nil
}

// errStoreGone is what a backend whose database went away returns.
var errStoreGone = errors.New("database is closed")

var _ Backend = (*fakeBackend)(nil)
