package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genai"
)

// newSDKClient returns a genai client that talks to the gateway with the given access key.
// It also sends x-goog-user-project so that the tests can check the gateway strips it.
func newSDKClient(t *testing.T, g *gateway, key string) *genai.Client {
	t.Helper()
	client, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:     key,
		Backend:    genai.BackendGeminiAPI,
		HTTPClient: g.Client,
		HTTPOptions: genai.HTTPOptions{
			BaseURL: g.URL,
			Headers: http.Header{"X-Goog-User-Project": {"client-project-should-be-stripped"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func TestSDK(t *testing.T) {
	fake, up := newFake(t)
	fake.SetStream(3, 0)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	client := newSDKClient(t, g, accessKey)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("GenerateContent", func(t *testing.T) {
		resp, err := client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Text(); got != "echo: hello" {
			t.Errorf("text = %q, want %q", got, "echo: hello")
		}
		if resp.UsageMetadata == nil || resp.UsageMetadata.TotalTokenCount <= 0 {
			t.Errorf("usage metadata missing or empty: %+v", resp.UsageMetadata)
		}
	})

	t.Run("GenerateContentStream", func(t *testing.T) {
		chunks := 0
		var text strings.Builder
		for resp, err := range client.Models.GenerateContentStream(ctx, modelFlash, genai.Text("hello"), nil) {
			if err != nil {
				t.Fatalf("after %d chunks: %v", chunks, err)
			}
			chunks++
			text.WriteString(resp.Text())
		}
		if chunks < 2 {
			t.Errorf("got %d chunks, want >= 2", chunks)
		}
		if text.Len() == 0 {
			t.Errorf("stream carried no text")
		}
	})

	t.Run("CountTokens", func(t *testing.T) {
		resp, err := client.Models.CountTokens(ctx, modelFlash, genai.Text("hello world"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalTokens <= 0 {
			t.Errorf("totalTokens = %d, want > 0", resp.TotalTokens)
		}
	})

	t.Run("EmbedContent", func(t *testing.T) {
		resp, err := client.Models.EmbedContent(ctx, modelEmbed, genai.Text("hello"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Embeddings) == 0 || len(resp.Embeddings[0].Values) == 0 {
			t.Errorf("no embedding values: %+v", resp)
		}
	})

	t.Run("ListModels", func(t *testing.T) {
		n := 0
		sawFlash := false
		for m, err := range client.Models.All(ctx) {
			if err != nil {
				t.Fatalf("after %d models: %v", n, err)
			}
			n++
			if m.Name == "models/"+modelFlash {
				sawFlash = true
			}
		}
		if n == 0 || !sawFlash {
			t.Errorf("listed %d models, saw %s: %v", n, modelFlash, sawFlash)
		}
	})

	t.Run("GetModel", func(t *testing.T) {
		m, err := client.Models.Get(ctx, modelFlash, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Name != "models/"+modelFlash {
			t.Errorf("name = %q", m.Name)
		}
	})

	t.Run("UpstreamSawOnlyPoolKeys", func(t *testing.T) {
		calls := fake.Calls()
		if len(calls) < 6 {
			t.Fatalf("fake saw %d calls, want at least 6", len(calls))
		}
		assertCleanUpstream(t, calls, pool, accessKey)
	})

	t.Run("WrongKeyIsAnAPIError", func(t *testing.T) {
		bad := newSDKClient(t, g, wrongKey)
		before := len(clientCalls(fake.Calls()))
		_, err := bad.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
		var apiErr genai.APIError
		if !errors.As(err, &apiErr) {
			t.Fatalf("error = %v, want a genai.APIError", err)
		}
		if apiErr.Code != http.StatusUnauthorized && apiErr.Code != http.StatusForbidden {
			t.Errorf("code = %d, want 401 or 403", apiErr.Code)
		}
		if n := len(clientCalls(fake.Calls())) - before; n != 0 {
			t.Errorf("a rejected client caused %d upstream calls", n)
		}
	})
}
