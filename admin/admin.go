// Package admin serves the gateway's admin panel and its JSON API under a path prefix P, as a
// plain http.Handler. It knows nothing of Caddy: the gateway hands it the requests under P and
// a Backend that does the work.
//
// # Authentication
//
// POST P/api/login {"admin_key"} opens a session: the answer sets the cookie
// gs_admin_session (a random token, stored only as its SHA-256, HttpOnly, SameSite=Strict,
// Secure over TLS, also when a trusted proxy says the client used HTTPS, Path=P) and says
// {"expires_at"}. Every other P/api/* route needs that cookie or Authorization: Bearer
// <admin key>, else 401. A wrong admin key (at login, as a Bearer token, at export, at a
// guarded settings change or as the current key of PUT P/api/admin-key) counts as a failure
// of the client's network (its IPv4 address, or its IPv6 /64 and the /56 around it); after a
// few failures in a row (5 for an address or a /64, 20 for a /56) that network gets 429 with
// Retry-After, even with the right key, for a time that doubles with every further failure
// (at most 15 min). Each try is reserved before the key is checked, so parallel requests get
// no more tries than sequential ones: a try past the allowance waits for those in flight,
// and only wrong keys count, so parallel calls with the right key are all served. A
// cookie-authenticated request other than GET or HEAD, and every login and logout, is refused
// with 403 when its Origin is not the site itself (the Host, or the X-Forwarded-Host of a
// trusted proxy) or Sec-Fetch-Site says cross-site. GET P/api/session tells whether the
// caller is signed in ({"authenticated","via","expires_at"}).
//
// # Routes
//
//	POST   P/api/login                {"admin_key"} -> {"expires_at"} + cookie
//	POST   P/api/logout               ends the caller's session
//	GET    P/api/session              {"authenticated":true,"via":"cookie|bearer","expires_at"}
//	GET    P/api/status               pool counts and log writer health
//	GET    P/api/keys                 ?status=active|cooling|disabled&project=&q=&page=1&page_size=50
//	                                  -> {"keys":[Key],"total","page","page_size",
//	                                      "counts":{"active","cooling","disabled"},
//	                                      "projects":[{"project","keys"}],"unlabeled"}
//	POST   P/api/keys                 {"keys":[...]} or {"text":"..."}
//	                                  -> {"added","duplicates","invalid","relabeled"}
//	PATCH  P/api/keys/{id}            {"project":"label"} ("" clears it) -> Key
//	POST   P/api/keys/project         {"ids":[...],"project":"label"} -> {"changed"}
//	DELETE P/api/keys/{id}            ?force=true -> {"deleted":id}; 409 if the key owns live
//	                                  resources and force is not set
//	POST   P/api/keys/{id}/enable     -> Key
//	POST   P/api/keys/{id}/disable    -> Key
//	POST   P/api/keys/{id}/validate   -> {"check":KeyCheck,"key":Key}
//	POST   P/api/keys/validate        starts checking every key, or {"ids":[...]} only those:
//	                                  202 and the run (409 if one runs)
//	GET    P/api/keys/validate        the current or last run, for progress (see ValidationRun)
//	POST   P/api/keys/export          {"admin_key","status"} -> text/plain, one full key per line
//	GET    P/api/access-keys          {"access_keys":[AccessKey]}, each with its policy, "expired"
//	                                  and "usage" (live use against each limit it sets)
//	POST   P/api/access-keys          {"label", policy fields} -> 201 AccessKey with "key", the
//	                                  full key, shown once
//	PATCH  P/api/access-keys/{id}     {"label"?, policy fields?} (partial) -> AccessKey
//	DELETE P/api/access-keys/{id}     -> {"deleted":id}
//	POST   P/api/access-keys/{id}/enable|disable -> AccessKey
//	GET    P/api/access-keys/{id}/usage ?range=24h|7d|30d (default 24h) -> {"access_key_id","label",
//	                                      "range","bucket","timezone","from","to","requests",
//	                                      "failures","tokens":{"prompt","candidates","total"},
//	                                      "limited","limits_hit":{limit: n},"last_used_at",
//	                                      "usage":AccessKeyUsage,"trend":[...],"models":[...]}
//	PUT    P/api/admin-key            {"current","new"}; ends every other session
//	GET    P/api/settings             {"settings":{name: value}}
//	PUT    P/api/settings             {name: value, ..., "admin_key"} (partial) -> {"settings":{...}}
//	GET    P/api/stats                ?range=24h|7d|30d (default 24h)&access_key_id= (0 or absent: all)
//	                                  -> {"range","bucket","timezone","access_key_id",
//	                                      "from","to","requests":{"total","success","failure"},
//	                                      "tokens":{"prompt","candidates","total"},
//	                                      "keys":{"active","cooling","disabled"},
//	                                      "trend":[{"t","success","failure","tokens"}],
//	                                      "models":[{"model","requests","failures","tokens"}],
//	                                      "access_keys":[{"id","label","requests","failures",
//	                                          "tokens","limited","limits_hit","last_used_at"}]}
//	GET    P/api/logs                 ?kind=request|error&page=&page_size=&model=&status=&key_id=&access_key_id=
//	                                  -> {"items":[...],"total","page","page_size"}, newest first
//
// Settings (the gateway's live ones): upstream, proxy, max_failures, max_ejection_percent,
// max_retries, max_request_body, validation_model, validation_probe, validation_interval,
// timezone, error_log_retention, request_log_retention. GET gives numbers as numbers and durations in
// caddy's syntax ("1h", "15d"); the proxy's password shows as "xxxxx", and sending that form
// back keeps the stored one. PUT takes strings or numbers; a bad value, an unknown name or
// another JSON type is a 400 naming each bad field, and then nothing is changed. upstream and
// proxy decide where every upstream key is sent: a session request that changes either must
// carry the admin key again as "admin_key" (else 403 PERMISSION_DENIED and nothing changes; a
// wrong key counts as a failure like any other). Sending their current values back needs no
// key, nor does a request authenticated with the Bearer admin key.
//
// Stats: the trend has 24 hourly buckets (24h), 28 six-hour buckets starting at 00, 06, 12 and
// 18 local time (7d) or 30 daily buckets starting at local midnight (30d); the last bucket
// holds now, "t" is a bucket's start, and a day across a DST change has 23 or 25 hours. The
// totals and models cover from the first bucket's start to now. A request succeeded when its
// status is 2xx or 3xx. Models: the 50 most requested.
//
// Access key policies: an access key may carry a policy (see package tenant) that limits what
// it may do. POST and PATCH P/api/access-keys take its fields at the top level of the body:
// "models" (a list of globs such as "gemini-2.5-flash*", or one string of globs separated by
// spaces or commas; empty or null: every model), "rpm", "rpd", "tpm" and "concurrency" (whole
// numbers, or counts such as "200k"; 0 or null: no limit), "token_budget" ({"limit","period"}
// with a limit such as 10000000 or "10M" and a period daily, weekly or monthly (default: the
// period the key's budget has, else daily), or the text "10M daily"; null or a limit of 0:
// none), "expires_at" (RFC 3339; null or "":
// never) and "shared" (true lets the key reach resources the gateway did not create). A field
// of another name or type, or a bad value, is a 400 naming each bad field, and then nothing is
// created or changed; so is an expires_at in the past when creating (a PATCH may set one, to
// retire a key now). PATCH changes only the fields present and keeps the others, and takes
// effect in the proxy at once. An AccessKey shows the policy's fields that are set (absent:
// not set), "expired" (its expires_at has passed: the proxy refuses it) and "usage": for each
// limit set, {"used","limit","resets_at"} now, where resets_at is when a day's or a budget's
// count starts again (null for the sliding one-minute windows and for concurrency).
//
// Stats per access key: GET P/api/stats?access_key_id=N limits the trend, the totals and the
// models to that access key's requests (a value that is not a whole number from 0 is a 400);
// "access_keys" always lists every access key, with the requests, failures, tokens and
// limited requests (refused by one of its limits; "limits_hit" counts them per limit) of the
// range, most requests first; an access key deleted since shows as "(deleted)", requests made
// with none as "(no access key)". GET P/api/access-keys/{id}/usage answers the same for one
// access key, with its trend and models.
//
// Paging everywhere: page counts from 1 (default 1), page_size defaults to 50 and is at most
// 500; a page past the end is empty. Times are RFC 3339 in the configured timezone, null when
// never. A key check (validate one, or each result of a run) is {"key_id","result","http_status",
// "reason","action","until"}: result is what the upstream's answer means (success, quota,
// key_invalid, transient, client_error, canceled), action what was done (enabled, valid,
// disabled, cooling, unchanged).
//
// Project labels: Google's quota belongs to the Cloud project, not the key, so a key may carry
// the label of its project ("project", "" when unknown): a per-project 429 on one key cools
// down every enabled key with the same label. A label is at most 64 characters of A-Z, a-z,
// 0-9 and . _ : - (see store.CheckProject); anything else is a 400 naming "project" and changes
// nothing. PATCH P/api/keys/{id} sets one key's label, POST P/api/keys/project the label of
// every key in "ids" (an unknown id is a 404 and changes nothing; "changed" counts the keys
// whose label differs now). GET P/api/keys?project=name lists the keys with that label,
// ?project= the unlabelled ones; "projects" lists every label in use with its number of keys,
// "unlabeled" counts the keys without one (both over all keys, not only the page). The
// gateway fills an empty label by itself from error answers that name the project; an
// operator's label always wins. Pasted text (POST P/api/keys with "text", or an entry of
// "keys") may label a key: a line of two words, a key and a label ("AIza… my-proj"), adds the
// key with that label; such a line whose second word is no good label counts as invalid and
// adds nothing (other lines are searched for keys as before, without labels). A key already
// stored is not added again, but a label given with it becomes its label: "relabeled" counts
// those keys.
//
// A key's "resources" is how many live resources created through the gateway (files, cached
// contents, batches, tuned models; expired ones not counted) it owns. They belong to the
// Google project of that key, so once the key is deleted the gateway can no longer reach
// them: DELETE P/api/keys/{id} of such a key answers 409 FAILED_PRECONDITION saying how many
// it owns and changes nothing, unless the query says force=true.
//
// Validating every key: POST P/api/keys/validate (no body, or {"ids":[...]} for a selection)
// answers 202 with the new run; while it runs,
// GET P/api/keys/validate answers {"running":true,"done","total","started_at",...}; when it is
// over, "running" is false and "finished_at", "summary" (count per action) and "results" (one
// key check per key) are set. A POST while a run is going answers 409 with the running run in
// the error message. The run belongs to the gateway, not the session: it survives a sign-out
// and a config reload.
//
// Every error is JSON in Google's envelope {"error":{"code","message","status"}}; a 400 for a
// bad field also carries details [{"@type":"type.googleapis.com/google.rpc.BadRequest",
// "fieldViolations":[{"field","description"}]}]. No answer contains a full upstream key or the
// admin key, except the export.
//
// # The panel
//
// P/ serves the embedded single-page panel (web/index.html) and P/<file> its assets; any other
// path under P/ without a file extension serves the page too. Every answer carries a strict
// Content-Security-Policy, nosniff and no-referrer.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// Backend is what the admin API needs from the gateway. Methods that take an id return an
// error wrapping store.ErrNotFound for an unknown one.
type Backend interface {
	// CheckAdminKey reports whether key is the admin key; it must compare in constant time.
	// An error means the check could not be made (it is not counted as a wrong key).
	CheckAdminKey(key string) (bool, error)
	// SetAdminKey makes key the admin key and ends every session but keep (the zero hash
	// ends them all).
	SetAdminKey(ctx context.Context, key string, keep [32]byte) error
	// Status returns a JSON-encodable summary of the gateway's state.
	Status() any
	// Location is the configured timezone, in which times are shown and stats are bucketed.
	Location() *time.Location

	// CreateSession stores a session by the SHA-256 of its token.
	CreateSession(ctx context.Context, tokenHash [32]byte, expires time.Time) error
	// SessionExpiry returns when the session expires; ok is false if it is unknown or expired
	// at now.
	SessionExpiry(ctx context.Context, tokenHash [32]byte, now time.Time) (expires time.Time, ok bool, err error)
	// DeleteSession ends a session; an unknown one is no error.
	DeleteSession(ctx context.Context, tokenHash [32]byte) error

	// Keys returns every upstream key with its live state, ordered by id.
	Keys(ctx context.Context) ([]Key, error)
	// AddLabeledKeys adds upstream keys with their project labels (already checked with
	// store.CheckProject) to the store and the live pool, as store.Store.AddLabeledKeys does:
	// it returns how many were new, and how many already stored got a different label.
	AddLabeledKeys(ctx context.Context, keys []store.NewKey) (added, relabeled int, err error)
	// SetKeysProject makes project (already checked with store.CheckProject; "" clears it) the
	// label of the keys with ids, in the store and the pool, as an operator's label. If an id
	// is unknown it changes nothing and returns an *UnknownKeysError. changed is how many keys
	// have a different label now.
	SetKeysProject(ctx context.Context, ids []int64, project string) (changed int, err error)
	// DeleteKey removes an upstream key from the store and the pool.
	DeleteKey(ctx context.Context, id int64) error
	// SetKeyEnabled enables or (as an operator) disables a key, in the store and the pool.
	SetKeyEnabled(ctx context.Context, id int64, enabled bool) error
	// ValidateKey checks one key against the upstream now and applies the verdict.
	ValidateKey(ctx context.Context, id int64) (KeyCheck, error)
	// StartValidation starts checking the keys with the given ids (nil: every key; unknown
	// ids are left out) in the background. started is false when a run is going already (run
	// is that run) or none can start (run.Error says why); otherwise run is the new one.
	StartValidation(ids []int64) (run ValidationRun, started bool)
	// Validation returns the current or last run of StartValidation (zero if none ran).
	Validation() ValidationRun
	// KeySecrets returns the full secrets of the keys with status ("" for all), ordered by id.
	KeySecrets(ctx context.Context, status string) ([]string, error)

	// AccessKeys returns every access key, ordered by id, each with its policy, whether it has
	// expired, and its live usage against each limit its policy sets.
	AccessKeys(ctx context.Context) ([]AccessKey, error)
	// AddAccessKey stores a new access key with its policy (already checked) and makes it work
	// in the proxy at once.
	AddAccessKey(ctx context.Context, secret, label string, p tenant.Policy) (AccessKey, error)
	// UpdateAccessKey changes the label and the policy (already checked) of an access key; nil
	// leaves one unchanged. The proxy applies it at once. It returns the access key as
	// AccessKeys shows it.
	UpdateAccessKey(ctx context.Context, id int64, label *string, p *tenant.Policy) (AccessKey, error)
	// DeleteAccessKey deletes an access key; the proxy refuses it at once.
	DeleteAccessKey(ctx context.Context, id int64) error
	// SetAccessKeyEnabled enables or disables an access key, effective at once.
	SetAccessKeyEnabled(ctx context.Context, id int64, enabled bool) error

	// Settings returns the effective live settings, by name.
	Settings(ctx context.Context) (map[string]any, error)
	// UpdateSettings validates every value; if one is bad it changes nothing and returns the
	// problems, else it stores them all and applies them at once.
	UpdateSettings(ctx context.Context, values map[string]string) ([]FieldError, error)

	// Usage adds up the request log per interval [bounds[i], bounds[i+1]), of the access key
	// with accessKeyID only (0: of all).
	Usage(ctx context.Context, bounds []time.Time, accessKeyID int64) ([]store.Usage, error)
	// UsageByModel adds up the request log in [from, to) per model, most requested first, of
	// the access key with accessKeyID only (0: of all).
	UsageByModel(ctx context.Context, from, to time.Time, accessKeyID int64) ([]store.ModelUsage, error)
	// AccessKeyStats adds up the request log in [from, to) per access key (deleted ones
	// included), with the requests refused by a limit of its policy per limit.
	AccessKeyStats(ctx context.Context, from, to time.Time) ([]store.AccessKeyUsage, error)
	// RequestLogs returns a page of the request log, newest first, and the number of matches.
	RequestLogs(ctx context.Context, q store.LogQuery) ([]store.RequestLog, int64, error)
	// ErrorLogs returns a page of the error log, newest first, and the number of matches.
	ErrorLogs(ctx context.Context, q store.LogQuery) ([]store.ErrorLog, int64, error)
}

