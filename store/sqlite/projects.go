package sqlite

import (
	"context"
	"fmt"
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Project labels. Google's quota belongs to the Cloud project, not the key: keys carry an
// optional label naming their project (schema step 5), so a per-project 429 on one key can
// cool down its siblings. An operator sets labels (AddLabeledKeys, SetKeysProject); the
// gateway fills empty ones from error bodies that name the project (SaveKeyProject), never
// overwriting an operator's.

// AddLabeledKeys adds upstream keys with their project labels in one transaction, as an
// operator's explicit add (AddKeys without labels): a key deleted before is added again and its
// tombstone cleared, empty secrets are skipped. A key already stored is not added again, but a
// non-empty label given with it becomes its label (so pasting "key project" again labels
// existing keys); an empty one leaves its label alone. Every label must pass CheckProject after
// trimming, else nothing is written.
func (s *Store) AddLabeledKeys(ctx context.Context, keys []store.NewKey) (store.AddResult, error) {
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
	if err := store.CheckProject(project); err != nil {
		return 0, fmt.Errorf("store: set keys project: %w", err)
	}
	unlock := s.w.ExcludeProjects(ids)
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
