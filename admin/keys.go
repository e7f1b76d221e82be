package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// geminiKey is the shape of a Google API key: a standard key ("AIza" and 35 more characters)
// or an authorization key ("AQ." and at least 20 more, dots included), the form of every new
// AI Studio key.
var geminiKey = regexp.MustCompile(`^(?:AIza[0-9A-Za-z_-]{35}|AQ\.[0-9A-Za-z_.-]{20,512})$`)

// keyish splits pasted text into the runs of characters a standard key can hold.
var keyish = regexp.MustCompile(`[0-9A-Za-z_-]+`)

// authKeyish finds the authorization keys of a line: "AQ." not inside a longer word, then key
// characters, dots included but not at the end (a sentence's full stop is not part of a key).
var authKeyish = regexp.MustCompile(`(?:^|[^0-9A-Za-z_.-])(AQ\.[0-9A-Za-z_.-]*[0-9A-Za-z_-])`)

// keyTokens returns the runs of a line that may be keys, in order: words of key characters,
// and authorization keys (which hold dots).
func keyTokens(line string) []string {
	toks := keyish.FindAllString(line, -1)
	if !strings.Contains(line, "AQ.") {
		return toks
	}
	var out []string
	for _, t := range toks {
		if t != "AQ" { // the start of an authorization key, found whole below
			out = append(out, t)
		}
	}
	for _, m := range authKeyish.FindAllStringSubmatch(line, -1) {
		out = append(out, m[1])
	}
	return out
}

// keyPrefix tells whether a word starts like a key (and so is no project label, and counts as
// a malformed key when it is not one).
func keyPrefix(w string) bool {
	return strings.HasPrefix(w, "AIza") || strings.HasPrefix(w, "AQ.")
}

// keyList collects pasted keys in order of first appearance, counting repeats. A repeat that
// comes with a label gives the key that label (the last one given wins).
type keyList struct {
	keys    []store.NewKey
	at      map[string]int // index in keys by secret
	repeats int
	invalid int
}

func (l *keyList) add(secret, project string) {
	if i, ok := l.at[secret]; ok {
		l.repeats++
		if project != "" {
			l.keys[i].Project = project
		}
		return
	}
	if l.at == nil {
		l.at = make(map[string]int)
	}
	l.at[secret] = len(l.keys)
	l.keys = append(l.keys, store.NewKey{Secret: secret, Project: project})
}

// labeledLine reads a line of the form "<key> <label>": exactly two words, a Gemini key and
// one that does not start like a key. ok is false for any other line; bad is true when the
// second word is no good project label (store.CheckProject), so the line is invalid as a whole.
func labeledLine(line string) (key, project string, ok, bad bool) {
	f := strings.Fields(line)
	if len(f) != 2 || !geminiKey.MatchString(f[0]) || keyPrefix(f[1]) {
		return "", "", false, false
	}
	if store.CheckProject(f[1]) != nil {
		return "", "", true, true
	}
	return f[0], f[1], true, false
}

// extractKeys finds every Gemini key in text, in order of first appearance and without repeats.
// A line "<key> <label>" (see labeledLine) gives the key a project label, or is invalid when
// the label is bad. Elsewhere a key must stand alone: it is not part of a longer run of key
// characters; other words are ignored. invalid counts the runs that start like a key ("AIza",
// "AQ.") but are not one (cut short, too long) and the lines with a bad label.
func extractKeys(text string) (keys []store.NewKey, repeats, invalid int) {
	var l keyList
	for _, line := range strings.Split(text, "\n") {
		if key, project, ok, bad := labeledLine(line); ok {
			if bad {
				l.invalid++
			} else {
				l.add(key, project)
			}
			continue
		}
		for _, tok := range keyTokens(line) {
			switch {
			case geminiKey.MatchString(tok):
				l.add(tok, "")
			case keyPrefix(tok):
				l.invalid++
			}
		}
	}
	return l.keys, l.repeats, l.invalid
}

// checkList takes the entries of {"keys":[...]}: each, trimmed, must be a Gemini key, or a
// key, white space and a project label.
func checkList(list []string) (keys []store.NewKey, repeats, invalid int) {
	var l keyList
	for _, k := range list {
		k = strings.TrimSpace(k)
		if geminiKey.MatchString(k) {
			l.add(k, "")
		} else if key, project, ok, bad := labeledLine(k); ok && !bad {
			l.add(key, project)
		} else {
			l.invalid++
		}
	}
	return l.keys, l.repeats, l.invalid
}

// projectCount is a project label in use and how many keys carry it.
type projectCount struct {
	Project string `json:"project"`
	Keys    int    `json:"keys"`
}

