package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

const liveTestModel = "gemini-live-2.5-flash-preview"

// livePath is the path of the Live API's method (BidiGenerateContent…) in version.
func livePath(version, method string) string {
	return livePrefix + version + ".GenerativeService." + method
}

// wsURL turns an http:// base URL into its ws:// one.
func wsURL(base string) string { return "ws" + strings.TrimPrefix(base, "http") }

// liveSDK is the official Go SDK's client of the gateway for Live sessions: a ws:// base URL,
// as a client over plain HTTP must give.
func (e *proxyEnv) liveSDK(key, version string) *genai.Client {
	e.t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: wsURL(e.url), APIVersion: version},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// connect opens a Live session through the gateway with the SDK; every session attempt ends in
// one request-log row.
func (e *proxyEnv) connect(key, model string, cfg *genai.LiveConnectConfig) (*genai.Session, error) {
	e.t.Helper()
	e.made.Add(1)
	s, err := e.liveSDK(key, "v1beta").Live.Connect(context.Background(), model, cfg)
	if err == nil {
		if _, err := s.Receive(); err != nil { // the setupComplete Connect keeps
			e.t.Fatal(err)
		}
	}
	return s, err
}

// liveTurn reads a session's messages until its turn is complete (or a tool call comes).
type liveTurnResult struct {
	text    string
	audio   []byte
	usage   []*genai.UsageMetadata
	handles []string
	goAway  bool
	call    *genai.FunctionCall
}

func readTurn(t *testing.T, s *genai.Session) liveTurnResult {
	t.Helper()
	var r liveTurnResult
	for {
		m, err := s.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if m.UsageMetadata != nil {
			r.usage = append(r.usage, m.UsageMetadata)
		}
		if u := m.SessionResumptionUpdate; u != nil && u.NewHandle != "" {
			r.handles = append(r.handles, u.NewHandle)
		}
		if m.GoAway != nil {
			r.goAway = true
			return r
		}
		if m.ToolCall != nil {
			r.call = m.ToolCall.FunctionCalls[0]
			return r
		}
		if sc := m.ServerContent; sc != nil {
			if sc.ModelTurn != nil {
				for _, p := range sc.ModelTurn.Parts {
					r.text += p.Text
					if p.InlineData != nil {
						r.audio = append(r.audio, p.InlineData.Data...)
					}
				}
			}
			if sc.TurnComplete {
				return r
			}
		}
	}
}

// closeErr returns the close frame an error of the SDK or of a raw connection carries.
func closeErr(t *testing.T, err error) *websocket.CloseError {
	t.Helper()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a close frame", err)
	}
	return ce
}

// liveSessionsOf returns the fake's Live sessions made with key.
func liveSessionsOf(fake *fakegemini.Server, key string) []fakegemini.LiveSession {
	var out []fakegemini.LiveSession
	for _, s := range fake.LiveSessions() {
		if s.Key == key || s.Owner == key {
			out = append(out, s)
		}
	}
	return out
}

// liveRows returns the request-log rows of Live sessions, oldest first.
func (e *proxyEnv) liveRows() []store.RequestLog {
	e.t.Helper()
	var out []store.RequestLog
	for _, r := range e.requests() {
		if strings.HasPrefix(r.Path, livePrefix) {
			out = append(out, r)
		}
	}
	slices.Reverse(out)
	return out
}

