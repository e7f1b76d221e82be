package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// The Live API (BidiGenerateContent over WebSocket) through a real caddy, with the official Go
// SDK's client.Live.Connect, the JS SDK's ai.live.connect on Node, and raw gorilla clients.

const liveModel = "gemini-live-2.5-flash-preview"

// wsBase is the ws:// base URL of the gateway: over plain HTTP the Go SDK needs it (it turns
// http:// into wss://).
func wsBase(g *gateway) string { return "ws" + strings.TrimPrefix(g.URL, "http") }

// liveMethodPath is the path of a Live method.
func liveMethodPath(version, method string) string {
	return "/ws/google.ai.generativelanguage." + version + ".GenerativeService." + method
}

// liveSDK is a Go SDK client of the gateway's Live API under base (ws://…).
func liveSDK(t *testing.T, base, key, version string) *genai.Client {
	t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: base, APIVersion: version},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// liveFrames keeps every message and close reason the tests' sessions received, to check at the
// end that no pool key reached a client.
type liveFrames struct {
	mu  sync.Mutex
	all [][]byte
}

func (f *liveFrames) add(b []byte) {
	f.mu.Lock()
	f.all = append(f.all, append([]byte(nil), b...))
	f.mu.Unlock()
}

func (f *liveFrames) check(t *testing.T, pool []string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.all {
		for _, k := range pool {
			if bytes.Contains(b, []byte(k)) {
				t.Errorf("a Live message to the client carries pool key %s", mask(k))
			}
		}
	}
}

// sdkSession is a Go SDK session whose messages are all kept.
type sdkSession struct {
	*genai.Session
	frames *liveFrames
}

func (s sdkSession) receive() (*genai.LiveServerMessage, error) {
	m, err := s.Receive()
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			s.frames.add([]byte(ce.Text))
		}
		return nil, err
	}
	b, _ := json.Marshal(m)
	s.frames.add(b)
	return m, nil
}

// connectSDK opens a session with the Go SDK and takes its setupComplete.
func connectSDK(t *testing.T, c *genai.Client, frames *liveFrames, cfg *genai.LiveConnectConfig) (sdkSession, error) {
	t.Helper()
	s, err := c.Live.Connect(context.Background(), liveModel, cfg)
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			frames.add([]byte(ce.Text))
		}
		return sdkSession{}, err
	}
	ss := sdkSession{Session: s, frames: frames}
	if m, err := ss.receive(); err != nil || m.SetupComplete == nil {
		t.Fatalf("setupComplete: %+v %v", m, err)
	}
	return ss, nil
}

// liveTurn is what one model turn brought.
type liveTurn struct {
	text    string
	audio   []byte
	usage   []*genai.UsageMetadata
	handles []string
	call    *genai.FunctionCall
}

