package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genai"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
)

// Access keys as tenants (issue 14), through a real caddy: the limits of an access key's
// policy hold exactly under parallel requests and answer in Google's format, tokens are
// charged from the answers' usageMetadata, expiry and model globs are enforced, and a policy
// survives a panel edit, a reload and a restart. Isolation is in tenant_isolation_test.go.
//
// The top-level tests run in parallel with each other (after the rest of the suite): one of
// them waits out a real Retry-After of up to a minute, which the others use.

// tenantKey is a distinctive access key for a label.
func tenantKey(label string) string {
	return "e2e-tenant-" + label + "-0123456789abcdef"
}

// accessKeyOption is one `access_key <label> <key> { policy }` line for gatewayConfig.Options.
func accessKeyOption(label string, policy ...string) string {
	if len(policy) == 0 {
		return fmt.Sprintf("access_key %s %s", label, tenantKey(label))
	}
	return fmt.Sprintf("access_key %s %s {\n\t\t\t%s\n\t\t}", label, tenantKey(label), strings.Join(policy, "\n\t\t\t"))
}

// googleError is Google's error envelope with its details.
type googleError struct {
	Error struct {
		Code    int              `json:"code"`
		Message string           `json:"message"`
		Status  string           `json:"status"`
		Details []map[string]any `json:"details"`
	} `json:"error"`
}

const (
	typeRetryInfo    = "type.googleapis.com/google.rpc.RetryInfo"
	typeQuotaFailure = "type.googleapis.com/google.rpc.QuotaFailure"
)

// timedResponse is a response and when it had arrived whole.
type timedResponse struct {
	response
	At time.Time
}

// refusal is what a 429 of one limit says about when to come back.
type refusal struct {
	RetryDelay time.Duration // google.rpc.RetryInfo.retryDelay
	RetryAfter int           // the Retry-After header, in seconds
	At         time.Time     // when the answer arrived
}

// RetryAt is when the Retry-After header says a request will pass.
func (r refusal) RetryAt() time.Time { return r.At.Add(time.Duration(r.RetryAfter) * time.Second) }

// wantRefusal asserts a 429 RESOURCE_EXHAUSTED in Google's format for limit: a QuotaFailure
// detail whose violation names the limit (quotaId, quotaMetric or subject), a RetryInfo detail, and a
// Retry-After header of the same delay in whole seconds, rounded up.
func wantRefusal(t *testing.T, r timedResponse, limit string) refusal {
	t.Helper()
	if r.Status != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429 for %s; body: %s", r.Status, limit, r.Body)
	}
	var e googleError
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("429 body is not Google's envelope: %v: %s", err, r.Body)
	}
	if e.Error.Code != 429 || e.Error.Status != "RESOURCE_EXHAUSTED" || e.Error.Message == "" {
		t.Errorf("429 envelope: code %d status %q message %q", e.Error.Code, e.Error.Status, e.Error.Message)
	}
	out := refusal{RetryDelay: -1, At: r.At}
	named := false
	for _, d := range e.Error.Details {
		switch d["@type"] {
		case typeRetryInfo:
			s, _ := d["retryDelay"].(string)
			dur, err := time.ParseDuration(s)
			if err != nil || dur < 0 {
				t.Errorf("RetryInfo.retryDelay %q is not a proto Duration: %s", s, r.Body)
			}
			out.RetryDelay = dur
		case typeQuotaFailure:
			vs, _ := d["violations"].([]any)
			for _, v := range vs {
				m, _ := v.(map[string]any)
				for _, f := range []string{"quotaId", "quotaMetric", "subject"} {
					if s, _ := m[f].(string); strings.Contains(strings.ToLower(s), limit) {
						named = true
					}
				}
			}
		}
	}
	if out.RetryDelay < 0 {
		t.Errorf("no google.rpc.RetryInfo detail: %s", r.Body)
	}
	if !named {
		t.Errorf("no google.rpc.QuotaFailure violation names %q in its quotaId, quotaMetric or subject: %s", limit, r.Body)
	}
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra < 0 {
		t.Fatalf("Retry-After %q is not a number of seconds", r.Header.Get("Retry-After"))
	}
	out.RetryAfter = ra
	if want := int(math.Ceil(out.RetryDelay.Seconds())); out.RetryDelay >= 0 && ra != want {
		t.Errorf("Retry-After %d does not say RetryInfo's %s rounded up (%d)", ra, out.RetryDelay, want)
	}
	return out
}

// send sends one request to the gateway and reads the whole answer; it may run on any
// goroutine (errors are returned, not reported).
func (g *gateway) send(method, path string, header http.Header, body string) (timedResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, g.URL+path, rd)
	if err != nil {
		return timedResponse{}, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.Client.Do(req)
	if err != nil {
		return timedResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return timedResponse{}, err
	}
	return timedResponse{response{resp.StatusCode, resp.Header, b}, time.Now()}, nil
}