func TestLiveSessionThroughTheGateway(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	s, err := e.connect(testAccessKey, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("hello through the gateway")}); err != nil {
		t.Fatal(err)
	}
	if r := readTurn(t, s); r.text != "echo: hello through the gateway" || len(r.usage) != 1 {
		t.Fatalf("turn %+v", r)
	}
	// Audio in, audio out, in binary frames of the upstream.
	pcm := bytes.Repeat([]byte{0, 1, 2, 3, 4, 5, 6, 7}, 6000) // 48 KB: larger than the relay's buffer once in base64
	for i := range pcm {
		pcm[i] ^= byte(i)
	}
	if err := s.SendRealtimeInput(genai.LiveRealtimeInput{Audio: &genai.Blob{Data: pcm, MIMEType: "audio/pcm;rate=16000"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SendRealtimeInput(genai.LiveRealtimeInput{AudioStreamEnd: true}); err != nil {
		t.Fatal(err)
	}
	if r := readTurn(t, s); !bytes.Equal(r.audio, pcm) || len(r.usage) != 1 {
		t.Fatalf("audio echoed: %d bytes, want %d the same; usage %v", len(r.audio), len(pcm), r.usage)
	}
	s.Close()

	// A tool call and its answer.
	tools := []*genai.Tool{{FunctionDeclarations: []*genai.FunctionDeclaration{{Name: "get_weather"}}}}
	s, err = e.connect(testAccessKey, liveTestModel, &genai.LiveConnectConfig{Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("Paris")})
	r := readTurn(t, s)
	if r.call == nil || r.call.Name != "get_weather" || r.call.Args["query"] != "Paris" {
		t.Fatalf("tool call %+v", r)
	}
	s.SendToolResponse(genai.LiveToolResponseInput{FunctionResponses: []*genai.FunctionResponse{{ID: r.call.ID, Name: r.call.Name, Response: map[string]any{"sky": "clear"}}}})
	if r := readTurn(t, s); !strings.Contains(r.text, `"sky":"clear"`) {
		t.Fatalf("tool answer %q", r.text)
	}
	s.Close()

	// The request log has one row per session, with the tokens the fake reported.
	rows := e.liveRows()
	sessions := e.fake.LiveSessions()
	if len(rows) != 2 || len(sessions) != 2 {
		t.Fatalf("%d rows and %d upstream sessions, want 2 each", len(rows), len(sessions))
	}
	for i, row := range rows {
		up := sessions[i]
		if row.Status != http.StatusOK || row.Model != liveTestModel || row.KeyID != e.ids[up.Key] || row.AccessKeyID == 0 ||
			!row.Stream || row.Method != http.MethodGet || row.Path != livePath("v1beta", "BidiGenerateContent") || row.Attempts != 1 {
			t.Errorf("row %d: %+v", i, row)
		}
		if row.PromptTokens != up.PromptTokens || row.CandidatesTokens != up.ResponseTokens || row.TotalTokens != up.TotalTokens || row.TotalTokens == 0 {
			t.Errorf("row %d tokens %d/%d/%d, the fake reported %d/%d/%d", i, row.PromptTokens, row.CandidatesTokens, row.TotalTokens,
				up.PromptTokens, up.ResponseTokens, up.TotalTokens)
		}
		if row.Error != "" {
			t.Errorf("row %d error %q", i, row.Error)
		}
	}
	// The pool key went in the header, never in the URL; the access key never went upstream.
	for _, c := range e.fake.Calls() {
		if strings.HasPrefix(c.Path, "/ws/") && (c.Header.Get("X-Goog-Api-Key") == "" || strings.Contains(c.RawQuery, "key")) {
			t.Errorf("upstream handshake %s?%s: key header set %v", c.Path, c.RawQuery, c.Header.Get("X-Goog-Api-Key") != "")
		}
	}
	reg := prometheus.NewPedanticRegistry()
	if err := e.core.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	samples := gatherSamples(t, reg)
	if got := samples[`caddy_gemini_synapse_live_frames_total{from="client"}`]; got != 5 {
		t.Errorf("live_frames_total{from=client} = %v", got)
	}
	if got := samples[`caddy_gemini_synapse_live_bytes_total{from="upstream"}`]; got < float64(len(pcm)) {
		t.Errorf("live_bytes_total{from=upstream} = %v, want at least the audio", got)
	}
	if got, ok := samples[`caddy_gemini_synapse_live_sessions`]; !ok || got != 0 {
		t.Errorf("live_sessions = %v (%v) with every session closed", got, ok)
	}
}

func TestLiveRefusedBeforeTheUpgrade(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	u := wsURL(e.url) + livePath("v1beta", "BidiGenerateContent")
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		query  string
		status int
	}{
		{"no key", nil, "", http.StatusUnauthorized},
		{"wrong key", http.Header{"X-Goog-Api-Key": {"sk-wrong"}}, "", http.StatusUnauthorized},
		{"wrong key in the query", nil, "?key=sk-wrong", http.StatusUnauthorized},
	} {
		_, resp, err := websocket.DefaultDialer.Dial(u+tc.query, tc.hdr)
		if err == nil || resp == nil || resp.StatusCode != tc.status {
			t.Fatalf("%s: %v %v", tc.name, resp, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if g := decodeError(t, b); g.Error.Code != tc.status || g.Error.Status != "UNAUTHENTICATED" {
			t.Errorf("%s: %s", tc.name, b)
		}
	}
	// An unknown method is Google's 404, after the key.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1beta", "BidiGenerateNothing")+"?key="+testAccessKey, nil)
	if err == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown method: %v %v", resp, err)
	}
	// A plain GET is not an upgrade.
	resp2, b := e.do(http.MethodGet, livePath("v1beta", "BidiGenerateContent"), "")
	if resp2.StatusCode != http.StatusBadRequest || decodeError(t, b).Error.Status != "INVALID_ARGUMENT" {
		t.Fatalf("plain GET: %d %s", resp2.StatusCode, b)
	}
	if n := len(e.fake.LiveSessions()); n != 0 {
		t.Fatalf("%d upstream sessions", n)
	}
	// Paths that only look alike are left to the next handler.
	resp2, _ = e.do(http.MethodGet, "/ws/chat", "")
	if resp2.StatusCode != http.StatusTeapot {
		t.Fatalf("/ws/chat: %d", resp2.StatusCode)
	}
	e.made.Add(-4) // the refused dials write no row (the wrong ones are counted as rejected)
}

func TestLiveModelPolicyAndLimits(t *testing.T) {
	e := newProxyEnv(t, 2, func(c *Config) {
		withPolicy(tenantKey, tenant.Policy{Models: []string{"gemini-live-*"}, Concurrency: 1})(c)
	})
	_, err := e.connect(tenantKey, "gemini-2.0-flash-live-001", nil)
	ce := closeErr(t, err)
	if ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "may not use the model") {
		t.Fatalf("model refused with %d %q", ce.Code, ce.Text)
	}
	s, err := e.connect(tenantKey, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The open session holds the access key's only place.
	_, err = e.connect(tenantKey, liveTestModel, nil)
	ce = closeErr(t, err)
	if ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "requests in flight") {
		t.Fatalf("second session refused with %d %q", ce.Code, ce.Text)
	}
	s.Close()
	rows := e.liveRows()
	if len(rows) != 3 || rows[0].Status != http.StatusForbidden || rows[0].LimitHit != "models" ||
		rows[2].Status != http.StatusTooManyRequests || rows[2].LimitHit != tenant.LimitConcurrency {
		t.Fatalf("rows %+v", rows)
	}
	if n := len(e.fake.LiveSessions()); n != 1 {
		t.Fatalf("%d upstream sessions, want only the admitted one", n)
	}
	// Once closed, the place is free again.
	liveWait(t, func() bool { return e.core.limiter.Usage(rows[1].AccessKeyID, time.Now()).InFlight == 0 })
	s, err = e.connect(tenantKey, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// liveWait waits up to 10 s for cond.
func liveWait(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLiveRetriesARefusedKey(t *testing.T) {
	for _, tc := range []struct {
		handshake bool
		state     fakegemini.KeyState
		reason    string
	}{
		{false, fakegemini.Invalid, "API key not valid"},
		{true, fakegemini.Invalid, "API_KEY_INVALID"},
		// Google's answer is 1.2 KB here, its ErrorInfo past the first KiB that gorilla keeps:
		// the gateway reads it whole.
		{true, fakegemini.ServiceDisabled, "SERVICE_DISABLED"},
	} {
		handshake := tc.handshake
		t.Run(fmt.Sprintf("handshake=%v/%s", handshake, tc.state), func(t *testing.T) {
			e := newProxyEnv(t, 2, nil)
			e.fake.SetLiveRefuseAtHandshake(handshake)
			e.fake.SetKey(e.keys[0], tc.state)
			for range 2 {
				s, err := e.connect(testAccessKey, liveTestModel, nil)
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
			}
			if !e.state(e.keys[0]).Disabled || e.state(e.keys[1]).Disabled {
				t.Fatalf("key 0 should be disabled (confirmed by the probe), key 1 not: %+v %+v", e.state(e.keys[0]), e.state(e.keys[1]))
			}
			served := 0
			for _, s := range e.fake.LiveSessions() {
				if s.Refused == 0 {
					served++
					if s.Key != e.keys[1] {
						t.Errorf("session served on key %d", e.ids[s.Key])
					}
				}
			}
			if served != 2 {
				t.Fatalf("%d sessions served", served)
			}
			rows := e.liveRows()
			if rows[0].Attempts+rows[1].Attempts != 3 || rows[0].Status != 200 || rows[1].Status != 200 {
				t.Fatalf("rows %+v", rows)
			}
			if stored := e.storedKey(e.keys[0]); stored.Status != store.StatusDisabled || !strings.Contains(stored.DisabledReason, tc.reason) {
				t.Fatalf("stored key 0: %q", stored.DisabledReason)
			}
		})
	}
}

func TestLiveQuotaCoolsTheKeyDown(t *testing.T) {
	for _, handshake := range []bool{false, true} {
		t.Run(fmt.Sprintf("handshake=%v", handshake), func(t *testing.T) {
			e := newProxyEnv(t, 2, nil)
			e.fake.SetLiveRefuseAtHandshake(handshake)
			e.fake.SetKey(e.keys[0], fakegemini.QuotaMinute)
			for range 3 {
				s, err := e.connect(testAccessKey, liveTestModel, nil)
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
			}
			st := e.state(e.keys[0])
			if st.Disabled || len(st.Cooldowns) != 1 || st.Cooldowns[0].Model != liveTestModel {
				t.Fatalf("key 0: %+v, want a cooldown for the model", st)
			}
			// The key was tried once: the next sessions honoured its cooldown.
			if n := len(liveSessionsOf(e.fake, e.keys[0])); !handshake && n != 1 {
				t.Fatalf("key 0 had %d upstream sessions, want 1", n)
			}
			if n := len(liveSessionsOf(e.fake, e.keys[1])); n != 3 {
				t.Fatalf("key 1 had %d sessions, want 3", n)
			}
			if handshake {
				// Google's 429 (1.4 KB) was read whole: its RetryInfo (30 s) set the
				// cooldown, not the 60 s a reason-less 429 gets.
				if until := st.Cooldowns[0].Until; until.After(time.Now().Add(40 * time.Second)) {
					t.Errorf("cooldown until %v: the answer's retryDelay was not read", until)
				}
				n := 0
				for _, c := range e.fake.Calls() {
					if strings.HasPrefix(c.Path, "/ws/") && c.Key == e.keys[0] {
						n++
					}
				}
				if n != 1 {
					t.Fatalf("key 0 dialled %d times, want 1", n)
				}
			}
		})
	}
}

func TestLiveKeyErrorTheProbeDoesNotConfirm(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	// The session is refused as a key that is not valid, but the key answers the probe.
	e.fake.SetKey(e.keys[0], fakegemini.InvalidOnGenerate)
	_, err := e.connect(testAccessKey, liveTestModel, nil)
	ce := closeErr(t, err)
	if ce.Code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	e.assertNoPenalty()
}

func TestLiveAllKeysRefused(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	e.fake.SetDefault(fakegemini.Invalid)
	_, err := e.connect(testAccessKey, liveTestModel, nil)
	ce := closeErr(t, err)
	if ce.Code != websocket.CloseInternalServerErr || !strings.HasSuffix(ce.Text, "the keys tried were rejected by the upstream.") ||
		strings.Contains(ce.Text, "API key not valid") {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	rows := e.liveRows()
	if rows[0].Status != http.StatusServiceUnavailable || rows[0].Attempts != 2 {
		t.Fatalf("row %+v", rows[0])
	}
}

func TestLiveUnknownModelIsPassedThrough(t *testing.T) {
	e := newProxyEnv(t, 2, nil)
	_, err := e.connect(testAccessKey, "no-such-live-model", nil)
	ce := closeErr(t, err)
	if ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "models/no-such-live-model is not found") {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	e.assertNoPenalty()
	if n := len(e.fake.LiveSessions()); n != 1 {
		t.Fatalf("%d upstream sessions: a client's mistake is not retried", n)
	}
}

func TestLiveResumptionGoesToTheSameKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	cfg := &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{}}
	s, err := e.connect(testAccessKey, liveTestModel, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("remember me")})
	r := readTurn(t, s)
	for len(r.handles) < 2 {
		m, err := s.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if u := m.SessionResumptionUpdate; u != nil {
			r.handles = append(r.handles, u.NewHandle)
		}
	}
	// goAway reaches the client as sent.
	if n := e.fake.LiveGoAway("5s"); n != 1 {
		t.Fatalf("goAway sent to %d sessions", n)
	}
	m, err := s.Receive()
	if err != nil || m.GoAway == nil || m.GoAway.TimeLeft != 5*time.Second {
		t.Fatalf("goAway: %+v %v", m, err)
	}
	s.Close()
	first := e.fake.LiveSessions()[0].Key
	handle := r.handles[len(r.handles)-1]
	for range 4 { // round robin would take every key
		s, err := e.connect(testAccessKey, liveTestModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: handle}})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	for _, ls := range e.fake.LiveSessions()[1:] {
		if ls.Key != first || ls.Handle != handle || ls.Refused != 0 {
			t.Fatalf("resumed session on key %d (first on %d), refused %d", e.ids[ls.Key], e.ids[first], ls.Refused)
		}
	}
	// Another access key cannot use the handle.
	_ = e.core.store.AddResources(context.Background(), store.Resource{Name: "liveSessions/foreign", Kind: kindLiveSessions, KeyID: e.ids[e.keys[1]], AccessKeyID: 999, CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	_, err = e.connect(testAccessKey, liveTestModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: "foreign"}})
	if ce := closeErr(t, err); ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("foreign handle: %d %q", ce.Code, ce.Text)
	}
	before := len(e.fake.LiveSessions())
	_, err = e.connect(testAccessKey, liveTestModel, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: "never-given"}})
	if ce := closeErr(t, err); ce.Code != websocket.ClosePolicyViolation || len(e.fake.LiveSessions()) != before {
		t.Fatalf("unknown handle: %d %q", ce.Code, ce.Text)
	}
}