// Key states as the API shows them.
const (
	KeyActive   = "active"   // enabled and not cooling down for any model
	KeyCooling  = "cooling"  // enabled, cooling down for at least one model
	KeyDisabled = "disabled" // out of service
)

// Key is an upstream key as the API shows it: never the full secret.
type Key struct {
	ID             int64      `json:"id"`
	Masked         string     `json:"masked"`
	Project        string     `json:"project"` // Google Cloud project label, "" when unknown
	Status         string     `json:"status"`  // KeyActive, KeyCooling or KeyDisabled
	DisabledReason string     `json:"disabled_reason"`
	ManualDisabled bool       `json:"manual_disabled"` // disabled by an operator
	FailureCount   int        `json:"failure_count"`   // consecutive failures
	LastError      string     `json:"last_error"`
	LastUsedAt     Time       `json:"last_used_at"`
	Requests       int64      `json:"requests"`
	Failures       int64      `json:"failures"`
	Cooldowns      []Cooldown `json:"cooldowns"`
	CreatedAt      Time       `json:"created_at"`
	// Resources is how many live resources created through the gateway (files, cached
	// contents, batches, tuned models) the key owns; only this key can reach them.
	Resources int `json:"resources"`
}

// UnknownKeysError is a key change refused because some of its keys do not exist; nothing was
// changed. It wraps store.ErrNotFound.
type UnknownKeysError struct {
	// IDs are the ids that named no key.
	IDs []int64
}

