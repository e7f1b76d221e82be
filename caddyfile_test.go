package geminisynapse

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

var update = flag.Bool("update", false, "rewrite the golden files of the adapt tests")

func parseGlobal(t *testing.T, src string) (*App, error) {
	t.Helper()
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(src), nil)
	if err != nil {
		return nil, err
	}
	var a App
	if err := json.Unmarshal(v.(httpcaddyfile.App).Value, &a); err != nil {
		t.Fatal(err)
	}
	return &a, nil
}

func TestGlobalOptionParsesEverySetting(t *testing.T) {
	a, err := parseGlobal(t, `gemini_synapse {
		database              /var/lib/synapse/data.db
		admin_key             admin-secret
		access_keys           a1 a2,a3
		access_keys           a4
		google_api_keys       AIzaOne,AIzaTwo
		upstream              http://127.0.0.1:9999/
		proxy                 socks5://127.0.0.1:1080
		max_failures          7
		max_retries           0
		max_request_body      1MiB
		validation_model      gemini-2.5-flash-lite
		validation_interval   30m
		timezone              Europe/Berlin
		error_log_retention   7d
		request_log_retention 90d
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if a.Database != "/var/lib/synapse/data.db" || a.AdminKey != "admin-secret" {
		t.Errorf("database/admin_key: %q %q", a.Database, a.AdminKey)
	}
	if strings.Join(a.AccessKeys, "|") != "a1|a2,a3|a4" || strings.Join(a.GoogleAPIKeys, "|") != "AIzaOne,AIzaTwo" {
		t.Errorf("keys: %q %q", a.AccessKeys, a.GoogleAPIKeys)
	}
	if got := splitKeys(caddy.NewReplacer(), a.AccessKeys); strings.Join(got, "|") != "a1|a2|a3|a4" {
		t.Errorf("split access keys: %q", got)
	}
	if a.Upstream != "http://127.0.0.1:9999/" || a.Proxy != "socks5://127.0.0.1:1080" {
		t.Errorf("upstream/proxy: %q %q", a.Upstream, a.Proxy)
	}
	if a.MaxFailures != 7 || a.MaxRetries == nil || *a.MaxRetries != 0 || a.MaxRequestBody != 1<<20 {
		t.Errorf("numbers: %d %v %d", a.MaxFailures, a.MaxRetries, a.MaxRequestBody)
	}
	if a.ValidationModel != "gemini-2.5-flash-lite" || time.Duration(a.ValidationInterval) != 30*time.Minute ||
		a.Timezone != "Europe/Berlin" || time.Duration(a.ErrorLogRetention) != 7*24*time.Hour ||
		time.Duration(a.RequestLogRetention) != 90*24*time.Hour {
		t.Errorf("validation/timezone/retention: %+v", a)
	}
	cfg := a.config()
	cfg.AdminKey = "" // a short one on purpose above; Provision refuses it (TestShortCaddyfileAdminKeyRefused)
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != a.Upstream || *cfg.MaxRetries != 0 || cfg.MaxFailures != 7 || cfg.Timezone != "Europe/Berlin" ||
		cfg.ValidationInterval != 30*time.Minute || cfg.RequestLogRetention != 90*24*time.Hour {
		t.Errorf("gateway config: %+v", cfg)
	}
}

func TestGlobalOptionRejectsBadInput(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"gemini_synapse {\n\tbogus 1\n}", `unrecognized gemini_synapse option "bogus"`},
		{"gemini_synapse {\n\tmax_failures 0\n}", "max_failures"},
		{"gemini_synapse {\n\tmax_retries -1\n}", "max_retries"},
		{"gemini_synapse {\n\tmax_ejection_percent 101\n}", "max_ejection_percent"},
		{"gemini_synapse {\n\tmax_retries 2 3\n}", "wrong argument count"},
		{"gemini_synapse {\n\tmax_request_body lots\n}", "max_request_body"},
		{"gemini_synapse {\n\tupstream ftp://x\n}", "upstream"},
		{"gemini_synapse {\n\tproxy gopher://x\n}", "proxy"},
		{"gemini_synapse {\n\ttimezone Mars/Olympus\n}", "unknown time zone"},
		{"gemini_synapse {\n\tvalidation_interval soon\n}", "validation_interval"},
		{"gemini_synapse {\n\terror_log_retention 1s\n}", "at least 1m"},
		{"gemini_synapse extra", "wrong argument count"},
	} {
		_, err := parseGlobal(t, tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.src, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: error %q does not name the file and line", tc.src, err)
		}
	}
}

func TestEmptyEnvironmentValuesLeaveOptionsUnset(t *testing.T) {
	a, err := parseGlobal(t, "gemini_synapse {\n\tadmin_key\n\tgoogle_api_keys\n\taccess_keys\n}")
	if err != nil {
		t.Fatal(err)
	}
	if a.AdminKey != "" || len(a.GoogleAPIKeys) != 0 || len(a.AccessKeys) != 0 {
		t.Errorf("want all unset, got %+v", a)
	}
}

func TestDirectives(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse")); err != nil {
		t.Fatal(err)
	}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse arg")); err == nil {
		t.Error("an argument must be refused")
	}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse {\n upstream x\n}")); err == nil {
		t.Error("a block must be refused")
	}
	var m AdminHandler
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse_admin /ops")); err != nil || m.Prefix != "/ops" {
		t.Fatalf("prefix: %q %v", m.Prefix, err)
	}
	if err := (&AdminHandler{}).UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse_admin ops")); err == nil {
		t.Error("a prefix without a leading slash must be refused")
	}
}

// TestAdapt adapts every testdata/caddyfile_adapt/*.Caddyfile and compares the JSON with the
// .json beside it (or, for names starting with "error_", the error with the .err text).
func TestAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.Caddyfile")
	if len(files) == 0 {
		t.Fatal("no adapt cases")
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".Caddyfile")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, _, err := adapter.Adapt(src, map[string]any{"filename": "Caddyfile"})
			golden := strings.TrimSuffix(f, ".Caddyfile")
			if strings.HasPrefix(name, "error_") {
				want, _ := os.ReadFile(golden + ".err")
				if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(string(want))) {
					t.Fatalf("got error %v, want one containing %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var pretty map[string]any
			json.Unmarshal(out, &pretty)
			got, _ := json.MarshalIndent(pretty, "", "\t")
			if *update {
				os.WriteFile(golden+".json", append(got, '\n'), 0o644)
			}
			want, err := os.ReadFile(golden + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(want)) != strings.TrimSpace(string(got)) {
				t.Errorf("adapted JSON differs from %s.json:\n%s", golden, got)
			}
		})
	}
}

func TestCaddyfileValidationProbe(t *testing.T) {
	a, err := parseGlobal(t, "gemini_synapse {\n\tvalidation_probe generate\n}")
	if err != nil || a.ValidationProbe != "generate" || a.config().ValidationProbe != "generate" {
		t.Fatalf("parsed %+v, %v", a, err)
	}
	if _, err := parseGlobal(t, "gemini_synapse {\n\tvalidation_probe count\n}"); err == nil || !strings.Contains(err.Error(), "validation_probe") {
		t.Errorf("a bad probe was accepted: %v", err)
	}
}

func TestAccessKeyPolicies(t *testing.T) {
	a, err := parseGlobal(t, `gemini_synapse {
		access_keys  plain-key
		access_key team-a {env.TEAM_A_KEY} {
			models        gemini-2.5-flash* models/gemini-2.0-*
			models        gemini-3-pro-preview
			rpm           60
			rpd           5k
			tpm           200000
			token_budget  10M weekly
			concurrency   8
			expires       2027-01-31T00:00:00Z
			shared
		}
		access_key bare bare-key-0123456789
		access_key budget-only budget-key-0123456789 {
			token_budget 2M
			shared false
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.AccessKeyPolicies) != 3 || strings.Join(a.AccessKeys, "|") != "plain-key" {
		t.Fatalf("parsed %+v", a)
	}
	p := a.AccessKeyPolicies[0]
	if p.Label != "team-a" || p.Key != "{env.TEAM_A_KEY}" ||
		strings.Join(p.Models, " ") != "gemini-2.5-flash* models/gemini-2.0-* gemini-3-pro-preview" ||
		p.RPM != 60 || p.RPD != 5000 || p.TPM != 200000 || p.Concurrency != 8 ||
		p.TokenBudget == nil || *p.TokenBudget != (tenant.Budget{Limit: 10_000_000, Period: "weekly"}) ||
		p.Expires != "2027-01-31T00:00:00Z" || !p.Shared {
		t.Errorf("team-a: %+v", p)
	}
	if b := a.AccessKeyPolicies[1]; b.Label != "bare" || b.Key != "bare-key-0123456789" || b.RPM != 0 || b.Models != nil || b.Shared {
		t.Errorf("bare: %+v", b)
	}
	if b := a.AccessKeyPolicies[2]; b.TokenBudget == nil || *b.TokenBudget != (tenant.Budget{Limit: 2_000_000, Period: "daily"}) || b.Shared {
		t.Errorf("budget-only (the period defaults to daily): %+v", b)
	}

	// Provision's part: placeholders resolved, globs as the admin API stores them, the gateway
	// config carries each key with its policy and checks it.
	t.Setenv("TEAM_A_KEY", "team-a-secret-0123456789")
	keys, err := a.resolvePolicyKeys(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	a.policyKeys = keys
	cfg := a.config()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.PolicyKeys) != 3 || strings.Join(cfg.AccessKeys, "|") != "plain-key" {
		t.Fatalf("gateway config: %+v", cfg.PolicyKeys)
	}
	got := cfg.PolicyKeys[0]
	want := tenant.Policy{
		Models: []string{"gemini-2.5-flash*", "gemini-2.0-*", "gemini-3-pro-preview"},
		RPM:    60, RPD: 5000, TPM: 200000, Concurrency: 8,
		TokenBudget: &tenant.Budget{Limit: 10_000_000, Period: "weekly"},
		ExpiresAt:   time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC),
		Shared:      true,
	}
	if got.Label != "team-a" || got.Key != "team-a-secret-0123456789" || got.Policy.String() != want.String() {
		t.Errorf("team-a in the gateway config: %q %q %s, want %s", got.Label, got.Key, got.Policy.String(), want.String())
	}
	if !got.Policy.AllowsModel("models/gemini-2.0-flash") || got.Policy.AllowsModel("gemini-2.5-pro") {
		t.Errorf("team-a's globs: %v", got.Policy.Models)
	}
	if bare := cfg.PolicyKeys[1]; bare.Key != "bare-key-0123456789" || !bare.Policy.IsZero() {
		t.Errorf("bare: %+v", bare)
	}
}

// An access_key whose {env.VAR} is unset is skipped with a warning, as access_keys skips an
// empty entry; the other keys stay.
func TestAccessKeyWithUnsetVariableIsSkipped(t *testing.T) {
	a, err := parseGlobal(t, "gemini_synapse {\n\taccess_key gone {env.SYNAPSE_TEST_UNSET_KEY} {\n\t\trpm 5\n\t}\n\taccess_key gone2\n\taccess_key kept kept-key-0123456789\n}")
	if err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("SYNAPSE_TEST_UNSET_KEY")
	core, logs := observer.New(zap.WarnLevel)
	a.logger = zap.New(core)
	keys, err := a.resolvePolicyKeys(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != "kept" {
		t.Fatalf("keys: %+v", keys)
	}
	warned := map[string]bool{}
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "skipped") {
			warned[e.ContextMap()["label"].(string)] = true
		}
	}
	if !warned["gone"] || !warned["gone2"] {
		t.Errorf("warnings: %v", logs.All())
	}
}