func TestLiveEphemeralToken(t *testing.T) {
	e := newProxyEnv(t, 3, func(c *Config) {
		withPolicy(tenantKey, tenant.Policy{Models: []string{"gemini-live-*"}})(c)
	})
	ctx := context.Background()
	maker, err := genai.NewClient(ctx, &genai.ClientConfig{APIKey: testAccessKey, Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: e.url, APIVersion: "v1alpha"}})
	if err != nil {
		t.Fatal(err)
	}
	e.made.Add(1)
	tok, err := maker.AuthTokens.Create(ctx, &genai.CreateAuthTokenConfig{Uses: genai.Ptr[int32](2)})
	if err != nil {
		t.Fatal(err)
	}
	owner := e.fake.AuthTokenOwner(tok.Name)
	if owner == "" {
		t.Fatalf("token %q unknown upstream", tok.Name)
	}
	// The Go SDK sends it as Authorization: Token; the JS SDK as ?access_token=.
	e.made.Add(1)
	s, err := e.liveSDK(tok.Name, "v1alpha").Live.Connect(ctx, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("hi token")})
	if r := readTurn(t, s); r.text != "echo: hi token" {
		t.Fatalf("turn %+v", r)
	}
	s.Close()
	e.made.Add(1)
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1alpha", "BidiGenerateContentConstrained")+"?access_token="+tok.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveTestModel+`"}}`))
	if _, msg, err := conn.ReadMessage(); err != nil || !bytes.Contains(msg, []byte("setupComplete")) {
		t.Fatalf("setup by query token: %s %v", msg, err)
	}
	conn.Close()
	sessions := e.fake.LiveSessions()
	if len(sessions) != 2 {
		t.Fatalf("%d upstream sessions", len(sessions))
	}
	for _, ls := range sessions {
		if ls.Token != tok.Name || ls.Owner != owner || ls.Key != "" || ls.Method != "BidiGenerateContentConstrained" {
			t.Errorf("upstream session %+v", ls)
		}
	}
	for _, c := range e.fake.Calls() {
		if strings.HasPrefix(c.Path, "/ws/") && (c.Header.Get("Authorization") != "Token "+tok.Name || c.Header.Get("X-Goog-Api-Key") != "" || strings.Contains(c.RawQuery, "access_token")) {
			t.Errorf("upstream handshake %s?%s with Authorization %q", c.Path, c.RawQuery, c.Header.Get("Authorization"))
		}
	}
	rows := e.liveRows()
	if len(rows) != 2 || rows[0].KeyID != e.ids[owner] || rows[1].KeyID != e.ids[owner] || rows[0].AccessKeyID != rows[1].AccessKeyID || rows[0].AccessKeyID == 0 {
		t.Fatalf("rows %+v", rows)
	}
	// A token the gateway did not make is Google's 401, before any upgrade.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1alpha", "BidiGenerateContentConstrained")+"?access_token=auth_tokens/madeup", nil)
	if err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("made-up token: %v %v", resp, err)
	}
	// An access key limited to some models cannot lock a token on another.
	tenantMaker, _ := genai.NewClient(ctx, &genai.ClientConfig{APIKey: tenantKey, Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: e.url, APIVersion: "v1alpha"}})
	e.made.Add(1)
	_, err = tenantMaker.AuthTokens.Create(ctx, &genai.CreateAuthTokenConfig{LiveConnectConstraints: &genai.LiveConnectConstraints{Model: "gemini-2.5-pro"}})
	var apiErr genai.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusForbidden {
		t.Fatalf("token locked on a model the key may not use: %v", err)
	}
}

func TestLiveClosesPassThrough(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	// The upstream closes: its code and reason reach the client.
	s, err := e.connect(testAccessKey, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.fake.CloseLive(4004, "session over"); n != 1 {
		t.Fatalf("closed %d", n)
	}
	_, err = s.Receive()
	if ce := closeErr(t, err); ce.Code != 4004 || ce.Text != "session over" {
		t.Fatalf("client got %d %q", ce.Code, ce.Text)
	}
	s.Close()
	// The client closes: its code and reason reach the upstream.
	e.made.Add(1)
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveTestModel+`"}}`))
	if _, _, err := conn.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4321, "bye now"), time.Now().Add(time.Second))
	// The upstream's answer to the close comes back: the handshake completes end to end.
	_, _, err = conn.ReadMessage()
	if ce := closeErr(t, err); ce.Code != 4321 {
		t.Fatalf("close answered with %d %q", ce.Code, ce.Text)
	}
	conn.Close()
	liveWait(t, func() bool { ls := e.fake.LiveSessions(); return len(ls) == 2 && ls[1].Closed })
	if got := e.fake.LiveSessions()[1].ClientClose; got != 4321 {
		t.Fatalf("upstream saw close %d", got)
	}
	rows := e.liveRows()
	if !strings.Contains(rows[0].Error, "closed by the upstream: 4004 session over") || !strings.Contains(rows[1].Error, "closed by the client: 4321 bye now") {
		t.Fatalf("rows %q %q", rows[0].Error, rows[1].Error)
	}
}

