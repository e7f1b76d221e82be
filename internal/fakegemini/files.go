package fakegemini

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// googleUploadBase is the upload URL the fake hands out. It names Google's
// real host on purpose: rewriting it is the proxy's job.
const googleUploadBase = "https://generativelanguage.googleapis.com/upload/v1beta/files"

// uploadChunkGranularity is the X-Goog-Upload-Chunk-Granularity Google sends.
const uploadChunkGranularity = "8388608"

// fileResource is the File resource of the Files API.
type fileResource struct {
	Name           string `json:"name"`
	DisplayName    string `json:"displayName,omitempty"`
	MimeType       string `json:"mimeType"`
	SizeBytes      string `json:"sizeBytes"`
	CreateTime     string `json:"createTime"`
	UpdateTime     string `json:"updateTime"`
	ExpirationTime string `json:"expirationTime"`
	Sha256Hash     string `json:"sha256Hash"`
	URI            string `json:"uri"`
	State          string `json:"state"`
	Source         string `json:"source"`
}

type storedFile struct {
	owner string
	res   fileResource
}

// uploadSession is one resumable upload, bound to the key that started it.
type uploadSession struct {
	owner        string
	displayName  string
	mimeType     string
	declaredSize int64 // -1 when the start did not say
	received     int64
	sum          hash.Hash
	busy         bool // a chunk is being read into sum
	final        *fileResource
}

// ownsFile reports whether key owns the file called name ("files/{id}").
func (s *Server) ownsFile(key, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.files[strings.TrimPrefix(name, "files/")]
	return ok && f.owner == key
}

// serveUpload answers POST /upload/v1beta/files: a resumable start without
// upload_id, a chunk command with it.
func (s *Server) serveUpload(x *exchange) {
	if x.r.Method != http.MethodPost {
		x.fail(notFoundError())
		return
	}
	if id := x.r.URL.Query().Get("upload_id"); id != "" {
		s.uploadChunk(x, id)
		return
	}
	if !s.authenticate(x, "FileService.CreateFile") {
		return
	}
	h := x.r.Header
	if !strings.EqualFold(strings.TrimSpace(h.Get("X-Goog-Upload-Protocol")), "resumable") ||
		!strings.EqualFold(strings.TrimSpace(h.Get("X-Goog-Upload-Command")), "start") {
		x.fail(badRequest("The fake Gemini upstream only supports the resumable upload protocol " +
			"(X-Goog-Upload-Protocol: resumable, X-Goog-Upload-Command: start)."))
		return
	}
	var meta struct {
		File struct {
			DisplayName      string `json:"displayName"`
			DisplayNameSnake string `json:"display_name"`
			MimeType         string `json:"mimeType"`
			MimeTypeSnake    string `json:"mime_type"`
		} `json:"file"`
	}
	if len(strings.TrimSpace(string(x.body))) > 0 {
		if err := json.Unmarshal(x.body, &meta); err != nil {
			x.fail(invalidJSONError())
			return
		}
	}
	sess := &uploadSession{
		owner:        x.key,
		displayName:  firstNonEmpty(meta.File.DisplayName, meta.File.DisplayNameSnake),
		mimeType:     firstNonEmpty(h.Get("X-Goog-Upload-Header-Content-Type"), meta.File.MimeType, meta.File.MimeTypeSnake, "application/octet-stream"),
		declaredSize: -1,
		sum:          sha256.New(),
	}
	if v := h.Get("X-Goog-Upload-Header-Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			x.fail(badRequest("Invalid X-Goog-Upload-Header-Content-Length."))
			return
		}
		sess.declaredSize = n
	}
	id := "ABgVH8" + randomID(60)
	s.mu.Lock()
	s.uploads[id] = sess
	s.mu.Unlock()

	q := url.Values{"upload_id": {id}, "upload_protocol": {"resumable"}}
	if k := x.r.URL.Query().Get("key"); k != "" {
		q.Set("key", k)
	}
	uploadURL := googleUploadBase + "?" + q.Encode()
	rh := x.w.Header()
	rh.Set("X-Goog-Upload-Status", "active")
	rh.Set("X-Goog-Upload-Url", uploadURL)
	rh.Set("X-Goog-Upload-Control-Url", uploadURL)
	rh.Set("X-Goog-Upload-Chunk-Granularity", uploadChunkGranularity)
	x.w.WriteHeader(http.StatusOK)
}

