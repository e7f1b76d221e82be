package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A body is one JSON value: `{"label":"a"} garbage` is refused, not half read (found by the
// fuzz suite's authors).
func TestBodiesHoldOneJSONValue(t *testing.T) {
	for _, read := range []func(http.ResponseWriter, *http.Request, any) bool{readJSON, readStrict} {
		for body, want := range map[string]bool{
			`{"label":"a"}`:            true,
			"{\"label\":\"a\"}\n  \t":  true,
			`{"label":"a"} garbage`:    false,
			`{"label":"a"}{"label":1}`: false,
		} {
			r := httptest.NewRequest(http.MethodPost, "/admin/api/access-keys", strings.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			var v struct {
				Label string `json:"label"`
			}
			if got := read(w, r, &v); got != want || (!want && w.Code != http.StatusBadRequest) {
				t.Errorf("%q: read %v (status %d), want %v", body, got, w.Code, want)
			}
		}
	}
}