// TestLiveClientDisconnectClosesTheUpstream drops the client's TCP connection without a close
// frame: the upstream session is closed (going away) at once. The time it took is logged; the
// test waits up to 10 s for it.
func TestLiveClientDisconnectClosesTheUpstream(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	e.made.Add(1)
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveTestModel+`"}}`))
	if _, _, err := conn.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.UnderlyingConn().Close()
	liveWait(t, func() bool { return e.fake.OpenLiveSessions() == 0 })
	t.Logf("upstream closed %v after the client's connection dropped", time.Since(start))
	if got := e.fake.LiveSessions()[0].ClientClose; got != websocket.CloseGoingAway {
		t.Fatalf("upstream saw close %d, want 1001", got)
	}
	if row := e.liveRows()[0]; row.Status != http.StatusOK || row.Error != "" {
		t.Fatalf("row %+v", row)
	}
}

// TestLivePingsBothSides: an idle session is pinged both ways, and the pongs keep it open.
func TestLivePingsBothSides(t *testing.T) {
	defer func(d time.Duration) { livePingEvery = d }(livePingEvery)
	livePingEvery = 20 * time.Millisecond
	var upPings atomic.Int32
	up := websocket.Upgrader{}
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetPingHandler(func(data string) error {
			upPings.Add(1)
			return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		conn.ReadMessage()
		conn.WriteMessage(websocket.BinaryMessage, []byte(`{"setupComplete":{}}`))
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	})
	tc := startCore(t, coreSetup{upstream: upstream}, &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: proxyKeys(1)})
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(serveCore(t, tc.c, nil, ""))+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var clientPings atomic.Int32
	conn.SetPingHandler(func(data string) error {
		clientPings.Add(1)
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/x"}}`))
	conn.ReadMessage()
	go func() {
		for { // control frames are handled while reading
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	liveWait(t, func() bool { return clientPings.Load() >= 3 && upPings.Load() >= 3 })
}

// keyQuotingUpstream is a Live upstream that quotes the key it got in a frame and in its close
// reason, as an upstream's error text may.
func keyQuotingUpstream(t *testing.T) http.Handler {
	up := websocket.Upgrader{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Goog-Api-Key")
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.ReadMessage()
		conn.WriteMessage(websocket.BinaryMessage, []byte(`{"setupComplete":{}}`))
		conn.ReadMessage()
		big := `{"serverContent":{"modelTurn":{"parts":[{"text":"` + strings.Repeat("x", 40000) + ` your key ` + key + ` tail"}]}}}`
		conn.WriteMessage(websocket.BinaryMessage, []byte(big))
		conn.WriteMessage(websocket.TextMessage, []byte(`{"serverContent":{"modelTurn":{"parts":[{"text":"key `+key+`"}]}}}`))
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1008, "bad key "+key), time.Now().Add(time.Second))
		conn.ReadMessage()
	})
}

