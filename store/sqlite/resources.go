package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// ---- upload sessions

// AddUploadSession records an upload session (replacing one with the same id).
func (s *Store) AddUploadSession(ctx context.Context, u store.UploadSession) error {
	_, err := s.db.ExecContext(ctx, `
		INSERT OR REPLACE INTO upload_sessions (upload_id, key_id, upstream_uri, access_key_id, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`,
		u.ID, u.KeyID, u.UpstreamURI, u.AccessKeyID, toMS(u.CreatedAt), toMS(u.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: add upload session: %w", err)
	}
	return nil
}

// UploadSessionByID returns the live session with the given id at now, or ErrNotFound.
func (s *Store) UploadSessionByID(ctx context.Context, id string, now time.Time) (store.UploadSession, error) {
	u := store.UploadSession{ID: id}
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `
		SELECT key_id, upstream_uri, access_key_id, created_at, expires_at
		FROM upload_sessions WHERE upload_id = ? AND expires_at > ?`, id, toMS(now)).
		Scan(&u.KeyID, &u.UpstreamURI, &u.AccessKeyID, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return store.UploadSession{}, store.ErrNotFound
	}
	if err != nil {
		return store.UploadSession{}, fmt.Errorf("store: upload session: %w", err)
	}
	u.CreatedAt, u.ExpiresAt = fromMS(created), fromMS(expires)
	return u, nil
}

// DeleteUploadSession forgets a session (it was cancelled). Unknown ids are ignored.
func (s *Store) DeleteUploadSession(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM upload_sessions WHERE upload_id = ?`, id); err != nil {
		return fmt.Errorf("store: delete upload session: %w", err)
	}
	return nil
}

// PurgeUploadSessions deletes the sessions expired at now, in batches as PurgeRequestLogs does.
func (s *Store) PurgeUploadSessions(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "upload sessions",
		`DELETE FROM upload_sessions WHERE upload_id IN (SELECT upload_id FROM upload_sessions WHERE expires_at <= ? LIMIT ?)`,
		toMS(now))
}

// ---- key-bound resources

// AddResources records resources (replacing the owners and expiry of names already stored).
func (s *Store) AddResources(ctx context.Context, rs ...store.Resource) error {
	return s.addResources(ctx, "add resources", `
		INSERT INTO resources (name, kind, key_id, access_key_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,
			access_key_id = excluded.access_key_id, expires_at = excluded.expires_at`, nil, rs)
}

// AddNewResources records the resources whose name has no owner at now: a name already
// stored keeps its owners and expiry unless its row had expired at now, when it is replaced
// whole. It is for names the gateway only infers (the files a polled batch or operation
// names), which must never take a known resource away from its owner.
func (s *Store) AddNewResources(ctx context.Context, now time.Time, rs ...store.Resource) error {
	return s.addResources(ctx, "add new resources", `
		INSERT INTO resources (name, kind, key_id, access_key_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,
			access_key_id = excluded.access_key_id, created_at = excluded.created_at, expires_at = excluded.expires_at
		WHERE resources.expires_at > 0 AND resources.expires_at <= ?`, []any{toMS(now)}, rs)
}

// addResources runs the insert q (with its six values, then extra) for each of rs in one
// transaction; what names the operation in errors.
func (s *Store) addResources(ctx context.Context, what, q string, extra []any, rs []store.Resource) error {
	if len(rs) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, q)
	if err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	defer stmt.Close()
	for _, r := range rs {
		kind := r.Kind
		if kind == "" {
			kind, _, _ = strings.Cut(r.Name, "/")
		}
		created := r.CreatedAt
		if created.IsZero() {
			created = time.Now()
		}
		args := append([]any{r.Name, kind, r.KeyID, r.AccessKeyID, toMS(created), toMS(r.ExpiresAt)}, extra...)
		if _, err := stmt.ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("store: %s: %w", what, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return nil
}

// ownersChunk is how many names one lookup query binds, well below SQLite's limit on host
// parameters (999 in builds before 3.32).
const ownersChunk = 500

// ResourceOwners returns the owners of each of names that is stored and not expired at now.
// Names not stored are absent from the map.
func (s *Store) ResourceOwners(ctx context.Context, names []string, now time.Time) (map[string]store.Owner, error) {
	out := make(map[string]store.Owner, len(names))
	for len(names) > 0 {
		n := min(len(names), ownersChunk)
		if err := s.resourceOwners(ctx, names[:n], now, out); err != nil {
			return nil, err
		}
		names = names[n:]
	}
	return out, nil
}

func (s *Store) resourceOwners(ctx context.Context, names []string, now time.Time, out map[string]store.Owner) error {
	args := make([]any, 0, len(names)+1)
	args = append(args, toMS(now))
	for _, n := range names {
		args = append(args, n)
	}
	q := `SELECT name, key_id, access_key_id FROM resources WHERE (expires_at = 0 OR expires_at > ?) AND name IN (?` +
		strings.Repeat(", ?", len(names)-1) + `)`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("store: resource owners: %w", err)
	}
	defer rows.Close()
	if err := sqlkit.Owners(rows, out); err != nil {
		return fmt.Errorf("store: resource owners: %w", err)
	}
	return nil
}

// DeleteResource forgets a resource (it was deleted upstream). Unknown names are ignored.
func (s *Store) DeleteResource(ctx context.Context, name string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM resources WHERE name = ?`, name); err != nil {
		return fmt.Errorf("store: delete resource: %w", err)
	}
	return nil
}

// OwnedResourceCounts returns, per pool key that owns any, how many resources not expired at
// now it owns (for the admin panel: a key that owns live files should not be deleted lightly).
func (s *Store) OwnedResourceCounts(ctx context.Context, now time.Time) (map[int64]int, error) {
	rows, err := s.db.QueryContext(ctx, `
		SELECT key_id, COUNT(*) FROM resources WHERE expires_at = 0 OR expires_at > ? GROUP BY key_id`, toMS(now))
	if err != nil {
		return nil, fmt.Errorf("store: owned resource counts: %w", err)
	}
	defer rows.Close()
	out, err := sqlkit.KeyCounts(rows)
	if err != nil {
		return nil, fmt.Errorf("store: owned resource counts: %w", err)
	}
	return out, nil
}

// PurgeResources deletes the resources expired at now (those with an expiry at or before now),
// in batches as PurgeRequestLogs does, and returns how many it deleted.
func (s *Store) PurgeResources(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "resources",
		`DELETE FROM resources WHERE name IN (SELECT name FROM resources WHERE expires_at > 0 AND expires_at <= ? LIMIT ?)`,
		toMS(now))
}