// Error lists the unknown ids.
func (e *UnknownKeysError) Error() string {
	ids := make([]string, len(e.IDs))
	for i, id := range e.IDs {
		ids[i] = strconv.FormatInt(id, 10)
	}
	return "no key with id " + strings.Join(ids, ", ")
}

// Unwrap makes errors.Is(err, store.ErrNotFound) true.
func (e *UnknownKeysError) Unwrap() error { return store.ErrNotFound }

// Cooldown keeps a key off one model until a time. The model "*" covers every model: the key
// is ejected (out of rotation after failing several times in a row while other keys worked),
// and its last_error says why.
type Cooldown struct {
	Model string `json:"model"`
	Until Time   `json:"until"`
}

// KeyCheck is the outcome of checking one key against the upstream.
type KeyCheck struct {
	KeyID      int64  `json:"key_id"`
	Result     string `json:"result"`      // success, quota, key_invalid, transient, client_error, canceled
	HTTPStatus int    `json:"http_status"` // of the upstream's answer; 0 when none came
	Reason     string `json:"reason"`      // the upstream's explanation, keys masked
	Action     string `json:"action"`      // enabled, valid, disabled, cooling or unchanged
	Until      Time   `json:"until"`       // end of the cooldown, for action "cooling"
}

// ValidationRun is the progress, then the outcome, of checking every key.
type ValidationRun struct {
	Running    bool           `json:"running"`
	Done       int            `json:"done"`
	Total      int            `json:"total"`
	StartedAt  Time           `json:"started_at"`
	FinishedAt Time           `json:"finished_at"`
	Summary    map[string]int `json:"summary"` // number of keys per action, once finished
	Results    []KeyCheck     `json:"results"` // one per key, once finished
	Error      string         `json:"error,omitempty"`
}

