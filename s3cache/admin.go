package s3cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds the cache's routes to Caddy's admin endpoint:
//
//	GET  /s3_media_cache/stats   every cache: entries, bytes, hit ratio, fills, evictions, S3 errors
//	POST /s3_media_cache/purge   {"path": "/media_attachments/…"} or {"prefix": "/accounts/avatars/"}
//
// Paths are URL paths as clients request them; each site's
// strip_path_prefix, prefix and bucket turn them into cache keys.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.s3_media_cache",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/s3_media_cache/stats", Handler: caddy.AdminHandlerFunc(a.handleStats)},
		{Pattern: "/s3_media_cache/purge", Handler: caddy.AdminHandlerFunc(a.handlePurge)},
	}
}

func (a *AdminAPI) handleStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use GET")}
	}
	stats := []StoreStats{}
	stores.Range(func(_, value any) bool {
		if s, ok := value.(*store); ok {
			stats = append(stats, s.snapshot())
		}
		return true
	})
	sort.Slice(stats, func(i, j int) bool { return stats[i].CacheDir < stats[j].CacheDir })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(stats)
}

// PurgeRequest is the body of POST /s3_media_cache/purge: one of Path or
// Prefix.
type PurgeRequest struct {
	Path   string `json:"path,omitempty"`
	Prefix string `json:"prefix,omitempty"`
}

// PurgeResult says how many entries or fills a purge removed.
type PurgeResult struct {
	Purged int `json:"purged"`
}

func (a *AdminAPI) handlePurge(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use POST")}
	}
	var req PurgeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("decoding request: %w", err)}
	}
	if (req.Path == "") == (req.Prefix == "") {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`give exactly one of "path" and "prefix"`)}
	}
	var result PurgeResult
	var err error
	stores.Range(func(_, value any) bool {
		s, ok := value.(*store)
		if !ok {
			return true
		}
		s.purgeRequests.Add(1)
		var n int
		if req.Path != "" {
			n, err = s.purgePath(req.Path)
		} else {
			n, err = s.purgeURLPrefix(req.Prefix)
		}
		result.Purged += n
		return err == nil
	})
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(result)
}

// addMapping and removeMapping track the sites using the store, so the
// admin API can purge by URL path.
func (s *store) addMapping(m keyMapping) {
	s.mu.Lock()
	s.mappings[m]++
	s.mu.Unlock()
}

func (s *store) removeMapping(m keyMapping) {
	s.mu.Lock()
	if s.mappings[m]--; s.mappings[m] <= 0 {
		delete(s.mappings, m)
	}
	s.mu.Unlock()
}

func (s *store) currentMappings() []keyMapping {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]keyMapping, 0, len(s.mappings))
	for m := range s.mappings {
		out = append(out, m)
	}
	return out
}

// purgePath purges the object a URL path names, for every site. The path
// is read as clients send it (percent-escapes decoded segment by segment),
// so a path copied from a URL or an access log works as well as a plain one.
func (s *store) purgePath(path string) (int, error) {
	if _, err := objectPathOf(path, ""); err != nil {
		return 0, fmt.Errorf("path %q is not a media path", path)
	}
	n := 0
	for _, m := range s.currentMappings() {
		if _, ckey, err := m.keys(path); err == nil && s.purge(ckey) {
			n++
		}
	}
	return n, nil
}

// purgeURLPrefix purges every object under a URL path prefix, such as
// the media of one account, for every site. A site's strip_path_prefix
// must start the prefix as whole segments, as it must start a request's
// path.
func (s *store) purgeURLPrefix(prefix string) (int, error) {
	decoded, err := decodePrefix(prefix)
	if err != nil {
		return 0, fmt.Errorf("prefix %q must be a URL path starting with /", prefix)
	}
	n := 0
	for _, m := range s.currentMappings() {
		rest, ok := strings.CutPrefix(decoded, m.stripPrefix)
		if !ok || (rest != "" && rest[0] != '/') {
			continue
		}
		key, err := m.objectKey(strings.TrimPrefix(rest, "/"))
		if err != nil && rest != "" && rest != "/" {
			continue
		}
		n += s.purgePrefix(m.cacheKey(key))
	}
	return n, nil
}

// decodePrefix decodes a URL path prefix segment by segment, with the
// rules of a request's path: no encoded separator, no dot segments.
func decodePrefix(prefix string) (string, error) {
	segments, err := decodeSegments(prefix)
	if err != nil || slices.Contains(segments, ".") || slices.Contains(segments, "..") {
		return "", errBadPath
	}
	return "/" + strings.Join(segments, "/"), nil
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
