package fakegemini

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/genai"
)

const liveModel = "gemini-live-2.5-flash-preview"

// liveClient is the official Go SDK pointed at the fake: a ws:// base URL, as over plain HTTP.
func liveClient(t *testing.T, srv *httptest.Server, key, version string) *genai.Client {
	t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: "ws" + strings.TrimPrefix(srv.URL, "http"), APIVersion: version},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// receiveTurn reads messages until turnComplete and returns the texts, the audio and the usage.
func receiveTurn(t *testing.T, s *genai.Session) (text string, audio []byte, usage *genai.UsageMetadata, handles []string) {
	t.Helper()
	for {
		m, err := s.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if u := m.SessionResumptionUpdate; u != nil {
			handles = append(handles, u.NewHandle)
		}
		if m.UsageMetadata != nil {
			usage = m.UsageMetadata
		}
		if sc := m.ServerContent; sc != nil {
			if sc.ModelTurn != nil {
				for _, p := range sc.ModelTurn.Parts {
					text += p.Text
					if p.InlineData != nil {
						audio = append(audio, p.InlineData.Data...)
					}
				}
			}
			if sc.TurnComplete {
				return text, audio, usage, handles
			}
		}
		if m.ToolCall != nil {
			return text, audio, usage, handles
		}
	}
}

