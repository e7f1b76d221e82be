package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
)

// upstreamURL is the one place an upstream URL is built: the configured base plus a path the
// gateway cleaned or recorded itself, and a query. No request can leave for another host.
func upstreamURL(base *url.URL, path, rawQuery string) string {
	u := *base
	u.Path += path
	u.RawPath = ""
	u.RawQuery = rawQuery
	return u.String()
}

// upstreamRequest builds the client's request for the upstream with the pool key secret: its
// path on the configured base, its query without the client's key, its body, its headers less
// the ones that never go upstream, and the key where the API wants it.
func (x *exchange) upstreamRequest(secret string) (*http.Request, error) {
	var body io.Reader = http.NoBody
	if len(x.body) > 0 {
		body = bytes.NewReader(x.body)
	}
	req, err := http.NewRequestWithContext(x.r.Context(), x.r.Method,
		upstreamURL(x.set.upstream, x.path, stripKeyParam(x.r.URL.RawQuery)), body)
	if err != nil {
		return nil, err
	}
	copyRequestHeaders(req.Header, x.r.Header)
	if x.openAI {
		req.Header.Set("Authorization", "Bearer "+secret)
	} else {
		req.Header.Set("X-Goog-Api-Key", secret)
	}
	return req, nil
}

// call sends req to the upstream. An error answer (status 400 or more) is read, up to
// maxErrorBody, closed and returned with the pool key secret masked out; a successful one is
// returned unread (body nil).
func (c *Core) call(req *http.Request, secret string) (resp *http.Response, body []byte, err error) {
	resp, err = c.upstream.Load().transport.RoundTrip(req)
	if err != nil || resp.StatusCode < 400 {
		return resp, nil, err
	}
	// A body cut short still leaves the status, which is what a verdict rests on.
	body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	if body == nil {
		body = []byte{}
	}
	return resp, maskSecret(body, secret), nil
}

// stripKeyParam removes every `key` (and Live's `access_token`) parameter from a raw query,
// keeping the others byte for byte.
func stripKeyParam(raw string) string {
	if !hasKeyParam(raw) {
		return raw
	}
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		name, _, _ := strings.Cut(part, "=")
		if n, err := urlUnescape(name); err == nil && (n == "key" || n == "access_token") {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

// hasKeyParam is a cheap test that a raw query may carry a credential (also percent-encoded).
func hasKeyParam(raw string) bool {
	// "key" and not "key=": a bare `?key` is a key parameter too.
	return strings.Contains(raw, "key") || strings.Contains(raw, "access_token") || strings.Contains(raw, "%")
}

func urlUnescape(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	return url.QueryUnescape(s)
}

// Request headers that never go upstream: hop-by-hop ones, the client's credentials and
// identity, and Accept-Encoding (the transport asks for gzip itself and decodes it, so the
// usage tap sees plain bytes).
var dropRequestHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Authorization": true, "X-Goog-Api-Key": true, "X-Goog-User-Project": true, "Cookie": true,
	"Origin": true, "Referer": true, "Accept-Encoding": true, "Content-Length": true, "Host": true,

	// The client's address, and the proxies and CDNs it came through, as they write them (more
	// under dropRequestPrefixes). Google learns the gateway's address, nothing of its clients.
	"Forwarded": true, "X-Forwarded": true, "Via": true, "X-Real-Ip": true, "True-Client-Ip": true,
	"Client-Ip": true, "X-Client-Ip": true, "X-Cluster-Client-Ip": true, "X-Original-Forwarded-For": true,
	"X-Originating-Ip": true, "X-Remote-Ip": true, "X-Remote-Addr": true, "X-Proxyuser-Ip": true,
	"Wl-Proxy-Client-Ip": true, "Proxy-Client-Ip": true, "Cdn-Loop": true,
}

// dropRequestPrefixes start request headers that never go upstream: the forwarding headers,
// and every header of the CDNs and platforms whose names carry a client's address, country or
// request path (Cloudflare's Cf-Connecting-Ip, Cf-Ipcountry, Cf-Ray, Cf-Visitor…).
var dropRequestPrefixes = [...]string{
	"X-Forwarded-", "Cf-", "Fastly-", "Akamai-", "Fly-", "X-Azure-", "X-Envoy-", "X-Appengine-", "X-Vercel-",
}

// dropRequestHeader tells whether the request header named k (canonical) stays home.
func dropRequestHeader(k string) bool {
	if dropRequestHeaders[k] {
		return true
	}
	for _, p := range dropRequestPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// Response headers that never reach the client.
var dropResponseHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Alt-Svc": true, "Content-Length": true, "Set-Cookie": true,
}

func copyRequestHeaders(dst, src http.Header) {
	named := connectionHeaders(src)
	for k, vv := range src {
		if dropRequestHeader(k) || named[k] {
			continue
		}
		dst[k] = append([]string(nil), vv...)
	}
	if _, ok := dst["User-Agent"]; !ok {
		dst["User-Agent"] = []string{""} // keep Go from adding its own
	}
}

// copyResponseHeaders copies the upstream's headers for the client, with the pool key
// (secret) redacted wherever the upstream echoed it.
func copyResponseHeaders(dst, src http.Header, secret string) {
	named := connectionHeaders(src)
	for k, vv := range src {
		if dropResponseHeaders[k] || named[k] {
			continue
		}
		for i, v := range vv {
			if secret != "" && strings.Contains(v, secret) {
				vv = slices.Clone(vv)
				vv[i] = strings.ReplaceAll(v, secret, redacted(secret))
			}
		}
		dst[k] = vv
	}
}

// connectionHeaders returns the header names listed in Connection (hop-by-hop by RFC 9110).
func connectionHeaders(h http.Header) map[string]bool {
	vv := h["Connection"]
	if len(vv) == 0 {
		return nil
	}
	m := make(map[string]bool)
	for _, v := range vv {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				m[textproto.CanonicalMIMEHeaderKey(f)] = true
			}
		}
	}
	return m
}