// AccessKey is a client credential as the API shows it. Key is set only in the answer that
// created it. The fields of its policy are at the top level, each only when set.
type AccessKey struct {
	ID         int64  `json:"id"`
	Label      string `json:"label"`
	Enabled    bool   `json:"enabled"`
	CreatedAt  Time   `json:"created_at"`
	LastUsedAt Time   `json:"last_used_at"`
	Key        string `json:"key,omitempty"`
	tenant.Policy
	// Expired tells whether the policy's ExpiresAt has passed: the proxy refuses the key.
	Expired bool `json:"expired"`
	// Usage is the key's use now against each limit its policy sets (nil: none set).
	Usage *AccessKeyUsage `json:"usage,omitempty"`
}

// AccessKeyUsage is an access key's use now against each limit of its policy; a limit that
// is not set is nil.
type AccessKeyUsage struct {
	RPM         *LimitUsage `json:"rpm,omitempty"`
	RPD         *LimitUsage `json:"rpd,omitempty"`
	TPM         *LimitUsage `json:"tpm,omitempty"`
	Concurrency *LimitUsage `json:"concurrency,omitempty"`
	TokenBudget *LimitUsage `json:"token_budget,omitempty"`
}

// LimitUsage is the use of one limit: Used out of Limit, counted again from zero at ResetsAt
// (zero, shown as null, for the sliding one-minute windows and for concurrency).
type LimitUsage struct {
	Used     int64 `json:"used"`
	Limit    int64 `json:"limit"`
	ResetsAt Time  `json:"resets_at"`
}

