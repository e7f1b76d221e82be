package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Names of the live settings as stored in the database.
const (
	setUpstream           = "upstream"
	setProxy              = "proxy"
	setMaxFailures        = "max_failures"
	setMaxEjectionPercent = "max_ejection_percent"
	setMaxRetries         = "max_retries"
	setMaxBody            = "max_request_body"
	setValidationModel    = "validation_model"
	setValidationInterval = "validation_interval"
	setValidationProbe    = "validation_probe"
	setTimezone           = "timezone"
	setErrorRetention     = "error_log_retention"
	setRequestRetention   = "request_log_retention"
	setAdminKeyHash       = "admin_key_sha256"
)

const (
	defaultUpstream           = "https://generativelanguage.googleapis.com"
	defaultMaxFailures        = 5
	defaultMaxEjectionPercent = 50
	defaultMaxRetries         = 3
	defaultMaxBody            = 32 << 20
	maxBodyLimit              = 1 << 40 // the largest max_request_body accepted (1 TiB)
	defaultValidationModel    = "gemini-2.5-flash"
	defaultValidationInterval = time.Hour
	defaultValidationProbe    = probeModels
	defaultErrorRetention     = 15 * 24 * time.Hour
	defaultRequestRetention   = 30 * 24 * time.Hour
	maxRetriesLimit           = 20
)

// settings are the effective live settings, immutable once built; a change swaps the pointer.
type settings struct {
	upstream           *url.URL
	proxy              string
	maxFailures        int
	maxEjectionPercent int
	maxRetries         int
	maxBody            int64
	validationModel    string
	validationInterval time.Duration
	validationProbe    string // probeModels or probeGenerate
	timezone           *time.Location
	errorRetention     time.Duration
	requestRetention   time.Duration
}

// parseSettings builds settings from stored text, with defaults for what is missing. Every bad
// value is reported (by name, with the reason) and replaced by its default, so the result is
// always usable.
func parseSettings(raw map[string]string) (*settings, error) {
	s := &settings{
		maxFailures:        defaultMaxFailures,
		maxEjectionPercent: defaultMaxEjectionPercent,
		maxRetries:         defaultMaxRetries,
		maxBody:            defaultMaxBody,
		validationModel:    defaultValidationModel,
		validationInterval: defaultValidationInterval,
		validationProbe:    defaultValidationProbe,
		timezone:           time.UTC,
		errorRetention:     defaultErrorRetention,
		requestRetention:   defaultRequestRetention,
	}
	s.upstream, _ = url.Parse(defaultUpstream)
	var errs []error
	bad := func(name string, err error) { errs = append(errs, fmt.Errorf("%s: %v", name, err)) }

	if v, ok := raw[setUpstream]; ok {
		if u, err := parseUpstream(v); err != nil {
			bad(setUpstream, err)
		} else {
			s.upstream = u
		}
	}
	if v, ok := raw[setProxy]; ok && v != "" {
		if err := checkProxy(v); err != nil {
			bad(setProxy, err)
		} else {
			s.proxy = v
		}
	}
	if v, ok := raw[setMaxFailures]; ok {
		if n, err := parseInt(v, 1, 1000); err != nil {
			bad(setMaxFailures, err)
		} else {
			s.maxFailures = int(n)
		}
	}
	if v, ok := raw[setMaxEjectionPercent]; ok {
		if n, err := parseInt(v, 0, 100); err != nil {
			bad(setMaxEjectionPercent, err)
		} else {
			s.maxEjectionPercent = int(n)
		}
	}
	if v, ok := raw[setMaxRetries]; ok {
		if n, err := parseInt(v, 0, maxRetriesLimit); err != nil {
			bad(setMaxRetries, err)
		} else {
			s.maxRetries = int(n)
		}
	}
	if v, ok := raw[setMaxBody]; ok {
		if n, err := parseInt(v, 1, maxBodyLimit); err != nil {
			bad(setMaxBody, err)
		} else {
			s.maxBody = n
		}
	}
	if v, ok := raw[setValidationModel]; ok {
		if v = strings.TrimPrefix(strings.TrimSpace(v), "models/"); v == "" || strings.ContainsAny(v, "/:?# ") {
			bad(setValidationModel, errors.New("must be a model name such as gemini-2.5-flash"))
		} else {
			s.validationModel = v
		}
	}
	if v, ok := raw[setValidationProbe]; ok {
		switch p := strings.ToLower(strings.TrimSpace(v)); p {
		case probeModels, probeGenerate:
			s.validationProbe = p
		default:
			bad(setValidationProbe, fmt.Errorf("%q must be %s or %s", v, probeModels, probeGenerate))
		}
	}
	durations := []struct {
		name string
		dst  *time.Duration
	}{
		{setValidationInterval, &s.validationInterval},
		{setErrorRetention, &s.errorRetention},
		{setRequestRetention, &s.requestRetention},
	}
	for _, d := range durations {
		if v, ok := raw[d.name]; ok {
			if dur, err := parseDuration(v); err != nil {
				bad(d.name, err)
			} else if dur < time.Minute {
				bad(d.name, errors.New("must be at least 1m"))
			} else {
				*d.dst = dur
			}
		}
	}
	if v, ok := raw[setTimezone]; ok {
		if loc, err := time.LoadLocation(v); err != nil {
			bad(setTimezone, fmt.Errorf("unknown time zone %q", v))
		} else {
			s.timezone = loc
		}
	}
	return s, errors.Join(errs...)
}

