package admin

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// maxLabelLen bounds an access key's label, in characters.
const maxLabelLen = 100

func (h *Handler) listAccessKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	if list == nil {
		list = []AccessKey{}
	}
	for i := range list {
		list[i] = h.shown(list[i])
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_keys": list})
}

// createAccessKey makes a new random access key with the body's label and policy and answers
// it in full, the only time it is ever shown.
func (h *Handler) createAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	e, bad, ok := readAccessKeyEdit(w, r)
	if !ok {
		return
	}
	p := e.apply(tenant.Policy{})
	if !p.ExpiresAt.IsZero() && !p.ExpiresAt.After(h.now()) {
		bad = append(bad, FieldError{"expires_at", "must be in the future"})
	}
	if writePolicyErrors(w, append(bad, policyViolations(p.Check())...)) {
		return
	}
	label := ""
	if e.label != nil {
		label = *e.label
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		writeBackendError(w, err)
		return
	}
	secret := "gs-" + base64.RawURLEncoding.EncodeToString(raw[:])
	k, err := h.Backend.AddAccessKey(r.Context(), secret, label, p)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	k.Key = secret
	writeJSON(w, http.StatusCreated, h.shown(k))
}

// patchAccessKey changes the label and the policy fields the body holds, keeping the others.
func (h *Handler) patchAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	e, bad, ok := readAccessKeyEdit(w, r)
	if !ok {
		return
	}
	cur, ok := h.accessKeyByID(w, r, id)
	if !ok {
		return
	}
	p := e.apply(cur.Policy)
	if writePolicyErrors(w, append(bad, policyViolations(p.Check())...)) {
		return
	}
	var pp *tenant.Policy
	if len(e.set) > 0 {
		pp = &p
	}
	if e.label == nil && pp == nil {
		writeJSON(w, http.StatusOK, h.shown(cur))
		return
	}
	k, err := h.Backend.UpdateAccessKey(r.Context(), id, e.label, pp)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.shown(k))
}

// accessKeyByID returns the access key with id as AccessKeys shows it; for an unknown id it
// answers 404 and returns false.
func (h *Handler) accessKeyByID(w http.ResponseWriter, r *http.Request, id int64) (AccessKey, bool) {
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return AccessKey{}, false
	}
	for _, k := range list {
		if k.ID == id {
			return k, true
		}
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("No access key with id %d.", id))
	return AccessKey{}, false
}

func (h *Handler) deleteAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	if err := h.Backend.DeleteAccessKey(r.Context(), id); err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

func (h *Handler) enableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, true)
}

func (h *Handler) disableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, false)
}

func (h *Handler) setAccessKeyEnabled(w http.ResponseWriter, r *http.Request, id int64, enabled bool) {
	if err := h.Backend.SetAccessKeyEnabled(r.Context(), id, enabled); err != nil {
		writeBackendError(w, err)
		return
	}
	if k, ok := h.accessKeyByID(w, r, id); ok {
		writeJSON(w, http.StatusOK, h.shown(k))
	}
}

// shown is k as answers show it: its expiry in the configured timezone, like every time.
func (h *Handler) shown(k AccessKey) AccessKey {
	if !k.ExpiresAt.IsZero() {
		k.ExpiresAt = k.ExpiresAt.In(h.Backend.Location())
	}
	return k
}

// ---- the body of POST and PATCH P/api/access-keys

// Policy fields in a request body, in the order errors name them.
const (
	fieldModels      = "models"
	fieldRPM         = "rpm"
	fieldRPD         = "rpd"
	fieldTPM         = "tpm"
	fieldTokenBudget = "token_budget"
	fieldConcurrency = "concurrency"
	fieldExpiresAt   = "expires_at"
	fieldShared      = "shared"
)

// fieldOrder ranks the fields of an access key body, for a stable order of errors.
var fieldOrder = []string{"label", fieldModels, fieldRPM, fieldRPD, fieldTPM, fieldTokenBudget, fieldConcurrency, fieldExpiresAt, fieldShared}

// accessKeyEdit is what a POST or PATCH body sets: the label when present, and the values of
// the policy fields present (set names them; null and "" are present, and clear).
type accessKeyEdit struct {
	label  *string
	set    map[string]bool
	policy tenant.Policy
}

// apply returns p with the fields the edit sets replaced; p is not changed. A token budget
// given without a period keeps the period of p's budget (daily when p has none).
func (e accessKeyEdit) apply(p tenant.Policy) tenant.Policy {
	p.Models = slices.Clone(p.Models)
	period := tenant.Daily
	if p.TokenBudget != nil {
		period = p.TokenBudget.Period
		b := *p.TokenBudget
		p.TokenBudget = &b
	}
	for name := range e.set {
		switch name {
		case fieldModels:
			p.Models = e.policy.Models
		case fieldRPM:
			p.RPM = e.policy.RPM
		case fieldRPD:
			p.RPD = e.policy.RPD
		case fieldTPM:
			p.TPM = e.policy.TPM
		case fieldTokenBudget:
			p.TokenBudget = nil
			if b := e.policy.TokenBudget; b != nil {
				nb := *b
				if nb.Period == "" {
					nb.Period = period
				}
				p.TokenBudget = &nb
			}
		case fieldConcurrency:
			p.Concurrency = e.policy.Concurrency
		case fieldExpiresAt:
			p.ExpiresAt = e.policy.ExpiresAt
		case fieldShared:
			p.Shared = e.policy.Shared
		}
	}
	return p
}

