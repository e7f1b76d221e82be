package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/admin"
	"github.com/geminisynapse/caddy-gemini-synapse/tenant"
)

// Config is what one server configuration asks of the gateway: the secrets it adds and the
// live settings it sets (a zero value leaves a setting as it is). Placeholders are resolved and
// key lists split before it gets here.
type Config struct {
	AdminKey   string   // "" keeps the stored one (or generates one at first start)
	AccessKeys []string // added to the store if missing
	// PolicyKeys are the Caddyfile's `access_key <label> <key> {policy}` entries: added if
	// missing; a label or policy changed in the Caddyfile since it was last applied replaces the
	// stored one (an edit in the panel stays until then).
	PolicyKeys    []AccessKeyConfig
	GoogleAPIKeys []string // added to the pool if missing

	Upstream            string
	Proxy               string
	MaxFailures         int
	MaxEjectionPercent  *int
	MaxRetries          *int
	MaxRequestBody      int64
	ValidationModel     string
	ValidationInterval  time.Duration
	ValidationProbe     string
	Timezone            string
	ErrorLogRetention   time.Duration
	RequestLogRetention time.Duration

	// SharedLimitsLease and SharedLimitsSlice tune the leases of access keys' limits between
	// instances sharing a store (tenant.Cluster's Lifetime and Share; zero: the defaults).
	// The first config applied sets them.
	SharedLimitsLease time.Duration
	SharedLimitsSlice float64
}

// AccessKeyConfig is an access key declared with its policy in the Caddyfile.
type AccessKeyConfig struct {
	Label  string
	Key    string
	Policy tenant.Policy
}

// Check tells what is wrong with the configuration's values, each by its setting's name, the
// way the admin API would refuse them.
func (cfg *Config) Check() error {
	var errs []error
	if cfg.AdminKey != "" {
		// The same rules as a key set in the panel: a short admin key is guessable.
		if why := admin.AdminKeyProblem(cfg.AdminKey); why != "" {
			errs = append(errs, fmt.Errorf("admin_key: %s (leave it out to have one generated)", why))
		}
	}
	for i, k := range cfg.PolicyKeys {
		if k.Key == "" {
			errs = append(errs, fmt.Errorf("access_key %q: the key is empty", k.Label))
		}
		if err := k.Policy.Check(); err != nil {
			errs = append(errs, fmt.Errorf("access_key %q (#%d): %w", k.Label, i+1, err))
		}
	}
	if cfg.SharedLimitsLease < 0 || cfg.SharedLimitsLease > time.Minute {
		errs = append(errs, fmt.Errorf("shared_limits_lease: must be between 0 (the default, 2s) and 1m"))
	}
	if cfg.SharedLimitsSlice < 0 || cfg.SharedLimitsSlice > 1 {
		errs = append(errs, fmt.Errorf("shared_limits_slice: must be a percentage between 0 (the default, 10) and 100"))
	}
	if _, err := parseSettings(cfg.settings()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckSetting checks one live setting's value as the admin API and the Caddyfile do; the error
// names the setting.
func CheckSetting(name, value string) error {
	if !isLiveSetting(name) {
		return fmt.Errorf("%s: not a setting", name)
	}
	_, err := parseSettings(map[string]string{name: value})
	return err
}

// settings returns the live settings the configuration sets, as stored text.
func (cfg *Config) settings() map[string]string {
	m := make(map[string]string)
	put := func(name, v string) {
		if v != "" {
			m[name] = v
		}
	}
	putDuration := func(name string, d time.Duration) {
		if d != 0 {
			m[name] = d.String()
		}
	}
	putInt := func(name string, n *int) {
		if n != nil {
			m[name] = strconv.Itoa(*n)
		}
	}
	put(setUpstream, cfg.Upstream)
	put(setProxy, cfg.Proxy)
	if cfg.MaxFailures != 0 {
		m[setMaxFailures] = strconv.Itoa(cfg.MaxFailures)
	}
	putInt(setMaxEjectionPercent, cfg.MaxEjectionPercent)
	putInt(setMaxRetries, cfg.MaxRetries)
	if cfg.MaxRequestBody != 0 {
		m[setMaxBody] = strconv.FormatInt(cfg.MaxRequestBody, 10)
	}
	put(setValidationModel, cfg.ValidationModel)
	putDuration(setValidationInterval, cfg.ValidationInterval)
	put(setValidationProbe, cfg.ValidationProbe)
	put(setTimezone, cfg.Timezone)
	putDuration(setErrorRetention, cfg.ErrorLogRetention)
	putDuration(setRequestRetention, cfg.RequestLogRetention)
	return m
}