func parseInt(v string, lo, hi int64) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number", v)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d is out of range [%d, %d]", n, lo, hi)
	}
	return n, nil
}

// parseUpstream accepts an http(s) base URL with a host and no query or fragment.
func parseUpstream(v string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(v))
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q must start with http:// or https://", v)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q must be a base URL with a host and no credentials, query or fragment", v)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func checkProxy(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return fmt.Errorf("%q: the scheme must be http, https, socks5 or socks5h", v)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", v)
	}
	return nil
}

// upstreamClient is the outbound transport of one proxy setting.
type upstreamClient struct {
	proxy     string
	transport *http.Transport
}

// newUpstreamClient builds a transport tuned for a gateway: a large idle pool, HTTP/2 to
// Google, dial, TLS and header timeouts, and no whole-response timeout (streams run for minutes).
func newUpstreamClient(proxy string) (*upstreamClient, error) {
	t := &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A non-streaming generation sends its headers only when it is done; thinking models
		// take minutes. The bound is there to free a connection from an upstream that hangs.
		ResponseHeaderTimeout: 10 * time.Minute,
		// Read and write buffers stay at net/http's 4 KiB: they live as long as the
		// connection, and 32 KiB ones cost 56 KiB more per open stream for no measured gain.
	}
	if proxy != "" {
		u, err := url.Parse(proxy)
		if err != nil {
			return nil, fmt.Errorf("proxy: %v", err)
		}
		t.Proxy = http.ProxyURL(u)
	}
	return &upstreamClient{proxy: proxy, transport: t}, nil
}

// isLiveSetting tells whether name is a live setting.
func isLiveSetting(name string) bool { return slices.Contains(liveSettings, name) }

// dayUnit matches a number of days in a duration, e.g. the "15d" of "15d12h".
var dayUnit = regexp.MustCompile(`([0-9]+(?:\.[0-9]*)?|\.[0-9]+)d`)

// parseDuration reads a duration as Caddy's configuration does: Go's syntax ("90s", "1h30m")
// plus days ("15d", "1.5d", "2d12h").
func parseDuration(s string) (time.Duration, error) {
	if len(s) > 1024 {
		return 0, fmt.Errorf("duration %.20q… is too long", s)
	}
	var bad error
	hours := dayUnit.ReplaceAllStringFunc(s, func(d string) string {
		f, err := strconv.ParseFloat(strings.TrimSuffix(d, "d"), 64)
		if err != nil {
			bad = err
			return d
		}
		return strconv.FormatFloat(f*24, 'f', -1, 64) + "h"
	})
	if bad != nil {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	d, err := time.ParseDuration(hours)
	if err != nil {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	return d, nil
}