// listKeys answers GET P/api/keys: keys with their live state, filtered and paged.
func (h *Handler) listKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	page, size, ok := paging(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	status := q.Get("status")
	switch status {
	case "", "all", KeyActive, KeyCooling, KeyDisabled:
	default:
		badField(w, "status", "must be active, cooling or disabled")
		return
	}
	// ?project=name: that label only; ?project= (empty): the unlabelled keys.
	_, byProject := q["project"]
	project := strings.TrimSpace(q.Get("project"))
	if err := store.CheckProject(project); err != nil {
		badField(w, "project", err.Error())
		return
	}
	search := strings.ToLower(strings.TrimSpace(q.Get("q")))
	keys, err := h.Backend.Keys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	counts := map[string]int{KeyActive: 0, KeyCooling: 0, KeyDisabled: 0}
	labels := make(map[string]int)
	match := make([]Key, 0, len(keys))
	for _, k := range keys {
		counts[k.Status]++
		labels[k.Project]++
		if status != "" && status != "all" && k.Status != status {
			continue
		}
		if byProject && k.Project != project {
			continue
		}
		if search != "" && !keyMatches(k, search) {
			continue
		}
		match = append(match, k)
	}
	projects := make([]projectCount, 0, len(labels))
	for p, n := range labels {
		if p != "" {
			projects = append(projects, projectCount{p, n})
		}
	}
	slices.SortFunc(projects, func(a, b projectCount) int { return strings.Compare(a.Project, b.Project) })
	from := min((page-1)*size, len(match))
	to := min(from+size, len(match))
	writeJSON(w, http.StatusOK, map[string]any{
		"keys":      match[from:to],
		"total":     len(match),
		"page":      page,
		"page_size": size,
		"counts":    counts,
		"projects":  projects,
		"unlabeled": labels[""],
	})
}

// keyMatches reports whether the search text s (lower case) is in the key's id, masked form,
// project label, disabled reason or last error.
func keyMatches(k Key, s string) bool {
	if strconv.FormatInt(k.ID, 10) == s {
		return true
	}
	for _, v := range []string{k.Masked, k.Project, k.DisabledReason, k.LastError} {
		if strings.Contains(strings.ToLower(v), s) {
			return true
		}
	}
	return false
}

// addKeys answers POST P/api/keys with {"keys":[...]} or {"text":"..."}.
func (h *Handler) addKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		Keys []string `json:"keys"`
		Text *string  `json:"text"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	var keys []store.NewKey
	var repeats, invalid int
	switch {
	case body.Text != nil && body.Keys != nil:
		badField(w, "keys", "send either keys or text, not both")
		return
	case body.Text != nil:
		keys, repeats, invalid = extractKeys(*body.Text)
	case body.Keys != nil:
		keys, repeats, invalid = checkList(body.Keys)
	default:
		badField(w, "keys", "send keys (a list of keys) or text (any text holding keys)")
		return
	}
	added, relabeled := 0, 0
	if len(keys) > 0 {
		var err error
		if added, relabeled, err = h.Backend.AddLabeledKeys(r.Context(), keys); err != nil {
			writeBackendError(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{
		"added":      added,
		"duplicates": repeats + len(keys) - added,
		"invalid":    invalid,
		"relabeled":  relabeled,
	})
}

// readStrict decodes a JSON object body into v, refusing fields v does not have; on failure it
// answers 400 naming the field when it can (415 for a body not declared as JSON) and returns
// false. An empty body is an empty object.
func readStrict(w http.ResponseWriter, r *http.Request, v any) bool {
	raw, ok := readBody(w, r)
	if !ok {
		return false
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			badField(w, ute.Field, "must be a JSON "+ute.Type.String())
			return false
		}
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			badField(w, strings.Trim(name, `"`), "is not a field this request takes")
			return false
		}
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must be a JSON object: "+err.Error())
		return false
	}
	return onlyOneValue(w, dec)
}

// projectOf checks the "project" of a body: present, a string, a good label once trimmed. On
// failure it answers 400 naming the field and returns false.
func projectOf(w http.ResponseWriter, project *string) (string, bool) {
	if project == nil {
		badField(w, "project", `is required: the key's Google Cloud project label, or "" for none`)
		return "", false
	}
	p := strings.TrimSpace(*project)
	if err := store.CheckProject(p); err != nil {
		badField(w, "project", err.Error())
		return "", false
	}
	return p, true
}

// writeKeysError answers a failed key change: 404 naming the unknown ids, else as
// writeBackendError.
func writeKeysError(w http.ResponseWriter, err error) {
	var uk *UnknownKeysError
	if errors.As(err, &uk) {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "No key with id "+strings.TrimPrefix(uk.Error(), "no key with id ")+"; nothing was changed.")
		return
	}
	writeBackendError(w, err)
}

// patchKey answers PATCH P/api/keys/{id} with {"project":"label"}: the key's project label
// ("" clears it), as an operator's. It answers the key.
func (h *Handler) patchKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	var body struct {
		Project *string `json:"project"`
	}
	if !readStrict(w, r, &body) {
		return
	}
	project, ok := projectOf(w, body.Project)
	if !ok {
		return
	}
	if _, err := h.Backend.SetKeysProject(r.Context(), []int64{id}, project); err != nil {
		writeKeysError(w, err)
		return
	}
	if k, ok := h.keyByID(w, r, id); ok {
		writeJSON(w, http.StatusOK, k)
	}
}

