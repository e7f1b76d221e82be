package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// keyErrorPhrases are Google's key-error words; a client can make Google quote any of them
// back by naming a body field after it.
var keyErrorPhrases = []string{
	"API key not valid. Please pass a valid API key.",
	"API key expired. Please renew the API key.",
	"Your API key was reported as leaked. Please use another API key.",
	"Permission denied: Consumer 'api_key:AIzaSyA1b2' has been suspended.",
	"Generative Language API has not been used in project 123456 before or it is disabled",
	"API_KEY_INVALID",
	"CONSUMER_SUSPENDED",
}

// The attack of issue 11: one request with a key error's words as a field name used to
// disable every key of the pool.
func TestProxyClientWordsNeverCondemnAKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	for _, phrase := range keyErrorPhrases {
		name, _ := json.Marshal(phrase)
		native := `{"contents":[{"parts":[{"text":"hi"}]}],` + string(name) + `:1}`
		openai := `{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}],` + string(name) + `:1}`
		for _, call := range []struct{ path, body string }{
			{genPath("gemini-2.5-flash"), native},
			{"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", native},
			{"/v1beta/openai/chat/completions", openai},
		} {
			before := len(e.fake.Calls())
			resp, b := e.do("POST", call.path, call.body)
			if resp.StatusCode != 400 || !strings.Contains(string(b), "Unknown name") {
				t.Fatalf("%s with %q: %d %s", call.path, phrase, resp.StatusCode, b)
			}
			if used := e.keysSince(before); len(used) != 1 {
				t.Errorf("%s with %q: %d upstream attempts, want 1", call.path, phrase, len(used))
			}
			if probes := e.probesSince(before); len(probes) != 0 {
				t.Errorf("%s with %q: %d probes spent, want none", call.path, phrase, len(probes))
			}
		}
	}
	e.assertNoPenalty()
	if a, c, d := e.core.pool.Counts(time.Now()); a != 3 || c != 0 || d != 0 {
		t.Errorf("pool after the attack: %d active, %d cooling, %d disabled", a, c, d)
	}
	// Every later client is still served.
	if resp, b, _ := e.generate("gemini-2.5-flash"); resp.StatusCode != 200 {
		t.Errorf("after the attack: %d %s", resp.StatusCode, b)
	}
}

// Google answers API_KEY_INVALID to a generation, but the key answers the probe: the answer
// was about the request. It goes back as Google sent it, the key stays, and a burst of such
// answers costs one probe.
func TestProxyUnconfirmedKeyErrorGoesBackToTheClient(t *testing.T) {
	e := newProxyEnv(t, 1, nil)
	key := e.keys[0]
	e.fake.SetKey(key, fakegemini.InvalidOnGenerate)
	resp, b, used := e.generate("gemini-2.5-flash")
	g := decodeError(t, b)
	if resp.StatusCode != 400 || g.Error.Status != "INVALID_ARGUMENT" || g.Error.Message != "API key not valid. Please pass a valid API key." {
		t.Fatalf("%d %s, want Google's 400 unchanged", resp.StatusCode, b)
	}
	if len(used) != 1 {
		t.Errorf("%d generate calls, want 1 (no retry)", len(used))
	}
	if p := e.probesSince(0); len(p) != 1 {
		t.Errorf("%d probes, want 1", len(p))
	}
	before := len(e.fake.Calls())
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if resp, b := e.do("POST", genPath("gemini-2.5-flash"), helloBody); resp.StatusCode != 400 {
				t.Errorf("burst: %d %s", resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
	if p := e.probesSince(before); len(p) > 1 {
		t.Errorf("a burst of 10 cost %d probes, want at most 1", len(p))
	}
	if s := e.state(key); s.Disabled || len(s.Cooldowns) > 0 {
		t.Errorf("key after unconfirmed key errors: %+v", s)
	}
}

// Every key answers 503 for 30 requests, then Google recovers: no key is disabled or ejected,
// the upstream sees at most 2 attempts per request, and the first request the circuit lets
// through after the recovery succeeds.
func TestProxyOutageLosesNoKey(t *testing.T) {
	e := newProxyEnv(t, 3, nil)
	e.fake.SetOutage(fakegemini.Overloaded)
	refused := 0
	var retryAfter string
	for i := range 30 {
		before := len(e.fake.Calls())
		resp, b, used := e.generate("gemini-2.5-flash")
		if resp.StatusCode != 503 {
			t.Fatalf("request %d during the outage: %d %s", i, resp.StatusCode, b)
		}
		if len(used) > 2 || len(e.fake.Calls())-before > 2 {
			t.Errorf("request %d: %d upstream calls, want at most 2", i, len(e.fake.Calls())-before)
		}
		if len(used) == 0 {
			refused++
			retryAfter = resp.Header.Get("Retry-After")
		}
	}
	if refused == 0 || retryAfter == "" {
		t.Errorf("the circuit never opened: %d refused, Retry-After %q", refused, retryAfter)
	}
	for _, k := range e.keys {
		if s := e.state(k); s.Disabled || len(s.Cooldowns) > 0 {
			t.Errorf("key %d after the outage: %+v", e.ids[k], s)
		}
	}
	e.fake.SetOutage(fakegemini.OK)
	secs, _ := strconv.Atoi(retryAfter)
	time.Sleep(time.Duration(secs) * time.Second)
	for i := range 5 {
		if resp, b, _ := e.generate("gemini-2.5-flash"); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the recovery: %d %s", i, resp.StatusCode, b)
		}
	}
}