func TestLivePoolKeyIsMasked(t *testing.T) {
	keys := proxyKeys(1)
	tc := startCore(t, coreSetup{upstream: keyQuotingUpstream(t)}, &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: keys})
	url := serveCore(t, tc.c, nil, "")
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(url)+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/x"}}`))
	conn.ReadMessage()
	conn.WriteMessage(websocket.TextMessage, []byte(`{"clientContent":{}}`))
	var got [][]byte
	for {
		mt, msg, err := conn.ReadMessage()
		if err != nil {
			ce := closeErr(t, err)
			got = append(got, []byte(ce.Text))
			if ce.Code != 1008 || !strings.HasPrefix(ce.Text, "bad key [redacted]") {
				t.Errorf("close %d %q", ce.Code, ce.Text)
			}
			break
		}
		if len(got) == 0 && (mt != websocket.BinaryMessage || len(msg) < 40000) {
			t.Errorf("first message: type %d, %d bytes", mt, len(msg))
		}
		got = append(got, msg)
	}
	if len(got) != 3 {
		t.Fatalf("%d messages", len(got))
	}
	for i, m := range got {
		if bytes.Contains(m, []byte(keys[0])) {
			t.Errorf("message %d carries the pool key", i)
		}
		if !bytes.Contains(m, []byte("[redacted]")) {
			t.Errorf("message %d: %.80q… has no redaction", i, m[max(0, len(m)-80):])
		}
	}
}

