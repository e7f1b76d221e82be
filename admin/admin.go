// Package admin serves the gateway's admin API under a path prefix, as a plain http.Handler.
// This first version answers the status route; the panel and the full API build on it.
package admin

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Backend is what the admin API needs from the gateway.
type Backend interface {
	// CheckAdminKey reports whether key is the admin key; it must compare in constant time.
	CheckAdminKey(key string) bool
	// Status returns a JSON-encodable summary of the gateway's state.
	Status() any
}

// Handler serves the admin API under Prefix (for example "/admin").
type Handler struct {
	Prefix  string
	Backend Backend
}

// ServeHTTP answers requests under the prefix; the caller routes only those here.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, h.Prefix)
	switch {
	case rest == "":
		http.Redirect(w, r, h.Prefix+"/", http.StatusMovedPermanently)
	case rest == "/api/status" && r.Method == http.MethodGet:
		if !h.authorized(r) {
			writeError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "Send the admin key as Authorization: Bearer <admin key>.")
			return
		}
		writeJSON(w, http.StatusOK, h.Backend.Status())
	default:
		writeError(w, http.StatusNotFound, "NOT_FOUND", "No such admin route: the web panel is not part of this release yet.")
	}
}

func (h *Handler) authorized(r *http.Request) bool {
	v := r.Header.Get("Authorization")
	if len(v) <= 7 || !strings.EqualFold(v[:7], "bearer ") {
		return false
	}
	return h.Backend.CheckAdminKey(strings.TrimSpace(v[7:]))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "INTERNAL", "encoding the answer failed")
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

func writeError(w http.ResponseWriter, code int, status, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}
