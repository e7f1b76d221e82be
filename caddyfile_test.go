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