// FieldError says why the value of one field was refused.
type FieldError struct {
	Field       string `json:"field"`
	Description string `json:"description"`
}

// Time is a time that encodes as RFC 3339 with the offset of its location, or null when zero.
type Time time.Time

// MarshalJSON implements json.Marshaler.
func (t Time) MarshalJSON() ([]byte, error) {
	tt := time.Time(t)
	if tt.IsZero() {
		return []byte("null"), nil
	}
	return []byte(strconv.Quote(tt.Format(time.RFC3339))), nil
}

// Defaults of a Handler.
const (
	DefaultSessionTTL = 12 * time.Hour
	// loginFailuresAllowed is how many wrong admin keys in a row an IP (or IPv6 /64) may send
	// before it is locked out.
	loginFailuresAllowed = 5
	// maxBody bounds the JSON bodies the API reads (pasted text with thousands of keys fits).
	maxBody = 4 << 20
	// statusClientClosed is the status of an answer to a client that went away first
	// (nginx's 499); the client never sees it.
	statusClientClosed = 499
)

// Handler serves the admin panel and API under Prefix (for example "/admin"). Set the
// exported fields before the first request and do not change them afterwards.
type Handler struct {
	// Prefix is the path the panel lives under, without a trailing slash.
	Prefix string
	// Backend does the work.
	Backend Backend
	// SessionTTL is how long a session lasts; 0 means DefaultSessionTTL.
	SessionTTL time.Duration
	// ClientIP returns the client's address for login throttling; nil means the host of
	// r.RemoteAddr. Behind a trusted proxy the caller passes the forwarded address.
	ClientIP func(r *http.Request) string
	// Forwarded returns the scheme ("https") and host the client used when the request came
	// through a proxy the server trusts (X-Forwarded-Proto, X-Forwarded-Host), else "" each;
	// nil means no proxy is trusted. It makes the session cookie Secure behind a proxy that
	// terminates TLS, and lets the CSRF check accept the forwarded host as this site.
	Forwarded func(r *http.Request) (proto, host string)
	// Throttle counts wrong admin keys; nil means one of the handler's own. The gateway passes
	// one that outlives config reloads, so a reload does not lift a lockout.
	Throttle *Throttle
	// Now is the clock of sessions and throttling; nil means time.Now. Tests set it.
	Now func() time.Time

	routesOnce sync.Once
	routeMap   map[string][]route

	ownThrottle Throttle // when Throttle is nil
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) clientIP(r *http.Request) string {
	if h.ClientIP != nil {
		if ip := h.ClientIP(r); ip != "" {
			return ip
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// ServeHTTP answers requests under the prefix; the caller routes only those here.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")
	rest := strings.TrimPrefix(r.URL.Path, h.Prefix)
	switch {
	case rest == "":
		target := h.Prefix + "/"
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, target, http.StatusMovedPermanently)
	case rest == "/api" || strings.HasPrefix(rest, "/api/"):
		h.serveAPI(w, r, strings.TrimPrefix(strings.TrimPrefix(rest, "/api"), "/"))
	default:
		h.serveStatic(w, r, strings.TrimPrefix(rest, "/"))
	}
}

// route is one API endpoint: its method and handler, and whether it needs authentication.
type route struct {
	method string
	open   bool // no authentication needed (login, logout, session)
	serve  func(w http.ResponseWriter, r *http.Request, a *auth, id int64)
}

// routes maps an API path pattern ("keys/{id}/enable", with {id} for a number) to its
// endpoints.
func (h *Handler) routes() map[string][]route {
	return map[string][]route{
		"login":                    {{http.MethodPost, true, h.login}},
		"logout":                   {{http.MethodPost, true, h.logout}},
		"session":                  {{http.MethodGet, true, h.session}},
		"status":                   {{http.MethodGet, false, h.status}},
		"keys":                     {{http.MethodGet, false, h.listKeys}, {http.MethodPost, false, h.addKeys}},
		"keys/validate":            {{http.MethodGet, false, h.validationProgress}, {http.MethodPost, false, h.validateAll}},
		"keys/export":              {{http.MethodPost, false, h.exportKeys}},
		"keys/project":             {{http.MethodPost, false, h.setKeysProject}},
		"keys/{id}":                {{http.MethodDelete, false, h.deleteKey}, {http.MethodPatch, false, h.patchKey}},
		"keys/{id}/enable":         {{http.MethodPost, false, h.enableKey}},
		"keys/{id}/disable":        {{http.MethodPost, false, h.disableKey}},
		"keys/{id}/validate":       {{http.MethodPost, false, h.validateKey}},
		"access-keys":              {{http.MethodGet, false, h.listAccessKeys}, {http.MethodPost, false, h.createAccessKey}},
		"access-keys/{id}":         {{http.MethodDelete, false, h.deleteAccessKey}, {http.MethodPatch, false, h.patchAccessKey}},
		"access-keys/{id}/usage":   {{http.MethodGet, false, h.accessKeyUsage}},
		"access-keys/{id}/enable":  {{http.MethodPost, false, h.enableAccessKey}},
		"access-keys/{id}/disable": {{http.MethodPost, false, h.disableAccessKey}},
		"admin-key":                {{http.MethodPut, false, h.changeAdminKey}},
		"settings":                 {{http.MethodGet, false, h.getSettings}, {http.MethodPut, false, h.putSettingsGuarded}},
		"stats":                    {{http.MethodGet, false, h.stats}},
		"logs":                     {{http.MethodGet, false, h.logs}},
	}
}

// table returns the routes, built on first use.
func (h *Handler) table() map[string][]route {
	h.routesOnce.Do(func() { h.routeMap = h.routes() })
	return h.routeMap
}

// serveAPI finds the endpoint of path (the part after P/api/), checks authentication and the
// CSRF rule, and runs it.
func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request, path string) {
	segs := strings.Split(path, "/")
	var id int64
	if len(segs) >= 2 && (segs[0] == "keys" || segs[0] == "access-keys") {
		if n, err := strconv.ParseInt(segs[1], 10, 64); err == nil && n > 0 {
			id, segs[1] = n, "{id}"
		}
	}
	eps, ok := h.table()[strings.Join(segs, "/")]
	if !ok {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "No such admin API route: "+r.Method+" "+r.URL.Path)
		return
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	var ep *route
	allow := make([]string, 0, len(eps))
	for i := range eps {
		allow = append(allow, eps[i].method)
		if eps[i].method == method {
			ep = &eps[i]
		}
	}
	if ep == nil {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", r.Method+" is not allowed here; use "+strings.Join(allow, " or ")+".")
		return
	}
	if ep.open {
		ep.serve(w, r, nil, id)
		return
	}
	a, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	ep.serve(w, r, a, id)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	writeJSON(w, http.StatusOK, h.Backend.Status())
}

