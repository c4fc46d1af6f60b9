// Package s3cache is the engine and Caddy handler of caddy-s3-media-cache:
// it serves a fediverse instance's media from an S3 bucket, with a local
// directory tried first, and the header policy of Mastodon's documented
// media proxy. It knows nothing of the Caddyfile; see package caddyfile.
package s3cache

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.s3_media_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// ServeHTTP answers a media request, or a cache-buster purge, and accounts
// for it: metrics, and the {http.s3_media_cache.status} placeholder for
// access logs.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	purge := h.takePurgeSecret(r)
	var err error
	if purge.present && h.isPurge(r, purge) {
		err = h.servePurge(w, r) // counted as a purge, not a media request
	} else {
		err = h.serveMedia(w, r)
	}
	if purge.present && err != nil {
		// Caddy logs a handler's error with the request's headers, as
		// it cloned them before any handler ran: the error's status is
		// written here instead.
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			w.WriteHeader(he.StatusCode)
			err = nil
		}
	}
	return err
}

// serveMedia answers a media request and counts it.
func (h *Handler) serveMedia(w http.ResponseWriter, r *http.Request) error {
	err := h.serve(w, r)
	status := cacheStatusOf(r)
	h.metrics.countRequest(status)
	if h.store != nil {
		h.store.countRequest(status)
		if err != nil { // errors.As would cost a hit an allocation
			var oe *originError
			if errors.As(err, &oe) && oe.status != http.StatusNotFound {
				h.store.s3Errors.Add(1)
			}
		}
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.s3_media_cache.status", boxedStatus(status))
	}
	return err
}

// serve answers a media request. It reads top to bottom: purge, method
// check, path check, local file, then the cache or S3.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.decorate(w, r, http.StatusMethodNotAllowed, cacheBypass, time.Now())
		return caddyhttp.Error(http.StatusMethodNotAllowed, errMethodNotAllowed)
	}

	rel, err := objectPath(r.URL, h.mapping.stripPrefix)
	if err != nil {
		return h.pathFailure(w, r, err)
	}

	if h.localRoot != nil && h.serveLocal(w, r, rel) {
		return nil
	}

	key, err := h.mapping.objectKey(rel)
	if err != nil {
		return h.pathFailure(w, r, err)
	}
	if h.store == nil {
		return h.serveFromOrigin(w, r, key, cacheMiss)
	}
	return h.serveCached(w, r, key)
}

// pathFailure answers a path that names no object: 400 for a malformed
// one, 404 for one that cannot name an object (a directory, a key longer
// than S3 allows), without asking S3.
func (h *Handler) pathFailure(w http.ResponseWriter, r *http.Request, err error) error {
	status := statusForPathError(err)
	h.decorate(w, r, status, cacheBypass, time.Now())
	return caddyhttp.Error(status, err)
}

var errMethodNotAllowed = errors.New("method not allowed: media is read-only")

// serveLocal serves rel from the local root if it is a regular file there,
// and reports whether it did. http.ServeContent answers Range (single and
// multipart), If-None-Match, If-Modified-Since, If-Match, If-Range and
// HEAD, as nginx's static module does.
func (h *Handler) serveLocal(w http.ResponseWriter, r *http.Request, rel string) bool {
	if h.localDir != nil && nothingAt(h.localDirFD, rel) {
		return false
	}
	info, err := h.localRoot.Stat(rel)
	if err != nil || !info.Mode().IsRegular() {
		// Missing, a directory, a device, or a symlink leading outside
		// root (os.Root refuses those): the object is S3's business.
		return false
	}
	f, err := h.localRoot.Open(rel)
	if err != nil {
		h.logger.Debug("local file not readable; trying S3", zap.String("path", rel), zap.Error(err))
		return false
	}
	defer f.Close()

	if h.policy.keeps("ETag") {
		w.Header().Set("ETag", localETag(info.ModTime(), info.Size()))
	}
	setCacheStatus(r, cacheBypass)
	pw := &policyWriter{ResponseWriter: w, policy: &h.policy, cacheStatus: cacheBypass, now: time.Now()}
	http.ServeContent(pw, r, info.Name(), info.ModTime(), f)
	return true
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
