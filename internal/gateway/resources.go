package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/geminisynapse/caddy-gemini-synapse/keypool"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// Key-bound resources (gemini-api.md §1.2). Files, cached contents, batches, tuned models,
// file search stores and long-running operations belong to the Google project of the key that
// created them. The gateway records the owner of every one created through it, and sends any
// later request that names one (in its path or its body) to that key, and to no other.

// bound is what an exchange knows about the key-bound resources of its request.
type bound struct {
	owner     int64  // the pool key that owns the resources the request names (0: none known)
	ownerOf   string // the resource that decided owner, for messages
	boundName string // the resource named by the path, if any
	exactName string // the path itself as a name ("files/x/junk", "files/x:download"), if it names a resource
	creates   bool   // a successful answer creates (or updates) a resource to record
	polls     bool   // the owner polls an operation or batch, whose answer may name new files
	// listMember is, for a listing of key-bound resources, the member of its answer that
	// holds the items, filtered down to the access key's own (isolation.go)
	listMember string
	// modelsList: the answer lists models, filtered down to the access key's allowed ones
	modelsList bool
}

// boundKinds are the first segments of the names of key-bound resources.
var boundKinds = map[string]bool{
	"files": true, "cachedContents": true, "batches": true, "tunedModels": true,
	"fileSearchStores": true, "operations": true, kindAuthTokens: true,
}

// refMarkers are what a request body must contain to possibly name a key-bound resource.
// Checking them is the whole cost of this feature for ordinary requests.
var refMarkers = [...][]byte{
	[]byte("files/"), []byte("cachedContents/"), []byte("tunedModels/"), []byte("batches/"),
	[]byte("fileSearchStores/"), []byte("/operations/"),
}

// defaultLifetimes are how long a resource is kept when Google's answer gives no expiry: files
// live 48 h, operations and batches are only polled for a while; tuned models and file search
// stores live until deleted (0).
var defaultLifetimes = map[string]time.Duration{
	"files": 48 * time.Hour, "cachedContents": time.Hour, "batches": 30 * 24 * time.Hour,
	"operations": 7 * 24 * time.Hour,
	// An ephemeral token lives 30 min unless made to live longer, at most 20 h; its answer
	// does not say which.
	kindAuthTokens: 20 * time.Hour,
}

// apiVersions are the version segments a resource name may follow in a path or a URI.
var apiVersions = [...]string{"v1beta/", "v1/", "v1alpha/"}

// resourceName turns a reference into the name of a key-bound resource: "files/abc",
// "https://generativelanguage.googleapis.com/v1beta/files/abc" and "/v1beta/files/abc:download"
// all give "files/abc"; "models/veo/operations/x" stays whole. It returns "" for anything else.
func resourceName(ref string) string {
	s := ref
	if i := strings.Index(s, "://"); i >= 0 {
		rest := s[i+3:]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			return ""
		}
		s = rest[j:]
	}
	s = strings.TrimPrefix(s, "/")
	s = strings.TrimPrefix(s, "upload/")
	for _, v := range apiVersions {
		if strings.HasPrefix(s, v) {
			s = s[len(v):]
			break
		}
	}
	if i := strings.IndexAny(s, ":?#"); i >= 0 {
		s = s[:i]
	}
	// The common case (a model's method) leaves here without allocating.
	if kind, _, _ := strings.Cut(s, "/"); !boundKinds[kind] && (kind != "models" || !strings.Contains(s, "/operations/")) {
		return ""
	}
	segs := strings.Split(s, "/")
	if len(segs) < 2 || segs[1] == "" {
		return ""
	}
	for _, seg := range segs {
		if seg == "" || strings.ContainsAny(seg, " \t\n\"\\") {
			return ""
		}
	}
	switch {
	case boundKinds[segs[0]]:
		if len(segs) == 2 || strings.Contains(s, "/operations/") {
			return s
		}
		// A sub-resource (a file search store's document): its owner is the parent's.
		return segs[0] + "/" + segs[1]
	case segs[0] == "models" && len(segs) == 4 && segs[2] == "operations":
		return s
	}
	return ""
}

