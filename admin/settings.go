package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
)

func (h *Handler) getSettings(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	s, err := h.Backend.Settings(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"settings": s})
}

// putSettings applies a partial update: every value is checked first, and one bad value
// changes nothing.
func (h *Handler) putSettings(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body map[string]json.RawMessage
	if !readJSON(w, r, &body) {
		return
	}
	values := make(map[string]string, len(body))
	var bad []FieldError
	for name, raw := range body {
		raw = bytes.TrimSpace(raw)
		var s string
		switch {
		case len(raw) > 0 && raw[0] == '"':
			if err := json.Unmarshal(raw, &s); err != nil {
				bad = append(bad, FieldError{name, "is not a valid JSON string"})
				continue
			}
		case len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')):
			s = string(raw)
		default:
			bad = append(bad, FieldError{name, "must be a string or a number"})
			continue
		}
		values[name] = s
	}
	if len(bad) > 0 {
		writeFieldErrors(w, bad)
		return
	}
	if len(values) > 0 {
		bad, err := h.Backend.UpdateSettings(r.Context(), values)
		if err != nil {
			writeBackendError(w, err)
			return
		}
		if len(bad) > 0 {
			writeFieldErrors(w, bad)
			return
		}
	}
	h.getSettings(w, r, nil, 0)
}
