package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/internal/sqlkit"
)

// ---- upload sessions

// AddUploadSession records an upload session (replacing one with the same id).
func (s *Store) AddUploadSession(ctx context.Context, u store.UploadSession) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO upload_sessions (upload_id, key_id, upstream_uri, access_key_id, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (upload_id) DO UPDATE SET key_id = excluded.key_id, upstream_uri = excluded.upstream_uri,
			access_key_id = excluded.access_key_id, created_at = excluded.created_at, expires_at = excluded.expires_at`,
		u.ID, u.KeyID, u.UpstreamURI, u.AccessKeyID, toMS(u.CreatedAt), toMS(u.ExpiresAt))
	if err != nil {
		return wrap("add upload session", err)
	}
	return nil
}

// UploadSessionByID returns the live session with the given id at now, or store.ErrNotFound.
func (s *Store) UploadSessionByID(ctx context.Context, id string, now time.Time) (store.UploadSession, error) {
	u := store.UploadSession{ID: id}
	var created, expires int64
	err := s.pool.QueryRow(ctx, `
		SELECT key_id, upstream_uri, access_key_id, created_at, expires_at
		FROM upload_sessions WHERE upload_id = $1 AND expires_at > $2`, id, toMS(now)).
		Scan(&u.KeyID, &u.UpstreamURI, &u.AccessKeyID, &created, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.UploadSession{}, store.ErrNotFound
	}
	if err != nil {
		return store.UploadSession{}, wrap("upload session", err)
	}
	u.CreatedAt, u.ExpiresAt = fromMS(created), fromMS(expires)
	return u, nil
}

// DeleteUploadSession forgets a session (it was cancelled). Unknown ids are ignored.
func (s *Store) DeleteUploadSession(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM upload_sessions WHERE upload_id = $1`, id); err != nil {
		return wrap("delete upload session", err)
	}
	return nil
}

// PurgeUploadSessions deletes the sessions expired at now, in batches as PurgeRequestLogs does.
func (s *Store) PurgeUploadSessions(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "upload sessions",
		`DELETE FROM upload_sessions WHERE upload_id IN (SELECT upload_id FROM upload_sessions WHERE expires_at <= $1 LIMIT $2)`,
		toMS(now))
}

// ---- key-bound resources

// AddResources records resources (replacing the owners and expiry of names already stored).
// A resource without a Kind gets the first segment of its name; one without a CreatedAt, now.
func (s *Store) AddResources(ctx context.Context, rs ...store.Resource) error {
	return s.addResources(ctx, "add resources", `
		INSERT INTO resources (name, kind, key_id, access_key_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,
			access_key_id = excluded.access_key_id, expires_at = excluded.expires_at`, nil, rs)
}

// AddNewResources records the resources whose name has no owner at now: a name already
// stored keeps its owners and expiry unless its row had expired at now, when it is replaced
// whole. It is for names the gateway only infers (the files a polled batch or operation
// names), which must never take a known resource away from its owner.
func (s *Store) AddNewResources(ctx context.Context, now time.Time, rs ...store.Resource) error {
	return s.addResources(ctx, "add new resources", `
		INSERT INTO resources (name, kind, key_id, access_key_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,
			access_key_id = excluded.access_key_id, created_at = excluded.created_at, expires_at = excluded.expires_at
		WHERE resources.expires_at > 0 AND resources.expires_at <= $7`, []any{toMS(now)}, rs)
}

// addResources runs the insert q (with its six values, then extra) for each of rs, in order,
// in one transaction sent as one batch; what names the operation in errors.
func (s *Store) addResources(ctx context.Context, what, q string, extra []any, rs []store.Resource) error {
	if len(rs) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var b pgx.Batch
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
			b.Queue(q, args...)
		}
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return wrap(what, err)
	}
	return nil
}

// ResourceOwners returns the owners of each of names that is stored and not expired at now.
// Names not stored are absent from the map.
func (s *Store) ResourceOwners(ctx context.Context, names []string, now time.Time) (map[string]store.Owner, error) {
	out := make(map[string]store.Owner, len(names))
	if len(names) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `
		SELECT name, key_id, access_key_id FROM resources
		WHERE (expires_at = 0 OR expires_at > $1) AND name = ANY($2)`, toMS(now), names)
	if err != nil {
		return nil, wrap("resource owners", err)
	}
	defer rows.Close()
	if err := sqlkit.Owners(rows, out); err != nil {
		return nil, wrap("resource owners", err)
	}
	return out, nil
}

// DeleteResource forgets a resource (it was deleted upstream). Unknown names are ignored.
func (s *Store) DeleteResource(ctx context.Context, name string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM resources WHERE name = $1`, name); err != nil {
		return wrap("delete resource", err)
	}
	return nil
}

// OwnedResourceCounts returns, per pool key that owns any, how many resources not expired at
// now it owns (for the admin panel: a key that owns live files should not be deleted lightly).
func (s *Store) OwnedResourceCounts(ctx context.Context, now time.Time) (map[int64]int, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT key_id, COUNT(*) FROM resources WHERE expires_at = 0 OR expires_at > $1 GROUP BY key_id`, toMS(now))
	if err != nil {
		return nil, wrap("owned resource counts", err)
	}
	defer rows.Close()
	out, err := sqlkit.KeyCounts(rows)
	if err != nil {
		return nil, wrap("owned resource counts", err)
	}
	return out, nil
}

// PurgeResources deletes the resources expired at now (those with an expiry at or before now),
// in batches as PurgeRequestLogs does, and returns how many it deleted.
func (s *Store) PurgeResources(ctx context.Context, now time.Time) (int64, error) {
	return s.purge(ctx, "resources",
		`DELETE FROM resources WHERE name IN (SELECT name FROM resources WHERE expires_at > 0 AND expires_at <= $1 LIMIT $2)`,
		toMS(now))
}