// chunkReply is the answer to one upload-session command, computed under
// the lock and written after it.
type chunkReply struct {
	code     int
	status   string // X-Goog-Upload-Status
	received int64  // X-Goog-Upload-Size-Received, when >= 0
	plain    string // text/plain error body
	err      *apiError
	file     *fileResource
}

// uploadChunk answers a command on an upload session: "upload",
// "upload, finalize", "finalize", "query" or "cancel". The session is the
// credential: requests without a key are accepted, requests with a key other
// than the one that started it are refused.
func (s *Server) uploadChunk(x *exchange, id string) {
	r := s.applyChunk(x, id)
	h := x.w.Header()
	h.Set("X-Goog-Upload-Status", r.status)
	if r.received >= 0 {
		h.Set("X-Goog-Upload-Size-Received", strconv.FormatInt(r.received, 10))
	}
	switch {
	case r.err != nil:
		x.fail(r.err)
	case r.plain != "":
		plainError(x.w, r.code, r.plain)
	case r.file != nil:
		x.writeJSON(struct {
			File *fileResource `json:"file"`
		}{r.file})
	default:
		x.w.WriteHeader(http.StatusOK)
	}
}

// applyChunk updates the upload session id for the command of x. The chunk's bytes are
// streamed into the session's hash outside the lock.
func (s *Server) applyChunk(x *exchange, id string) chunkReply {
	s.mu.Lock()
	defer s.mu.Unlock()
	if x.r.Body != nil {
		// Whatever happens, the body is drained (and counted) so the connection stays usable.
		defer func() {
			s.mu.Unlock()
			n, _ := io.Copy(io.Discard, x.r.Body)
			s.mu.Lock()
			if n > 0 {
				if i := x.call; i < len(s.calls) {
					s.calls[i].BodySize += n
				}
			}
		}()
	}
	sess, ok := s.uploads[id]
	if !ok {
		return chunkReply{code: http.StatusNotFound, status: "final", received: -1, plain: "Upload session not found."}
	}
	if x.key != "" && x.key != sess.owner {
		return chunkReply{status: "final", received: -1, err: &apiError{
			Code: http.StatusForbidden, Message: "The caller does not have permission", Status: "PERMISSION_DENIED"}}
	}
	cmds := map[string]bool{}
	for c := range strings.SplitSeq(x.r.Header.Get("X-Goog-Upload-Command"), ",") {
		cmds[strings.ToLower(strings.TrimSpace(c))] = true
	}
	switch {
	case cmds["cancel"]:
		delete(s.uploads, id)
		return chunkReply{status: "cancelled", received: -1}
	case cmds["query"]:
		if sess.final != nil {
			return chunkReply{status: "final", received: sess.received, file: sess.final}
		}
		return chunkReply{status: "active", received: sess.received}
	case !cmds["upload"] && !cmds["finalize"]:
		return chunkReply{code: http.StatusBadRequest, status: "active", received: -1, plain: "Invalid X-Goog-Upload-Command."}
	case sess.final != nil:
		return chunkReply{code: http.StatusBadRequest, status: "final", received: -1, plain: "The upload is already finalized."}
	}
	if cmds["upload"] {
		if v := x.r.Header.Get("X-Goog-Upload-Offset"); v != "" {
			off, err := strconv.ParseInt(v, 10, 64)
			if err != nil || off != sess.received {
				return chunkReply{code: http.StatusBadRequest, status: "active", received: sess.received,
					plain: "Invalid X-Goog-Upload-Offset: expected " + strconv.FormatInt(sess.received, 10) + "."}
			}
		}
		if sess.busy {
			return chunkReply{code: http.StatusConflict, status: "active", received: sess.received,
				plain: "Another chunk of this upload is being received."}
		}
		sess.busy = true
		s.mu.Unlock()
		n, err := io.Copy(sess.sum, x.r.Body) // only this request touches sum while busy
		s.mu.Lock()
		sess.busy = false
		sess.received += n
		if i := x.call; i < len(s.calls) {
			s.calls[i].BodySize = n
		}
		if err != nil {
			return chunkReply{code: http.StatusBadRequest, status: "active", received: sess.received,
				plain: "The chunk was cut short: " + err.Error()}
		}
	}
	if !cmds["finalize"] {
		return chunkReply{status: "active", received: -1}
	}
	if sess.declaredSize >= 0 && sess.declaredSize != sess.received {
		return chunkReply{code: http.StatusBadRequest, status: "active", received: sess.received,
			plain: "Upload size mismatch: declared " + strconv.FormatInt(sess.declaredSize, 10) +
				" bytes, received " + strconv.FormatInt(sess.received, 10) + "."}
	}
	fileID := randomLowerID(12)
	now := time.Now().UTC()
	res := fileResource{
		Name:           "files/" + fileID,
		DisplayName:    sess.displayName,
		MimeType:       sess.mimeType,
		SizeBytes:      strconv.FormatInt(sess.received, 10),
		CreateTime:     now.Format(time.RFC3339Nano),
		UpdateTime:     now.Format(time.RFC3339Nano),
		ExpirationTime: now.Add(48 * time.Hour).Format(time.RFC3339Nano),
		Sha256Hash:     base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sess.sum.Sum(nil)))),
		URI:            "https://generativelanguage.googleapis.com/v1beta/files/" + fileID,
		State:          "ACTIVE",
		Source:         "UPLOADED",
	}
	sess.final = &res
	s.files[fileID] = &storedFile{owner: sess.owner, res: res}
	return chunkReply{status: "final", received: -1, file: &res}
}