// readAccessKeyEdit decodes the body of POST or PATCH P/api/access-keys (blank: {}): one JSON
// object of the label and the policy fields. It returns what the good fields set and why each
// bad one (of another name, or a value of no use) is refused, for the caller to answer with
// those that tenant.Policy.Check finds in the rest. A body that is no JSON object it answers
// with 400 (415 when not declared as JSON), and returns false.
func readAccessKeyEdit(w http.ResponseWriter, r *http.Request) (accessKeyEdit, []FieldError, bool) {
	e := accessKeyEdit{set: map[string]bool{}}
	raw, ok := readBody(w, r)
	if !ok {
		return e, nil, false
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var body map[string]json.RawMessage
	if t := bytes.TrimSpace(raw); t[0] != '{' {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must be a JSON object.")
		return e, nil, false
	}
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must be a JSON object: "+err.Error())
		return e, nil, false
	}
	if !onlyOneValue(w, dec) {
		return e, nil, false
	}
	var bad []FieldError
	p := &e.policy
	for name, v := range body {
		v = bytes.TrimSpace(v)
		var why string
		switch name {
		case "label":
			var l string
			l, why = labelValue(v)
			e.label = &l
		case fieldModels:
			p.Models, why = modelsValue(v)
		case fieldRPM:
			p.RPM, why = countValue(v)
		case fieldRPD:
			p.RPD, why = countValue(v)
		case fieldTPM:
			p.TPM, why = countValue(v)
		case fieldConcurrency:
			p.Concurrency, why = countValue(v)
		case fieldTokenBudget:
			p.TokenBudget, why = budgetValue(v)
		case fieldExpiresAt:
			p.ExpiresAt, why = timeValue(v)
		case fieldShared:
			switch string(v) {
			case "true":
				p.Shared = true
			case "false", "null":
			default:
				why = "must be true or false"
			}
		default:
			why = "is not a field this request takes"
		}
		switch {
		case why != "":
			bad = append(bad, FieldError{name, why})
			if name == "label" {
				e.label = nil
			}
		case name != "label":
			e.set[name] = true
		}
	}
	return e, bad, true
}

// isNull tells whether a (trimmed) JSON value is null.
func isNull(v json.RawMessage) bool { return string(v) == "null" }

// labelValue reads a label: a string of at most maxLabelLen characters without control
// characters, trimmed (null: none). It returns why a bad one is refused.
func labelValue(v json.RawMessage) (string, string) {
	if isNull(v) {
		return "", ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", "must be a JSON string"
	}
	s = strings.TrimSpace(s)
	switch {
	case utf8.RuneCountInString(s) > maxLabelLen:
		return "", fmt.Sprintf("must be at most %d characters long", maxLabelLen)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return "", "must not contain control characters"
	}
	return s, ""
}

// modelsValue reads the model globs: a list of strings, or one string of globs separated by
// spaces or commas (null or empty: every model). "models/" before a glob is dropped.
func modelsValue(v json.RawMessage) ([]string, string) {
	var list []string
	switch {
	case isNull(v):
		return nil, ""
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, "must be a list of model globs"
		}
		list = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	default:
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, `must be a list of model globs such as ["gemini-2.5-flash*"]`
		}
	}
	if len(list) == 0 {
		return nil, ""
	}
	for i, m := range list {
		list[i] = strings.TrimPrefix(strings.TrimSpace(m), "models/")
	}
	return list, ""
}

// countValue reads a limit: a whole number, or a count such as "200k" (null, 0 or "": no
// limit). The range is tenant.Policy.Check's to judge.
func countValue(v json.RawMessage) (int64, string) {
	const why = `must be a whole number, or a count such as "200k" (0, empty or null: no limit)`
	switch {
	case isNull(v):
		return 0, ""
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return 0, why
		}
		if strings.TrimSpace(s) == "" {
			return 0, ""
		}
		n, err := tenant.ParseCount(s)
		if err != nil {
			return 0, why
		}
		return n, ""
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, why
	}
	return n, ""
}