// TestLiveSlowReaderSlowsTheUpstream: a client that sends audio and never reads the audio the
// upstream sends back is, in the end, not read from either: every hop waits for the next one,
// and the gateway holds no more than its buffers meanwhile.
func TestLiveSlowReaderSlowsTheUpstream(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	e.made.Add(1)
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveTestModel+`"}}`))
	conn.ReadMessage()
	chunk := []byte(`{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"` + strings.Repeat("AAAA", 16<<10) + `"}}}`)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	sent := 0
	for {
		// A write that cannot finish in 2 s means the hops have stopped reading: the test is
		// about where data waits, not how fast it goes.
		conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if err := conn.WriteMessage(websocket.TextMessage, chunk); err != nil {
			break
		}
		sent += len(chunk)
		if sent > 1<<30 {
			t.Fatal("1 GiB went through a client that reads nothing")
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("the client could send %d KiB before the hops stopped reading; heap grew %d KiB meanwhile (both ends and the kernel's buffers included)",
		sent>>10, (int64(after.HeapInuse)-int64(before.HeapInuse))>>10)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 64<<20 {
		t.Fatalf("heap grew by %d MiB", grown>>20)
	}
}

// TestLiveShutdownClosesSessions: Destruct (caddy stop) closes open sessions with going away,
// both ways, and writes their rows before the store closes.
func TestLiveShutdownClosesSessions(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	s, err := e.connect(testAccessKey, liveTestModel, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive()
		done <- err
	}()
	e.core.cancel() // what Destruct does first
	if ce := closeErr(t, <-done); ce.Code != websocket.CloseGoingAway {
		t.Fatalf("client got %d %q", ce.Code, ce.Text)
	}
	e.core.bg.Wait() // what Destruct does next: the session is over
	// The fake notes the close once its read returns, which may be after its answer arrived.
	liveWait(t, func() bool { return e.fake.LiveSessions()[0].Closed })
	if ls := e.fake.LiveSessions()[0]; ls.ClientClose != websocket.CloseGoingAway {
		t.Fatalf("upstream got %d", ls.ClientClose)
	}
	if row := e.liveRows()[0]; !strings.Contains(row.Error, "shutting down") {
		t.Fatalf("row %+v", row)
	}
}

// TestLiveShutdownBeforeTheSetup: a session still waiting for its setup when the core goes is
// closed with 1001 at once, not after the setup's timeout.
func TestLiveShutdownBeforeTheSetup(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	e.made.Add(1)
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(e.url)+livePath("v1beta", "BidiGenerateContent")+"?key="+testAccessKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	liveWait(t, func() bool { return gaugeValue(e.core.metrics.live.open) == 1 })
	e.core.cancel()
	_, _, err = conn.ReadMessage()
	if ce := closeErr(t, err); ce.Code != websocket.CloseGoingAway {
		t.Fatalf("client got %d %q", ce.Code, ce.Text)
	}
	e.core.bg.Wait()
	if n := len(e.fake.LiveSessions()); n != 0 {
		t.Fatalf("%d upstream sessions", n)
	}
}

// gaugeValue reads a gauge.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	g.Write(&m)
	return m.GetGauge().GetValue()
}

