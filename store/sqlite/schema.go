package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations holds the schema, one step per version: migrations[i] moves a database from
// version i to version i+1 (PRAGMA user_version). Steps are only ever appended; a released step
// is never edited, so every database reaches the same shape whatever version it starts from.
//
// All times are INTEGER unix milliseconds (UTC); 0 means "never". Log tables have no foreign
// keys: upstream keys and access keys can be deleted while their history stays.
var migrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE keys (
	id              INTEGER PRIMARY KEY,
	secret          TEXT    NOT NULL UNIQUE,
	status          TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
	disabled_reason TEXT    NOT NULL DEFAULT '',
	manual_disabled INTEGER NOT NULL DEFAULT 0,
	failure_count   INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT    NOT NULL DEFAULT '',
	last_used_at    INTEGER NOT NULL DEFAULT 0,
	requests        INTEGER NOT NULL DEFAULT 0,
	failed_requests INTEGER NOT NULL DEFAULT 0,
	created_at      INTEGER NOT NULL
);

CREATE TABLE cooldowns (
	key_id INTEGER NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	model  TEXT    NOT NULL,
	until  INTEGER NOT NULL,
	PRIMARY KEY (key_id, model)
) WITHOUT ROWID;
CREATE INDEX cooldowns_until ON cooldowns (until);

