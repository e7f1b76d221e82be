package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Admin sessions are stored by the SHA-256 of their token, never the token itself, so a copy of
// the database does not let anyone in.

// CreateSession stores a session whose token has the SHA-256 tokenHash, valid until expires.
func (s *Store) CreateSession(ctx context.Context, tokenHash [32]byte, expires time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO sessions (token_hash, created_at, expires_at) VALUES (?, ?, ?)`,
		tokenHash[:], toMS(time.Now()), toMS(expires))
	if err != nil {
		return fmt.Errorf("store: create session: %w", err)
	}
	return nil
}

// SessionExpiry returns when the session with tokenHash expires. ok is false when there is no
// such session or it has expired at now (an expiry at or before now).
func (s *Store) SessionExpiry(ctx context.Context, tokenHash [32]byte, now time.Time) (expires time.Time, ok bool, err error) {
	var ms int64
	err = s.db.QueryRowContext(ctx, `SELECT expires_at FROM sessions WHERE token_hash = ? AND expires_at > ?`,
		tokenHash[:], toMS(now)).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("store: session: %w", err)
	}
	return fromMS(ms), true, nil
}

// DeleteSession ends the session with tokenHash; an unknown one is no error.
func (s *Store) DeleteSession(ctx context.Context, tokenHash [32]byte) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE token_hash = ?`, tokenHash[:]); err != nil {
		return fmt.Errorf("store: delete session: %w", err)
	}
	return nil
}

// DeleteSessionsExcept ends every session but the one with tokenHash keep (pass the zero hash
// to end them all) and returns how many it ended.
func (s *Store) DeleteSessionsExcept(ctx context.Context, keep [32]byte) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE token_hash <> ?`, keep[:])
	if err != nil {
		return 0, fmt.Errorf("store: delete sessions: %w", err)
	}
	return res.RowsAffected()
}
