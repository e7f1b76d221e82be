package sqlkit

import (
	"strconv"
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Placeholder returns the placeholder of the n-th argument of a statement (from 1).
type Placeholder func(n int) string

// Question is SQLite's placeholder, "?".
func Question(int) string { return "?" }

// Dollar is PostgreSQL's placeholder, "$n".
func Dollar(n int) string { return "$" + strconv.Itoa(n) }

// LogWhere returns the WHERE clause of q's filters (empty when none) and its arguments, the
// first bound as ph(1).
func LogWhere(q store.LogQuery, ph Placeholder) (string, []any) {
	var conds []string
	var args []any
	add := func(col string, v any) {
		args = append(args, v)
		conds = append(conds, col+" = "+ph(len(args)))
	}
	if q.Model != "" {
		add("model", q.Model)
	}
	if q.KeyID != 0 {
		add("key_id", q.KeyID)
	}
	if q.AccessKeyID != 0 {
		add("access_key_id", q.AccessKeyID)
	}
	if q.Status != 0 {
		add("status", q.Status)
	}
	if len(conds) == 0 {
		return "", args
	}
	return "WHERE " + strings.Join(conds, " AND "), args
}

// LogPage appends q's LIMIT and OFFSET (see store.LogQuery.Page) to args and returns the
// clause binding them.
func LogPage(q store.LogQuery, args []any, ph Placeholder) (string, []any) {
	limit, offset := q.Page()
	args = append(args, limit, offset)
	n := len(args)
	return " LIMIT " + ph(n-1) + " OFFSET " + ph(n), args
}
