package fakegemini

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cachedContent is the CachedContent resource (context caching), without its contents.
type cachedContent struct {
	Name          string `json:"name"`
	DisplayName   string `json:"displayName,omitempty"`
	Model         string `json:"model"`
	CreateTime    string `json:"createTime"`
	UpdateTime    string `json:"updateTime"`
	ExpireTime    string `json:"expireTime"`
	UsageMetadata struct {
		TotalTokenCount int `json:"totalTokenCount"`
	} `json:"usageMetadata"`
}

type storedCache struct {
	owner string
	res   cachedContent
}

// cacheDeniedError is Google's answer for a cached content of another project (or none).
func cacheDeniedError() *apiError {
	return &apiError{Code: http.StatusForbidden, Message: "CachedContent not found (or permission denied)", Status: "PERMISSION_DENIED"}
}

// ownsCache reports whether key owns the cached content called name.
func (s *Server) ownsCache(key, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.caches[strings.TrimPrefix(name, "cachedContents/")]
	return ok && c.owner == key
}

// serveCaches answers cachedContents.create (POST cachedContents), list, get and delete
// (cachedContents/{id}), for the owning key only.
func (s *Server) serveCaches(x *exchange, id string, hasMethod, get, post, del bool) {
	switch {
	case hasMethod:
		x.fail(notFoundError())
	case id == "" && post:
		if !s.authenticate(x, "CacheService.CreateCachedContent") {
			return
		}
		var req struct {
			generateRequest
			Model       string `json:"model"`
			DisplayName string `json:"displayName"`
			TTL         string `json:"ttl"`
		}
		if err := json.Unmarshal(x.body, &req); err != nil {
			x.fail(invalidJSONError())
			return
		}
		if req.Model == "" {
			x.fail(badRequest("* CreateCachedContentRequest.cached_content.model: model is required\n"))
			return
		}
		if !s.checkFileRefs(x, req.fileRefs()) {
			return
		}
		ttl := time.Hour
		if v, ok := strings.CutSuffix(req.TTL, "s"); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
				ttl = time.Duration(f * float64(time.Second))
			}
		}
		now := time.Now().UTC()
		cid := randomLowerID(12)
		res := cachedContent{
			Name: "cachedContents/" + cid, DisplayName: req.DisplayName, Model: req.Model,
			CreateTime: now.Format(time.RFC3339Nano), UpdateTime: now.Format(time.RFC3339Nano),
			ExpireTime: now.Add(ttl).Format(time.RFC3339Nano),
		}
		res.UsageMetadata.TotalTokenCount = req.promptWords()
		s.mu.Lock()
		s.caches[cid] = &storedCache{owner: x.key, res: res}
		s.mu.Unlock()
		x.writeJSON(res)
	case id == "" && get:
		// cachedContents.list: the key's own, by name; an empty list is left out, as Google does.
		if !s.authenticate(x, "CacheService.ListCachedContents") {
			return
		}
		var out struct {
			CachedContents []cachedContent `json:"cachedContents,omitempty"`
		}
		s.mu.Lock()
		for _, c := range s.caches {
			if c.owner == x.key {
				out.CachedContents = append(out.CachedContents, c.res)
			}
		}
		s.mu.Unlock()
		slices.SortFunc(out.CachedContents, func(a, b cachedContent) int { return strings.Compare(a.Name, b.Name) })
		x.writeJSON(out)
	case id != "" && (get || del):
		if !s.authenticate(x, "CacheService.GetCachedContent") {
			return
		}
		s.mu.Lock()
		c, ok := s.caches[id]
		if ok && c.owner == x.key && del {
			delete(s.caches, id)
		}
		s.mu.Unlock()
		if !ok || c.owner != x.key {
			x.fail(cacheDeniedError())
			return
		}
		if del {
			x.writeJSON(struct{}{})
			return
		}
		x.writeJSON(c.res)
	default:
		x.fail(notFoundError())
	}
}
