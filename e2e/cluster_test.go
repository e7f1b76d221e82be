package e2e

// Several caddy instances on one PostgreSQL database act as one gateway: three processes of the
// binary under test, each with its own ports, share key states, cooldowns, access keys,
// sessions, upload sessions and one scheduler, and ride out a database outage.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/fakegemini"
	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
)

// dbPassword is the password the tests' database URLs carry. pgtest's servers trust every
// local connection, so it is never checked, but the gateway must never print it.
const dbPassword = "e2e-db-S3cret-pw"

// withPassword puts dbPassword in a pgtest URL.
func withPassword(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), dbPassword)
	return u.String()
}

// noPasswordInOutput fails t if a gateway's output ever showed the database password. Call it
// before starting the gateways: cleanups run last in, first out, so it looks once they have
// stopped.
func noPasswordInOutput(t *testing.T, gs *[]*gateway) {
	t.Cleanup(func() {
		for i, g := range *gs {
			if strings.Contains(g.Output(), dbPassword) {
				t.Errorf("instance %d's log output shows the database password", i+1)
			}
		}
	})
}

// startCluster starts n caddy instances on the database db (each Database entry overrides it
// when not empty) in front of the same upstream, and returns them in order.
func startCluster(t *testing.T, n int, cfg gatewayConfig, databases ...string) []*gateway {
	t.Helper()
	gs := make([]*gateway, n)
	for i := range gs {
		c := cfg
		if i < len(databases) && databases[i] != "" {
			c.Database = databases[i]
		}
		gs[i] = startGateway(t, c)
	}
	return gs
}

// kill ends caddy with SIGKILL, as a crash would: nothing is flushed, no connection closed
// politely.
func (g *gateway) kill() {
	g.t.Helper()
	if g.cmd == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	g.cmd = nil
}

// generateCalls returns the upstream generateContent calls among calls.
func generateCalls(calls []fakegemini.Call) []fakegemini.Call {
	var out []fakegemini.Call
	for _, c := range calls {
		if c.IsGeneration() {
			out = append(out, c)
		}
	}
	return out
}

