package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Project labels. Google's quota belongs to the Cloud project, not the key: keys carry an
// optional label naming their project (schema step 5), so a per-project 429 on one key can
// cool down its siblings. An operator sets labels (AddLabeledKeys, SetKeysProject); the
// gateway fills empty ones from error bodies that name the project (SaveKeyProject), never
// overwriting an operator's.

// MaxProjectLen is the longest project label, in bytes.
const MaxProjectLen = 64

// Errors of CheckProject.
var (
	// ErrProjectTooLong is returned for a label longer than MaxProjectLen bytes.
	ErrProjectTooLong = fmt.Errorf("must be at most %d characters", MaxProjectLen)
	// ErrProjectChars is returned for a label with a character other than the allowed ones.
	ErrProjectChars = errors.New("may hold only letters, digits and . _ : -")
)

// CheckProject reports whether s is a good project label: at most MaxProjectLen bytes of
// A-Z, a-z, 0-9, '.', '_', ':' and '-'. The empty label (no project) is good. Callers trim
// white space first; a label with white space in it is refused. The errors (ErrProjectTooLong,
// ErrProjectChars) read as the end of "project ...".
func CheckProject(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == ':', c == '-':
		default:
			return ErrProjectChars
		}
	}
	if len(s) > MaxProjectLen { // every allowed character is one byte
		return ErrProjectTooLong
	}
	return nil
}

// NewKey is an upstream key to add, with an optional project label.
type NewKey struct {
	// Secret is the key itself; white space around it is trimmed.
	Secret string
	// Project is the key's project label, "" for none; white space around it is trimmed.
	Project string
}

// KeyProject is a key and the project label it got.
type KeyProject struct {
	// KeyID is the key's id.
	KeyID int64
	// Project is its new label.
	Project string
}

// AddResult is what AddLabeledKeys did.
type AddResult struct {
	// Added is how many keys were new.
	Added int
	// Relabeled lists, in input order, the keys already stored whose label the call changed.
	Relabeled []KeyProject
}

// AddLabeledKeys adds upstream keys with their project labels in one transaction, as an
// operator's explicit add (AddKeys without labels): a key deleted before is added again and its
// tombstone cleared, empty secrets are skipped. A key already stored is not added again, but a
// non-empty label given with it becomes its label (so pasting "key project" again labels
// existing keys); an empty one leaves its label alone. Every label must pass CheckProject after
// trimming, else nothing is written.
func (s *Store) AddLabeledKeys(ctx context.Context, keys []NewKey) (AddResult, error) {
	res, _, err := s.addKeys(ctx, keys, false)
	return res, err
}

// SetKeysProject is an operator's label for the keys with ids: project (trimmed, checked with
// CheckProject) becomes their label, "" clears it. It returns how many keys changed; unknown
// ids and keys that had that label already are not counted. Labels the gateway learned for
// these keys and has not written yet are discarded, so a cleared label is not filled again by
// an older guess.
func (s *Store) SetKeysProject(ctx context.Context, ids []int64, project string) (changed int64, err error) {
	project = strings.TrimSpace(project)
	if err := CheckProject(project); err != nil {
		return 0, fmt.Errorf("store: set keys project: %w", err)
	}
	unlock := s.w.excludeProjects(ids)
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: set keys project: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, `UPDATE keys SET project = ? WHERE id = ? AND project <> ?`)
	if err != nil {
		return 0, fmt.Errorf("store: set keys project: %w", err)
	}
	for _, id := range ids {
		r, err := stmt.ExecContext(ctx, project, id, project)
		if err != nil {
			return 0, fmt.Errorf("store: set keys project: %w", err)
		}
		n, _ := r.RowsAffected()
		changed += n
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store: set keys project: %w", err)
	}
	return changed, nil
}

// SaveKeyProject records a project label the gateway learned for key id and returns at once;
// the background writer stores it only if the key has no label then (an operator's label always
// wins). Labels are kept per key, newest wins, and are never dropped. An empty label or one
// CheckProject refuses (after trimming) is ignored.
func (s *Store) SaveKeyProject(id int64, project string) {
	project = strings.TrimSpace(project)
	if project == "" || CheckProject(project) != nil {
		return
	}
	w := s.w
	w.stateMu.Lock()
	w.projects[id] = project
	w.stateMu.Unlock()
	w.wake()
}