// burst sends n generateContent requests with key at once and returns their answers.
func (g *gateway) burst(t *testing.T, n int, key string) []timedResponse {
	t.Helper()
	out := make([]timedResponse, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i], errs[i] = g.send(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(key), genBody)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d of %d: %v", i, n, err)
		}
	}
	return out
}

// byStatus counts answers per status and returns the 429s.
func byStatus(rs []timedResponse) (map[int]int, []timedResponse) {
	n := map[int]int{}
	var refused []timedResponse
	for _, r := range rs {
		n[r.Status]++
		if r.Status == http.StatusTooManyRequests {
			refused = append(refused, r)
		}
	}
	return n, refused
}

// generations counts the generation calls the fake has received.
func generations(fake *fakegemini.Server) int {
	return fake.Count(fakegemini.Call.IsGeneration)
}

// upstreamCalls counts the calls the fake has received, leaving out the gateway's own key
// checks (models.get of the validation model), which may come at any time.
func upstreamCalls(fake *fakegemini.Server) int {
	return fake.Count(func(c fakegemini.Call) bool {
		return !(c.Method == http.MethodGet && strings.HasSuffix(c.Path, "/models/"+modelFlash))
	})
}

// untilMidnightUTC is how long until the next midnight in UTC (the gateway's default
// timezone), when a day's count starts again.
func untilMidnightUTC(from time.Time) time.Duration {
	y, m, d := from.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC).Sub(from)
}

