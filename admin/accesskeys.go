package admin

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxLabelLen bounds an access key's label, in characters.
const maxLabelLen = 100

func (h *Handler) listAccessKeys(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	if list == nil {
		list = []AccessKey{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_keys": list})
}

// createAccessKey makes a new random access key and answers it in full, the only time it is
// ever shown.
func (h *Handler) createAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, _ int64) {
	var body struct {
		Label string `json:"label"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	label := strings.TrimSpace(body.Label)
	switch {
	case utf8.RuneCountInString(label) > maxLabelLen:
		badField(w, "label", fmt.Sprintf("must be at most %d characters long", maxLabelLen))
		return
	case strings.IndexFunc(label, unicode.IsControl) >= 0:
		badField(w, "label", "must not contain control characters")
		return
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		writeBackendError(w, err)
		return
	}
	secret := "gs-" + base64.RawURLEncoding.EncodeToString(raw[:])
	k, err := h.Backend.AddAccessKey(r.Context(), secret, label)
	if err != nil {
		writeBackendError(w, err)
		return
	}
	k.Key = secret
	writeJSON(w, http.StatusCreated, k)
}

func (h *Handler) deleteAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	if err := h.Backend.DeleteAccessKey(r.Context(), id); err != nil {
		writeBackendError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

func (h *Handler) enableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, true)
}

func (h *Handler) disableAccessKey(w http.ResponseWriter, r *http.Request, _ *auth, id int64) {
	h.setAccessKeyEnabled(w, r, id, false)
}

func (h *Handler) setAccessKeyEnabled(w http.ResponseWriter, r *http.Request, id int64, enabled bool) {
	if err := h.Backend.SetAccessKeyEnabled(r.Context(), id, enabled); err != nil {
		writeBackendError(w, err)
		return
	}
	list, err := h.Backend.AccessKeys(r.Context())
	if err != nil {
		writeBackendError(w, err)
		return
	}
	for _, k := range list {
		if k.ID == id {
			writeJSON(w, http.StatusOK, k)
			return
		}
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("No access key with id %d.", id))
}
