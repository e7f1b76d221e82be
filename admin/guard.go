package admin

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// guardedSettings are the settings that decide where upstream keys are sent: a stolen session
// that could point them elsewhere, then validate every key, would collect them all. Changing
// one needs the admin key again, as the export does.
var guardedSettings = []string{"upstream", "proxy"}

// putSettingsGuarded asks for the admin key again ("admin_key" in the body) when a
// cookie-authenticated PUT P/api/settings changes upstream or proxy, then hands the rest of
// the body to putSettings. A Bearer request has shown the admin key already.
func (h *Handler) putSettingsGuarded(w http.ResponseWriter, r *http.Request, a *auth, id int64) {
	raw, ok := readBody(w, r)
	if !ok {
		return
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The body must be a JSON object: "+err.Error())
		return
	}
	var adminKey string
	if v, ok := body["admin_key"]; ok {
		if err := json.Unmarshal(v, &adminKey); err != nil {
			badField(w, "admin_key", "must be a JSON string")
			return
		}
		delete(body, "admin_key")
	}
	changes, err := h.changesGuarded(r, body)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	if changes != "" && (a == nil || a.via != "bearer") {
		if adminKey == "" {
			writeError(w, http.StatusForbidden, "PERMISSION_DENIED",
				"admin_key: changing "+changes+" needs the admin key again; nothing was changed.")
			return
		}
		if !h.verifyKey(w, r, adminKey, http.StatusForbidden, "PERMISSION_DENIED",
			"admin_key: the admin key is wrong; nothing was changed.") {
			return
		}
	}
	rest, err := json.Marshal(body)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "INTERNAL", "re-encoding the body failed")
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(rest))
	h.putSettings(w, r, a, id)
}

// changesGuarded names the guarded settings in body whose value differs from the effective
// one ("" when none does). A value of a type putSettings refuses is left to it.
func (h *Handler) changesGuarded(r *http.Request, body map[string]json.RawMessage) (string, error) {
	var names []string
	var cur map[string]any
	for _, name := range guardedSettings {
		v, ok := body[name]
		if !ok {
			continue
		}
		if cur == nil {
			var err error
			if cur, err = h.Backend.Settings(r.Context()); err != nil {
				return "", err
			}
		}
		var s string
		switch raw := bytes.TrimSpace(v); {
		case len(raw) > 0 && raw[0] == '"':
			if json.Unmarshal(raw, &s) != nil {
				continue // putSettings refuses it
			}
		case len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')):
			s = string(raw) // putSettings takes numbers as their text
		default:
			continue // another JSON type: putSettings refuses it
		}
		if was, _ := cur[name].(string); strings.TrimSpace(s) == was {
			continue // sent back unchanged (the proxy in its redacted form included)
		}
		names = append(names, name)
	}
	return strings.Join(names, " and "), nil
}
