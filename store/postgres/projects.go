package postgres

import (
	"context"
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// SetKeysProject is an operator's label for the keys with ids: project (trimmed, checked with
// store.CheckProject) becomes their label, "" clears it. It returns how many keys changed;
// unknown ids and keys that had that label already are not counted. Labels the gateway learned
// for these keys and has not written yet are discarded, so a cleared label is not filled again
// by an older guess.
func (s *Store) SetKeysProject(ctx context.Context, ids []int64, project string) (changed int64, err error) {
	project = strings.TrimSpace(project)
	if err := store.CheckProject(project); err != nil {
		return 0, wrap("set keys project", err)
	}
	unlock := s.w.ExcludeProjects(ids)
	defer unlock()
	if len(ids) == 0 {
		return 0, nil
	}
	// One statement; an id listed twice counts once, as the second update of a row in SQLite's
	// loop finds the label already set.
	tag, err := s.pool.Exec(ctx, `UPDATE keys SET project = $1 WHERE id = ANY($2) AND project <> $1`, project, ids)
	if err != nil {
		return 0, wrap("set keys project", err)
	}
	return tag.RowsAffected(), nil
}