// Provision's checks of JSON config (no Caddyfile parser in front): a key declared twice, in
// access_keys or another access_key, a bad expiry, a policy the admin API would refuse.
func TestAccessKeyPoliciesProvisionChecks(t *testing.T) {
	for _, tc := range []struct {
		a    App
		want string
	}{
		{App{AccessKeys: []string{"k-0123456789abcdef"}, AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k-0123456789abcdef"}}}, `access_key "x": the same key is also declared in access_keys`},
		{App{AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k1"}, {Label: "y", Key: "k1"}}}, `access_key "y": the same key is also declared in access_key "x"`},
		{App{AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k1 k2"}}}, "one key per access_key"},
		{App{AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k1", Expires: "tomorrow"}}}, `access_key "x": expires: "tomorrow" is not an RFC 3339 time`},
		{App{AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k1", RPM: -1}}}, `access_key "x": rpm: must be between 0`},
		{App{AccessKeyPolicies: []AccessKeyPolicy{{Label: "x", Key: "k1", TokenBudget: &tenant.Budget{Limit: 5, Period: "hourly"}}}}, `token_budget: the period must be daily, weekly or monthly`},
	} {
		_, err := tc.a.resolvePolicyKeys(caddy.NewReplacer())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.a.AccessKeyPolicies, err, tc.want)
		}
	}
}

func TestAccessKeyRejectsBadInput(t *testing.T) {
	block := func(lines string) string {
		return "gemini_synapse {\n\taccess_key team-a key-0123456789 {\n\t\t" + lines + "\n\t}\n}"
	}
	for _, tc := range []struct{ src, want string }{
		{"gemini_synapse {\n\taccess_key\n}", "access_key takes a label and a key"},
		{"gemini_synapse {\n\taccess_key a b c\n}", "access_key takes a label and a key"},
		{block("bogus 1"), `access_key "team-a": unrecognized option "bogus"`},
		{block("models"), `access_key "team-a": models needs at least one glob`},
		{block(`models "gemini 2"`), `access_key "team-a": models: "gemini 2" is not a model glob`},
		{block("rpm"), `access_key "team-a": rpm takes one count`},
		{block("rpm 1 2"), `access_key "team-a": rpm takes one count`},
		{block("rpm lots"), `access_key "team-a": rpm: "lots" is not a count`},
		{block("rpm -5"), `access_key "team-a": rpm: "-5" is not a count`},
		{block("rpm 2M"), `access_key "team-a": rpm: must be between 0 (no limit) and 1000000`},
		{block("rpm 5\n\t\trpm 6"), `access_key "team-a": rpm is given twice`},
		{block("rpd 1.5k"), `access_key "team-a": rpd: "1.5k" is not a count`},
		{block("tpm x"), `access_key "team-a": tpm: "x" is not a count`},
		{block("concurrency none"), `access_key "team-a": concurrency: "none" is not a count`},
		{block("token_budget"), `access_key "team-a": token_budget takes a count and an optional period`},
		{block("token_budget 10M daily extra"), `access_key "team-a": token_budget takes a count and an optional period`},
		{block("token_budget 10M hourly"), `access_key "team-a": token_budget: the period must be daily, weekly or monthly`},
		{block("token_budget 0"), `access_key "team-a": token_budget: the limit must be between 1`},
		{block("token_budget 1.5"), `access_key "team-a": token_budget: "1.5" is not a count`},
		{block("token_budget ten"), `access_key "team-a": token_budget: "ten" is not a count`},
		{block("expires"), `access_key "team-a": expires takes one RFC 3339 time`},
		{block("expires 2027-01-31"), `access_key "team-a": expires: "2027-01-31" is not an RFC 3339 time`},
		{block("shared maybe"), `access_key "team-a": shared takes no argument, true or false`},
		{block("shared true false"), `access_key "team-a": shared takes no argument, true or false`},
	} {
		_, err := parseGlobal(t, tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.src, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: error %q does not name the file and line", tc.src, err)
		}
	}
}

func TestCaddyfileSharedLimitsTuning(t *testing.T) {
	var a App
	d := caddyfile.NewTestDispenser("gemini_synapse {\n shared_limits_lease 500ms\n shared_limits_slice 5%\n}")
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	cfg := a.config()
	if cfg.SharedLimitsLease != 500*time.Millisecond || cfg.SharedLimitsSlice != 0.05 {
		t.Errorf("lease %v, slice %v; want 500ms and 0.05", cfg.SharedLimitsLease, cfg.SharedLimitsSlice)
	}
	for _, bad := range []string{"shared_limits_lease 0s", "shared_limits_lease 2m", "shared_limits_lease x",
		"shared_limits_slice 0", "shared_limits_slice 150", "shared_limits_slice ten"} {
		var a App
		if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("gemini_synapse {\n " + bad + "\n}")); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}