func TestLiveSDKTextAudioTool(t *testing.T) {
	fake := New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	client := liveClient(t, srv, "AIzaSyLIVE-fake-key-0001", "v1beta")

	s, err := client.Live.Connect(ctx, liveModel, &genai.LiveConnectConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if s.SetupComplete == nil {
		t.Fatal("no setupComplete")
	}
	if _, err := s.Receive(); err != nil { // the buffered setupComplete
		t.Fatal(err)
	}
	if err := s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("hello live world")}); err != nil {
		t.Fatal(err)
	}
	text, _, usage, _ := receiveTurn(t, s)
	if text != "echo: hello live world" || usage == nil || usage.PromptTokenCount != 3 || usage.ResponseTokenCount != 4 || usage.TotalTokenCount != 7 {
		t.Fatalf("text %q usage %+v", text, usage)
	}
	pcm := bytes.Repeat([]byte{1, 2, 3, 4}, 1000)
	if err := s.SendRealtimeInput(genai.LiveRealtimeInput{Audio: &genai.Blob{Data: pcm, MIMEType: "audio/pcm;rate=16000"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SendRealtimeInput(genai.LiveRealtimeInput{AudioStreamEnd: true}); err != nil {
		t.Fatal(err)
	}
	_, audio, usage, _ := receiveTurn(t, s)
	if !bytes.Equal(audio, pcm) || usage == nil || usage.PromptTokenCount != int32(len(pcm)/32) {
		t.Fatalf("audio echoed %d bytes (want %d), usage %+v", len(audio), len(pcm), usage)
	}
	s.Close()

	tools := []*genai.Tool{{FunctionDeclarations: []*genai.FunctionDeclaration{{Name: "lookup", Description: "looks up"}}}}
	s, err = client.Live.Connect(ctx, liveModel, &genai.LiveConnectConfig{Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Receive()
	if err := s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("weather")}); err != nil {
		t.Fatal(err)
	}
	var call *genai.FunctionCall
	for call == nil {
		m, err := s.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if m.ToolCall != nil {
			call = m.ToolCall.FunctionCalls[0]
		}
	}
	if call.Name != "lookup" || call.Args["query"] != "weather" {
		t.Fatalf("tool call %+v", call)
	}
	if err := s.SendToolResponse(genai.LiveToolResponseInput{FunctionResponses: []*genai.FunctionResponse{{ID: call.ID, Name: call.Name, Response: map[string]any{"sky": "blue"}}}}); err != nil {
		t.Fatal(err)
	}
	text, _, _, _ = receiveTurn(t, s)
	if !strings.Contains(text, `"sky":"blue"`) {
		t.Fatalf("tool answer %q", text)
	}
	if got := fake.LiveSessions(); len(got) != 2 || got[0].Turns != 2 || got[0].Model != liveModel || got[0].Key != "AIzaSyLIVE-fake-key-0001" {
		t.Fatalf("sessions %+v", got)
	}
}

func TestLiveResumptionAndGoAway(t *testing.T) {
	fake := New()
	fake.SetProject("AIzaSyLIVE-a", "111")
	fake.SetProject("AIzaSyLIVE-b", "222")
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	a := liveClient(t, srv, "AIzaSyLIVE-a", "v1beta")
	s, err := a.Live.Connect(ctx, liveModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	m, err := s.Receive()
	if err != nil || m.SessionResumptionUpdate == nil || m.SessionResumptionUpdate.NewHandle == "" {
		t.Fatalf("no resumption handle: %+v %v", m, err)
	}
	handle := m.SessionResumptionUpdate.NewHandle
	if n := fake.LiveGoAway("10s"); n != 1 {
		t.Fatalf("goAway reached %d sessions", n)
	}
	m, err = s.Receive()
	if err != nil || m.GoAway == nil || m.GoAway.TimeLeft != 10*time.Second {
		t.Fatalf("goAway: %+v %v", m, err)
	}
	s.Close()

	// The handle resumes on a key of the same project only.
	b := liveClient(t, srv, "AIzaSyLIVE-b", "v1beta")
	s, err = b.Live.Connect(ctx, liveModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: handle}})
	if err == nil {
		s.Close()
		t.Fatal("a handle of project 111 resumed on project 222")
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("error %v, want a 1008 close", err)
	}
	s, err = a.Live.Connect(ctx, liveModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: handle}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestLiveRefusals(t *testing.T) {
	fake := New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	fake.SetKey("AIzaSyLIVE-bad", Invalid)
	fake.SetKey("AIzaSyLIVE-quota", QuotaMinute)
	for _, tc := range []struct {
		key, model string
		code       int
		reason     string
	}{
		{"AIzaSyLIVE-bad", liveModel, 1007, "API key not valid. Please pass a valid API key."},
		{"AIzaSyLIVE-quota", liveModel, 1011, "You exceeded your current quota"},
		{"AIzaSyLIVE-good", "no-such-model", 1008, "models/no-such-model is not found"},
	} {
		_, err := liveClient(t, srv, tc.key, "v1beta").Live.Connect(ctx, tc.model, nil)
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != tc.code || !strings.HasPrefix(ce.Text, tc.reason) || len(ce.Text) > 123 {
			t.Errorf("%s: %v, want close %d %q…", tc.key, err, tc.code, tc.reason)
		}
	}
	fake.SetLiveRefuseAtHandshake(true)
	_, err := liveClient(t, srv, "AIzaSyLIVE-quota", "v1beta").Live.Connect(ctx, liveModel, nil)
	if err == nil || !strings.Contains(err.Error(), "bad handshake") {
		t.Fatalf("handshake refusal: %v", err)
	}
	// A raw dial sees Google's 400 with its JSON.
	_, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+livePrefix+"v1beta.GenerativeService.BidiGenerateContent",
		http.Header{"X-Goog-Api-Key": {"AIzaSyLIVE-bad"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("handshake of an invalid key: %v %v", resp, err)
	}
}

func TestLiveEphemeralToken(t *testing.T) {
	fake := New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	httpClient, err := genai.NewClient(ctx, &genai.ClientConfig{APIKey: "AIzaSyLIVE-owner", Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: srv.URL, APIVersion: "v1alpha"}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := httpClient.AuthTokens.Create(ctx, &genai.CreateAuthTokenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.Name, "auth_tokens/") || fake.AuthTokenOwner(tok.Name) != "AIzaSyLIVE-owner" {
		t.Fatalf("token %+v", tok)
	}
	live := liveClient(t, srv, tok.Name, "v1alpha")
	s, err := live.Live.Connect(ctx, liveModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// One use by default.
	if _, err := live.Live.Connect(ctx, liveModel, nil); err == nil || !strings.Contains(err.Error(), "bad handshake") {
		t.Fatalf("second use: %v", err)
	}
	got := fake.LiveSessions()
	if len(got) != 1 || got[0].Token != tok.Name || got[0].Owner != "AIzaSyLIVE-owner" || got[0].Method != "BidiGenerateContentConstrained" {
		t.Fatalf("sessions %+v", got)
	}
}