// exactName returns the name a request path addresses exactly: the path without its version
// prefix and query, keeping any sub-path and ":method" ("files/x/junk", "files/x:download").
// Only a request whose exact name equals its bound resource's name is about the resource
// itself, and only such a request may make the gateway forget the resource.
func exactName(p string) string {
	s := strings.TrimPrefix(p, "/")
	s = strings.TrimPrefix(s, "upload/")
	for _, v := range apiVersions {
		if strings.HasPrefix(s, v) {
			return s[len(v):]
		}
	}
	return s
}

// goneUpstream tells whether an upstream error says the resource itself does not exist (for
// this key): 404 NOT_FOUND, or the 403 "You do not have permission to access … or it may not
// exist" Google answers for a resource deleted or expired. Other 403s (a suspended or leaked
// key) and 404s (an unknown method) say nothing about the resource.
func goneUpstream(status int, body []byte) bool {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return false
	}
	switch status {
	case http.StatusNotFound:
		return e.Error.Status == "NOT_FOUND"
	case http.StatusForbidden:
		return e.Error.Status == "PERMISSION_DENIED" && strings.Contains(e.Error.Message, "You do not have permission to access")
	}
	return false
}

// ownerNames are the names whose owner decides a name's key: itself and, for an operation of
// a resource ("tunedModels/x/operations/y"), the resource.
func ownerNames(name string) []string {
	segs := strings.SplitN(name, "/", 3)
	if len(segs) == 3 && boundKinds[segs[0]] {
		return []string{name, segs[0] + "/" + segs[1]}
	}
	return []string{name}
}

// maxReferences is the most distinct key-bound resources one request may name. Real requests
// name a handful; the cap bounds the work (and the SQL lookup) a crafted 32 MiB body can cause.
const maxReferences = 64

// JSON escapes that can spell a marker's letters or its slash.
var (
	escapedSlash = []byte(`\/`)
	escapedRune  = []byte(`\u`)
)

// bodyReferences returns the distinct key-bound resource names a JSON request body mentions in
// any string value except prompt text (fileData.fileUri, cachedContent, a batch's
// inputConfig.fileName, the OpenAI-compatible input_file_id and extra_body cached_content,
// fileSearch store names, a tunedModels/… model, …). It stops with tooMany once the body names
// more than maxReferences.
func bodyReferences(body []byte) (names []string, tooMany bool) {
	// A JSON escape ("\/", "\u0066") can hide a marker from the byte search: bodies with one
	// are always scanned.
	found := bytes.Contains(body, escapedSlash) || bytes.Contains(body, escapedRune)
	for _, m := range refMarkers {
		if found || bytes.Contains(body, m) {
			found = true
			break
		}
	}
	if !found {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var seen map[string]struct{}
	// Objects alternate key and value; arrays hold values only.
	type frame struct {
		object bool
		key    bool // the next string is a key
	}
	var stack []frame
	lastKey := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			return names, false
		}
		top := len(stack) - 1
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if top >= 0 && stack[top].object {
					stack[top].key = true
				}
				stack = append(stack, frame{object: v == '{', key: v == '{'})
			default:
				stack = stack[:top]
			}
		case string:
			if top >= 0 && stack[top].object && stack[top].key {
				lastKey = v
				stack[top].key = false
				continue
			}
			if top >= 0 && stack[top].object {
				stack[top].key = true
			}
			if lastKey == "text" || len(v) > 1024 {
				continue
			}
			n := resourceName(v)
			if n == "" {
				continue
			}
			if _, dup := seen[n]; dup {
				continue
			}
			if len(names) == maxReferences {
				return names, true
			}
			if seen == nil {
				seen = make(map[string]struct{})
			}
			seen[n] = struct{}{}
			names = append(names, n)
		default:
			if top >= 0 && stack[top].object {
				stack[top].key = true
			}
		}
	}
}