// setKeysProject answers POST P/api/keys/project with {"ids":[...],"project":"label"}: the
// label of every key named ("" clears it). An unknown id changes nothing.
func (h *Handler) setKeysProject(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		IDs     []int64 `json:"ids"`
		Project *string `json:"project"`
	}
	if !readStrict(w, r, &body) {
		return
	}
	if len(body.IDs) == 0 {
		badField(w, "ids", "must name at least one key")
		return
	}
	if slices.ContainsFunc(body.IDs, func(id int64) bool { return id < 1 }) {
		badField(w, "ids", "must hold key ids, whole numbers from 1")
		return
	}
	project, ok := projectOf(w, body.Project)
	if !ok {
		return
	}
	changed, err := h.Backend.SetKeysProject(r.Context(), body.IDs, project)
	if err != nil {
		writeKeysError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"changed": changed})
}

// keyByID returns the key with id from the backend, answering 404 if it is gone.
func (h *Handler) keyByID(w http.ResponseWriter, r *http.Request, id int64) (Key, bool) {
	keys, err := h.Backend.Keys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return Key{}, false
	}
	for _, k := range keys {
		if k.ID == id {
			return k, true
		}
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("No key with id %d.", id))
	return Key{}, false
}

// deleteKey deletes a key; one that owns live resources only with ?force=true, since the
// gateway cannot reach them through another key.
func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		var err error
		if force, err = strconv.ParseBool(v); err != nil {
			badField(w, "force", "must be true or false")
			return
		}
	}
	if !force {
		k, ok := h.keyByID(w, r, id)
		if !ok {
			return
		}
		if k.Resources > 0 {
			what := "1 live file or other resource"
			if k.Resources > 1 {
				what = fmt.Sprintf("%d live files or other resources", k.Resources)
			}
			writeError(w, http.StatusConflict, "FAILED_PRECONDITION", fmt.Sprintf(
				"Key %d owns %s (files, cached contents, batches or tuned models created through the gateway); "+
					"once the key is deleted they can no longer be reached through the gateway. "+
					"Delete with ?force=true to delete it anyway.", id, what))
			return
		}
	}
	if err := h.Backend.DeleteKey(r.Context(), id); err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

func (h *Handler) enableKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setKeyEnabled(w, r, id, true)
}

func (h *Handler) disableKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setKeyEnabled(w, r, id, false)
}

func (h *Handler) setKeyEnabled(w http.ResponseWriter, r *http.Request, id int64, enabled bool) {
	if err := h.Backend.SetKeyEnabled(r.Context(), id, enabled); err != nil {
		writeBackendError(w, err)
		return
	}
	if k, ok := h.keyByID(w, r, id); ok {
		writeJSON(w, http.StatusOK, k)
	}
}

// validateKey checks one key now and answers the check and the key's new state.
func (h *Handler) validateKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	check, err := h.Backend.ValidateKey(r.Context(), id)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	if k, ok := h.keyByID(w, r, id); ok {
		writeJSON(w, http.StatusOK, map[string]any{"check": check, "key": k})
	}
}

// validateAll starts checking every key, or the ones of {"ids":[...]}: 202 with the run, or
// 409 while one runs.
func (h *Handler) validateAll(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		IDs []int64 `json:"ids"`
	}
	raw, ok := readBody(w, r)
	if !ok {
		return
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			badField(w, "ids", "the body must be empty or {\"ids\":[key ids]}")
			return
		}
	}
	if body.IDs != nil && len(body.IDs) == 0 {
		badField(w, "ids", "must name at least one key, or be left out to check every key")
		return
	}
	run, started := h.Backend.StartValidation(body.IDs)
	if !started && !run.Running {
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "No validation run can start: "+run.Error)
		return
	}
	if !started {
		writeError(w, http.StatusConflict, "ABORTED", fmt.Sprintf(
			"A validation run is going already (%d of %d keys checked); follow it with GET on this path.", run.Done, run.Total))
		return
	}
	writeJSON(w, http.StatusAccepted, run)
}

// validationProgress answers the current or last run of validateAll.
func (h *Handler) validationProgress(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	writeJSON(w, http.StatusOK, h.Backend.Validation())
}

// exportKeys answers the full keys, one per line, after asking for the admin key again.
func (h *Handler) exportKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		AdminKey string `json:"admin_key"`
		Status   string `json:"status"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	switch body.Status {
	case "", "all":
		body.Status = ""
	case KeyActive, KeyCooling, KeyDisabled:
	default:
		badField(w, "status", "must be active, cooling, disabled or empty for all")
		return
	}
	if !h.verifyKey(w, r, body.AdminKey, http.StatusForbidden, "PERMISSION_DENIED", "admin_key: the admin key is wrong; the export needs it again.") {
		return
	}
	secrets, err := h.Backend.KeySecrets(r.Context(), body.Status)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	var b strings.Builder
	for _, s := range secrets {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Disposition", `attachment; filename="gemini-keys.txt"`)
	hdr.Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(b.String()))
}
