package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Admin sessions are stored by the SHA-256 of their token, never the token itself, so a copy of
// the database does not let anyone in.

// CreateSession stores a session whose token has the SHA-256 tokenHash, valid until expires.
func (s *Store) CreateSession(ctx context.Context, tokenHash [32]byte, expires time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO sessions (token_hash, created_at, expires_at) VALUES ($1, $2, $3)`,
		tokenHash[:], toMS(time.Now()), toMS(expires))
	if err != nil {
		return wrap("create session", err)
	}
	return nil
}

// SessionExpiry returns when the session with tokenHash expires. ok is false when there is no
// such session or it has expired at now (an expiry at or before now).
func (s *Store) SessionExpiry(ctx context.Context, tokenHash [32]byte, now time.Time) (expires time.Time, ok bool, err error) {
	var ms int64
	err = s.pool.QueryRow(ctx, `SELECT expires_at FROM sessions WHERE token_hash = $1 AND expires_at > $2`,
		tokenHash[:], toMS(now)).Scan(&ms)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, wrap("session", err)
	}
	return fromMS(ms), true, nil
}

// DeleteSession ends the session with tokenHash; an unknown one is no error.
func (s *Store) DeleteSession(ctx context.Context, tokenHash [32]byte) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE token_hash = $1`, tokenHash[:]); err != nil {
		return wrap("delete session", err)
	}
	return nil
}

// DeleteSessionsExcept ends every session but the one with tokenHash keep (pass the zero hash
// to end them all) and returns how many it ended.
func (s *Store) DeleteSessionsExcept(ctx context.Context, keep [32]byte) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM sessions WHERE token_hash <> $1`, keep[:])
	if err != nil {
		return 0, wrap("delete sessions", err)
	}
	return tag.RowsAffected(), nil
}