func (s sdkSession) turn(t *testing.T) liveTurn {
	t.Helper()
	var r liveTurn
	for {
		m, err := s.receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if m.UsageMetadata != nil {
			r.usage = append(r.usage, m.UsageMetadata)
		}
		if u := m.SessionResumptionUpdate; u != nil && u.NewHandle != "" {
			r.handles = append(r.handles, u.NewHandle)
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

// liveRow is a request-log row as the admin API shows it.
type liveRow struct {
	Path             string `json:"path"`
	Model            string `json:"model"`
	KeyID            int64  `json:"key_id"`
	AccessKeyID      int64  `json:"access_key_id"`
	Status           int    `json:"status"`
	Attempts         int    `json:"attempts"`
	Stream           bool   `json:"stream"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CandidatesTokens int64  `json:"candidates_tokens"`
	TotalTokens      int64  `json:"total_tokens"`
	Error            string `json:"error"`
}

// liveRows waits for n request-log rows of Live sessions and returns them, newest first.
func liveRows(t *testing.T, g *gateway, n int) []liveRow {
	t.Helper()
	var rows []liveRow
	ok := eventually(10*time.Second, func() bool {
		var out struct {
			Items []liveRow `json:"items"`
		}
		adminGET(t, g, "logs?kind=request&page_size=200", &out)
		rows = rows[:0]
		for _, r := range out.Items {
			if strings.HasPrefix(r.Path, "/ws/") {
				rows = append(rows, r)
			}
		}
		return len(rows) >= n
	})
	if !ok {
		t.Fatalf("%d Live rows in the request log, want %d", len(rows), n)
	}
	return rows
}

// poolKeyIDs maps each pool key to its id in the admin API (matched by the masked key's end).
func poolKeyIDs(t *testing.T, g *gateway, pool []string) map[string]int64 {
	t.Helper()
	var out struct {
		Keys []struct {
			ID     int64  `json:"id"`
			Masked string `json:"masked"`
		} `json:"keys"`
	}
	adminGET(t, g, "keys?page_size=500", &out)
	ids := map[string]int64{}
	for _, k := range pool {
		for _, a := range out.Keys {
			if strings.HasSuffix(a.Masked, k[len(k)-4:]) {
				ids[k] = a.ID
			}
		}
	}
	if len(ids) != len(pool) {
		t.Fatalf("matched %d of %d pool keys in the admin API", len(ids), len(pool))
	}
	return ids
}

func TestLiveGoSDK(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	// The gateway under a handle_path prefix: clients give the prefix in their base URL.
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Site: "gemini_synapse_admin /admin\n\thandle_path /gemini/* {\n\t\tgemini_synapse\n\t}"})
	frames := &liveFrames{}
	defer frames.check(t, pool)
	client := liveSDK(t, wsBase(g)+"/gemini", accessKey, "v1beta")

	s, err := connectSDK(t, client, frames, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("hello live caddy")})
	if r := s.turn(t); r.text != "echo: hello live caddy" || len(r.usage) != 1 {
		t.Fatalf("text turn %+v", r)
	}
	pcm := make([]byte, 64000) // 2 s of 16 kHz PCM: larger than one relay buffer once in base64
	for i := range pcm {
		pcm[i] = byte(i*13 + i>>8)
	}
	s.SendRealtimeInput(genai.LiveRealtimeInput{Audio: &genai.Blob{Data: pcm, MIMEType: "audio/pcm;rate=16000"}})
	s.SendRealtimeInput(genai.LiveRealtimeInput{AudioStreamEnd: true})
	if r := s.turn(t); !bytes.Equal(r.audio, pcm) || len(r.usage) != 1 {
		t.Fatalf("audio turn: %d bytes back (want the %d sent), usage %v", len(r.audio), len(pcm), r.usage)
	}
	s.Close()

	tools := []*genai.Tool{{FunctionDeclarations: []*genai.FunctionDeclaration{{Name: "find_flight", Description: "finds a flight"}}}}
	s, err = connectSDK(t, client, frames, &genai.LiveConnectConfig{Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("Lisbon")})
	r := s.turn(t)
	if r.call == nil || r.call.Name != "find_flight" || r.call.Args["query"] != "Lisbon" {
		t.Fatalf("tool call %+v", r)
	}
	s.SendToolResponse(genai.LiveToolResponseInput{FunctionResponses: []*genai.FunctionResponse{{ID: r.call.ID, Name: r.call.Name, Response: map[string]any{"flight": "TP123"}}}})
	if r := s.turn(t); !strings.Contains(r.text, "TP123") {
		t.Fatalf("tool answer %q", r.text)
	}
	s.Close()

	// One row per session, with the usage the fake reported, on the key the fake saw.
	rows := liveRows(t, g, 2)
	ids := poolKeyIDs(t, g, pool)
	sessions := fake.LiveSessions()
	if len(sessions) != 2 || len(rows) != 2 {
		t.Fatalf("%d upstream sessions, %d rows", len(sessions), len(rows))
	}
	for i, up := range sessions {
		row := rows[len(rows)-1-i]
		if row.Status != http.StatusOK || row.Model != liveModel || row.KeyID != ids[up.Key] || !row.Stream ||
			row.Path != liveMethodPath("v1beta", "BidiGenerateContent") || row.Error != "" {
			t.Errorf("row %d: %+v (upstream key #%d)", i, row, ids[up.Key])
		}
		if row.PromptTokens != up.PromptTokens || row.CandidatesTokens != up.ResponseTokens || row.TotalTokens != up.TotalTokens {
			t.Errorf("row %d tokens %d/%d/%d, the fake reported %d/%d/%d", i, row.PromptTokens, row.CandidatesTokens, row.TotalTokens,
				up.PromptTokens, up.ResponseTokens, up.TotalTokens)
		}
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey)
}

func TestLiveJSSDK(t *testing.T) {
	node, dir := jsClient(t)
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "live.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GATEWAY_URL="+g.URL, "ACCESS_KEY="+accessKey, "MODEL="+liveModel)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node live.mjs: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var res struct {
		Text       string                          `json:"text"`
		Usage      []struct{ TotalTokenCount int } `json:"usage"`
		AudioBytes int                             `json:"audioBytes"`
		AudioSame  bool                            `json:"audioSame"`
		TokenName  string                          `json:"tokenName"`
		TokenText  string                          `json:"tokenText"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil {
		t.Fatalf("script output: %v: %s", err, stdout.String())
	}
	if res.Text != "echo: hello from node" || len(res.Usage) != 2 || !res.AudioSame || res.AudioBytes != 24000 ||
		res.TokenText != "echo: hello by token" {
		t.Fatalf("script result %+v", res)
	}
	for _, k := range pool {
		if strings.Contains(stdout.String(), k) || strings.Contains(stderr.String(), k) {
			t.Errorf("the JS client saw pool key %s", mask(k))
		}
	}
	sessions := fake.LiveSessions()
	if len(sessions) != 2 {
		t.Fatalf("%d upstream sessions, want 2", len(sessions))
	}
	if s := sessions[1]; s.Token != res.TokenName || s.Owner != fake.AuthTokenOwner(res.TokenName) || s.Method != "BidiGenerateContentConstrained" {
		t.Fatalf("token session %+v", s)
	}
	// The JS SDK sends its key as ?key= and the token as ?access_token=: neither reaches Google.
	for _, c := range fake.Calls() {
		if strings.Contains(c.RawQuery, "key=") || strings.Contains(c.RawQuery, "access_token") {
			t.Errorf("upstream %s %s?%s", c.Method, c.Path, c.RawQuery)
		}
	}
	rows := liveRows(t, g, 2)
	for _, r := range rows {
		if r.Status != http.StatusOK || r.TotalTokens == 0 {
			t.Errorf("row %+v", r)
		}
	}
}

func TestLiveKeyRetryAndCooldown(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	fake.SetKey(pool[0], fakegemini.Invalid)
	fake.SetKey(pool[1], fakegemini.QuotaMinute)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	frames := &liveFrames{}
	defer frames.check(t, pool)
	client := liveSDK(t, wsBase(g), accessKey, "v1beta")
	for i := range 3 {
		s, err := connectSDK(t, client, frames, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("hello")})
		if r := s.turn(t); r.text != "echo: hello" {
			t.Fatalf("session %d: %+v", i, r)
		}
		s.Close()
	}
	perKey := map[string]int{}
	for _, s := range fake.LiveSessions() {
		perKey[s.Key]++
		if s.Refused == 0 && s.Key != pool[2] {
			t.Errorf("a session was served on key %s", mask(s.Key))
		}
	}
	// The refused keys were each tried once: the dead one is disabled (the probe confirmed it),
	// the exhausted one cools down, and the next sessions went straight to the third.
	if perKey[pool[0]] != 1 || perKey[pool[1]] != 1 || perKey[pool[2]] != 3 {
		t.Fatalf("upstream sessions per key: %d %d %d", perKey[pool[0]], perKey[pool[1]], perKey[pool[2]])
	}
	ids := poolKeyIDs(t, g, pool)
	var keys adminKeys
	// The disable reason is written to the store in the background.
	eventually(10*time.Second, func() bool {
		adminGET(t, g, "keys?page_size=50", &keys)
		for _, k := range keys.Keys {
			if k.ID == ids[pool[0]] {
				return k.DisabledReason != ""
			}
		}
		return false
	})
	for _, k := range keys.Keys {
		switch k.ID {
		case ids[pool[0]]:
			if k.Status != "disabled" || !strings.Contains(k.DisabledReason, "API key not valid") {
				t.Errorf("the invalid key: %q %q", k.Status, k.DisabledReason)
			}
		case ids[pool[1]]:
			if k.Status != "cooling" || len(k.Cooldowns) != 1 {
				t.Errorf("the exhausted key: %q, %d cooldowns", k.Status, len(k.Cooldowns))
			}
		default:
			if k.Status != "active" {
				t.Errorf("the good key: %q", k.Status)
			}
		}
	}
	rows := liveRows(t, g, 3)
	if rows[2].Attempts != 3 || rows[1].Attempts != 1 || rows[0].Attempts != 1 {
		t.Errorf("attempts %d %d %d, want 3 then 1 and 1", rows[2].Attempts, rows[1].Attempts, rows[0].Attempts)
	}
}

func TestLiveResumptionAndGoAway(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	frames := &liveFrames{}
	defer frames.check(t, pool)
	client := liveSDK(t, wsBase(g), accessKey, "v1beta")
	s, err := connectSDK(t, client, frames, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("remember")})
	r := s.turn(t)
	m, err := s.receive() // the handle after the turn
	if err != nil || m.SessionResumptionUpdate == nil {
		t.Fatalf("resumption update: %+v %v", m, err)
	}
	handle := m.SessionResumptionUpdate.NewHandle
	_ = r
	fake.LiveGoAway("3s")
	if m, err := s.receive(); err != nil || m.GoAway == nil || m.GoAway.TimeLeft != 3*time.Second {
		t.Fatalf("goAway: %+v %v", m, err)
	}
	s.Close()
	first := fake.LiveSessions()[0].Key
	for range 3 {
		s, err := connectSDK(t, client, frames, &genai.LiveConnectConfig{SessionResumption: &genai.SessionResumptionConfig{Handle: handle}})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	for _, ls := range fake.LiveSessions()[1:] {
		if ls.Key != first || ls.Handle != handle || ls.Refused != 0 {
			t.Fatalf("resumed on key %s with handle %q (refused %d); the session's key was %s", mask(ls.Key), ls.Handle, ls.Refused, mask(first))
		}
	}
}

func TestLiveEphemeralToken(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(3)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	ctx := context.Background()
	maker, err := genai.NewClient(ctx, &genai.ClientConfig{APIKey: accessKey, Backend: genai.BackendGeminiAPI, HTTPClient: g.Client,
		HTTPOptions: genai.HTTPOptions{BaseURL: g.URL, APIVersion: "v1alpha"}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := maker.AuthTokens.Create(ctx, &genai.CreateAuthTokenConfig{Uses: genai.Ptr[int32](1)})
	if err != nil {
		t.Fatal(err)
	}
	frames := &liveFrames{}
	defer frames.check(t, pool)
	s, err := connectSDK(t, liveSDK(t, wsBase(g), tok.Name, "v1alpha"), frames, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SendClientContent(genai.LiveClientContentInput{Turns: genai.Text("by token")})
	if r := s.turn(t); r.text != "echo: by token" {
		t.Fatalf("turn %+v", r)
	}
	s.Close()
	ls := fake.LiveSessions()
	if len(ls) != 1 || ls[0].Token != tok.Name || ls[0].Owner != fake.AuthTokenOwner(tok.Name) || ls[0].Key != "" {
		t.Fatalf("upstream session %+v", ls)
	}
	// A token the gateway did not make: Google's 401, before any upgrade.
	for _, q := range []string{"?access_token=auth_tokens/never-made", ""} {
		hdr := http.Header{}
		if q == "" {
			hdr.Set("Authorization", "Token auth_tokens/never-made")
		}
		_, resp, err := websocket.DefaultDialer.Dial(wsBase(g)+liveMethodPath("v1alpha", "BidiGenerateContentConstrained")+q, hdr)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("made-up token %q: %v %v", q, resp, err)
		}
	}
	if n := len(fake.LiveSessions()); n != 1 {
		t.Fatalf("%d upstream sessions after made-up tokens", n)
	}
}

func TestLiveModelNotAllowed(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool,
		Options: []string{accessKeyOption("live", "models gemini-2.5-*")}})
	frames := &liveFrames{}
	defer frames.check(t, pool)
	_, err := connectSDK(t, liveSDK(t, wsBase(g), tenantKey("live"), "v1beta"), frames, nil)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, liveModel) {
		t.Fatalf("error %v, want a 1008 close naming the model", err)
	}
	if n := len(fake.LiveSessions()); n != 0 {
		t.Fatalf("%d upstream sessions for a model the key may not use", n)
	}
	if rows := liveRows(t, g, 1); rows[0].Status != http.StatusForbidden {
		t.Fatalf("row %+v", rows[0])
	}
	// Before the upgrade, a wrong key is Google's 401 JSON.
	_, resp, err := websocket.DefaultDialer.Dial(wsBase(g)+liveMethodPath("v1beta", "BidiGenerateContent")+"?key="+wrongKey, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong key: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	var env envelope
	if json.Unmarshal(b, &env) != nil || env.Error.Status != "UNAUTHENTICATED" {
		t.Fatalf("wrong key answer %s", b)
	}
}

// rawLive opens a session with a raw WebSocket client and reads its setupComplete.
func rawLive(t *testing.T, g *gateway, key string) *websocket.Conn {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial(wsBase(g)+liveMethodPath("v1beta", "BidiGenerateContent"), http.Header{"X-Goog-Api-Key": {key}})
	if err != nil {
		t.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveModel+`"}}`))
	if _, msg, err := conn.ReadMessage(); err != nil || !bytes.Contains(msg, []byte("setupComplete")) {
		t.Fatalf("setup: %s %v", msg, err)
	}
	return conn
}

// rawTurn sends a text turn on a raw session and reads up to its turnComplete.
func rawTurn(conn *websocket.Conn, text string) error {
	conn.WriteMessage(websocket.TextMessage, []byte(`{"clientContent":{"turns":[{"role":"user","parts":[{"text":"`+text+`"}]}],"turnComplete":true}}`))
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		if bytes.Contains(msg, []byte("turnComplete")) {
			return nil
		}
	}
}