func TestLiveCloseOutcome(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		code    int
		text    string
		kind    keypool.Kind
		confirm bool
	}{
		{1007, "API key not valid. Please pass a valid API key.", keypool.KeyInvalid, true},
		{1008, "Permission denied: Consumer 'api_key:AIzaSy…' has been suspended.", keypool.KeyInvalid, true},
		// A message that quotes the client is never a key's verdict.
		{1007, `Invalid value at 'setup.model': "API key not valid. Please pass a valid API key."`, keypool.ClientError, false},
		{1008, "models/x is not found for API version v1beta", keypool.ClientError, false},
		{1011, "You exceeded your current quota, please check your plan and billing details.", keypool.Quota, false},
		{1011, "Internal error encountered.", keypool.Transient, false},
		{4000, "anything", keypool.ClientError, false},
	} {
		o, _ := liveCloseOutcome(tc.code, tc.text, now)
		if o.Kind != tc.kind || o.Confirm != tc.confirm {
			t.Errorf("%d %q: %v confirm=%v, want %v confirm=%v", tc.code, tc.text, o.Kind, o.Confirm, tc.kind, tc.confirm)
		}
	}
	if got := closeReason(strings.Repeat("é", 100)); len(got) > 123 || !strings.HasSuffix(got, "é") {
		t.Errorf("closeReason cut %d bytes: %q", len(got), got[len(got)-4:])
	}
	if ls, ok := parseLiveSetup([]byte(`{"setup":{"MODEL":"models/a","model":"models/b","sessionResumption":{"handle":"h"}}}`)); !ok || ls.model != "models/b" || ls.handle != "h" {
		t.Errorf("parseLiveSetup: %+v %v", ls, ok)
	}
	if _, ok := parseLiveSetup([]byte(`{"setup":{"Model":"models/a"}}`)); ok {
		t.Error("a setup without the exact member model was taken")
	}
}

// liveMemWorld is 500 sessions opened by the test's own clients, either to the fake directly or
// through the gateway: the difference of the heap and stacks they take is the gateway's share.
func openLiveSessions(t testing.TB, base, key string, n int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, _, err := websocket.DefaultDialer.Dial(wsURL(base)+livePath("v1beta", "BidiGenerateContent"), http.Header{"X-Goog-Api-Key": {key}})
			if err != nil {
				errs <- err
				return
			}
			conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveTestModel+`"}}`))
			if _, _, err := conn.ReadMessage(); err != nil {
				errs <- err
				return
			}
			// One turn each, so that every buffer the relay uses has been used once.
			conn.WriteMessage(websocket.TextMessage, []byte(`{"clientContent":{"turns":[{"role":"user","parts":[{"text":"hi"}]}],"turnComplete":true}}`))
			for {
				_, msg, err := conn.ReadMessage()
				if err != nil {
					errs <- err
					return
				}
				if bytes.Contains(msg, []byte("turnComplete")) {
					break
				}
			}
			conns[i] = conn
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return conns
}

