package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

func TestMagicKeys(t *testing.T) {
	srv := httptest.NewServer(magicKeys(fakegemini.New()))
	defer srv.Close()
	tests := []struct {
		key  string
		auth string // header carrying the key
		path string
		want int
	}{
		{"AIzaSy-anything-goes", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 200},
		{"my-INVALID-key", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 400},
		{"leaked-key", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 403},
		{"quota-key", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 429},
		{"daily-key", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 429},
		{"flaky-key", "x-goog-api-key", "/v1beta/models/gemini-2.5-flash:generateContent", 503},
		{"flaky-key", "Authorization", "/v1beta/openai/chat/completions", 503},
	}
	for _, tc := range tests {
		body := `{"contents":[{"parts":[{"text":"hi"}]}]}`
		value := tc.key
		if tc.auth == "Authorization" {
			body = `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}`
			value = "Bearer " + tc.key
		}
		req, _ := http.NewRequest("POST", srv.URL+tc.path, strings.NewReader(body))
		req.Header.Set(tc.auth, value)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s via %s: status %d, want %d", tc.key, tc.auth, resp.StatusCode, tc.want)
		}
	}
}