// TestLiveClientDisconnect drops a client's connection without a close frame: the gateway
// closes the upstream session (going away) at once. The time is logged; the test only waits.
func TestLiveClientDisconnect(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(1)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	conn := rawLive(t, g, accessKey)
	start := time.Now()
	conn.UnderlyingConn().Close()
	for fake.OpenLiveSessions() != 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the upstream session is still open 10 s after the client left")
		}
		time.Sleep(200 * time.Microsecond)
	}
	t.Logf("the upstream session was closed %v after the client's connection dropped", time.Since(start).Round(time.Microsecond))
	if got := fake.LiveSessions()[0].ClientClose; got != websocket.CloseGoingAway {
		t.Fatalf("the upstream got close %d, want 1001", got)
	}
}

// TestLiveReloadKeepsSessionsStopClosesThem: caddy reload keeps an open session working (the
// core outlives the config, as streams do); caddy stop closes it with 1001, both ways.
func TestLiveReloadKeepsSessionsStopClosesThem(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(2)
	cfg := gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}}
	g := startGateway(t, cfg)
	conn := rawLive(t, g, accessKey)
	defer conn.Close()
	if err := rawTurn(conn, "before"); err != nil {
		t.Fatal(err)
	}
	cfg.Options = []string{"max_retries 2"}
	g.Reload(cfg)
	if err := rawTurn(conn, "after the reload"); err != nil {
		t.Fatalf("turn after reload: %v", err)
	}
	// A new session works on the new config too.
	conn2 := rawLive(t, g, accessKey)
	defer conn2.Close()
	done := make(chan error, 2)
	for _, c := range []*websocket.Conn{conn, conn2} {
		go func() {
			_, _, err := c.ReadMessage()
			done <- err
		}()
	}
	g.Stop()
	for range 2 {
		err := <-done
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("client got %v at caddy stop, want a 1001 close", err)
		}
	}
	// The fake notes a close once its read returns, which may be after its answer arrived.
	if !eventually(10*time.Second, func() bool { return fake.OpenLiveSessions() == 0 }) {
		t.Fatal("upstream sessions still open after caddy stopped")
	}
	for _, s := range fake.LiveSessions() {
		if s.ClientClose != websocket.CloseGoingAway {
			t.Fatalf("upstream session got close %d at caddy stop, want 1001", s.ClientClose)
		}
	}
}

