package geminisynapse

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
	"github.com/geminisynapse/caddy-gemini-synapse/store/postgres"
	"github.com/geminisynapse/caddy-gemini-synapse/store/sqlite"
	"github.com/geminisynapse/caddy-gemini-synapse/store/transfer"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// migrateSecret is the password put in the test's PostgreSQL URL (the test server trusts
// every login, so any password works): it must never be printed.
const migrateSecret = "hunter2-do-not-print"

// withPassword returns raw with migrateSecret as its password.
func withPassword(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), migrateSecret)
	return u.String()
}

// populated is what populateSQLite wrote, for the comparisons.
type populated struct {
	keySecrets     []string // by key id - 1
	deletedKey     string   // the secret of the key deleted (its logs stay)
	deletedAccess  string   // the secret of the access key deleted (the highest id)
	accessIDs      map[string]int64
	sessionHash    [32]byte
	resourceNames  []string
	uploadID       string
	requests, errs int
	from, to       time.Time // the logs' time range, on slot bounds
}

// populateSQLite fills a SQLite database at path through store/sqlite's public API, as a
// gateway would have over a few days, and closes it (the gateway is stopped).
func populateSQLite(t *testing.T, path string, requests, errs int) populated {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := populated{accessIDs: map[string]int64{}, requests: requests, errs: errs}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Upstream keys: two projects, one unlabelled, one disabled by hand, one deleted.
	keys := []store.NewKey{
		{Secret: "AIzaSy-migrate-key-1", Project: "proj-a"},
		{Secret: "AIzaSy-migrate-key-2", Project: "proj-a"},
		{Secret: "AIzaSy-migrate-key-3", Project: "proj-b"},
		{Secret: "AIzaSy-migrate-key-4"},
		{Secret: "AIzaSy-migrate-key-5", Project: "proj-b"},
	}
	if _, err := s.AddLabeledKeys(ctx, keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		p.keySecrets = append(p.keySecrets, k.Secret)
	}
	must(s.SetKeyStatus(ctx, 3, store.StatusDisabled, "API key not valid", true))
	s.SaveKeyState(store.KeyState{KeyID: 2, Failures: 2, LastError: "429 RESOURCE_EXHAUSTED"})
	s.SaveKeyProject(4, "proj-learned")
	now := time.Now().UTC()
	s.SaveCooldown(store.Cooldown{KeyID: 1, Model: "gemini-2.5-flash", Until: now.Add(time.Hour)})
	s.SaveCooldown(store.Cooldown{KeyID: 2, Model: "gemini-2.5-pro", Until: now.Add(2 * time.Hour)})
	s.Flush()

	// Access keys: policies, one disabled, one from the config (its config label and policy
	// kept) then edited in the panel, one deleted (the highest id).
	for _, a := range []struct{ secret, label, policy string }{
		{"sk-migrate-a", "team a", `{"models":["gemini-2.5-*"],"rpm":30}`},
		{"sk-migrate-b", "team b", ""},
	} {
		id, err := s.AddAccessKey(ctx, a.secret, a.label, a.policy)
		must(err)
		p.accessIDs[a.secret] = id
	}
	must(s.SetAccessKeyEnabled(ctx, p.accessIDs["sk-migrate-b"], false))
	if _, _, err := s.ApplyConfigAccessKeys(ctx, []store.ConfigAccessKey{
		{Secret: "sk-migrate-c", Label: "from config", Policy: `{"rpd":100,"shared":true}`},
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range mustAccessKeys(t, s) {
		if k.Hash == store.HashSecret("sk-migrate-c") {
			p.accessIDs["sk-migrate-c"] = k.ID
		}
	}
	edited := "edited in the panel"
	must(s.UpdateAccessKey(ctx, p.accessIDs["sk-migrate-c"], store.AccessKeyUpdate{Label: &edited}))
	p.deletedAccess = "sk-migrate-d"
	id, err := s.AddAccessKey(ctx, p.deletedAccess, "gone", "")
	must(err)
	p.accessIDs[p.deletedAccess] = id

	// Settings: a panel edit, and a config value.
	must(s.SetSetting(ctx, "max_retries", "5"))
	if _, err := s.ApplyConfigSetting(ctx, "request_log_retention", "720h"); err != nil {
		t.Fatal(err)
	}
	must(s.SetSetting(ctx, "request_log_retention", "240h")) // edited after the config gave it

	// An admin session, resources with owners, an upload session.
	p.sessionHash = sha256.Sum256([]byte("session-token"))
	must(s.CreateSession(ctx, p.sessionHash, now.Add(24*time.Hour)))
	p.resourceNames = []string{"files/abc", "cachedContents/xyz", "batches/123"}
	must(s.AddResources(ctx,
		store.Resource{Name: "files/abc", KeyID: 1, AccessKeyID: p.accessIDs["sk-migrate-a"], ExpiresAt: now.Add(48 * time.Hour)},
		store.Resource{Name: "cachedContents/xyz", KeyID: 2, AccessKeyID: p.accessIDs["sk-migrate-c"]},
		store.Resource{Name: "batches/123", KeyID: 4},
	))
	p.uploadID = "upload-migrate-1"
	must(s.AddUploadSession(ctx, store.UploadSession{
		ID: p.uploadID, KeyID: 1, UpstreamURI: "/upload/v1beta/files?upload_id=upload-migrate-1&upload_protocol=resumable",
		AccessKeyID: p.accessIDs["sk-migrate-a"], CreatedAt: now.Add(-time.Minute), ExpiresAt: now.Add(47 * time.Hour),
	}))

	// Logs over three days, naming every key and access key (the deleted ones included).
	p.to = time.UnixMilli(store.SlotOf(now.UnixMilli())).UTC().Add(store.UsageSlot)
	p.from = p.to.Add(-72 * time.Hour)
	span := p.to.Sub(p.from) - time.Millisecond
	models := []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "text-embedding-004"}
	access := []int64{0, p.accessIDs["sk-migrate-a"], p.accessIDs["sk-migrate-b"], p.accessIDs["sk-migrate-c"], p.accessIDs["sk-migrate-d"]}
	statuses := []int{200, 200, 200, 429, 500, 200, 403, 499}
	limits := []string{"", "", "", "rpm", "", "models", "", ""}
	for i := range requests {
		st := statuses[i%len(statuses)]
		s.LogRequest(store.RequestLog{
			Time:             p.from.Add(time.Duration(int64(span) * int64(i) / int64(requests))),
			AccessKeyID:      access[i%len(access)],
			KeyID:            int64(i%5 + 1),
			Method:           "POST",
			Path:             fmt.Sprintf("/v1beta/models/%s:generateContent", models[i%len(models)]),
			Model:            models[i%len(models)],
			Stream:           i%3 == 0,
			Status:           st,
			Attempts:         1 + i%3,
			Latency:          time.Duration(i%900+10) * time.Millisecond,
			TTFB:             time.Duration(i%300+5) * time.Millisecond,
			PromptTokens:     int64(i % 1000),
			CandidatesTokens: int64(i % 700),
			ThoughtsTokens:   int64(i % 50),
			TotalTokens:      int64(i%1000 + i%700 + i%50),
			Error:            map[bool]string{true: "", false: "upstream said no"}[st < 400],
			LimitHit:         limits[i%len(limits)],
		})
	}
	for i := range errs {
		s.LogError(store.ErrorLog{
			Time:        p.from.Add(time.Duration(int64(span) * int64(i) / int64(errs))),
			KeyID:       int64(i%5 + 1),
			AccessKeyID: access[i%len(access)],
			Model:       models[i%len(models)],
			Path:        "/v1beta/models/x:generateContent",
			Status:      []int{429, 500, 503, 400}[i%4],
			Message:     fmt.Sprintf("attempt %d failed", i),
		})
	}
	s.Flush()
	if d := s.Dropped(); d != 0 {
		t.Fatalf("the SQLite writer dropped %d rows", d)
	}

	// Deleted last, so that their logs, resources and usage name them.
	must(s.DeleteAccessKey(ctx, p.accessIDs[p.deletedAccess]))
	p.deletedKey = p.keySecrets[4]
	must(s.DeleteKey(ctx, 5))
	return p
}

func mustAccessKeys(t *testing.T, s store.Store) []store.AccessKey {
	t.Helper()
	ks, err := s.AccessKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// migrateCmd runs `caddy gemini-synapse migrate args...` through the command the plugin
// registers with caddy, and returns what it printed.
func migrateCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	c, ok := caddycmd.Commands()["gemini-synapse"]
	if !ok {
		t.Fatal("the gemini-synapse command is not registered")
	}
	root := &cobra.Command{Use: c.Name, Short: c.Short, Long: c.Long}
	c.CobraFunc(root)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"migrate"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// fileHash returns the SHA-256 of the files at paths (a missing one hashes as empty).
func fileHash(t *testing.T, paths ...string) [32]byte {
	t.Helper()
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		h.Write(b)
	}
	return [32]byte(h.Sum(nil))
}

// TestMigrateCommand copies a populated SQLite database through `caddy gemini-synapse migrate`
// and compares everything through both engines' public API: keys, cooldowns, access keys,
// settings (and the config values behind them), tombstones, sessions, resources, upload
// sessions, log rows and every statistic. A second run copies nothing; rows created
// afterwards get ids above the copied ones.
func TestMigrateCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	p := populateSQLite(t, path, 3000, 1000)
	before, beforeFiles := fileHash(t, path, path+"-wal"), dirNames(t, dir)
	// With a pool setting, as the gateway's database URL may carry one.
	pgURL := withPassword(t, pgtest.URL(t)) + "&pool_max_conns=4"

	out, err := migrateCmd(t, "--from", path, "--to", pgURL)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	t.Logf("first run:\n%s", out)
	if strings.Contains(out, migrateSecret) {
		t.Fatalf("the output shows the URL's password:\n%s", out)
	}
	if !strings.Contains(out, postgres.MaskURL(pgURL)) {
		t.Errorf("the output does not name the masked URL %s:\n%s", postgres.MaskURL(pgURL), out)
	}
	for _, want := range []string{
		fmt.Sprintf("request_logs  %d  %d  0", p.requests, p.requests),
		fmt.Sprintf("error_logs  %d  %d  0", p.errs, p.errs),
		"keys  4  4  0",
		"access_keys  3  3  0",
	} {
		if !containsSpaced(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	if after := fileHash(t, path, path+"-wal"); after != before {
		t.Error("migrate changed the SQLite file")
	}
	if after := dirNames(t, dir); !reflect.DeepEqual(after, beforeFiles) {
		// A -wal or -shm file left by a run as root would keep the gateway from opening it.
		t.Errorf("migrate left files beside the database: %v, before %v", after, beforeFiles)
	}

	src, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := postgres.Open(ctx, pgURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	compareStores(t, src, dst, p)

	// A second run copies nothing and changes nothing.
	out, err = migrateCmd(t, "--from", path, "--to", pgURL)
	if err != nil {
		t.Fatalf("second migrate: %v\n%s", err, out)
	}
	t.Logf("second run:\n%s", out)
	total := 3 + 3 + 4 + 2 + 2 + 1 + 3 + 1 + p.requests + p.errs // + the sums, unknown here
	if !strings.Contains(out, "\n0 rows copied") {
		t.Errorf("the second run copied rows:\n%s", out)
	}
	res, err := transfer.Copy(ctx, path, pgURL, transfer.Options{BatchSize: 700})
	if err != nil {
		t.Fatal(err)
	}
	if res.Read() < int64(total) {
		t.Errorf("the third run read %d rows, want at least %d", res.Read(), total)
	}
	for _, tr := range res.Tables {
		if tr.Copied != 0 || tr.Differing != 0 || tr.Orphans != 0 || tr.Present != tr.Read {
			t.Errorf("third run, %s: %+v, want every row present and equal", tr.Table, tr)
		}
	}
	compareStores(t, src, dst, p)

	// Rows created afterwards get ids above every copied one, and above the deleted keys'.
	added, err := dst.AddKeys(ctx, []string{"AIzaSy-added-after-migrate"})
	if err != nil || added != 1 {
		t.Fatalf("AddKeys after migrate = %d, %v", added, err)
	}
	ks, err := dst.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if last := ks[len(ks)-1]; last.Secret != "AIzaSy-added-after-migrate" || last.ID <= 5 {
		t.Errorf("the key added after migrate has id %d (secret %q), want above 5 (the deleted key's)", last.ID, last.Secret)
	}
	aid, err := dst.AddAccessKey(ctx, "sk-added-after-migrate", "new", "")
	if err != nil {
		t.Fatal(err)
	}
	if aid <= p.accessIDs[p.deletedAccess] {
		t.Errorf("the access key added after migrate has id %d, want above %d (the deleted one's)", aid, p.accessIDs[p.deletedAccess])
	}
	dst.LogRequest(store.RequestLog{Time: time.Now(), Model: "gemini-2.5-flash", Status: 200, KeyID: ks[len(ks)-1].ID})
	dst.LogError(store.ErrorLog{Time: time.Now(), Model: "gemini-2.5-flash", Status: 500, KeyID: ks[len(ks)-1].ID})
	dst.Flush()
	if n, err := dst.CountRequestLogs(ctx); err != nil || n != int64(p.requests)+1 {
		t.Errorf("request rows after one more = %d, %v; want %d (a reused id would not insert)", n, err, p.requests+1)
	}
	if n, err := dst.CountErrors(ctx, store.LogQuery{}); err != nil || n != int64(p.errs)+1 {
		t.Errorf("error rows after one more = %d, %v; want %d", n, err, p.errs+1)
	}
	if d := dst.Dropped(); d != 0 {
		t.Errorf("the PostgreSQL writer dropped %d rows", d)
	}
}

// containsSpaced reports whether out has a line whose fields start with want's.
func containsSpaced(out, want string) bool {
	w := strings.Fields(want)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(w) && reflect.DeepEqual(f[:len(w)], w) {
			return true
		}
	}
	return false
}

// compareStores checks that dst holds what src holds, through store.Store only.
func compareStores(t *testing.T, src, dst store.Store, p populated) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	same := func(what string, get func(store.Store) (any, error)) {
		t.Helper()
		a, err := get(src)
		if err != nil {
			t.Fatalf("%s on SQLite: %v", what, err)
		}
		b, err := get(dst)
		if err != nil {
			t.Fatalf("%s on PostgreSQL: %v", what, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s differ:\nSQLite     %+v\nPostgreSQL %+v", what, a, b)
		}
	}
	same("keys", func(s store.Store) (any, error) { return s.Keys(ctx) })
	same("cooldowns", func(s store.Store) (any, error) { return s.Cooldowns(ctx, now) })
	same("access keys", func(s store.Store) (any, error) { return s.AccessKeys(ctx) })
	same("settings", func(s store.Store) (any, error) { return s.Settings(ctx) })
	same("session", func(s store.Store) (any, error) {
		exp, ok, err := s.SessionExpiry(ctx, p.sessionHash, now)
		return fmt.Sprint(exp, ok), err
	})
	same("resource owners", func(s store.Store) (any, error) { return s.ResourceOwners(ctx, p.resourceNames, now) })
	same("owned resources", func(s store.Store) (any, error) { return s.OwnedResourceCounts(ctx, now) })
	same("upload session", func(s store.Store) (any, error) { return s.UploadSessionByID(ctx, p.uploadID, now) })
	same("request rows", func(s store.Store) (any, error) { return s.CountRequestLogs(ctx) })
	same("error rows", func(s store.Store) (any, error) { return s.CountErrors(ctx, store.LogQuery{}) })
	same("requests", func(s store.Store) (any, error) { return s.RecentRequests(ctx, store.LogQuery{Limit: 10000}) })
	same("errors", func(s store.Store) (any, error) { return s.RecentErrors(ctx, store.LogQuery{Limit: 10000}) })
	same("a key's requests", func(s store.Store) (any, error) {
		return s.RecentRequests(ctx, store.LogQuery{Limit: 10000, AccessKeyID: p.accessIDs["sk-migrate-a"], Status: 429})
	})

	var hourly, odd []time.Time
	for b := p.from; !b.After(p.to); b = b.Add(time.Hour) {
		hourly = append(hourly, b)
	}
	for b := p.from.Add(7 * time.Minute); b.Before(p.to); b = b.Add(5 * time.Hour) {
		odd = append(odd, b) // not on slots: answered from the rows
	}
	same("usage buckets", func(s store.Store) (any, error) { return s.UsageBuckets(ctx, hourly) })
	same("usage buckets off slots", func(s store.Store) (any, error) { return s.UsageBuckets(ctx, odd) })
	same("usage by model", func(s store.Store) (any, error) { return s.UsageByModel(ctx, p.from, p.to, 0) })
	same("access key usage", func(s store.Store) (any, error) { return s.AccessKeyUsage(ctx, p.from, p.to) })
	same("access key counts", func(s store.Store) (any, error) { return s.AccessKeyCounts(ctx, p.from) })
	for secret, id := range p.accessIDs {
		same("usage buckets of "+secret, func(s store.Store) (any, error) { return s.UsageBucketsOf(ctx, id, hourly) })
		same("usage by model of "+secret, func(s store.Store) (any, error) { return s.UsageByModelOf(ctx, id, p.from, p.to, 0) })
	}
	u, err := dst.UsageBuckets(ctx, []time.Time{p.from, p.to})
	if err != nil || u[0].Requests != int64(p.requests) {
		t.Errorf("PostgreSQL's usage over the whole range = %+v, %v; want %d requests", u, err, p.requests)
	}

	// What only shows in behaviour: the values the config gave last, and the tombstones.
	same("config setting reapplied", func(s store.Store) (any, error) {
		applied, err := s.ApplyConfigSetting(ctx, "request_log_retention", "720h")
		if err != nil {
			return nil, err
		}
		set, err := s.Settings(ctx)
		return fmt.Sprint(applied, set["request_log_retention"]), err
	})
	same("config access key reapplied", func(s store.Store) (any, error) {
		added, skipped, err := s.ApplyConfigAccessKeys(ctx, []store.ConfigAccessKey{
			{Secret: "sk-migrate-c", Label: "from config", Policy: `{"rpd":100,"shared":true}`},
		})
		if err != nil {
			return nil, err
		}
		ks, err := s.AccessKeys(ctx)
		return fmt.Sprint(added, skipped, ks), err
	})
	same("deleted key in the config", func(s store.Store) (any, error) {
		added, skipped, err := s.AddConfigKeys(ctx, []string{p.deletedKey})
		return fmt.Sprint(added, skipped), err
	})
	same("deleted access key in the config", func(s store.Store) (any, error) {
		added, skipped, err := s.EnsureAccessKeys(ctx, []string{p.deletedAccess}, "config")
		return fmt.Sprint(added, skipped), err
	})
}

// TestMigrateCommandChecksItsInput: the command names what is missing, never prints the
// password, and writes nothing when the SQLite file is missing.
func TestMigrateCommandChecksItsInput(t *testing.T) {
	t.Setenv(databaseURLEnv, "")
	if out, err := migrateCmd(t, "--to", "postgres://u:"+migrateSecret+"@127.0.0.1:1/db"); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Errorf("without --from: %v\n%s", err, out)
	}
	if out, err := migrateCmd(t, "--from", "x.db"); err == nil || !strings.Contains(err.Error(), "--to") {
		t.Errorf("without --to: %v\n%s", err, out)
	}
	out, err := migrateCmd(t, "--from", filepath.Join(t.TempDir(), "missing.db"), "--to", "postgres://u:"+migrateSecret+"@127.0.0.1:1/db")
	if err == nil || !strings.Contains(err.Error(), "nothing was written") {
		t.Errorf("with a missing file: %v\n%s", err, out)
	}
	if strings.Contains(out, migrateSecret) || (err != nil && strings.Contains(err.Error(), migrateSecret)) {
		t.Errorf("the password is shown: %v\n%s", err, out)
	}
	if out, err := migrateCmd(t, "extra-arg"); err == nil {
		t.Errorf("an argument was accepted:\n%s", out)
	}
}

// TestMigrateBinary runs the real `caddy gemini-synapse migrate` of the binary named by
// SYNAPSE_CADDY_BIN (skipped without it), the URL coming from $DATABASE_URL.
func TestMigrateBinary(t *testing.T) {
	bin := os.Getenv("SYNAPSE_CADDY_BIN")
	if bin == "" {
		t.Skip("SYNAPSE_CADDY_BIN is not set")
	}
	path := filepath.Join(t.TempDir(), "data.db")
	p := populateSQLite(t, path, 500, 100)
	pgURL := withPassword(t, pgtest.URL(t))
	run := func() string {
		t.Helper()
		cmd := exec.Command(bin, "gemini-synapse", "migrate", "--from", path)
		cmd.Env = append(os.Environ(), databaseURLEnv+"="+pgURL)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s gemini-synapse migrate: %v\n%s", bin, err, out)
		}
		if strings.Contains(string(out), migrateSecret) {
			t.Fatalf("the output shows the URL's password:\n%s", out)
		}
		return string(out)
	}
	out := run()
	t.Logf("%s", out)
	if !containsSpaced(out, fmt.Sprintf("request_logs %d %d 0", p.requests, p.requests)) {
		t.Errorf("the first run did not copy the %d request rows:\n%s", p.requests, out)
	}
	if out := run(); !strings.Contains(out, "\n0 rows copied") {
		t.Errorf("the second run copied rows:\n%s", out)
	}
	src, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := postgres.Open(context.Background(), pgURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	compareStores(t, src, dst, p)
}