// routeBound sends requests about key-bound resources where they belong. It reports true when
// it has answered the request: a files listing, a conflict between owners, or a request bound
// to its owner's key. Requests that name no resource known to the gateway are left to the
// normal proxy path (false).
func (x *exchange) routeBound() bool {
	if kind := mergedKind(x.path); kind != "" && x.r.Method == http.MethodGet {
		x.listMerged(kind) // mergedlists.go
		return true
	}
	x.listMember = listedCollection(x.r.Method, x.path)
	x.modelsList = x.listsModels()
	var names []string
	if n := resourceName(x.path); n != "" {
		names = append(names, n)
		x.boundName = n
		x.exactName = exactName(x.path)
	}
	x.creates = createsResource(x.r.Method, x.path)
	if len(x.body) > 0 {
		refs, tooMany := bodyReferences(x.body)
		if tooMany {
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT",
				"too many resource references (max "+strconv.Itoa(maxReferences)+"): this request names more distinct files, cached contents and other resources than the gateway routes.")
			return true
		}
		for _, n := range refs { // at most maxReferences: the scan stays small
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	if len(names) == 0 {
		return false
	}
	var lookup []string
	for _, n := range names {
		lookup = append(lookup, ownerNames(n)...)
	}
	now := time.Now()
	owners, err := x.core.store.ResourceOwners(x.r.Context(), lookup, now)
	if err != nil {
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", "The owners of the resources this request names could not be looked up; try again.")
		return true
	}
	x.core.pending.owners(lookup, now, owners) // owners the store could not take yet
	for _, n := range names {
		// Another access key's resource, or one the gateway did not create (unless the key is
		// shared): as if it did not exist, and nothing goes upstream.
		if o, found := recordOf(n, owners); !x.mayUse(o, found) {
			x.denyResource(n)
			return true
		}
	}
	if len(owners) == 0 {
		return false
	}
	var owner int64
	var ownerOf string
	for _, n := range lookup {
		o, ok := owners[n]
		if !ok {
			continue
		}
		id := o.KeyID
		if owner == 0 {
			owner, ownerOf = id, n
			continue
		}
		if id != owner {
			x.fail(http.StatusBadRequest, "INVALID_ARGUMENT",
				"This request uses resources that belong to different upstream projects: "+ownerOf+" (key #"+
					strconv.FormatInt(owner, 10)+") and "+n+" (key #"+strconv.FormatInt(id, 10)+
					"). A Gemini request can only use files, cached contents and batches of one project: create them in one request flow, or upload the file again.")
			return true
		}
	}
	x.owner, x.ownerOf = owner, ownerOf
	x.proxyBound()
	return true
}

// createsResource tells whether a successful answer to the request creates a key-bound
// resource (or changes one's expiry) whose name the gateway must record.
func createsResource(method, p string) bool {
	if method == http.MethodPatch {
		return resourceName(p) != ""
	}
	if method != http.MethodPost {
		return false
	}
	if strings.HasPrefix(p, "/upload/") {
		return true // a multipart upload answers with the file; a resumable start with nothing
	}
	if i := strings.LastIndexByte(p, ':'); i >= 0 {
		switch p[i+1:] {
		case "batchGenerateContent", "asyncBatchEmbedContent", "predictLongRunning", "importFile",
			"uploadToFileSearchStore", "register":
			return true
		}
		return false
	}
	last := p[strings.LastIndexByte(p, '/')+1:]
	switch last {
	case "cachedContents", "tunedModels", "fileSearchStores", "batches", kindAuthTokens:
		return true
	case "files":
		// The OpenAI-compatible upload (purpose=batch) answers with the file's id.
		return strings.HasPrefix(p, "/v1beta/openai/") || strings.HasPrefix(p, "/v1/openai/")
	}
	return false
}

// proxyBound makes the one attempt of a request bound to its owner's key: no other key can see
// the resource, so there is no retry elsewhere, and an unusable owner is reported as such.
func (x *exchange) proxyBound() {
	c := x.core
	now := time.Now()
	x.keyID = x.owner
	secret, err := c.pool.Get(x.owner, x.model, now)
	if err != nil {
		what := x.ownerOf + " belongs to upstream key #" + strconv.FormatInt(x.owner, 10) + ", which " + keyUnusable(err)
		var ce *keypool.CoolingError
		if errors.As(err, &ce) {
			x.retryAfter(ce.Until, now)
			x.fail(http.StatusTooManyRequests, "RESOURCE_EXHAUSTED", what+"; no other key can use it, retry later.")
			return
		}
		if errors.Is(err, keypool.ErrKeyDisabled) {
			// Google's text can name the key's project: the client gets the reason code only.
			if r := publicKeyReason(c.disabledReason(x.r.Context(), x.owner)); r != "" {
				what += " (" + r + ")"
			}
		}
		x.fail(http.StatusServiceUnavailable, "UNAVAILABLE", what+"; no other key can use it.")
		return
	}
	x.attempts = 1
	if x.r.Method == http.MethodGet && x.aboutBound() &&
		(strings.HasPrefix(x.boundName, "batches/") || strings.Contains(x.boundName, "/operations/")) {
		x.polls = true
	}
	resp, fail, _ := x.attempt(x.owner, secret) // never retried: no other key can see it
	if resp != nil {
		x.answer(resp, secret)
		return
	}
	if fail == nil {
		return // the client is gone
	}
	if fail.body != nil && (x.r.Method == http.MethodGet || x.r.Method == http.MethodDelete) &&
		x.aboutBound() && goneUpstream(fail.status, fail.body) {
		// Gone upstream (expired or deleted elsewhere): forget it.
		x.forget(x.boundName)
	}
	x.writeUpstreamError(fail)
}

// disabledReason returns the stored reason a key is disabled, or "".
func (c *Core) disabledReason(ctx context.Context, id int64) string {
	keys, err := c.store.Keys(ctx)
	if err != nil {
		return ""
	}
	for _, k := range keys {
		if k.ID == id {
			return k.DisabledReason
		}
	}
	return ""
}

// answer sends a successful upstream answer to the client, recording what it creates first.
func (x *exchange) answer(resp *http.Response, secret string) {
	isStart := strings.HasPrefix(x.path, "/upload/") &&
		(resp.Header.Get("X-Goog-Upload-Url") != "" || resp.Header.Get("X-Goog-Upload-Control-Url") != "" || resp.Header.Get("Location") != "")
	switch {
	case isStart:
		if !x.bindUploadSession(resp) {
			return
		}
		x.copyResponse(resp, secret)
	case x.creates:
		x.copyCreated(resp, secret)
	case (x.listMember != "" || x.modelsList) && resp.StatusCode == http.StatusOK:
		x.copyFilteredList(resp, secret)
	case x.polls:
		x.copyRecording(resp, secret, polledMax, polledFiles, x.core.recordPolled)
	default:
		x.copyResponse(resp, secret)
	}
	if x.r.Method == http.MethodDelete && x.aboutBound() {
		x.forget(x.boundName)
	}
}

// aboutBound tells whether the request's path addresses its bound resource itself, not a
// sub-resource ("fileSearchStores/s/documents/d"), a method ("files/x:download") or a bogus
// suffix ("files/x/junk") of it.
func (x *exchange) aboutBound() bool {
	return x.boundName != "" && x.exactName == x.boundName
}

// forget drops a resource's row; a failure only leaves a row the retention job removes later.
func (x *exchange) forget(name string) {
	if name == "" {
		return
	}
	x.core.pending.forget(name)
	if err := x.core.store.DeleteResource(context.WithoutCancel(x.r.Context()), name); err != nil {
		x.core.logger.Warn("forgetting a deleted resource", zap.String("name", name), zap.Error(err))
	}
}

// createdMax is the largest answer read whole to find the resource it creates; such answers
// are small (a File, an Operation, a CachedContent without its contents).
const createdMax = 4 << 20

// polledMax is the largest answer to a poll of an operation or batch read whole to find the
// files it names; larger ones (a batch's inline responses) are streamed unread.
const polledMax = 1 << 20

// copyCreated reads a small success answer whole, records the resources it names as owned by
// the key that got it, and only then sends it: a client that uses the new resource at once
// must find it recorded.
func (x *exchange) copyCreated(resp *http.Response, secret string) {
	x.copyRecording(resp, secret, createdMax, createdResources, x.core.recordResources)
}

// copyRecording is copyCreated with the size limit, the finder of resources to record and the
// way to record them.
func (x *exchange) copyRecording(resp *http.Response, secret string, limit int,
	find func([]byte, store.Owner, time.Time) []store.Resource, record func(context.Context, []store.Resource)) {
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil || len(b) > limit {
		// Not a small JSON answer after all: send what was read and stream the rest.
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
		x.copyResponse(resp, secret)
		return
	}
	resp.Body.Close()
	b = maskSecret(b, secret)
	record(context.WithoutCancel(x.r.Context()), find(b, store.Owner{KeyID: x.keyID, AccessKeyID: x.access}, time.Now()))
	t := tailPool.Get().(*tail)
	t.reset()
	t.write(b)
	t.finish()
	x.usage = t.usage(x.openAI)
	tailPool.Put(t)
	x.ttfb = time.Since(x.start)
	x.writeRaw(resp, b, secret, "")
}

// createdResources finds the key-bound resources a create answer names: a File
// ({"file":{"name","expirationTime"}}, the bare File, or files:register's {"files":[…]}), an Operation ({"name"}, with a
// tuned model's name in metadata.tunedModel), a CachedContent ({"name","expireTime"}), an
// OpenAI-compatible batch ({"id"}).
func createdResources(b []byte, owner store.Owner, now time.Time) []store.Resource {
	var obj map[string]json.RawMessage
	if json.Unmarshal(b, &obj) != nil {
		return nil
	}
	var out []store.Resource
	add := func(o map[string]json.RawMessage) {
		var name, id, exp1, exp2 string
		_ = json.Unmarshal(o["name"], &name)
		_ = json.Unmarshal(o["id"], &id)
		_ = json.Unmarshal(o["expirationTime"], &exp1)
		_ = json.Unmarshal(o["expireTime"], &exp2)
		for _, ref := range []string{name, id} {
			n := resourceName(ref)
			if n == "" || n != ref {
				continue
			}
			kind, _, _ := strings.Cut(n, "/")
			if strings.Contains(n, "/operations/") {
				kind = "operations"
			}
			r := store.Resource{Name: n, Kind: kind, KeyID: owner.KeyID, AccessKeyID: owner.AccessKeyID, CreatedAt: now}
			for _, e := range []string{exp1, exp2} {
				if t, err := time.Parse(time.RFC3339Nano, e); err == nil {
					r.ExpiresAt = t
				}
			}
			if r.ExpiresAt.IsZero() {
				if d := defaultLifetimes[kind]; d > 0 {
					r.ExpiresAt = now.Add(d)
				}
			}
			out = append(out, r)
		}
	}
	add(obj)
	for _, sub := range []string{"file", "response"} {
		var o map[string]json.RawMessage
		if json.Unmarshal(obj[sub], &o) == nil && o != nil {
			add(o)
		}
	}
	var list []map[string]json.RawMessage // files:register answers {"files":[…]}
	if json.Unmarshal(obj["files"], &list) == nil {
		for _, o := range list {
			add(o)
		}
	}
	var meta struct {
		TunedModel string `json:"tunedModel"`
	}
	if json.Unmarshal(obj["metadata"], &meta) == nil && meta.TunedModel != "" {
		if n := resourceName(meta.TunedModel); n != "" {
			out = append(out, store.Resource{Name: n, Kind: "tunedModels", KeyID: owner.KeyID, AccessKeyID: owner.AccessKeyID, CreatedAt: now})
		}
	}
	return out
}

// polledOutput is where a batch names the file of its results: the wire's
// metadata.output.responsesFile and response.responsesFile, and the SDKs' output.responsesFile
// and dest.fileName.
type polledOutput struct {
	ResponsesFile string `json:"responsesFile"`
	FileName      string `json:"fileName"`
}

// polledVideo is one generated video of a finished operation.
type polledVideo struct {
	Video struct {
		URI string `json:"uri"`
	} `json:"video"`
}

// polledAnswer holds the documented fields of a finished batch or operation that name files
// its owner's project made, and nothing else: a batch's inlinedResponses are generated content
// and the client's own metadata, in which a model or a client can write any file's name.
type polledAnswer struct {
	Metadata struct {
		Output polledOutput `json:"output"`
	} `json:"metadata"`
	Response struct {
		polledOutput
		GenerateVideoResponse struct {
			GeneratedSamples []polledVideo `json:"generatedSamples"`
			GeneratedVideos  []polledVideo `json:"generatedVideos"`
		} `json:"generateVideoResponse"`
		GeneratedSamples []polledVideo `json:"generatedSamples"`
		GeneratedVideos  []polledVideo `json:"generatedVideos"`
	} `json:"response"`
	Output polledOutput `json:"output"`
	Dest   polledOutput `json:"dest"`
}

// polledFiles finds the files a finished operation or batch names in the fields Google
// documents for them (see polledAnswer): a batch's responsesFile, a video's
// response.generateVideoResponse.generatedSamples[].video.uri (generatedVideos[] in the SDKs'
// shape). They were made in the project of the key that polled it. Strings anywhere else,
// such as a model's output, are never read.
func polledFiles(b []byte, owner store.Owner, now time.Time) []store.Resource {
	var a polledAnswer
	// A value of an unexpected type leaves the other fields decoded; invalid JSON none.
	if err := json.Unmarshal(b, &a); err != nil {
		if _, ok := errors.AsType[*json.SyntaxError](err); ok {
			return nil
		}
	}
	refs := []string{a.Metadata.Output.ResponsesFile, a.Metadata.Output.FileName, a.Response.ResponsesFile,
		a.Response.FileName, a.Output.ResponsesFile, a.Output.FileName, a.Dest.ResponsesFile, a.Dest.FileName}
	for _, vs := range [][]polledVideo{a.Response.GenerateVideoResponse.GeneratedSamples,
		a.Response.GenerateVideoResponse.GeneratedVideos, a.Response.GeneratedSamples, a.Response.GeneratedVideos} {
		for _, v := range vs {
			refs = append(refs, v.Video.URI)
		}
	}
	var out []store.Resource
	for _, ref := range refs {
		n := fileRef(ref)
		if n == "" || slices.ContainsFunc(out, func(r store.Resource) bool { return r.Name == n }) {
			continue
		}
		out = append(out, store.Resource{Name: n, Kind: "files", KeyID: owner.KeyID, AccessKeyID: owner.AccessKeyID, CreatedAt: now, ExpiresAt: now.Add(defaultLifetimes["files"])})
	}
	return out
}

// fileRef returns the file a reference names exactly ("files/abc", or its URI, with a
// ":download" method and a query allowed), or "" for anything else, a file's sub-path included.
func fileRef(ref string) string {
	n := resourceName(ref)
	if !strings.HasPrefix(n, "files/") || strings.Count(n, "/") != 1 {
		return ""
	}
	s := ref
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	last := strings.LastIndexByte(s, '/')
	if i := strings.IndexByte(s[last+1:], ':'); i >= 0 {
		s = s[:last+1+i]
	}
	if s != n && !strings.HasSuffix(s, "/"+n) {
		return ""
	}
	return n
}

// recordPolled records the owners of the files a polled batch or operation names, except
// where an owner is known (in the store, unless expired, or pending): a poll only infers what
// it records, so it never takes a resource from its owner. A record the store does not take is
// dropped with a warning, not kept pending: the next poll tries again.
func (c *Core) recordPolled(ctx context.Context, rs []store.Resource) {
	if len(rs) == 0 {
		return
	}
	now := time.Now()
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.Name
	}
	known := make(map[string]store.Owner)
	c.pending.owners(names, now, known)
	rs = slices.DeleteFunc(slices.Clone(rs), func(r store.Resource) bool { _, ok := known[r.Name]; return ok })
	if len(rs) == 0 {
		return
	}
	var err error
	for _, wait := range recordBackoff {
		time.Sleep(wait)
		if err = c.store.AddNewResources(ctx, now, rs...); err == nil {
			return
		}
	}
	c.logger.Warn("recording the files a polled batch or operation made failed; the next poll tries again",
		zap.Strings("names", names), zap.Error(err))
}

// ownedResourceCounts tells, per pool key that owns any, how many live resources created
// through the gateway it owns: the admin panel shows it, and asks before deleting such a key.
func (c *Core) ownedResourceCounts(ctx context.Context) (map[int64]int, error) {
	return c.store.OwnedResourceCounts(ctx, time.Now())
}

// purgeBound deletes the records of resources and upload sessions expired at now (for the
// daily retention job).
func (c *Core) purgeBound(ctx context.Context, now time.Time) (resources, uploads int64, err error) {
	resources, err1 := c.store.PurgeResources(ctx, now)
	uploads, err2 := c.store.PurgeUploadSessions(ctx, now)
	return resources, uploads, errors.Join(err1, err2)
}