// inUse is the heap and the goroutine stacks in use after a collection.
func inUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// TestLiveMemoryPerSession opens 500 sessions straight to the fake, then 500 through the
// gateway, and reports the gateway's memory per open session: the heap and stacks the second
// set takes beyond the first (the same clients and the same fake), divided by 500. The issue's
// target is 64 KiB.
func TestLiveMemoryPerSession(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("memory is measured without -race and -short")
	}
	const n = 500
	e := newProxyEnv(t, 3, nil)
	base := inUse()
	direct := openLiveSessions(t, e.upstream, e.keys[0], n)
	withDirect := inUse()
	for _, c := range direct {
		c.Close()
	}
	liveWait(t, func() bool { return e.fake.OpenLiveSessions() == 0 })
	mid := inUse()
	through := openLiveSessions(t, e.url, testAccessKey, n)
	e.made.Add(n)
	liveWait(t, func() bool { return e.fake.OpenLiveSessions() == n })
	withGateway := inUse()
	directPer := float64(withDirect-base) / n / 1024
	gatewayPer := float64(withGateway-mid)/n/1024 - directPer
	t.Logf("%d open sessions: client+fake %.1f KiB per session; the gateway adds %.1f KiB per session (%d goroutines)",
		n, directPer, gatewayPer, runtime.NumGoroutine())
	for _, c := range through {
		c.Close()
	}
	if gatewayPer > 64 {
		t.Fatalf("the gateway takes %.1f KiB per open session, more than 64 KiB", gatewayPer)
	}
}

// BenchmarkLiveRelay measures one turn's round trip (a clientContent text turn out; the
// model's turn and its turnComplete with usage back: one frame out, two back) straight to the
// fake and through the gateway, side by side. The reported p50 difference is what the relay adds.
func BenchmarkLiveRelay(b *testing.B) {
	keys := proxyKeys(1)
	tc := startCore(b, coreSetup{}, &Config{AccessKeys: []string{testAccessKey}, GoogleAPIKeys: keys})
	gw := serveCore(b, tc.c, nil, "")
	for _, size := range []int{16, 8 << 10} {
		for _, route := range []struct{ name, base, key string }{{"direct", tc.up.URL, keys[0]}, {"gateway", gw, testAccessKey}} {
			b.Run(fmt.Sprintf("%s/text=%dB", route.name, size), func(b *testing.B) {
				conn := openLiveSessions(b, route.base, route.key, 1)[0]
				defer conn.Close()
				msg := []byte(`{"clientContent":{"turns":[{"role":"user","parts":[{"text":"` + strings.Repeat("w ", size/2) + `"}]}],"turnComplete":true}}`)
				took := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					start := time.Now()
					conn.WriteMessage(websocket.TextMessage, msg)
					for {
						_, m, err := conn.ReadMessage()
						if err != nil {
							b.Fatal(err)
						}
						if bytes.Contains(m, []byte("turnComplete")) {
							break
						}
					}
					took = append(took, time.Since(start))
				}
				b.StopTimer()
				sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
				b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
			})
		}
	}
}

// FuzzLiveParsing feeds client setups, token requests and upstream close reasons to what reads
// them: nothing panics, a setup's model is its exact "model" member, a close reason fits a
// close frame as valid UTF-8, and a reason alone never condemns a key without a probe.
func FuzzLiveParsing(f *testing.F) {
	f.Add([]byte(`{"setup":{"model":"models/gemini-live-2.5-flash-preview","sessionResumption":{"handle":"h"}}}`), "API key not valid. Please pass a valid API key.", 1007)
	f.Add([]byte(`{"bidiGenerateContentSetup":{"setup":{"model":"models/x"}}}`), "You exceeded your current quota, please check your plan", 1011)
	f.Add([]byte(`{"setup":{"Model":"a","model":"b"}}`), strings.Repeat("é", 80), 1008)
	f.Fuzz(func(t *testing.T, body []byte, reason string, code int) {
		if ls, ok := parseLiveSetup(body); ok {
			// Maps keep member names as they are (no case folding), the last of duplicates.
			var top, setup map[string]json.RawMessage
			var model string
			if json.Unmarshal(body, &top) != nil || json.Unmarshal(top["setup"], &setup) != nil ||
				json.Unmarshal(setup["model"], &model) != nil || model != ls.model {
				t.Fatalf("model %q, the setup's exact member is %q", ls.model, model)
			}
		}
		authTokenModel(body)
		r := closeReason(reason)
		if len(r) > maxCloseReason || !utf8.ValidString(r) {
			t.Fatalf("close reason of %d bytes, valid %v", len(r), utf8.ValidString(r))
		}
		if o, _ := liveCloseOutcome(code, reason, time.Now()); o.Kind == keypool.KeyInvalid && !o.Confirm {
			t.Fatalf("%d %q condemns a key without a probe", code, reason)
		}
	})
}