// budgetValue reads a token budget: {"limit","period"} (the limit a number or a count such as
// "10M"), or a text such as "10M daily"; null or a limit of 0 is none. Without a period the
// Period is "" (see accessKeyEdit.apply). The limit's range and the period are
// tenant.Policy.Check's to judge.
func budgetValue(v json.RawMessage) (*tenant.Budget, string) {
	const why = `must be {"limit": 10000000 or "10M", "period": "daily", "weekly" or "monthly"}, "10M daily", or null`
	var limit json.RawMessage
	period := ""
	switch {
	case isNull(v):
		return nil, ""
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, why
		}
		f := strings.Fields(s)
		switch len(f) {
		case 0:
			return nil, ""
		case 1, 2:
			limit, _ = json.Marshal(f[0])
			if len(f) == 2 {
				period = f[1]
			}
		default:
			return nil, why
		}
	case v[0] == '{':
		var b struct {
			Limit  json.RawMessage `json:"limit"`
			Period *string         `json:"period"`
		}
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil || len(b.Limit) == 0 {
			return nil, why
		}
		limit = bytes.TrimSpace(b.Limit)
		if b.Period != nil {
			period = *b.Period
		}
	default:
		return nil, why
	}
	n, bad := countValue(limit)
	if bad != "" {
		return nil, "the limit " + bad
	}
	if n == 0 {
		return nil, ""
	}
	return &tenant.Budget{Limit: n, Period: period}, ""
}

// timeValue reads an expiry: an RFC 3339 time (null or "": never).
func timeValue(v json.RawMessage) (time.Time, string) {
	const why = `must be a time in RFC 3339 such as "2027-01-31T00:00:00Z", or null for never`
	if isNull(v) {
		return time.Time{}, ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return time.Time{}, why
	}
	if strings.TrimSpace(s) == "" {
		return time.Time{}, ""
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, why
	}
	return t, ""
}

// policyViolations turns the errors of tenant.Policy.Check into field errors.
func policyViolations(err error) []FieldError {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]FieldError, 0, len(errs))
	for _, e := range errs {
		var fe tenant.FieldError
		if errors.As(e, &fe) {
			out = append(out, FieldError{fe.Field, fe.Description})
		} else {
			out = append(out, FieldError{"policy", e.Error()})
		}
	}
	return out
}

// writePolicyErrors answers the field errors, if any, as one 400: one violation per field (the
// reasons of a field named twice joined), in the order of fieldOrder, others after by name.
// It reports whether it answered.
func writePolicyErrors(w http.ResponseWriter, bad []FieldError) bool {
	if len(bad) == 0 {
		return false
	}
	var out []FieldError
	for _, e := range bad {
		if i := slices.IndexFunc(out, func(o FieldError) bool { return o.Field == e.Field }); i >= 0 {
			if !strings.Contains(out[i].Description, e.Description) {
				out[i].Description += "; " + e.Description
			}
			continue
		}
		out = append(out, e)
	}
	rank := func(f string) int {
		if i := slices.Index(fieldOrder, f); i >= 0 {
			return i
		}
		return len(fieldOrder)
	}
	slices.SortFunc(out, func(a, b FieldError) int {
		return cmp.Or(cmp.Compare(rank(a.Field), rank(b.Field)), cmp.Compare(a.Field, b.Field))
	})
	writeFieldErrors(w, out)
	return true
}

// ---- usage

// accessKeyUsage answers one access key's figures for a range: totals, limits hit, the trend,
// the models and its live usage.
func (h *Handler) accessKeyUsage(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	name, rg, ok := statsRangeOf(w, r)
	if !ok {
		return
	}
	k, ok := h.accessKeyByID(w, r, id)
	if !ok {
		return
	}
	loc := h.Backend.Location()
	bounds := statsBounds(rg, h.now(), loc)
	from, to := bounds[0], bounds[len(bounds)-1]
	ctx := r.Context()
	buckets, err := h.Backend.Usage(ctx, bounds, id)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	models, err := h.Backend.UsageByModel(ctx, from, to, id)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	all, err := h.Backend.AccessKeyStats(ctx, from, to)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	u := store.AccessKeyUsage{AccessKeyID: id}
	for _, s := range all {
		if s.AccessKeyID == id {
			u = s
			break
		}
	}
	live := k.Usage
	if live == nil {
		live = &AccessKeyUsage{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_key_id": id,
		"label":         k.Label,
		"range":         name,
		"bucket":        rg.bucket,
		"timezone":      loc.String(),
		"from":          Time(from.In(loc)),
		"to":            Time(to.In(loc)),
		"requests":      u.Requests,
		"failures":      u.Failures,
		"tokens":        map[string]int64{"prompt": u.PromptTokens, "candidates": u.CandidatesTokens, "total": u.TotalTokens},
		"limited":       u.Limited,
		"limits_hit":    limitsHit(u.LimitsHit),
		"last_used_at":  k.LastUsedAt,
		"usage":         live,
		"trend":         trendOf(buckets, bounds, loc),
		"models":        modelsOf(models),
	})
}

// limitsHit is m, never nil (an empty JSON object rather than null).
func limitsHit(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return m
}