// ---- answers

// writeJSON writes v as a JSON answer that no cache keeps.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "INTERNAL", "encoding the answer failed")
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

// writeError writes Google's error envelope.
func writeError(w http.ResponseWriter, code int, status, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}

// writeFieldErrors writes a 400 that names each bad field and why, in the message and as
// Google's BadRequest details.
func writeFieldErrors(w http.ResponseWriter, errs []FieldError) {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Field + ": " + e.Description
	}
	writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]any{
		"code":    http.StatusBadRequest,
		"message": strings.Join(msgs, "; "),
		"status":  "INVALID_ARGUMENT",
		"details": []any{map[string]any{
			"@type":           "type.googleapis.com/google.rpc.BadRequest",
			"fieldViolations": errs,
		}},
	}})
}

// badField writes a 400 for one field.
func badField(w http.ResponseWriter, field, why string) {
	writeFieldErrors(w, []FieldError{{Field: field, Description: why}})
}

// writeBackendError answers a failed backend call: 404 for an unknown id, 503 when the
// database cannot be reached (store.ErrUnavailable), 500 otherwise.
func writeBackendError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "NOT_FOUND", "No such item; it may have been deleted.")
	case errors.Is(err, context.Canceled):
		writeError(w, statusClientClosed, "CANCELLED", "The request was canceled.")
	case errors.Is(err, store.ErrUnavailable):
		// The database is down or out of reach (a PostgreSQL outage): nothing was changed,
		// and the same request may work in a moment. The proxy keeps serving meanwhile.
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "The database cannot be reached right now; try again shortly.")
	default:
		writeError(w, http.StatusInternalServerError, "INTERNAL", "The gateway failed: "+err.Error())
	}
}