// caddyMemory is the heap and stacks in use in the caddy process after a collection, read from
// its admin endpoint (/debug/pprof/heap?gc=1 collects, /metrics reports).
func caddyMemory(t *testing.T, g *gateway) int64 {
	t.Helper()
	admin := fmt.Sprintf("http://127.0.0.1:%d", g.adminPort)
	for range 2 {
		resp, err := http.Get(admin + "/debug/pprof/heap?gc=1")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum int64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(line, name); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				sum += int64(f)
			}
		}
	}
	if sum == 0 {
		t.Fatal("no go_memstats in caddy's /metrics")
	}
	return sum
}

// TestLive500Sessions opens 500 sessions at once through caddy, each with one turn, and
// reports what caddy holds per open session (heap and stacks after a collection, beyond what it
// held before). The target is 64 KiB.
func TestLive500Sessions(t *testing.T) {
	const n = 500
	fake, up := newFake(t)
	pool := poolKeys(5)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}})
	// One session first, so that what every session shares (pools, the model's metrics) is
	// already there.
	warm := rawLive(t, g, accessKey)
	rawTurn(warm, "warm")
	warm.Close()
	if !eventually(10*time.Second, func() bool { return fake.OpenLiveSessions() == 0 }) {
		t.Fatal("the warm-up session did not end")
	}
	before := caddyMemory(t, g)
	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 50)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			conn, _, err := websocket.DefaultDialer.Dial(wsBase(g)+liveMethodPath("v1beta", "BidiGenerateContent"), http.Header{"X-Goog-Api-Key": {accessKey}})
			if err != nil {
				errs <- err
				return
			}
			conns[i] = conn
			conn.WriteMessage(websocket.TextMessage, []byte(`{"setup":{"model":"models/`+liveModel+`"}}`))
			if _, _, err := conn.ReadMessage(); err != nil {
				errs <- err
				return
			}
			if err := rawTurn(conn, "hello"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for err := range errs {
		t.Fatal(err)
	}
	if got := fake.OpenLiveSessions(); got != n {
		t.Fatalf("%d upstream sessions open, want %d", got, n)
	}
	after := caddyMemory(t, g)
	per := float64(after-before) / n / 1024
	t.Logf("%d open Live sessions: caddy holds %.1f KiB per session (heap and stacks after GC: %.1f MiB before, %.1f MiB with them)",
		n, per, float64(before)/(1<<20), float64(after)/(1<<20))
	if per > 64 {
		t.Errorf("%.1f KiB per open session, more than the 64 KiB target", per)
	}
	// Every session still works.
	for i := 0; i < n; i += 50 {
		if err := rawTurn(conns[i], "still there"); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
}
