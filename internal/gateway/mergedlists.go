package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Listings merged over every key: every pool key sees only its own project's files (cached
// contents, tuned models, file search stores), so `GET /v1beta/files` (and the others) walks
// the enabled keys in id order and merges their lists into pages of the client's size, keeping
// only what the access key may see (isolation.go). Disabled keys are skipped; an upstream error
// on a key ends the page before it (or is the answer, when the page is still empty), so no
// key's items are paged past. The gateway's page token says where the walk stopped: which key,
// that key's own page token, and how many items of that page were already returned.

const (
	defaultFilesPageSize = 10  // Google's default for files.list
	maxFilesPageSize     = 100 // Google's maximum
	// maxFilesPageBytes bounds one upstream page read: 100 files' metadata is far less.
	maxFilesPageBytes = 64 << 20
)

// mergedKinds are the collections listed over every key; each answer holds its items in the
// member of the same name.
var mergedKinds = map[string]bool{"files": true, "cachedContents": true, "tunedModels": true, "fileSearchStores": true}

// mergedKind returns the collection p lists when its listing is merged over every key
// ("/v1beta/files" gives "files"), or "".
func mergedKind(p string) string {
	for _, v := range [...]string{"/v1beta/", "/v1alpha/"} {
		if k, ok := strings.CutPrefix(p, v); ok && mergedKinds[k] {
			return k
		}
	}
	return ""
}

// filesCursor is the decoded page token of a merged listing.
type filesCursor struct {
	Key   int64  `json:"k"`           // the key to continue with (the first with id >= Key)
	Token string `json:"t,omitempty"` // that key's upstream page token
	Skip  int    `json:"s,omitempty"` // files of that upstream page already returned
}

func (c filesCursor) encode() string {
	b, _ := json.Marshal(c)
	return "gs1." + base64.RawURLEncoding.EncodeToString(b)
}

func decodeFilesCursor(tok string) (filesCursor, bool) {
	var c filesCursor
	if len(tok) < 4 || tok[:4] != "gs1." {
		return c, false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[4:])
	if err != nil || json.Unmarshal(b, &c) != nil || c.Skip < 0 {
		return c, false
	}
	return c, true
}

// listMerged answers the listing of kind with the merged items of every enabled pool key that
// the access key may see, and records each item's owner key on the way (items made with a pool
// key outside the gateway included).
func (x *exchange) listMerged(kind string) {
	c := x.core
	q := x.r.URL.Query()
	size := defaultFilesPageSize
	if v := q.Get("pageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid value at 'page_size' (TYPE_INT32), \""+v+"\"")
			return
		}
		if n > 0 {
			size = min(n, maxFilesPageSize)
		}
	}
	cur := filesCursor{}
	if tok := q.Get("pageToken"); tok != "" {
		var ok bool
		if cur, ok = decodeFilesCursor(tok); !ok {
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid page token: pass the nextPageToken of a previous files.list answer unchanged.")
			return
		}
	}
	var keys []int64
	for _, k := range c.pool.Keys(time.Now()) {
		if !k.Disabled && k.ID >= cur.Key {
			keys = append(keys, k.ID)
		}
	}
	out := make([]json.RawMessage, 0, size)
	next := ""
	var failed *upstreamError
	for i := 0; i < len(keys) && next == "" && failed == nil; i++ {
		id := keys[i]
		token, skip := "", 0
		if id == cur.Key {
			token, skip = cur.Token, cur.Skip
		}
		for {
			files, upNext, uerr := x.listKeyPage(kind, id, token, size-len(out)+skip)
			if uerr != nil {
				// Going on with the next key would page past this key's remaining files: end
				// the page here, and let the next one start again where this key failed.
				failed = uerr
				if len(out) > 0 {
					next = filesCursor{Key: id, Token: token, Skip: skip}.encode()
				}
				break
			}
			if skip > len(files) {
				skip = len(files)
			}
			files = files[skip:]
			room := size - len(out)
			if len(files) > room {
				out = append(out, files[:room]...)
				next = filesCursor{Key: id, Token: token, Skip: skip + room}.encode()
				break
			}
			out = append(out, files...)
			skip = 0
			if len(out) == size {
				switch {
				case upNext != "":
					next = filesCursor{Key: id, Token: upNext}.encode()
				case i+1 < len(keys):
					next = filesCursor{Key: keys[i+1]}.encode()
				}
				break
			}
			if upNext == "" {
				break
			}
			token = upNext
		}
	}
	if x.status == statusClientClosed {
		return // nobody to answer
	}
	if failed != nil && len(out) == 0 {
		x.writeUpstreamError(failed)
		return
	}
	resp := map[string]any{}
	if len(out) > 0 {
		resp[kind] = out
	}
	if next != "" {
		resp["nextPageToken"] = next
	}
	b, _ := json.Marshal(resp)
	b = append(b, '\n')
	hdr := x.w.Header()
	hdr.Set("Content-Type", "application/json; charset=UTF-8")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	x.status = http.StatusOK
	x.w.WriteHeader(http.StatusOK)
	x.w.Write(b)
}