// readBody reads the body (at most maxBody) and refuses, with 415, a non-empty one whose
// Content-Type is not application/json: a form or text/plain body is what a cross-site page
// can send without a preflight, so it never reaches a handler. On failure it answers and
// returns false.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "INVALID_ARGUMENT", "The request body is larger than 4 MiB.")
		} else {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Reading the request body failed: "+err.Error())
		}
		return nil, false
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "INVALID_ARGUMENT", "The request body must be JSON, sent with Content-Type: application/json.")
			return nil, false
		}
	}
	return raw, true
}

// readJSON decodes the body into v; on failure it answers 400 (415 for a body that is not
// declared as JSON) and returns false.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	raw, ok := readBody(w, r)
	if !ok {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			badField(w, ute.Field, "must be a JSON "+ute.Type.String())
			return false
		}
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must be a JSON object: "+err.Error())
		return false
	}
	return onlyOneValue(w, dec)
}

// onlyOneValue answers 400 and returns false when the body holds more than the JSON value just
// decoded from dec (white space aside): `{"label":"a"} garbage` is not a request.
func onlyOneValue(w http.ResponseWriter, dec *json.Decoder) bool {
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must hold one JSON object and nothing after it.")
		return false
	}
	return true
}

// paging reads page (from 1) and page_size (1..500, default 50) from the query.
func paging(w http.ResponseWriter, r *http.Request) (page, size int, ok bool) {
	q := r.URL.Query()
	page, size = 1, 50
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1_000_000 {
			badField(w, "page", "must be a whole number from 1")
			return 0, 0, false
		}
		page = n
	}
	if v := q.Get("page_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			badField(w, "page_size", "must be a whole number from 1 to 500")
			return 0, 0, false
		}
		size = n
	}
	return page, size, true
}
