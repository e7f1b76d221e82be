package tenant

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestGlob(t *testing.T) {
	long := strings.Repeat("a", 100_000)
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything/at/all", true},
		{"?", "", false},
		{"?", "a", true},
		{"?", "ab", false},
		{"gemini-2.5-flash", "gemini-2.5-flash", true},
		{"gemini-2.5-flash", "gemini-2.5-flash-lite", false},
		{"gemini-2.5-flash*", "gemini-2.5-flash", true},
		{"gemini-2.5-flash*", "gemini-2.5-flash-lite", true},
		{"gemini-2.5-flash*", "gemini-2.5-pro", false},
		{"gemini-2.?-pro", "gemini-2.5-pro", true},
		{"gemini-2.?-pro", "gemini-2.50-pro", false},
		{"*-pro", "gemini-2.5-pro", true},
		{"*-pro", "gemini-2.5-pro-preview", false},
		{"gemini-*-flash*", "gemini-2.0-flash-001", true},
		{"gemini-*-flash*", "gemini-2.0-pro", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"a*b*c", "acb", false},
		{"**", "x", true},
		{"a**b", "ab", true},
		{"*a", "bba", true},
		{"*a", "bab", false},
		{"tunedModels/*", "tunedModels/my-model", true},
		// A star in the name is a character like any other; a star in the pattern stays a
		// wildcard even where the name has a star.
		{"a*", "a*b", true},
		{"a*c", "a*bc", true},
		{"a?", "a*", true},
		{"a\\*", "a*", false}, // no escapes: the backslash is a character
		// Pathological patterns finish (backtracking only to the last star is linear per
		// star); an exponential matcher would hang here.
		{"a*a*a*a*a*a*a*b", long, false},
		{"a*a*a*a*a*a*a*a", long, true},
		{"*a*a*a*a*a*a*a*?b", long, false},
		{"*" + strings.Repeat("a", 50) + "b", long, false},
		{strings.Repeat("*a", 40), long, true},
	} {
		if got := Glob(c.pattern, c.name); got != c.want {
			name := c.name
			if len(name) > 40 {
				name = name[:40] + "…"
			}
			t.Errorf("Glob(%q, %q) = %v, want %v", c.pattern, name, got, c.want)
		}
	}
}

func TestGlobDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { Glob("gemini-*-flash*", "gemini-2.0-flash-001") }); n != 0 {
		t.Errorf("Glob allocates %v times", n)
	}
}

