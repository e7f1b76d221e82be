// Package store is the engine-neutral part of the gateway's state: the Store interface that the
// gateway, the admin API and the tools use, the types that cross it, its errors and the pure
// helpers every engine shares (HashSecret, CheckProject, the usage slots, the limits of log
// text). It holds no SQL and imports no driver. The engines are store/sqlite (the embedded
// default) and, for several instances, store/postgres; store/storetest is the conformance
// suite every engine passes.
//
// A Store keeps upstream keys and their cooldowns, clients' access keys (as SHA-256 hashes
// only), settings, admin sessions, resource owners, upload sessions, and the request and error
// logs. Log rows and runtime key state are written asynchronously by a background writer, so
// the request path never waits on the database (see LogRequest). Everything else is
// synchronous.
//
// Besides the request rows, an engine keeps per-UsageSlot (15-minute) sums by model, and sums
// by access key, model and the limit that refused them, written with the rows. The dashboard's
// statistics (UsageBuckets, UsageByModel) and those of one access key (AccessKeyUsage,
// UsageBucketsOf, UsageByModelOf) read them when every bound is on UsageSlot, and the limiter's
// counts at a start come from them (AccessKeyCounts). Retention deletes request rows after
// request_log_retention but keeps these sums for UsageRetention (400 days) or
// request_log_retention, whichever is longer.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by the store.
var (
	// ErrDuplicate is returned when adding something that already exists.
	ErrDuplicate = errors.New("store: already exists")
	// ErrNotFound is returned when updating or deleting an id that does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrUnavailable is matched (errors.Is) by the errors of an engine that could not reach
	// its database (a PostgreSQL server down, restarting or out of reach): the call may work
	// when tried again later. The admin API answers 503 for it.
	ErrUnavailable = errors.New("store: the database cannot be reached")
	// ErrNoAccessKey is returned by UsageBucketsOf and UsageByModelOf for access key 0:
	// requests without an access key are not summed per access key.
	ErrNoAccessKey = errors.New("store: usage of access key 0 (none)")
)