// TestClusterThreeInstancesShareState: three instances on one database. A key disabled through
// instance 1's admin API is not used by 2 and 3 a second later; an access key made on 1 works
// on 3; an upload started on 1 takes its chunks on 2 and is used on 3, all on the owning key;
// a 429 cooldown met on 2 is honoured by 3 without an upstream call; an admin session cookie
// from 1 works on 3. Instance 3 reads the URL from the environment
// ({env.…}), and no instance ever prints the database password.
func TestClusterThreeInstancesShareState(t *testing.T) {
	fake, up := newFake(t)
	pool := poolKeys(4)
	dbURL := withPassword(t, pgtest.URL(t))
	t.Setenv("SYNAPSE_E2E_DATABASE_URL", dbURL)
	var gs []*gateway
	noPasswordInOutput(t, &gs)
	gs = startCluster(t, 3, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Database: dbURL},
		"", "", "{env.SYNAPSE_E2E_DATABASE_URL}")
	g1, g2, g3 := gs[0], gs[1], gs[2]
	ids := map[string]int64{}
	for s, k := range g1.keyStates(pool) {
		ids[s] = k.ID
	}

	// A key disabled through instance 1's admin API: 2 and 3 stop using it within a second.
	off := pool[0]
	g1.adminAPI(http.MethodPost, fmt.Sprintf("keys/%d/disable", ids[off]), "", http.StatusOK, nil)
	time.Sleep(time.Second)
	fake.Reset()
	for range 8 {
		wantOK(t, g2.generate(modelFlash, accessKey))
		wantOK(t, g3.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[off]; n != 0 {
		t.Errorf("instances 2 and 3 used the key instance 1 disabled a second earlier %d times", n)
	}
	for i, g := range []*gateway{g2, g3} {
		if st := g.keyStates(pool)[off]; st.Status != "disabled" {
			t.Errorf("instance %d's admin API shows the key disabled on 1 as %q", i+2, st.Status)
		}
	}

	// An access key made on instance 1 works on 3.
	var made struct {
		Key string `json:"key"`
	}
	g1.adminAPI(http.MethodPost, "access-keys", `{"label":"made on instance 1"}`, http.StatusCreated, &made)
	if !eventually(5*time.Second, func() bool { return g3.generate(modelFlash, made.Key).Status == http.StatusOK }) {
		t.Fatal("the access key made on instance 1 does not work on instance 3")
	}

	// An upload started on 1, its chunk sent to 2, the file used on 3: all on the owning key.
	fake.Reset()
	data := strings.Repeat("a cluster of cats ", 500)
	start := startUpload(t, g1, int64(len(data)), "text/plain")
	chunkURL := g2.URL + strings.TrimPrefix(start, g1.URL)
	req, _ := http.NewRequest(http.MethodPost, chunkURL, strings.NewReader(data))
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err := g2.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var f struct {
		File struct{ Name, URI string } `json:"file"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &f) != nil || f.File.URI == "" {
		t.Fatalf("the chunk on instance 2: %d %s", resp.StatusCode, body)
	}
	owner := fake.FileOwner(f.File.Name)
	for range 3 {
		r := g3.do(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey),
			`{"contents":[{"parts":[{"text":"hello"},{"file_data":{"mime_type":"text/plain","file_uri":"`+f.File.URI+`"}}]}]}`)
		wantOK(t, r)
	}
	var keysUsed []string
	for _, c := range fake.Calls() {
		if c.Key != "" {
			keysUsed = append(keysUsed, c.Key)
		}
	}
	if len(keysUsed) < 5 {
		t.Fatalf("%d upstream calls for the upload and its uses", len(keysUsed))
	}
	for _, k := range keysUsed {
		if k != owner {
			t.Fatalf("a call of the upload (start on 1, chunk on 2, generate on 3) used %s, not the owning key %s", mask(k), mask(owner))
		}
	}

	// A 429 met on instance 2 cools the key down on 3: 3 makes no call with it.
	hot := pool[1]
	fake.SetKey(hot, fakegemini.QuotaMinute)
	fake.Reset()
	for i := 0; countKeys(fake.Calls(), "")[hot] == 0; i++ {
		if i == 12 {
			t.Fatal("instance 2 never tried the key that answers 429")
		}
		wantOK(t, g2.generate(modelFlash, accessKey))
	}
	time.Sleep(time.Second)
	fake.Reset()
	for range 8 {
		wantOK(t, g3.generate(modelFlash, accessKey))
	}
	if n := countKeys(fake.Calls(), "")[hot]; n != 0 {
		t.Errorf("instance 3 called the upstream %d times with the key cooling since instance 2 met its 429", n)
	}
	if st := g3.keyStates(pool)[hot]; st.Status != "cooling" && len(st.Cooldowns) == 0 {
		t.Errorf("instance 3's admin API shows the key cooling on 2 as %q without cooldowns", st.Status)
	}
	fake.SetKey(hot, fakegemini.OK)

	// An admin session opened on instance 1 works on instance 3.
	s1 := newAdminSession(t, g1)
	s1.call(http.MethodPost, "login", `{"admin_key":"`+adminKey+`"}`, http.StatusOK, nil)
	u1, _ := url.Parse(g1.URL + "/admin/api/session")
	u3, _ := url.Parse(g3.URL + "/admin/api/session")
	s3 := newAdminSession(t, g3)
	s3.hc.Jar.SetCookies(u3, s1.hc.Jar.Cookies(u1))
	var sess struct {
		Authenticated bool   `json:"authenticated"`
		Via           string `json:"via"`
	}
	s3.call(http.MethodGet, "session", "", http.StatusOK, &sess)
	if !sess.Authenticated || sess.Via != "cookie" {
		t.Errorf("instance 1's session on instance 3: %+v", sess)
	}
	assertCleanUpstream(t, fake.Calls(), pool, accessKey, made.Key)
}

// leaderMsg is what the instance that takes the cluster's leadership logs.
const leaderMsg = "this instance leads the cluster now"

// TestClusterSchedulerRunsOnOneLeader: with validation every minute on three instances, one
// disabled key is probed once per interval for the whole cluster (by the leader); after the
// leader is killed with SIGKILL, another instance takes over and probes it. It waits out two
// intervals, so it runs alongside the other parallel tests.
func TestClusterSchedulerRunsOnOneLeader(t *testing.T) {
	t.Parallel()
	fake, up := newFake(t)
	pool := poolKeys(2)
	dbURL := pgtest.URL(t)
	gs := startCluster(t, 3, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey},
		Database: dbURL, Options: []string{"validation_interval 1m"}})
	dead := pool[0]
	fake.SetKey(dead, fakegemini.Invalid)
	for i := 0; gs[0].keyStates(pool)[dead].Status != "disabled"; i++ {
		if i == 10 {
			t.Fatal("the invalid key was never disabled")
		}
		wantOK(t, gs[0].generate(modelFlash, accessKey))
	}
	fake.Reset()
	probes := func() int { return probesWith(fake.Calls(), dead) }

	// The first scheduled run, on whichever instance leads.
	if !eventually(75*time.Second, func() bool { return probes() > 0 }) {
		t.Fatal("the disabled key was not probed within an interval and a bit")
	}
	first := time.Now()
	leader := -1
	for i, g := range gs {
		if strings.Contains(g.Output(), leaderMsg) {
			if leader >= 0 {
				t.Fatalf("instances %d and %d both took the leadership", leader+1, i+1)
			}
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no instance says it leads")
	}
	// Nearly an interval later: every instance's timer has fired, only the leader probed.
	time.Sleep(55 * time.Second)
	if n := probes(); n != 1 {
		t.Errorf("%d probes of the disabled key within %s, want 1 (one validation per interval for the cluster)",
			n, time.Since(first).Round(time.Second))
	}
	t.Logf("instance %d leads; %d probe in %s", leader+1, probes(), time.Since(first).Round(time.Second))

	// The leader dies: another instance takes over at its next run, within an interval.
	gs[leader].kill()
	killed := time.Now()
	before := probes()
	if !eventually(75*time.Second, func() bool { return probes() > before }) {
		t.Fatal("no instance probed the disabled key within an interval of the leader's death")
	}
	next := -1
	for i, g := range gs {
		if i != leader && strings.Contains(g.Output(), leaderMsg) {
			next = i
		}
	}
	if next < 0 {
		t.Error("no other instance says it took the leadership")
	}
	t.Logf("instance %d took over %s after instance %d was killed", next+1, time.Since(killed).Round(time.Second), leader+1)
}

// TestClusterRidesOutADatabaseOutage: under load on three instances, PostgreSQL is stopped
// for 10 s. No plain generateContent fails; the admin API answers 503 UNAVAILABLE and a
// request naming a resource 503 meanwhile; once the server is back, every request's log row
// is written, or counted as dropped in log_rows_dropped_total.
func TestClusterRidesOutADatabaseOutage(t *testing.T) {
	fake, up := newFake(t)
	_ = fake
	pool := poolKeys(3)
	srv := pgtest.NewServer(t)
	dbURL := withPassword(t, srv.URL(t)) + "&connect_timeout=2"
	var gs []*gateway
	noPasswordInOutput(t, &gs)
	gs = startCluster(t, 3, gatewayConfig{Upstream: up.URL, PoolKeys: pool, AccessKeys: []string{accessKey}, Database: dbURL})
	rowsBefore, _ := requestLogTotal(t, gs[0])

	// Load: two clients per instance, one request after another, until told to stop.
	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, g := range gs {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r, err := g.tryDo(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey), genBody)
					sent.Add(1)
					if err != nil || r.Status != http.StatusOK {
						failed.Add(1)
						firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %v %.200s", r.Status, err, r.Body))
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
		}
	}
	time.Sleep(2 * time.Second)
	srv.Stop(t)
	stopped := time.Now()
	time.Sleep(time.Second)
	// Meanwhile the admin API and resource requests need the database: 503.
	r := gs[1].do(http.MethodPost, "/admin/api/access-keys", http.Header{"Authorization": {"Bearer " + adminKey}}, `{"label":"during the outage"}`)
	wantEnvelope(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	r = gs[2].do(http.MethodGet, "/v1beta/files/abc123", apiKeyHeader(accessKey), "")
	wantEnvelope(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	time.Sleep(10*time.Second - time.Since(stopped))
	srv.Start(t)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d requests over three instances, PostgreSQL down for 10 s in the middle: %d failed", sent.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d plain requests failed during the outage; the first: %v", failed.Load(), sent.Load(), firstFailure.Load())
	}

	// Every row is written once the database is back, or counted as dropped. (The two 503s
	// above are rows of their own: the resource request's; the admin call writes none.)
	want := sent.Load() + 1
	var rows int64
	var dropped float64
	if !eventually(60*time.Second, func() bool {
		rows, _ = requestLogTotal(t, gs[0])
		dropped = 0
		for _, g := range gs {
			dropped += g.metricSum("caddy_gemini_synapse_log_rows_dropped_total")
		}
		return rows-rowsBefore+int64(dropped) >= want
	}) {
		t.Errorf("after the outage: %d request rows written and %v dropped, want %d in all", rows-rowsBefore, dropped, want)
	}
	t.Logf("after the outage: %d request rows written, %v dropped, for %d requests", rows-rowsBefore, dropped, want)
	if rows-rowsBefore+int64(dropped) > want {
		t.Errorf("%d rows written and %v dropped for %d requests: more than sent", rows-rowsBefore, dropped, want)
	}
}

// runExample starts caddy on the example Caddyfile file of examples/cluster, made to run here
// by the replacements (old, new, ...), with its admin endpoint on g's admin port.
func (g *gateway) runExample(file string, replace ...string) {
	g.t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "cluster", file))
	if err != nil {
		g.t.Fatal(err)
	}
	text := strings.Replace(string(b), "{\n", fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n", g.adminPort), 1)
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(text, replace[i]) {
			g.t.Fatalf("%s has no %q", file, replace[i])
		}
		text = strings.ReplaceAll(text, replace[i], replace[i+1])
	}
	if err := os.WriteFile(g.configPath, []byte(text), 0o600); err != nil {
		g.t.Fatal(err)
	}
	g.startProcess()
	g.waitReady(false)
}

// TestClusterExampleBehindItsLoadBalancer runs examples/cluster as shipped, on loopback ports:
// two instances of Caddyfile.gateway on one database behind Caddyfile.lb. Requests, an access
// key made through the load balancer and an upload work through it; with one instance
// stopped, every request still succeeds.
func TestClusterExampleBehindItsLoadBalancer(t *testing.T) {
	_, up := newFake(t)
	pool := poolKeys(2)
	t.Setenv("DATABASE_URL", withPassword(t, pgtest.URL(t)))
	t.Setenv("ADMIN_KEY", adminKey)
	t.Setenv("ACCESS_KEYS", accessKey)
	t.Setenv("GOOGLE_API_KEYS", strings.Join(pool, ","))
	t.Setenv("GEMINI_UPSTREAM", up.URL)
	var gs []*gateway
	noPasswordInOutput(t, &gs)
	for range 2 {
		g := newGateway(t, gatewayConfig{PoolKeys: pool})
		g.runExample("Caddyfile.gateway", "\n:80 {", fmt.Sprintf("\nhttp://127.0.0.1:%d {", g.sitePort))
		gs = append(gs, g)
	}
	lb := newGateway(t, gatewayConfig{PoolKeys: pool})
	lb.runExample("Caddyfile.lb",
		"\n:80 {", fmt.Sprintf("\nhttp://127.0.0.1:%d {", lb.sitePort),
		"gateway1:80 gateway2:80", fmt.Sprintf("127.0.0.1:%d 127.0.0.1:%d", gs[0].sitePort, gs[1].sitePort))
	gs = append(gs, lb)

	for range 10 {
		wantOK(t, lb.generate(modelFlash, accessKey))
	}
	var made struct {
		Key string `json:"key"`
	}
	lb.adminAPI(http.MethodPost, "access-keys", `{"label":"through the load balancer"}`, http.StatusCreated, &made)
	// Round robin: four in a row reach both instances, once the other has it (milliseconds).
	if !eventually(5*time.Second, func() bool {
		for range 4 {
			if lb.generate(modelFlash, made.Key).Status != http.StatusOK {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the access key made through the load balancer does not work on both instances")
	}
	// The upload URL names the load balancer (the instances trust what it forwards); its
	// chunk may reach either instance.
	data := strings.Repeat("through the balancer ", 100)
	u := startUpload(t, lb, int64(len(data)), "text/plain")
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(data))
	req.Header.Set("X-Goog-Upload-Offset", "0")
	req.Header.Set("X-Goog-Upload-Command", "upload, finalize")
	resp, err := lb.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"uri"`) {
		t.Fatalf("the upload's chunk through the load balancer: %d %s", resp.StatusCode, body)
	}

	// One instance goes away: the load balancer sends everything to the other.
	gs[0].Stop()
	for i := range 20 {
		r, err := lb.tryDo(http.MethodPost, "/v1beta/models/"+modelFlash+":generateContent", apiKeyHeader(accessKey), genBody)
		if err != nil || r.Status != http.StatusOK {
			t.Fatalf("request %d with instance 1 stopped: %v %d %s", i, err, r.Status, r.Body)
		}
	}
}