// serveFiles answers files.list (GET files), files.get (GET files/{id}) and
// files.delete (DELETE files/{id}), for the owning key only.
func (s *Server) serveFiles(x *exchange, id string, hasMethod, get, del bool) {
	switch {
	case hasMethod || (id == "" && !get) || (id != "" && !get && !del):
		x.fail(notFoundError())
	case id == "":
		if !s.authenticate(x, "FileService.ListFiles") {
			return
		}
		var out []fileResource
		s.mu.Lock()
		for _, f := range s.files {
			if f.owner == x.key {
				out = append(out, f.res)
			}
		}
		s.mu.Unlock()
		slices.SortFunc(out, func(a, b fileResource) int { return strings.Compare(a.Name, b.Name) })
		// pageSize: default 10, at most 100, as Google's files.list.
		start, end, next, ok := paginate(x, len(out), 10, 100, "files")
		if !ok {
			return
		}
		resp := struct {
			Files         []fileResource `json:"files,omitempty"`
			NextPageToken string         `json:"nextPageToken,omitempty"`
		}{Files: out[start:end], NextPageToken: next}
		x.writeJSON(resp)
	case get:
		if !s.authenticate(x, "FileService.GetFile") {
			return
		}
		s.mu.Lock()
		f, ok := s.files[id]
		s.mu.Unlock()
		if !ok || f.owner != x.key {
			x.fail(fileDeniedError("files/" + id))
			return
		}
		x.writeJSON(f.res)
	default:
		if !s.authenticate(x, "FileService.DeleteFile") {
			return
		}
		s.mu.Lock()
		f, ok := s.files[id]
		if ok && f.owner == x.key {
			delete(s.files, id)
		}
		s.mu.Unlock()
		if !ok || f.owner != x.key {
			x.fail(fileDeniedError("files/" + id))
			return
		}
		x.writeJSON(struct{}{})
	}
}

// plainError writes a text/plain error, as Google's upload backend does.
func plainError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg))
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// FileOwner returns the key that owns the file called name ("files/{id}"), or "" if there is
// no such file.
func (s *Server) FileOwner(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.files[strings.TrimPrefix(name, "files/")]; ok {
		return f.owner
	}
	return ""
}