// listKeyPage fetches one upstream page of one key's items of kind, records their owner and
// returns those the access key may see.
func (x *exchange) listKeyPage(kind string, id int64, token string, pageSize int) ([]json.RawMessage, string, *upstreamError) {
	c := x.core
	secret, err := c.pool.Get(id, "", time.Now())
	if err != nil {
		return nil, "", nil
	}
	qv := url.Values{}
	qv.Set("pageSize", strconv.Itoa(min(max(pageSize, 1), maxFilesPageSize)))
	if token != "" {
		qv.Set("pageToken", token)
	}
	req, err := http.NewRequestWithContext(x.r.Context(), http.MethodGet, upstreamURL(x.set.upstream, x.path, qv.Encode()), nil)
	if err != nil {
		return nil, "", &upstreamError{status: http.StatusBadGateway, reason: err.Error()}
	}
	req.Header.Set("X-Goog-Api-Key", secret)
	req.Header.Set("User-Agent", "")
	x.attempts++
	resp, fail := x.roundTrip(id, secret, req, countCall) // one page of one key's files, not a retry
	if fail != nil {
		return nil, "", fail
	}
	if resp == nil {
		return nil, "", &upstreamError{status: statusClientClosed, reason: x.errText} // the client is gone
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxFilesPageBytes))
	if err != nil {
		return nil, "", &upstreamError{status: http.StatusBadGateway, reason: "reading the upstream answer: " + err.Error()}
	}
	b = maskSecret(b, secret)
	var raw map[string]json.RawMessage
	var page struct {
		Files         []json.RawMessage
		NextPageToken string
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, "", &upstreamError{status: http.StatusBadGateway, reason: "the upstream's " + kind + " list is not JSON"}
	}
	if err := json.Unmarshal(raw[kind], &page.Files); raw[kind] != nil && err != nil {
		return nil, "", &upstreamError{status: http.StatusBadGateway, reason: "the upstream's " + kind + " list is not a list"}
	}
	_ = json.Unmarshal(raw["nextPageToken"], &page.NextPageToken)
	now := time.Now()
	var rs []store.Resource
	names := make([]string, len(page.Files))
	for i, f := range page.Files {
		var meta struct {
			Name           string `json:"name"`
			ExpirationTime string `json:"expirationTime"` // a file's
			ExpireTime     string `json:"expireTime"`     // a cached content's
		}
		if json.Unmarshal(f, &meta) != nil || resourceName(meta.Name) != meta.Name || meta.Name == "" ||
			!strings.HasPrefix(meta.Name, kind+"/") {
			continue
		}
		names[i] = meta.Name
		r := store.Resource{Name: meta.Name, Kind: kind, KeyID: id, CreatedAt: now}
		if d := defaultLifetimes[kind]; d > 0 {
			r.ExpiresAt = now.Add(d)
		}
		for _, e := range []string{meta.ExpirationTime, meta.ExpireTime} {
			if t, err := time.Parse(time.RFC3339Nano, e); err == nil {
				r.ExpiresAt = t
			}
		}
		rs = append(rs, r)
	}
	// Only the access key's own items (and, for a shared key, those the gateway did not
	// create) are shown: who made each is decided before the unknown ones are recorded.
	visible, err := x.visible(names)
	if err != nil {
		return nil, "", &upstreamError{status: http.StatusServiceUnavailable, reason: "looking up the listed items' owners: " + err.Error()}
	}
	// Items made outside the gateway are recorded without an access key; a recorded one keeps
	// the access key that made it (AddNewResources never replaces a live record).
	if err := c.store.AddNewResources(context.WithoutCancel(x.r.Context()), now, rs...); err != nil {
		c.logger.Warn("recording listed "+kind, zap.Error(err))
	}
	files := page.Files[:0]
	for i, f := range page.Files {
		if names[i] != "" && visible[names[i]] {
			files = append(files, f)
		}
	}
	return files, page.NextPageToken, nil
}
