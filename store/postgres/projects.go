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
	unlock := s.w.excludeProjects(ids)
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

// SaveKeyProject records a project label the gateway learned for key id and returns at once;
// the background writer stores it only if the key has no label then (an operator's label always
// wins). Labels are kept per key, newest wins, and are never dropped. An empty label or one
// store.CheckProject refuses (after trimming) is ignored.
func (s *Store) SaveKeyProject(id int64, project string) {
	project = strings.TrimSpace(project)
	if project == "" || store.CheckProject(project) != nil {
		return
	}
	w := s.w
	w.stateMu.Lock()
	w.projects[id] = project
	w.stateMu.Unlock()
	w.wake()
}