CREATE TABLE access_keys (
	id           INTEGER PRIMARY KEY,
	hash         BLOB    NOT NULL UNIQUE,
	label        TEXT    NOT NULL DEFAULT '',
	enabled      INTEGER NOT NULL DEFAULT 1,
	created_at   INTEGER NOT NULL,
	last_used_at INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE settings (
	name         TEXT    PRIMARY KEY,
	value        TEXT    NOT NULL,
	config_value TEXT,
	updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE request_logs (
	id                INTEGER PRIMARY KEY,
	time              INTEGER NOT NULL,
	access_key_id     INTEGER NOT NULL DEFAULT 0,
	key_id            INTEGER NOT NULL DEFAULT 0,
	method            TEXT    NOT NULL DEFAULT '',
	path              TEXT    NOT NULL DEFAULT '',
	model             TEXT    NOT NULL DEFAULT '',
	stream            INTEGER NOT NULL DEFAULT 0,
	status            INTEGER NOT NULL DEFAULT 0,
	attempts          INTEGER NOT NULL DEFAULT 0,
	latency_us        INTEGER NOT NULL DEFAULT 0,
	ttfb_us           INTEGER NOT NULL DEFAULT 0,
	prompt_tokens     INTEGER NOT NULL DEFAULT 0,
	candidates_tokens INTEGER NOT NULL DEFAULT 0,
	thoughts_tokens   INTEGER NOT NULL DEFAULT 0,
	total_tokens      INTEGER NOT NULL DEFAULT 0,
	error             TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX request_logs_time ON request_logs (time);
CREATE INDEX request_logs_key_time ON request_logs (key_id, time);
CREATE INDEX request_logs_model_time ON request_logs (model, time);

CREATE TABLE error_logs (
	id            INTEGER PRIMARY KEY,
	time          INTEGER NOT NULL,
	key_id        INTEGER NOT NULL DEFAULT 0,
	access_key_id INTEGER NOT NULL DEFAULT 0,
	model         TEXT    NOT NULL DEFAULT '',
	path          TEXT    NOT NULL DEFAULT '',
	status        INTEGER NOT NULL DEFAULT 0,
	message       TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX error_logs_time ON error_logs (time);
CREATE INDEX error_logs_key_time ON error_logs (key_id, time);

CREATE TABLE sessions (
	id         INTEGER PRIMARY KEY,
	token_hash BLOB    NOT NULL UNIQUE,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
`,
	// 2: key-bound resources (issue 7). An upload session started through the gateway, and every
	// resource (files/…, cachedContents/…, batches/…, …) created through it, belong to the
	// Google project of the pool key that made them: later calls must use that key. Rows go with
	// their key (a deleted key's resources are unreachable anyway).
	`
CREATE TABLE upload_sessions (
	upload_id     TEXT    PRIMARY KEY,
	key_id        INTEGER NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	upstream_uri  TEXT    NOT NULL,
	access_key_id INTEGER NOT NULL DEFAULT 0,
	created_at    INTEGER NOT NULL,
	expires_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX upload_sessions_expires_at ON upload_sessions (expires_at);
CREATE INDEX upload_sessions_key ON upload_sessions (key_id);

CREATE TABLE resources (
	name       TEXT    PRIMARY KEY,
	kind       TEXT    NOT NULL,
	key_id     INTEGER NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX resources_key_kind ON resources (key_id, kind);
CREATE INDEX resources_expires_at ON resources (expires_at) WHERE expires_at > 0;
`,
	// 3: tombstones of secrets deleted in the admin panel. The Caddyfile's google_api_keys and
	// access_keys are added at every start and reload; without a record of the deletion they
	// would come back. Only the SHA-256 of the secret is kept.
	`
CREATE TABLE deleted_secrets (
	kind       TEXT    NOT NULL CHECK (kind IN ('key', 'access_key')),
	hash       BLOB    NOT NULL,
	deleted_at INTEGER NOT NULL,
	PRIMARY KEY (kind, hash)
) WITHOUT ROWID;
`,
	// 4: request_logs summed per 15-minute slot and model, so the dashboard's statistics read a
	// few thousand rows instead of every request of the range. A slot is the unix-ms start of
	// its quarter hour (floor of time to a multiple of 900000); local midnights and hours fall
	// on slot starts in every time zone in use (offsets like +05:30 and +05:45 included). A
	// request failed when its status is not 2xx or 3xx, as in the queries over request_logs.
	// The log writer adds to it in the transaction that inserts the request rows; this step
	// sums the rows already logged.
	`
CREATE TABLE request_usage (
	slot              INTEGER NOT NULL,
	model             TEXT    NOT NULL,
	requests          INTEGER NOT NULL,
	failures          INTEGER NOT NULL,
	prompt_tokens     INTEGER NOT NULL,
	candidates_tokens INTEGER NOT NULL,
	total_tokens      INTEGER NOT NULL,
	PRIMARY KEY (slot, model)
) WITHOUT ROWID;

INSERT INTO request_usage (slot, model, requests, failures, prompt_tokens, candidates_tokens, total_tokens)
SELECT time - time % 900000 - (time % 900000 < 0) * 900000 AS slot, model, COUNT(*),
       SUM(status NOT BETWEEN 200 AND 399), SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
FROM request_logs GROUP BY slot, model;
`,
	// 5: the Google Cloud project of an upstream key, a label ('' when unknown). Quota belongs
	// to the project, not the key: a per-project 429 cools down every enabled key with the
	// same label. An operator sets it; the gateway fills an empty one from error bodies that
	// name the project. Keys of older databases start unlabelled.
	`
ALTER TABLE keys ADD COLUMN project TEXT NOT NULL DEFAULT '';
CREATE INDEX keys_project ON keys (project) WHERE project <> '';
`,
	// 6: access keys as tenants (issue 14).
	//
	// access_keys gets a policy (JSON, '' = none; the store keeps it as opaque text) and the
	// label and policy the Caddyfile's access_key entry gave it last (NULL: never set by the
	// config), so that a config load with an unchanged entry keeps an edit made in the admin
	// panel and a changed entry wins, as settings do. The table is rebuilt with AUTOINCREMENT:
	// without it SQLite gives a new key the id of the highest deleted one, and the new key would
	// inherit its resources, its usage and its spent budget. The sequence starts above every id
	// the logs and upload sessions still name.
	//
	// resources.access_key_id is the access key that created a resource (0: made outside the
	// gateway, or recorded before this version). request_logs.limit_hit is the access-key limit
	// that refused a request (rpm, rpd, tpm, token_budget, concurrency, models or expired; ''
	// when none).
	//
	// access_key_usage sums request_logs per 15-minute slot (as request_usage, step 4), access
	// key, model and limit hit; rows without an access key (0) are left out. The log writer adds
	// to it in the transaction that inserts the request rows; this step sums the rows already
	// logged. It serves the per-access-key statistics and rebuilds the limiter's daily request
	// count and token budget at start.
	`
CREATE TABLE access_keys_v6 (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	hash          BLOB    NOT NULL UNIQUE,
	label         TEXT    NOT NULL DEFAULT '',
	enabled       INTEGER NOT NULL DEFAULT 1,
	created_at    INTEGER NOT NULL,
	last_used_at  INTEGER NOT NULL DEFAULT 0,
	policy        TEXT    NOT NULL DEFAULT '',
	config_policy TEXT,
	config_label  TEXT
);
INSERT INTO access_keys_v6 (id, hash, label, enabled, created_at, last_used_at)
SELECT id, hash, label, enabled, created_at, last_used_at FROM access_keys;
DROP TABLE access_keys;
ALTER TABLE access_keys_v6 RENAME TO access_keys;

ALTER TABLE resources ADD COLUMN access_key_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN limit_hit TEXT NOT NULL DEFAULT '';

CREATE TABLE access_key_usage (
	slot              INTEGER NOT NULL,
	access_key_id     INTEGER NOT NULL,
	model             TEXT    NOT NULL,
	limit_hit         TEXT    NOT NULL,
	requests          INTEGER NOT NULL,
	failures          INTEGER NOT NULL,
	prompt_tokens     INTEGER NOT NULL,
	candidates_tokens INTEGER NOT NULL,
	total_tokens      INTEGER NOT NULL,
	PRIMARY KEY (slot, access_key_id, model, limit_hit)
) WITHOUT ROWID;

INSERT INTO access_key_usage (slot, access_key_id, model, limit_hit, requests, failures, prompt_tokens,
	candidates_tokens, total_tokens)
SELECT time - time % 900000 - (time % 900000 < 0) * 900000 AS slot, access_key_id, model, limit_hit, COUNT(*),
       SUM(status NOT BETWEEN 200 AND 399), SUM(prompt_tokens), SUM(candidates_tokens), SUM(total_tokens)
FROM request_logs WHERE access_key_id <> 0 GROUP BY slot, access_key_id, model, limit_hit;

DELETE FROM sqlite_sequence WHERE name = 'access_keys';
INSERT INTO sqlite_sequence (name, seq) SELECT 'access_keys', MAX(
	(SELECT COALESCE(MAX(id), 0) FROM access_keys),
	(SELECT COALESCE(MAX(access_key_id), 0) FROM access_key_usage),
	(SELECT COALESCE(MAX(access_key_id), 0) FROM error_logs),
	(SELECT COALESCE(MAX(access_key_id), 0) FROM upload_sessions));
`,
}

// migrate brings db up to len(steps), one transaction per step. The version is read inside each
// step's write transaction, so two processes opening the same fresh file do not both apply it.
// A database newer than this binary (a version above len(steps)) is refused.
func migrate(ctx context.Context, db *sql.DB, steps []string) error {
	for {
		done, err := migrateStep(ctx, db, steps)
		if err != nil || done {
			return err
		}
	}
}

// migrateStep applies the next pending step, if any, and reports whether none was left.
func migrateStep(ctx context.Context, db *sql.DB, steps []string) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see dsn)
	if err != nil {
		return false, fmt.Errorf("store: migrate: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var version int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return false, fmt.Errorf("store: read schema version: %w", err)
	}
	switch {
	case version > len(steps):
		return false, fmt.Errorf("store: database schema version %d is newer than this program's %d", version, len(steps))
	case version == len(steps):
		return true, tx.Rollback()
	}
	if _, err := tx.ExecContext(ctx, steps[version]); err != nil {
		return false, fmt.Errorf("store: migrate to version %d: %w", version+1, err)
	}
	// PRAGMA takes no bind parameters; version is an int we control.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, version+1)); err != nil {
		return false, fmt.Errorf("store: set schema version %d: %w", version+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: commit schema version %d: %w", version+1, err)
	}
	return false, nil
}
