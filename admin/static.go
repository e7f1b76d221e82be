package admin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// contentSecurityPolicy is sent with every answer: the panel loads nothing but its own files,
// runs no inline script and cannot be framed.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

//go:embed web
var webFiles embed.FS

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	etag        string
	contentType string
}

var (
	assetsOnce sync.Once
	assets     map[string]asset // by path below web/, e.g. "index.html"
)

// loadAssets reads the embedded files once and computes their ETags.
func loadAssets() map[string]asset {
	assetsOnce.Do(func() {
		assets = make(map[string]asset)
		_ = fs.WalkDir(webFiles, "web", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := webFiles.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			ct := mime.TypeByExtension(path.Ext(p))
			if ct == "" {
				ct = http.DetectContentType(b)
			}
			assets[strings.TrimPrefix(p, "web/")] = asset{body: b, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, contentType: ct}
			return nil
		})
	})
	return assets
}

// serveStatic serves the panel: name is the path below P/. The page itself answers P/ and
// any path without a file extension (the panel routes in the browser); files answer their
// own path. Every file is revalidated by ETag before use, so a new release shows at once.
func (h *Handler) serveStatic(w http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "The panel's files are read with GET.")
		return
	}
	all := loadAssets()
	a, ok := all[name]
	if !ok && path.Ext(name) == "" && !strings.Contains(name, "..") {
		a, ok = all["index.html"]
	}
	if !ok {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "No such file in the admin panel.")
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("ETag", a.etag)
	hdr.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
}
