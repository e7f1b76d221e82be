package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Resumable uploads (gemini-api.md §1.3). The start (`POST /upload/v1beta/files` without an
// upload_id) goes through the normal proxy path with a pool key; its answer names an upload URL
// on Google's host, which the gateway records (upload_id → pool key) and rewrites to point at
// itself. Every later command on the session (`upload`, `upload, finalize`, `query`, `cancel`)
// carries the upload_id, which is the credential: it goes to the key that started the session,
// streamed in both directions, and is never retried on another key.

// uploadSessionTTL is how long an upload session can be continued. Google keeps sessions for
// about a week.
const uploadSessionTTL = 7 * 24 * time.Hour

// uploadHeaders are the answer headers that carry an upload session's URL.
var uploadHeaders = [...]string{"X-Goog-Upload-Url", "X-Goog-Upload-Control-Url", "Location"}

// uploadSessionID returns the upload_id of a command on an upload session, or "" when the
// request is something else (a start, or not an upload).
func uploadSessionID(p, rawQuery string) string {
	if !strings.HasPrefix(p, "/upload/") || (!strings.Contains(rawQuery, "upload_id=") && !strings.Contains(rawQuery, "%")) {
		return ""
	}
	q, _ := url.ParseQuery(rawQuery)
	return q.Get("upload_id")
}

// publicBase is the scheme, host and path prefix under which the client reached the gateway,
// e.g. "https://gw.example.com/gemini". The prefix is what a `handle_path` or `uri strip_prefix`
// before the handler removed from the path. Behind a trusted proxy (the server's
// trusted_proxies) that says X-Forwarded-Proto: https, the scheme is https.
func (x *exchange) publicBase() string {
	scheme := "http"
	if x.r.TLS != nil {
		scheme = "https"
	} else if x.core.hooks.trusted(x.r) && strings.EqualFold(x.r.Header.Get("X-Forwarded-Proto"), "https") {
		// A proxy in the server's trusted_proxies ended TLS in front of caddy.
		scheme = "https"
	}
	prefix := ""
	if op := x.core.hooks.originalPath(x.r); op != "" {
		cur := x.r.URL.EscapedPath()
		if len(op) > len(cur) && strings.HasSuffix(op, cur) {
			prefix = strings.TrimRight(op[:len(op)-len(cur)], "/")
		}
	}
	return scheme + "://" + x.r.Host + prefix
}

// bindUploadSession records the upload session of a start answer and rewrites its upload URLs
// (in resp.Header) to point at the gateway, without any key. It reports false, having answered
// the client, when the session could not be recorded (its chunks could not be routed).
func (x *exchange) bindUploadSession(resp *http.Response) bool {
	base := x.publicBase()
	done := map[string]bool{}
	for _, name := range uploadHeaders {
		v := resp.Header.Get(name)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil {
			continue
		}
		id := u.Query().Get("upload_id")
		if id == "" {
			continue
		}
		uri := x.uploadURI(u)
		if !done[id] {
			now := time.Now()
			err := x.core.store.AddUploadSession(x.r.Context(), store.UploadSession{
				ID: id, KeyID: x.keyID, UpstreamURI: uri, AccessKeyID: x.access,
				CreatedAt: now, ExpiresAt: now.Add(uploadSessionTTL),
			})
			if err != nil {
				// The store's error may name the database file: it goes to the error log.
				resp.Body.Close()
				rid := x.requestID()
				x.logError(x.keyID, http.StatusServiceUnavailable, "recording the upload session: "+err.Error())
				x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The upload session could not be recorded; try again (request id "+rid+"; the gateway's error log has the details).")
				return false
			}
			done[id] = true
		}
		resp.Header.Set(name, base+uri)
	}
	return true
}

// serveUploadChunk forwards one command on an upload session to the key that started it. The
// body is streamed (files can be gigabytes) and nothing is retried: a session lives in the
// project of its key, and the client resumes it itself with `query`.
func (x *exchange) serveUploadChunk(id string) {
	c := x.core
	ctx := x.r.Context()
	// The session id is the credential; a key, when sent, must still be a valid one (a wrong
	// one is refused as anywhere else, with no request-log row).
	if credential(x.r) != "" && !x.authenticate() {
		return
	}
	byKey := x.access != 0
	sess, err := c.store.UploadSessionByID(ctx, id, time.Now())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			// A final status stops SDKs from retrying a chunk that can never succeed; a store
			// error is transient, and the SDK may retry it. Without a key, an unknown session
			// id is a wrong credential.
			x.refuseChunk(byKey, rejectUnknownUpload, http.StatusNotFound, "NOT_FOUND",
				"Unknown upload session: this gateway did not start it, or it has expired. Start the upload again through the gateway.")
			return
		}
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The upload session could not be looked up; try again.")
		return
	}
	if byKey && x.access != sess.AccessKeyID {
		// Another access key's session: to this key it does not exist.
		x.refuseChunk(byKey, rejectUnknownUpload, http.StatusNotFound, "NOT_FOUND",
			"Unknown upload session: this gateway did not start it, or it has expired. Start the upload again through the gateway.")
		return
	}
	x.access = sess.AccessKeyID
	x.keyID = sess.KeyID
	// The session id stands for the access key that started the session: it is worth no more
	// than that key, which may have been disabled, deleted or may have expired since.
	if why := c.accessKeyUnusable(sess.AccessKeyID, time.Now()); why != rejectNone {
		msg := "The access key that started this upload session is disabled or no longer exists; the upload cannot continue."
		code, status := http.StatusForbidden, "PERMISSION_DENIED"
		if why == rejectExpiredKey {
			msg, code, status = "The access key that started this upload session has expired; the upload cannot continue.", http.StatusUnauthorized, "UNAUTHENTICATED"
		}
		x.refuseChunk(byKey, why, code, status, msg)
		return
	}
	secret, err := c.pool.Get(sess.KeyID, "", time.Now())
	if err != nil {
		x.w.Header().Set("X-Goog-Upload-Status", "final")
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The upstream key that started this upload session (#"+
			strconv.FormatInt(sess.KeyID, 10)+") "+keyUnusable(err)+"; the upload cannot continue on another key: start it again.")
		return
	}

	p, q, _ := strings.Cut(sess.UpstreamURI, "?")
	if dp, err := url.PathUnescape(p); err == nil {
		p = dp
	}
	var body io.Reader = x.r.Body
	if x.r.Body == nil || x.r.ContentLength == 0 {
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(ctx, x.r.Method, upstreamURL(x.set.upstream, p, q), body)
	if err != nil {
		// The error quotes the upstream URL.
		x.unreachable(&upstreamError{status: http.StatusBadGateway, reason: "building the upload request: " + err.Error()})
		return
	}
	req.ContentLength = x.r.ContentLength
	if body == http.NoBody {
		req.ContentLength = 0
	}
	copyRequestHeaders(req.Header, x.r.Header)
	req.Header.Set("X-Goog-Api-Key", secret)
	x.attempts = 1
	resp, fail := x.roundTrip(sess.KeyID, secret, req, countAttempt)
	switch {
	case resp == nil && fail == nil:
		x.errText = "client closed the upload request"
		return
	case fail != nil && fail.body == nil:
		// No upload status: SDKs retry the same chunk, which is right after a network failure.
		x.unreachable(fail)
		return
	case fail != nil:
		x.rewriteUploadURLs(fail.header)
		if fail.outcome.Kind == keypool.KeyInvalid {
			// Google's "API key not valid" would make the client think its access key is bad:
			// answer as the normal path does, keeping the upload headers the SDK acts on.
			up := http.Header{}
			for name, vv := range fail.header {
				if strings.HasPrefix(name, "X-Goog-Upload-") {
					up[name] = vv
				}
			}
			copyResponseHeaders(x.w.Header(), up, secret)
			x.writeUpstreamError(&upstreamError{status: fail.status, outcome: fail.outcome})
			return
		}
		x.writeRaw(&http.Response{StatusCode: fail.status, Header: fail.header}, fail.body, secret, fail.outcome.Reason)
		return
	}
	x.rewriteUploadURLs(resp.Header)
	status := resp.Header.Get("X-Goog-Upload-Status")
	if strings.Contains(strings.ToLower(x.r.Header.Get("X-Goog-Upload-Command")), "cancel") {
		if err := c.store.DeleteUploadSession(context.WithoutCancel(ctx), id); err != nil {
			c.logger.Warn("forgetting a cancelled upload session", zap.Error(err))
		}
	}
	if status == "final" {
		// The answer is the new file: record its owner before the client can use it.
		x.copyCreated(resp, secret)
		return
	}
	x.copyResponse(resp, secret)
}

// refuseChunk answers an upload command that can never go on, with a final upload status so
// SDKs stop retrying it. Without a key the session id was the credential: the refusal then
// counts as a rejected request (no log row), as a wrong key does.
func (x *exchange) refuseChunk(byKey bool, why rejectReason, code int, status, msg string) {
	x.w.Header().Set("X-Goog-Upload-Status", "final")
	if !byKey {
		x.reject(why, code, status, msg)
		return
	}
	x.fail(code, status, msg)
}

// accessKeyUnusable tells why the access key with the given id may not be used at now (it is
// unknown, disabled, its policy is broken, or it has expired), or rejectNone.
func (c *Core) accessKeyUnusable(id int64, now time.Time) rejectReason {
	k := c.accessKeyOf(id)
	switch {
	case k == nil || !k.enabled || k.broken:
		return rejectDisabledKey
	case k.expired(now):
		return rejectExpiredKey
	}
	return rejectNone
}

// accessKeyOf returns the access key with the given id, or nil.
func (c *Core) accessKeyOf(id int64) *accessKey {
	if m := c.accessKeyByID.Load(); m != nil {
		return (*m)[id]
	}
	return nil
}

// uploadURI is the path and query of an upstream upload URL as the gateway serves it: without
// the upstream's own path prefix and without any key.
func (x *exchange) uploadURI(u *url.URL) string {
	p := u.EscapedPath()
	if up := strings.TrimRight(x.set.upstream.EscapedPath(), "/"); up != "" && strings.HasPrefix(p, up+"/") {
		p = p[len(up):]
	}
	if q := stripKeyParam(u.RawQuery); q != "" {
		p += "?" + q
	}
	return p
}

// rewriteUploadURLs points upload URLs of a chunk answer at the gateway (Google does not send
// them there today, but they must never lead a client around the gateway, nor carry a key).
// A Location is an upload URL only when it names an upload session.
func (x *exchange) rewriteUploadURLs(h http.Header) {
	for _, name := range uploadHeaders {
		v := h.Get(name)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Host == "" || (name == "Location" && u.Query().Get("upload_id") == "") {
			continue
		}
		h.Set(name, x.publicBase()+x.uploadURI(u))
	}
}

// keyUnusable says why a bound key cannot serve, for error messages.
func keyUnusable(err error) string {
	var ce *keypool.CoolingError
	switch {
	case errors.Is(err, keypool.ErrKeyDisabled):
		return "is disabled"
	case errors.Is(err, keypool.ErrUnknownKey):
		return "is no longer in the pool"
	case errors.As(err, &ce):
		return "is cooling down for model " + ce.Model + " until " + ce.Until.UTC().Format(time.RFC3339)
	}
	return "cannot be used"
}