func TestAllowsModel(t *testing.T) {
	p := &Policy{Models: []string{"gemini-2.5-flash*", "gemini-2.0-*"}}
	for _, c := range []struct {
		model string
		want  bool
	}{
		{"gemini-2.5-flash", true},
		{"models/gemini-2.5-flash", true},
		{"models/gemini-2.5-flash-lite", true},
		{"gemini-2.0-flash", true},
		{"gemini-2.5-pro", false},
		{"models/gemini-2.5-pro", false},
		{"modelsgemini-2.5-flash", false},
		{"", true}, // a request that names no model (a files call)
	} {
		if got := p.AllowsModel(c.model); got != c.want {
			t.Errorf("AllowsModel(%q) = %v, want %v", c.model, got, c.want)
		}
	}
	for _, open := range []*Policy{nil, {}, {RPM: 5}} {
		if !open.AllowsModel("anything") || !open.AllowsModel("models/anything") {
			t.Errorf("policy %+v with no models refuses a model", open)
		}
	}
	// Globs stored with "models/" match as well, once parsed.
	q, err := Parse(`{"models":["models/gemini-2.5-pro"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if !q.AllowsModel("gemini-2.5-pro") || !q.AllowsModel("models/gemini-2.5-pro") || q.AllowsModel("gemini-2.5-flash") {
		t.Errorf("parsed globs %q match wrongly", q.Models)
	}
}

func TestParseStringRoundTrip(t *testing.T) {
	full := &Policy{
		Models:      []string{"gemini-2.5-flash*", "gemini-2.0-*"},
		RPM:         60,
		RPD:         5000,
		TPM:         200_000,
		TokenBudget: &Budget{Limit: 10_000_000, Period: Weekly},
		Concurrency: 8,
		ExpiresAt:   time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC),
		Shared:      true,
	}
	s := full.String()
	for _, name := range []string{`"models"`, `"rpm":60`, `"rpd":5000`, `"tpm":200000`,
		`"token_budget":{"limit":10000000,"period":"weekly"}`, `"concurrency":8`,
		`"expires_at":"2027-01-31T00:00:00Z"`, `"shared":true`} {
		if !strings.Contains(s, name) {
			t.Errorf("String() = %s, lacks %s", s, name)
		}
	}
	back, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	if back.String() != s || !back.ExpiresAt.Equal(full.ExpiresAt) || *back.TokenBudget != *full.TokenBudget ||
		back.RPM != 60 || back.RPD != 5000 || back.TPM != 200_000 || back.Concurrency != 8 || !back.Shared ||
		strings.Join(back.Models, ",") != "gemini-2.5-flash*,gemini-2.0-*" {
		t.Errorf("round trip: %+v became %+v", full, back)
	}

	// Only the fields set are written.
	if got := (&Policy{RPM: 10}).String(); got != `{"rpm":10}` {
		t.Errorf("String() = %s, want {\"rpm\":10}", got)
	}
	// The zero policy is stored as "" and read back from it.
	for _, zero := range []*Policy{nil, {}, {Models: []string{}}} {
		if got := zero.String(); got != "" {
			t.Errorf("%+v.String() = %q, want \"\"", zero, got)
		}
	}
	p, err := Parse("")
	if err != nil || !p.IsZero() {
		t.Errorf(`Parse("") = %+v, %v; want the zero policy`, p, err)
	}
	if p.Limited() || (*Policy)(nil).Limited() {
		t.Error("the zero policy is Limited")
	}
	for _, limited := range []*Policy{{RPM: 1}, {RPD: 1}, {TPM: 1}, {Concurrency: 1}, {TokenBudget: &Budget{Limit: 1, Period: Daily}}} {
		if !limited.Limited() {
			t.Errorf("%+v is not Limited", limited)
		}
	}
	for _, unlimited := range []*Policy{{Models: []string{"x"}}, {Shared: true}, {ExpiresAt: time.Now()}, {TokenBudget: &Budget{}}} {
		if unlimited.Limited() {
			t.Errorf("%+v is Limited", unlimited)
		}
		if unlimited.TokenBudget == nil && unlimited.IsZero() {
			t.Errorf("%+v is zero", unlimited)
		}
	}

	for _, bad := range []string{`{`, `[]`, `{"rpm":"ten"}`, `{"rpm":-1}`, `{"token_budget":{"limit":5,"period":"hourly"}}`} {
		if p, err := Parse(bad); err == nil {
			t.Errorf("Parse(%s) = %+v, want an error", bad, p)
		}
	}
}

// fields lists the Field of every FieldError joined in err.
func fields(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v is not joined errors", err)
	}
	var out []string
	for _, e := range joined.Unwrap() {
		var fe FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("error %v is not a FieldError", e)
		}
		if fe.Description == "" || e.Error() != fe.Field+": "+fe.Description {
			t.Errorf("FieldError %#v reads %q", fe, e.Error())
		}
		out = append(out, fe.Field)
	}
	return out
}

func TestCheck(t *testing.T) {
	many := make([]string, maxModels+1)
	for i := range many {
		many[i] = "m"
	}
	for _, c := range []struct {
		name   string
		p      Policy
		fields string
	}{
		{"zero", Policy{}, ""},
		{"every limit at its most", Policy{Models: []string{"a*"}, RPM: maxRPM, RPD: maxLimit, TPM: maxLimit,
			Concurrency: maxLimit, TokenBudget: &Budget{Limit: maxLimit, Period: Monthly}}, ""},
		{"empty glob", Policy{Models: []string{""}}, "models"},
		{"glob with a space", Policy{Models: []string{"gemini 2"}}, "models"},
		{"glob with a quote", Policy{Models: []string{`a"b`}}, "models"},
		{"glob too long", Policy{Models: []string{strings.Repeat("a", 201)}}, "models"},
		{"too many globs", Policy{Models: many}, "models"},
		{"negative rpm", Policy{RPM: -1}, "rpm"},
		{"rpm above its most", Policy{RPM: maxRPM + 1}, "rpm"},
		{"negative rpd", Policy{RPD: -1}, "rpd"},
		{"tpm above its most", Policy{TPM: maxLimit + 1}, "tpm"},
		{"negative concurrency", Policy{Concurrency: -3}, "concurrency"},
		{"budget of nothing", Policy{TokenBudget: &Budget{Period: Daily}}, "token_budget"},
		{"budget of no period", Policy{TokenBudget: &Budget{Limit: 5}}, "token_budget"},
		{"several at once", Policy{RPM: -1, TPM: -1, Models: []string{""}, TokenBudget: &Budget{Limit: -1, Period: "yearly"}},
			"models,rpm,tpm,token_budget,token_budget"},
	} {
		got := strings.Join(fields(t, c.p.Check()), ",")
		if got != c.fields {
			t.Errorf("%s: Check() names %q, want %q", c.name, got, c.fields)
		}
	}
}

func TestParseCount(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"5000", 5000}, {" 42 ", 42}, {"200k", 200_000}, {"200K", 200_000},
		{"10M", 10_000_000}, {"10m", 10_000_000}, {"1G", 1_000_000_000}, {"2B", 2_000_000_000},
		{"1125899906842624", maxLimit}, {"1125899906842k", 1_125_899_906_842_000},
	} {
		if got, err := ParseCount(c.in); err != nil || got != c.want {
			t.Errorf("ParseCount(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", " ", "k", "-5", "1.5M", "10MB", "ten", "1125899906842625", "1125899906843k", "1125899907M", "99999999999G"} {
		if got, err := ParseCount(bad); err == nil {
			t.Errorf("ParseCount(%q) = %d, want an error", bad, got)
		} else if !strings.Contains(err.Error(), "count") {
			t.Errorf("ParseCount(%q) error %q does not say what a count is", bad, err)
		}
	}
}

func TestParseBudget(t *testing.T) {
	for _, c := range []struct {
		limit, period string
		want          Budget
	}{
		{"10M", "", Budget{10_000_000, Daily}},
		{"10M", Daily, Budget{10_000_000, Daily}},
		{"500k", Weekly, Budget{500_000, Weekly}},
		{"1G", Monthly, Budget{1_000_000_000, Monthly}},
	} {
		b, err := ParseBudget(c.limit, c.period)
		if err != nil || *b != c.want {
			t.Errorf("ParseBudget(%q, %q) = %+v, %v; want %+v", c.limit, c.period, b, err, c.want)
		}
	}
	for _, c := range []struct{ limit, period, field string }{
		{"0", Daily, "token_budget"},
		{"10M", "hourly", "token_budget"},
		{"10M", "Daily", "token_budget"},
	} {
		_, err := ParseBudget(c.limit, c.period)
		if got := strings.Join(fields(t, err), ","); got != c.field {
			t.Errorf("ParseBudget(%q, %q) names %q, want %q", c.limit, c.period, got, c.field)
		}
	}
	if _, err := ParseBudget("lots", Daily); err == nil {
		t.Error(`ParseBudget("lots") is accepted`)
	}
}
