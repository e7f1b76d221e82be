package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// geminiKey is the shape of a Google API key: "AIza" and 35 more characters.
var geminiKey = regexp.MustCompile(`^AIza[0-9A-Za-z_-]{35}$`)

// keyish splits pasted text into the runs of characters a key can hold.
var keyish = regexp.MustCompile(`[0-9A-Za-z_-]+`)

// extractKeys finds every Gemini key in text, in order of first appearance and without repeats.
// A key must stand alone: it is not part of a longer run of key characters. invalid counts the
// runs that start with "AIza" but are not a key (cut short, too long).
func extractKeys(text string) (keys []string, repeats, invalid int) {
	seen := make(map[string]bool)
	for _, tok := range keyish.FindAllString(text, -1) {
		switch {
		case geminiKey.MatchString(tok):
			if seen[tok] {
				repeats++
				continue
			}
			seen[tok] = true
			keys = append(keys, tok)
		case strings.HasPrefix(tok, "AIza"):
			invalid++
		}
	}
	return keys, repeats, invalid
}

// checkList takes the entries of {"keys":[...]}: each, trimmed, must be a Gemini key.
func checkList(list []string) (keys []string, repeats, invalid int) {
	seen := make(map[string]bool)
	for _, k := range list {
		k = strings.TrimSpace(k)
		switch {
		case !geminiKey.MatchString(k):
			invalid++
		case seen[k]:
			repeats++
		default:
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys, repeats, invalid
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
	search := strings.ToLower(strings.TrimSpace(q.Get("q")))
	keys, err := h.Backend.Keys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	counts := map[string]int{KeyActive: 0, KeyCooling: 0, KeyDisabled: 0}
	match := make([]Key, 0, len(keys))
	for _, k := range keys {
		counts[k.Status]++
		if status != "" && status != "all" && k.Status != status {
			continue
		}
		if search != "" && !keyMatches(k, search) {
			continue
		}
		match = append(match, k)
	}
	from := min((page-1)*size, len(match))
	to := min(from+size, len(match))
	writeJSON(w, http.StatusOK, map[string]any{
		"keys":      match[from:to],
		"total":     len(match),
		"page":      page,
		"page_size": size,
		"counts":    counts,
	})
}

// keyMatches reports whether the search text s (lower case) is in the key's id, masked form,
// disabled reason or last error.
func keyMatches(k Key, s string) bool {
	if strconv.FormatInt(k.ID, 10) == s {
		return true
	}
	for _, v := range []string{k.Masked, k.DisabledReason, k.LastError} {
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
	var keys []string
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
	added := 0
	if len(keys) > 0 {
		var err error
		if added, err = h.Backend.AddKeys(r.Context(), keys); err != nil {
			writeBackendError(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{
		"added":      added,
		"duplicates": repeats + len(keys) - added,
		"invalid":    invalid,
	})
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