// wantRetryNear asserts that a refusal sends the client back at about at (a day's or a
// budget's end), give or take a couple of minutes of a slow machine.
func wantRetryNear(t *testing.T, r refusal, at time.Time) {
	t.Helper()
	got := r.At.Add(r.RetryDelay)
	if d := got.Sub(at); d < -2*time.Minute || d > 2*time.Minute {
		t.Errorf("RetryInfo sends the client back at %s, want about %s", got.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
}

// wantSDKError asserts that err is the genai.APIError of a refusal: code and status, and for a
// 429 its RetryInfo detail.
func wantSDKError(t *testing.T, err error, code int, status string) genai.APIError {
	t.Helper()
	var apiErr genai.APIError
	if !asAPIError(err, &apiErr) {
		t.Fatalf("error = %v (%T), want a genai.APIError", err, err)
	}
	if apiErr.Code != code || apiErr.Status != status || apiErr.Message == "" {
		t.Errorf("genai.APIError: code %d status %q message %q, want %d %s", apiErr.Code, apiErr.Status, apiErr.Message, code, status)
	}
	if code == http.StatusTooManyRequests {
		found := false
		for _, d := range apiErr.Details {
			if d["@type"] == typeRetryInfo {
				found = true
			}
		}
		if !found {
			t.Errorf("the SDK's error has no RetryInfo detail: %+v", apiErr.Details)
		}
	}
	return apiErr
}

// adminAccessKey is an access key as P/api/access-keys shows it.
type adminAccessKey struct {
	ID          int64    `json:"id"`
	Label       string   `json:"label"`
	Models      []string `json:"models"`
	RPM         int64    `json:"rpm"`
	RPD         int64    `json:"rpd"`
	Concurrency int64    `json:"concurrency"`
	Shared      bool     `json:"shared"`
	Usage       map[string]struct {
		Used  int64 `json:"used"`
		Limit int64 `json:"limit"`
	} `json:"usage"`
}

// adminCall sends a request to the admin API with the admin key as Bearer and decodes a JSON
// answer into out (if not nil).
func (g *gateway) adminCall(t *testing.T, method, path, body string, want int, out any) {
	t.Helper()
	r, err := g.send(method, "/admin/api/"+path, http.Header{"Authorization": {"Bearer " + adminKey}}, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if r.Status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	if out != nil {
		if err := json.Unmarshal(r.Body, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, r.Body)
		}
	}
}

// adminAccessKeyByLabel returns the access key labelled label as the admin API shows it.
func (g *gateway) adminAccessKeyByLabel(t *testing.T, label string) adminAccessKey {
	t.Helper()
	var list struct {
		AccessKeys []adminAccessKey `json:"access_keys"`
	}
	g.adminCall(t, http.MethodGet, "access-keys", "", http.StatusOK, &list)
	for _, k := range list.AccessKeys {
		if k.Label == label {
			return k
		}
	}
	t.Fatalf("no access key labelled %q in the admin API: %+v", label, list.AccessKeys)
	return adminAccessKey{}
}

// waitUsage waits until the admin API shows the access key's use of limit at want: tokens are
// charged, and a stream's slot freed, as the answer ends, a moment after the client has it.
func (g *gateway) waitUsage(t *testing.T, label, limit string, want int64) {
	t.Helper()
	var got int64 = -1
	if !eventually(10*time.Second, func() bool {
		got = g.adminAccessKeyByLabel(t, label).Usage[limit].Used
		return got == want
	}) {
		t.Fatalf("access key %s: the admin API shows %s used %d, want %d", label, limit, got, want)
	}
}

// fakeTokens asks the fake directly (with a pool key) for genBody's answer, unary or streamed,
// and returns its total token count: what the gateway must charge for the same request.
func fakeTokens(t *testing.T, upURL, poolKey string, stream bool) int64 {
	t.Helper()
	path := "/v1beta/models/" + modelFlash + ":generateContent"
	if stream {
		path = "/v1beta/models/" + modelFlash + ":streamGenerateContent?alt=sse"
	}
	req, _ := http.NewRequest(http.MethodPost, upURL+path, strings.NewReader(genBody))
	req.Header.Set("X-Goog-Api-Key", poolKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("fake: %d %s", resp.StatusCode, b)
	}
	last := b
	if stream {
		events := bytes.Split(bytes.TrimSpace(b), []byte("\r\n\r\n"))
		last = bytes.TrimPrefix(events[len(events)-1], []byte("data: "))
	}
	var u struct {
		UsageMetadata struct {
			TotalTokenCount int64 `json:"totalTokenCount"`
		} `json:"usageMetadata"`
	}
	if err := json.Unmarshal(last, &u); err != nil || u.UsageMetadata.TotalTokenCount <= 0 {
		t.Fatalf("fake's usage: %v: %s", err, last)
	}
	return u.UsageMetadata.TotalTokenCount
}

// sdkStreamTokens streams genai.Text("hello") through the SDK and returns the total tokens of
// the last usageMetadata.
func sdkStreamTokens(ctx context.Context, t *testing.T, client *genai.Client) int64 {
	t.Helper()
	var total int64
	chunks := 0
	for resp, err := range client.Models.GenerateContentStream(ctx, modelFlash, genai.Text("hello"), nil) {
		if err != nil {
			t.Fatalf("stream after %d chunks: %v", chunks, err)
		}
		chunks++
		if resp.UsageMetadata != nil {
			total = int64(resp.UsageMetadata.TotalTokenCount)
		}
	}
	if chunks < 2 {
		t.Fatalf("the stream had %d chunks, want several", chunks)
	}
	return total
}

// TestTenantLimits holds each limit of a policy exactly, with parallel requests through a real
// caddy: rpm, rpd, concurrency (with slow streams), tpm and token_budget (charged from the
// usageMetadata of unary and streamed answers). Refused requests get Google's 429 with
// RetryInfo, QuotaFailure and Retry-After, the SDK surfaces them as APIErrors, nothing of them
// reaches the upstream, and a request sent when Retry-After says passes.
func TestTenantLimits(t *testing.T) {
	t.Parallel()
	fake, up := newFake(t)
	pool := poolKeys(2)
	unary := fakeTokens(t, up.URL, pool[0], false)
	streamed := fakeTokens(t, up.URL, pool[0], true)
	tokenLimit := unary + streamed + 1 // two answers leave it unspent, a third spends it
	t.Logf("the fake's answer to genBody: %d tokens unary, %d streamed; token limits %d", unary, streamed, tokenLimit)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, Options: []string{
		accessKeyOption("rpm", "rpm 10"),
		accessKeyOption("rpd", "rpd 5"),
		accessKeyOption("conc", "concurrency 2"),
		accessKeyOption("tpm", fmt.Sprintf("tpm %d", tokenLimit)),
		accessKeyOption("budget", fmt.Sprintf("token_budget %d daily", tokenLimit)),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// rpm: 100 at once, exactly 10 through. The last refusal's Retry-After is checked at the
	// end, once the other limits have used most of the wait.
	var rpmRefusal refusal
	t.Run("RPM", func(t *testing.T) {
		before := generations(fake)
		rs := g.burst(t, 100, tenantKey("rpm"))
		n, refused := byStatus(rs)
		if n[200] != 10 || n[429] != 90 {
			t.Fatalf("100 parallel requests against rpm 10: %v, want 10 × 200 and 90 × 429", n)
		}
		if got := generations(fake) - before; got != 10 {
			t.Errorf("the upstream saw %d generations, want the 10 admitted", got)
		}
		for _, r := range refused {
			rf := wantRefusal(t, r, "rpm")
			if rf.RetryDelay <= 0 || rf.RetryDelay > time.Minute {
				t.Errorf("rpm refusal: retry in %s, want within the minute", rf.RetryDelay)
			}
			if rf.At.After(rpmRefusal.At) {
				rpmRefusal = rf
			}
		}
		// The Go SDK surfaces the refusal as Google's error, unary and streamed.
		client := newSDKClient(t, g, tenantKey("rpm"))
		_, err := client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
		wantSDKError(t, err, 429, "RESOURCE_EXHAUSTED")
		for _, err := range client.Models.GenerateContentStream(ctx, modelFlash, genai.Text("hello"), nil) {
			wantSDKError(t, err, 429, "RESOURCE_EXHAUSTED")
			break
		}
		if got := generations(fake) - before; got != 10 {
			t.Errorf("refused SDK calls reached the upstream (%d generations)", got-10)
		}
	})

	t.Run("RPD", func(t *testing.T) {
		before := generations(fake)
		n, refused := byStatus(g.burst(t, 20, tenantKey("rpd")))
		if n[200] != 5 || n[429] != 15 {
			t.Fatalf("20 parallel requests against rpd 5: %v, want 5 × 200 and 15 × 429", n)
		}
		if got := generations(fake) - before; got != 5 {
			t.Errorf("the upstream saw %d generations, want 5", got)
		}
		for _, r := range refused {
			wantRetryNear(t, wantRefusal(t, r, "rpd"), r.At.Add(untilMidnightUTC(r.At)))
		}
	})

	// concurrency 2: two slow streams in flight, a third request is refused; once they have
	// ended it passes. The streams' events are spaced by the fake; if the machine stalls so
	// long that they end before the third request is answered, the round proves nothing and is
	// run again with slower streams.
	t.Run("Concurrency", func(t *testing.T) {
		defer fake.SetStream(0, 0)
		key := tenantKey("conc")
		proved := false
		for delay := time.Second; delay <= 8*time.Second && !proved; delay *= 2 {
			fake.SetStream(3, delay)
			started := make(chan struct{}, 2)
			errs := make(chan error, 2)
			for range 2 {
				go func() {
					resp, err := g.Client.Post(g.URL+"/v1beta/models/"+modelFlash+":streamGenerateContent?alt=sse&key="+key, "application/json", strings.NewReader(genBody))
					if err != nil {
						started <- struct{}{}
						errs <- err
						return
					}
					defer resp.Body.Close()
					first := true
					evs, _, err := readSSE(resp.Body, func(sseEvent) {
						if first {
							first = false
							started <- struct{}{}
						}
					})
					if first {
						started <- struct{}{}
					}
					if err == nil && (resp.StatusCode != 200 || len(evs) != 3) {
						err = fmt.Errorf("stream: status %d, %d events", resp.StatusCode, len(evs))
					}
					errs <- err
				}()
			}
			<-started
			<-started
			before := generations(fake)
			r, err := g.send(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(key), genBody)
			stillOpen := fake.OpenStreams() == 2
			if err != nil {
				t.Fatal(err)
			}
			if stillOpen {
				proved = true
				wantRefusal(t, r, "concurrency")
				if got := generations(fake) - before; got != 0 {
					t.Errorf("the refused request reached the upstream")
				}
			} else {
				t.Logf("the streams ended before the third request was answered (%d); again with slower streams", r.Status)
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		}
		if !proved {
			t.Fatal("the streams never stayed open long enough to test the limit")
		}
		g.waitUsage(t, "conc", "concurrency", 0)
		wantOK(t, g.generate(modelFlash, key))
	})

	// tpm and token_budget: charged from usageMetadata, a unary answer when it arrives, a stream
	// at its end; a request is refused once the tokens reach the limit, not before.
	for _, limit := range []string{"tpm", "token_budget"} {
		label := map[string]string{"tpm": "tpm", "token_budget": "budget"}[limit]
		t.Run(limit, func(t *testing.T) {
			client := newSDKClient(t, g, tenantKey(label))
			resp, err := client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := int64(resp.UsageMetadata.TotalTokenCount); got != unary {
				t.Fatalf("the SDK's answer used %d tokens, the fake's %d", got, unary)
			}
			g.waitUsage(t, label, limit, unary)
			if got := sdkStreamTokens(ctx, t, client); got != streamed {
				t.Fatalf("the SDK's stream used %d tokens, the fake's %d", got, streamed)
			}
			g.waitUsage(t, label, limit, unary+streamed)
			// unary+streamed < tokenLimit: the limit is not reached yet.
			if _, err := client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil); err != nil {
				t.Fatalf("third request with %d of %d tokens used: %v", unary+streamed, tokenLimit, err)
			}
			g.waitUsage(t, label, limit, 2*unary+streamed)
			before := generations(fake)
			r, err := g.send(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(tenantKey(label)), genBody)
			if err != nil {
				t.Fatal(err)
			}
			rf := wantRefusal(t, r, limit)
			// Tokens are counted in whole seconds: the first answer's leave the window at most
			// 61 s after it.
			if limit == "tpm" && (rf.RetryDelay <= 0 || rf.RetryDelay > 61*time.Second) {
				t.Errorf("tpm refusal: retry in %s, want within the minute (and its second)", rf.RetryDelay)
			}
			if limit == "token_budget" {
				wantRetryNear(t, rf, r.At.Add(untilMidnightUTC(r.At)))
			}
			_, err = client.Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
			wantSDKError(t, err, 429, "RESOURCE_EXHAUSTED")
			if got := generations(fake) - before; got != 0 {
				t.Errorf("%d refused requests reached the upstream", got)
			}
		})
	}

	// Retry-After is exact: a request sent when the last rpm refusal said passes.
	t.Run("RetryAfterHonoured", func(t *testing.T) {
		if rpmRefusal.At.IsZero() {
			t.Skip("no rpm refusal to honour")
		}
		wait := time.Until(rpmRefusal.RetryAt())
		t.Logf("waiting %s, as the last rpm refusal's Retry-After (%d s) said", wait.Round(time.Millisecond), rpmRefusal.RetryAfter)
		time.Sleep(wait)
		wantOK(t, g.generate(modelFlash, tenantKey("rpm")))
	})
	assertCleanUpstream(t, fake.Calls(), pool, tenantKey("rpm"), tenantKey("rpd"), tenantKey("conc"), tenantKey("tpm"), tenantKey("budget"))
}

// wantDenied asserts an error answer with the status, whose message contains each of want,
// in Google's envelope, or in the one-element array the OpenAI-compatible endpoints wrap it in.
func wantDenied(t *testing.T, r timedResponse, code int, status string, want ...string) {
	t.Helper()
	if r.Status != code {
		t.Fatalf("status %d, want %d; body: %s", r.Status, code, r.Body)
	}
	body := bytes.TrimSpace(r.Body)
	if bytes.HasPrefix(body, []byte("[")) {
		var arr []json.RawMessage
		if json.Unmarshal(body, &arr) != nil || len(arr) != 1 {
			t.Fatalf("error array of %d elements: %s", len(arr), r.Body)
		}
		body = arr[0]
	}
	var e googleError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not Google's error envelope: %v: %s", err, r.Body)
	}
	if e.Error.Code != code || e.Error.Status != status {
		t.Errorf("error code %d status %q, want %d %s: %s", e.Error.Code, e.Error.Status, code, status, r.Body)
	}
	for _, w := range want {
		if !strings.Contains(e.Error.Message, w) {
			t.Errorf("error message %q does not contain %q", e.Error.Message, w)
		}
	}
}

// mustSend is g.send on the test's goroutine.
func (g *gateway) mustSend(t *testing.T, method, path string, header http.Header, body string) timedResponse {
	t.Helper()
	r, err := g.send(method, path, header, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// modelNames returns the names a models.list answer (native or OpenAI) holds, sorted as given.
func modelNames(t *testing.T, r timedResponse) []string {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("models list: %d %s", r.Status, r.Body)
	}
	var l struct {
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		NextPageToken string `json:"nextPageToken"`
	}
	if err := json.Unmarshal(r.Body, &l); err != nil {
		t.Fatalf("models list: %v: %s", err, r.Body)
	}
	if l.NextPageToken != "" {
		t.Fatalf("models list has another page; the test expects one: %s", r.Body)
	}
	var out []string
	for _, m := range l.Models {
		out = append(out, strings.TrimPrefix(m.Name, "models/"))
	}
	for _, m := range l.Data {
		out = append(out, strings.TrimPrefix(m.ID, "models/"))
	}
	return out
}

// TestTenantModelsAndExpiry: a policy's model globs on the native and the OpenAI-compatible
// paths and in both models lists; an expired key and one that expires while caddy runs.
func TestTenantModelsAndExpiry(t *testing.T) {
	t.Parallel()
	fake, up := newFake(t)
	pool := poolKeys(2)
	// Whole seconds (RFC 3339 in the Caddyfile), a few seconds after caddy is up.
	soon := time.Now().Add(4 * time.Second).Truncate(time.Second).Add(time.Second)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Options: []string{
		accessKeyOption("globs", "models gemini-2.5-flash* gemini-2.0-*"),
		accessKeyOption("expired", "expires 2020-01-01T00:00:00Z"),
		accessKeyOption("soon", "expires "+soon.UTC().Format(time.RFC3339)),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("ExpiresSoon", func(t *testing.T) {
		key := tenantKey("soon")
		if left := time.Until(soon); left > 500*time.Millisecond {
			wantOK(t, g.generate(modelFlash, key))
		} else {
			t.Logf("caddy started too late (%s before the expiry) to check the key before it", left)
		}
		time.Sleep(time.Until(soon))
		before := upstreamCalls(fake)
		r := g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(key), genBody)
		wantDenied(t, r, 401, "UNAUTHENTICATED", "access key expired")
		if upstreamCalls(fake) != before {
			t.Errorf("a request with an expired key reached the upstream")
		}
	})

	t.Run("Expired", func(t *testing.T) {
		key := tenantKey("expired")
		before := upstreamCalls(fake)
		for _, path := range []string{"/v1beta/models/" + modelFlash + ":generateContent", "/v1beta/models", "/v1beta/files"} {
			method, body := http.MethodPost, genBody
			if !strings.HasSuffix(path, ":generateContent") {
				method, body = http.MethodGet, ""
			}
			wantDenied(t, g.mustSend(t, method, path, apiKeyHeader(key), body), 401, "UNAUTHENTICATED", "access key expired")
		}
		_, err := newSDKClient(t, g, key).Models.GenerateContent(ctx, modelFlash, genai.Text("hello"), nil)
		apiErr := wantSDKError(t, err, 401, "UNAUTHENTICATED")
		if !strings.Contains(apiErr.Message, "access key expired") {
			t.Errorf("SDK error message %q", apiErr.Message)
		}
		if upstreamCalls(fake) != before {
			t.Errorf("requests with an expired key reached the upstream")
		}
	})

	key := tenantKey("globs")
	allowed := []string{"gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-2.5-flash", "gemini-2.5-flash-lite"}
	denied := []string{"gemini-2.5-pro", "gemini-3-flash-preview", "gemini-3-pro-preview", modelEmbed}

	t.Run("Native", func(t *testing.T) {
		for _, m := range allowed {
			wantOK(t, g.generate(m, key))
		}
		before := upstreamCalls(fake)
		for _, m := range denied {
			for _, path := range []string{"/v1beta/models/" + m + ":generateContent", "/v1beta/models/" + m + ":streamGenerateContent?alt=sse", "/v1/models/" + m + ":countTokens"} {
				wantDenied(t, g.mustSend(t, http.MethodPost, path, apiKeyHeader(key), genBody), 403, "PERMISSION_DENIED", m)
			}
			wantDenied(t, g.mustSend(t, http.MethodGet, "/v1beta/models/"+m, apiKeyHeader(key), ""), 403, "PERMISSION_DENIED", m)
		}
		_, err := newSDKClient(t, g, key).Models.GenerateContent(ctx, modelPro, genai.Text("hello"), nil)
		apiErr := wantSDKError(t, err, 403, "PERMISSION_DENIED")
		if !strings.Contains(apiErr.Message, modelPro) {
			t.Errorf("the SDK's error does not name the model: %q", apiErr.Message)
		}
		if got := upstreamCalls(fake) - before; got != 0 {
			t.Errorf("%d requests for denied models reached the upstream", got)
		}
	})

	t.Run("OpenAI", func(t *testing.T) {
		bearer := http.Header{"Authorization": {"Bearer " + key}}
		chat := func(model string) string {
			return `{"model":"` + model + `","messages":[{"role":"user","content":"hello"}]}`
		}
		r := g.mustSend(t, http.MethodPost, "/v1beta/openai/chat/completions", bearer, chat("gemini-2.0-flash"))
		if r.Status != 200 || !bytes.Contains(r.Body, []byte("echo: hello")) {
			t.Fatalf("allowed model on the OpenAI path: %d %s", r.Status, r.Body)
		}
		before := upstreamCalls(fake)
		for _, m := range []string{modelPro, "models/" + modelPro} {
			r := g.mustSend(t, http.MethodPost, "/v1beta/openai/chat/completions", bearer, chat(m))
			wantDenied(t, r, 403, "PERMISSION_DENIED", modelPro)
		}
		if got := upstreamCalls(fake) - before; got != 0 {
			t.Errorf("%d OpenAI requests for a denied model reached the upstream", got)
		}
	})

	t.Run("ModelsList", func(t *testing.T) {
		want := strings.Join(allowed, " ")
		if got := strings.Join(modelNames(t, g.mustSend(t, http.MethodGet, "/v1beta/models?pageSize=1000", apiKeyHeader(key), "")), " "); got != want {
			t.Errorf("models.list shows %s, want only %s", got, want)
		}
		if got := strings.Join(modelNames(t, g.mustSend(t, http.MethodGet, "/v1beta/openai/models", http.Header{"Authorization": {"Bearer " + key}}, "")), " "); got != want {
			t.Errorf("the OpenAI models list shows %s, want only %s", got, want)
		}
		var sdk []string
		for m, err := range newSDKClient(t, g, key).Models.All(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			sdk = append(sdk, strings.TrimPrefix(m.Name, "models/"))
		}
		if got := strings.Join(sdk, " "); got != want {
			t.Errorf("the SDK lists %s, want %s", got, want)
		}
		// A key without a policy still sees every model.
		if all := modelNames(t, g.mustSend(t, http.MethodGet, "/v1beta/models?pageSize=1000", apiKeyHeader(accessKey), "")); len(all) != 8 {
			t.Errorf("a key without a policy lists %d models: %v", len(all), all)
		}
	})
	assertCleanUpstream(t, fake.Calls(), pool, key, tenantKey("soon"), tenantKey("expired"))
}

// TestTenantPolicyAdminReloadRestart: a limit changed with the admin API applies at once; the
// panel's edit and the Caddyfile's policies survive a reload and a restart on the same
// database, and a day's request count survives the restart too. A policy changed in the
// Caddyfile replaces the stored one at the next reload.
func TestTenantPolicyAdminReloadRestart(t *testing.T) {
	t.Parallel()
	fake, up := newFake(t)
	pool := poolKeys(2)
	cfg := gatewayConfig{Upstream: up.URL, PoolKeys: pool, Options: []string{
		accessKeyOption("panel"),
		accessKeyOption("fresh"),
		accessKeyOption("daily", "rpd 3", "models gemini-2.5-*"),
	}}
	g := startGateway(t, cfg)
	panel, daily := tenantKey("panel"), tenantKey("daily")
	gen := func(key string) timedResponse {
		return g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(key), genBody)
	}
	wantRPD := func(when string) {
		t.Helper()
		before := generations(fake)
		wantRefusal(t, gen(daily), "rpd")
		if generations(fake) != before {
			t.Errorf("%s: refused requests reached the upstream", when)
		}
	}

	// The Caddyfile's policy, as the admin API shows it.
	k := g.adminAccessKeyByLabel(t, "daily")
	if k.RPD != 3 || strings.Join(k.Models, " ") != "gemini-2.5-*" {
		t.Errorf("the admin API shows the Caddyfile's policy as %+v", k)
	}
	n, _ := byStatus(g.burst(t, 5, daily))
	if n[200] != 3 || n[429] != 2 {
		t.Fatalf("5 requests against rpd 3: %v", n)
	}
	wantRPD("at first")

	// A PATCH sets rpm 2 on a key without a policy: it holds from the next request.
	id := g.adminAccessKeyByLabel(t, "panel").ID
	var patched adminAccessKey
	g.adminCall(t, http.MethodPatch, fmt.Sprintf("access-keys/%d", id), `{"rpm":2}`, http.StatusOK, &patched)
	if patched.RPM != 2 {
		t.Fatalf("PATCH answered %+v", patched)
	}
	wantOK(t, g.generate(modelFlash, panel))
	wantOK(t, g.generate(modelFlash, panel))
	wantRefusal(t, gen(panel), "rpm")
	// Raised to 5: the minute's two still count, three more pass, then 429.
	g.adminCall(t, http.MethodPatch, fmt.Sprintf("access-keys/%d", id), `{"rpm":5}`, http.StatusOK, nil)
	for range 3 {
		wantOK(t, g.generate(modelFlash, panel))
	}
	wantRefusal(t, gen(panel), "rpm")
	g.adminCall(t, http.MethodPatch, fmt.Sprintf("access-keys/%d", id), `{"models":["gemini-2.5-flash*"]}`, http.StatusOK, nil)
	// A model restriction applies at once too (on a key with no limit in the way).
	fresh := tenantKey("fresh")
	wantOK(t, g.generate(modelPro, fresh))
	g.adminCall(t, http.MethodPatch, fmt.Sprintf("access-keys/%d", g.adminAccessKeyByLabel(t, "fresh").ID), `{"models":["gemini-2.0-*"]}`, http.StatusOK, nil)
	before := generations(fake)
	wantDenied(t, g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelPro+":generateContent", apiKeyHeader(fresh), genBody), 403, "PERMISSION_DENIED", modelPro)
	if generations(fake) != before {
		t.Errorf("a request for a model the PATCH denied reached the upstream")
	}
	wantOK(t, g.generate("gemini-2.0-flash", fresh))

	// A reload with an unchanged policy for both keys keeps the panel's edit and the counts.
	cfg.Options = append(cfg.Options, "max_retries 2")
	g.Reload(cfg)
	if k := g.adminAccessKeyByLabel(t, "panel"); k.RPM != 5 || strings.Join(k.Models, " ") != "gemini-2.5-flash*" {
		t.Errorf("after a reload the panel's edit is %+v", k)
	}
	wantRefusal(t, gen(panel), "rpm")
	wantRPD("after a reload")

	// A restart on the same database: the policies are the same, the day's count too (the
	// minute's window starts again: rpm 5 lets five through).
	g.Restart()
	if k := g.adminAccessKeyByLabel(t, "panel"); k.RPM != 5 {
		t.Errorf("after a restart the panel's edit is %+v", k)
	}
	wantRPD("after a restart")
	// (A request refused for its model costs nothing of a limit.)
	wantDenied(t, g.mustSend(t, http.MethodPost, "/v1beta/models/"+modelPro+":generateContent", apiKeyHeader(panel), genBody), 403, "PERMISSION_DENIED", modelPro)
	n, _ = byStatus(g.burst(t, 8, panel))
	if n[200] != 5 || n[429] != 3 {
		t.Errorf("8 requests against the panel's rpm 5 after a restart: %v", n)
	}

	// The Caddyfile's policy changes: it replaces the stored one at the reload.
	cfg.Options[2] = accessKeyOption("daily", "rpd 4", "models gemini-2.5-*")
	g.Reload(cfg)
	if k := g.adminAccessKeyByLabel(t, "daily"); k.RPD != 4 {
		t.Errorf("after the Caddyfile raised rpd to 4 the admin API shows %+v", k)
	}
	wantDenied(t, g.mustSend(t, http.MethodPost, "/v1beta/models/gemini-2.0-flash:generateContent", apiKeyHeader(daily), genBody), 403, "PERMISSION_DENIED", "gemini-2.0-flash")
	wantOK(t, g.generate(modelFlash, daily))
	wantRPD("after the Caddyfile raised rpd by one")
	assertCleanUpstream(t, fake.Calls(), pool, panel, daily, fresh)
}

// jsOutcome is one step of e2e/jsclient/tenant.mjs: a value, or the SDK's error.
type jsOutcome struct {
	OK      bool            `json:"ok"`
	Value   json.RawMessage `json:"value"`
	Name    string          `json:"name"`
	Status  int             `json:"status"`
	Message string          `json:"message"`
}

// The official JS SDK meets a policy: the 429 of rpm and the 403 of a denied model reach it as
// its ApiError with Google's status and body, and its models list shows only allowed models.
func TestTenantJSSDK(t *testing.T) {
	t.Parallel()
	node, dir := jsClient(t)
	fake, up := newFake(t)
	pool := poolKeys(2)
	g := startGateway(t, gatewayConfig{Upstream: up.URL, PoolKeys: pool, Options: []string{
		accessKeyOption("js-rpm", "rpm 1"),
		accessKeyOption("js-globs", "models gemini-2.0-*"),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "tenant.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GATEWAY_URL="+g.URL, "RPM_KEY="+tenantKey("js-rpm"), "GLOBS_KEY="+tenantKey("js-globs"),
		"ALLOWED_MODEL=gemini-2.0-flash", "DENIED_MODEL="+modelPro)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	before := generations(fake)
	if err := cmd.Run(); err != nil {
		t.Fatalf("node tenant.mjs: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var res map[string]jsOutcome
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil {
		t.Fatalf("script output: %v: %s", err, stdout.String())
	}
	t.Logf("JS SDK outcomes: %s", stdout.String())
	for _, step := range []string{"first", "allowed"} {
		if o := res[step]; !o.OK || !strings.Contains(string(o.Value), "hello") {
			t.Errorf("%s: %+v", step, o)
		}
	}
	for step, want := range map[string]struct {
		code   int
		status string
	}{"second": {429, "RESOURCE_EXHAUSTED"}, "streamed": {429, "RESOURCE_EXHAUSTED"}, "denied": {403, "PERMISSION_DENIED"}} {
		o := res[step]
		if o.OK || o.Name != "ApiError" || o.Status != want.code || !strings.Contains(o.Message, want.status) {
			t.Errorf("%s: %+v, want the SDK's ApiError %d %s", step, o, want.code, want.status)
		}
	}
	if !strings.Contains(res["denied"].Message, modelPro) {
		t.Errorf("the denied model's error does not name it: %s", res["denied"].Message)
	}
	var names []string
	if o := res["listed"]; !o.OK || json.Unmarshal(o.Value, &names) != nil ||
		strings.Join(names, " ") != "models/gemini-2.0-flash models/gemini-2.0-flash-lite" {
		t.Errorf("the JS SDK lists %+v, want the two gemini-2.0 models", res["listed"])
	}
	if got := generations(fake) - before; got != 2 {
		t.Errorf("the upstream saw %d generations, want the 2 allowed", got)
	}
	assertCleanUpstream(t, fake.Calls(), pool, tenantKey("js-rpm"), tenantKey("js-globs"))
}