// Store is an open database plus its background writer. Implementations are safe for
// concurrent use. Every method's comment is the contract each engine keeps (store/storetest
// checks it).
type Store interface {
	// ---- the store itself

	// Path returns the path (or address) the store was opened with.
	Path() string
	// Close writes everything still queued, stops the writer and closes the database. Calls
	// after the first return the first call's result.
	Close() error

	// ---- upstream keys

	// AddKeys adds upstream keys in one transaction, as an operator's explicit add: a key
	// deleted before (see DeleteKey) is added again and its tombstone cleared. Secrets are
	// trimmed of white space; empty ones and ones already stored are skipped. It returns how
	// many were added. It is AddLabeledKeys without labels.
	AddKeys(ctx context.Context, secrets []string) (added int, err error)
	// AddConfigKeys adds the upstream keys of the config as AddKeys does, but skips the ones
	// deleted in the admin panel (a tombstone is stored): it returns how many were added and
	// how many were skipped for that reason.
	AddConfigKeys(ctx context.Context, secrets []string) (added, skipped int, err error)
	// AddLabeledKeys adds upstream keys with their project labels in one transaction, as an
	// operator's explicit add (AddKeys without labels): a key deleted before is added again and
	// its tombstone cleared, empty secrets are skipped. A key already stored is not added
	// again, but a non-empty label given with it becomes its label (so pasting "key project"
	// again labels existing keys); an empty one leaves its label alone. Every label must pass
	// CheckProject after trimming, else nothing is written.
	AddLabeledKeys(ctx context.Context, keys []NewKey) (AddResult, error)
	// Keys returns all upstream keys ordered by id.
	Keys(ctx context.Context) ([]Key, error)
	// DeleteKey deletes an upstream key and its cooldowns; its log rows stay. A tombstone of
	// its secret keeps the config from adding it again (see AddConfigKeys). ErrNotFound when
	// there is no such key.
	DeleteKey(ctx context.Context, id int64) error
	// SetKeyStatus is an operator's enable or disable. Disabling records reason and whether it
	// was manual (a pool state saved later does not re-enable a manually disabled key).
	// Enabling clears the manual flag, the reason and the failure count, and deletes the key's
	// cooldowns. Key state saved with SaveKeyState before the call and not yet written is
	// discarded, so it cannot overwrite this decision. ErrNotFound when there is no such key.
	SetKeyStatus(ctx context.Context, id int64, status, reason string, manual bool) error
	// ReviveKey puts back into service a key that validation found working, as SetKeyStatus
	// does with StatusActive, unless an operator disabled it by hand (or deleted it) while it
	// was being checked: then it changes nothing and reports false.
	ReviveKey(ctx context.Context, id int64) (bool, error)
	// SetKeysProject is an operator's label for the keys with ids: project (trimmed, checked
	// with CheckProject) becomes their label, "" clears it. It returns how many keys changed;
	// unknown ids and keys that had that label already are not counted. Labels the gateway
	// learned for these keys and has not written yet are discarded, so a cleared label is not
	// filled again by an older guess.
	SetKeysProject(ctx context.Context, ids []int64, project string) (changed int64, err error)
	// SaveKeyProject records a project label the gateway learned for key id and returns at
	// once; the background writer stores it only if the key has no label then (an operator's
	// label always wins). Labels are kept per key, newest wins, and are never dropped. An empty
	// label or one CheckProject refuses (after trimming) is ignored.
	SaveKeyProject(id int64, project string)
	// SaveKeyState records k for writing and returns at once. States are kept per key, newest
	// wins, and are never dropped. A key disabled by an operator keeps its status and reason.
	SaveKeyState(k KeyState)

	// ---- cooldowns

	// Cooldowns returns the cooldowns still running at now, ordered by key id and model.
	Cooldowns(ctx context.Context, now time.Time) ([]Cooldown, error)
	// SaveCooldown records c for writing and returns at once. Cooldowns are kept per key and
	// model, newest wins, and are never dropped. A cooldown for a deleted key is ignored.
	SaveCooldown(c Cooldown)
	// PurgeCooldowns deletes the cooldowns over at now (until at or before now), in batches as
	// PurgeRequestLogs does, and returns how many it deleted. They no longer hold a key back,
	// and a key that cools down again gets a new row.
	PurgeCooldowns(ctx context.Context, now time.Time) (int64, error)

	// ---- access keys

	// AddAccessKey stores the hash of secret (trimmed of white space) under label, with policy
	// (JSON; empty for none), and returns its id, clearing a tombstone of it: a key added by
	// hand is wanted, even if the config lists it too. It returns ErrDuplicate if that hash is
	// already stored. Ids are never reused, not even those of deleted keys.
	AddAccessKey(ctx context.Context, secret, label, policy string) (int64, error)
	// EnsureAccessKeys stores the hashes of the config's secrets (trimmed of white space) that
	// are not stored yet, labelled label, in one transaction. Empty secrets are skipped, and so
	// are the ones deleted in the admin panel (a tombstone is stored). It returns how many were
	// added and how many were skipped as deleted.
	EnsureAccessKeys(ctx context.Context, secrets []string, label string) (added, skipped int, err error)
	// ApplyConfigAccessKeys records the Caddyfile's access_key entries, seen at a start or
	// reload, in one transaction, and returns how many keys it added and how many it skipped as
	// deleted. Secrets are trimmed of white space; empty ones are skipped, and so are the ones
	// deleted in the admin panel (a tombstone is stored), as in EnsureAccessKeys. A key not
	// stored yet is added with the entry's label and policy. For a stored key the newer edit
	// wins, as in ApplyConfigSetting, for the label and the policy each: if the entry's value
	// differs from the one the config gave last time (or the config never gave one), it
	// becomes the key's value; otherwise the key keeps its value, which may have been edited in
	// the admin panel since. A secret listed twice ends with its later entry.
	ApplyConfigAccessKeys(ctx context.Context, keys []ConfigAccessKey) (added, skipped int, err error)
	// UpdateAccessKey applies u to the access key id, or returns ErrNotFound. It is an edit
	// made in the admin panel: the values the Caddyfile gave last are kept, so a config load
	// with the same entry keeps this edit (see ApplyConfigAccessKeys).
	UpdateAccessKey(ctx context.Context, id int64, u AccessKeyUpdate) error
	// AccessKeys returns all access keys ordered by id.
	AccessKeys(ctx context.Context) ([]AccessKey, error)
	// SetAccessKeyEnabled enables or disables an access key, or returns ErrNotFound.
	SetAccessKeyEnabled(ctx context.Context, id int64, enabled bool) error
	// DeleteAccessKey deletes an access key; its log rows stay. A tombstone of its hash keeps
	// the config from adding it again. ErrNotFound when there is no such key.
	DeleteAccessKey(ctx context.Context, id int64) error

	// ---- settings

	// Settings returns the effective value of every stored setting.
	Settings(ctx context.Context) (map[string]string, error)
	// SetSetting records an edit made in the admin panel; it becomes the effective value until
	// the Caddyfile's value for name changes.
	SetSetting(ctx context.Context, name, value string) error
	// SetSettings records several admin-panel edits (see SetSetting) in one transaction: all of
	// them are stored or none.
	SetSettings(ctx context.Context, values map[string]string) error
	// ApplyConfigSetting records value as the Caddyfile's value for name, seen at a start or
	// reload. The newer edit wins: if value differs from the Caddyfile value recorded last time
	// (or none was recorded), it becomes the effective value and applied is true. Otherwise the
	// effective value, which may have been edited in the admin panel since, is kept and applied
	// is false.
	ApplyConfigSetting(ctx context.Context, name, value string) (applied bool, err error)

	// ---- admin sessions (stored by the SHA-256 of their token, never the token itself)

	// CreateSession stores a session whose token has the SHA-256 tokenHash, valid until
	// expires.
	CreateSession(ctx context.Context, tokenHash [32]byte, expires time.Time) error
	// SessionExpiry returns when the session with tokenHash expires. ok is false when there is
	// no such session or it has expired at now (an expiry at or before now).
	SessionExpiry(ctx context.Context, tokenHash [32]byte, now time.Time) (expires time.Time, ok bool, err error)
	// DeleteSession ends the session with tokenHash; an unknown one is no error.
	DeleteSession(ctx context.Context, tokenHash [32]byte) error
	// DeleteSessionsExcept ends every session but the one with tokenHash keep (pass the zero
	// hash to end them all) and returns how many it ended.
	DeleteSessionsExcept(ctx context.Context, keep [32]byte) (int64, error)
	// PurgeSessions deletes the admin sessions expired at now (expiry at or before now), in
	// batches as PurgeRequestLogs does, and returns how many it deleted.
	PurgeSessions(ctx context.Context, now time.Time) (int64, error)

	// ---- key-bound resources

	// AddResources records resources (replacing the owners and expiry of names already
	// stored). An empty Kind is the name's first segment; a zero CreatedAt is now.
	AddResources(ctx context.Context, rs ...Resource) error
	// AddNewResources records the resources whose name has no owner at now: a name already
	// stored keeps its owners and expiry unless its row had expired at now, when it is replaced
	// whole. It is for names the gateway only infers (the files a polled batch or operation
	// names), which must never take a known resource away from its owner.
	AddNewResources(ctx context.Context, now time.Time, rs ...Resource) error
	// ResourceOwners returns the owners of each of names that is stored and not expired at
	// now. Names not stored are absent from the map.
	ResourceOwners(ctx context.Context, names []string, now time.Time) (map[string]Owner, error)
	// DeleteResource forgets a resource (it was deleted upstream). Unknown names are ignored.
	DeleteResource(ctx context.Context, name string) error
	// OwnedResourceCounts returns, per pool key that owns any, how many resources not expired
	// at now it owns (for the admin panel: a key that owns live files should not be deleted
	// lightly).
	OwnedResourceCounts(ctx context.Context, now time.Time) (map[int64]int, error)
	// PurgeResources deletes the resources expired at now (those with an expiry at or before
	// now), in batches as PurgeRequestLogs does, and returns how many it deleted.
	PurgeResources(ctx context.Context, now time.Time) (int64, error)

	// ---- upload sessions

	// AddUploadSession records an upload session (replacing one with the same id).
	AddUploadSession(ctx context.Context, u UploadSession) error
	// UploadSessionByID returns the live session with the given id at now, or ErrNotFound.
	UploadSessionByID(ctx context.Context, id string, now time.Time) (UploadSession, error)
	// DeleteUploadSession forgets a session (it was cancelled). Unknown ids are ignored.
	DeleteUploadSession(ctx context.Context, id string) error
	// PurgeUploadSessions deletes the sessions expired at now, in batches as PurgeRequestLogs
	// does.
	PurgeUploadSessions(ctx context.Context, now time.Time) (int64, error)

	// ---- request and error logs (written by the background writer)

	// LogRequest queues r for writing and returns at once. Text fields are cut to their limits
	// (see MaxTextLen and the others). If the queue is full, or the store is closed, the row is
	// dropped, counted (see Dropped) and a warning logged (at most once a second). The row also
	// counts in the key's counters and in the per-slot sums, in the same transaction.
	LogRequest(r RequestLog)
	// LogError queues e for writing and returns at once, under the same rules as LogRequest.
	LogError(e ErrorLog)
	// Flush blocks until everything queued or saved before the call is committed. After Close
	// it returns at once.
	Flush()
	// Dropped returns how many log rows were dropped so far because the queue was full, the
	// store was closed, or (after repeated non-transient database errors) they could not be
	// written.
	Dropped() uint64
	// Written returns how many log rows (request and error rows) were committed so far.
	Written() uint64
	// CountRequests returns how many request log rows match q's filters (Limit and Offset
	// aside).
	CountRequests(ctx context.Context, q LogQuery) (int64, error)
	// CountErrors returns how many error log rows match q's filters (Limit and Offset aside).
	CountErrors(ctx context.Context, q LogQuery) (int64, error)
	// CountRequestLogs returns the number of stored request log rows.
	CountRequestLogs(ctx context.Context) (int64, error)
	// RecentRequests returns request log rows matching q, newest first (ties: the later
	// written first).
	RecentRequests(ctx context.Context, q LogQuery) ([]RequestLog, error)
	// RecentErrors returns failed upstream attempts matching q, newest first (ties: the later
	// written first).
	RecentErrors(ctx context.Context, q LogQuery) ([]ErrorLog, error)
	// PurgeRequestLogs deletes the request log rows older than before (a row at exactly before
	// is kept) and returns how many it deleted. It deletes in small transactions with a pause
	// between them, so the log writer is never blocked for long; when ctx ends it stops between
	// two batches and returns what it deleted so far with ctx's error.
	PurgeRequestLogs(ctx context.Context, before time.Time) (int64, error)
	// PurgeErrorLogs deletes the error log rows older than before, as PurgeRequestLogs does.
	PurgeErrorLogs(ctx context.Context, before time.Time) (int64, error)

	// ---- statistics

	// UsageBuckets adds up the request log in each interval [bounds[i], bounds[i+1]), so it
	// returns len(bounds)-1 results. The caller chooses the bounds, which is how buckets follow
	// a time zone's calendar (an hour or a day is not always 3600 or 86400 s there). Bounds
	// must increase; at most MaxBuckets buckets (see CheckBuckets). Bounds on UsageSlot are
	// answered from the per-slot sums, which outlive the request rows (see the package doc).
	UsageBuckets(ctx context.Context, bounds []time.Time) ([]Usage, error)
	// UsageByModel adds up the request log in [from, to) per model, the most requested first
	// (ties by name), at most limit models (0 means 50). Bounds on UsageSlot are answered from
	// the per-slot sums, as in UsageBuckets.
	UsageByModel(ctx context.Context, from, to time.Time, limit int) ([]ModelUsage, error)
	// UsageBucketsOf is UsageBuckets for the requests of one access key (not 0, else
	// ErrNoAccessKey): same bounds, limits and answers, from that key's per-slot sums when
	// every bound is on UsageSlot.
	UsageBucketsOf(ctx context.Context, accessKeyID int64, bounds []time.Time) ([]Usage, error)
	// UsageByModelOf is UsageByModel for the requests of one access key (not 0, else
	// ErrNoAccessKey).
	UsageByModelOf(ctx context.Context, accessKeyID int64, from, to time.Time, limit int) ([]ModelUsage, error)
	// AccessKeyUsage adds up the request log in [from, to) per access key, for every access
	// key with a request in it, the most requested first (ties by id). Bounds on UsageSlot are
	// answered from the per-slot sums, which outlive the request rows; others from the request
	// rows.
	AccessKeyUsage(ctx context.Context, from, to time.Time) ([]AccessKeyUsage, error)
	// AccessKeyCounts returns, per access key with a request since since, the requests that no
	// limit refused and the total tokens, read from the per-slot sums, so that a start can
	// restore the daily request count and the token budget. since should start a slot (a local
	// midnight does, in every time zone in use); otherwise its slot is counted whole, which
	// counts more, never less. The sums are written in the transaction that writes the request
	// rows, so they hold every request logged before a stop or a crash; only rows still in the
	// log writer's queue at a crash are lost (a stop writes them).
	AccessKeyCounts(ctx context.Context, since time.Time) (map[int64]Counts, error)
	// PurgeUsage deletes the per-slot sums of the request log (the totals per model and those
	// per access key) whose quarter hour ended at or before before (one straddling it is
	// kept), in batches as PurgeRequestLogs does, and returns how many sums it deleted: one per
	// slot and model, and one per slot, access key, model and limit hit. Callers pass at least
	// UsageRetention back from now.
	PurgeUsage(ctx context.Context, before time.Time) (int64, error)
}
