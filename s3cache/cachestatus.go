package s3cache

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Values of X-Cache-Status, in nginx's $upstream_cache_status vocabulary so
// dashboards and log parsers written for the nginx recipe keep working.
const (
	cacheMiss        = "MISS"        // the response came from S3
	cacheBypass      = "BYPASS"      // the cache was not consulted: a local file, or a request refused
	cacheHit         = "HIT"         // a fresh entry, with every byte the response needs on disk
	cacheExpired     = "EXPIRED"     // an expired entry, replaced by a new download
	cacheRevalidated = "REVALIDATED" // an expired entry, confirmed by S3 with a 304
	cacheStale       = "STALE"       // an expired entry, served because S3 failed
	cacheUpdating    = "UPDATING"    // an expired entry, served while a refresh runs
)

// cacheStatusVar names the request variable (Caddy's vars) holding a
// request's cache status once it is decided. The X-Cache-Status header is
// written with it, and ServeHTTP's accounting reads it back: the metrics,
// the store's counters and the {http.s3_media_cache.status} placeholder.
const cacheStatusVar = "s3_media_cache.cache_status"

// decorate adds the header policy's headers to a response of status, and
// records its cache status, decided by the caller, on the request.
func (h *Handler) decorate(w http.ResponseWriter, r *http.Request, status int, cacheStatus string, now time.Time) {
	setCacheStatus(r, cacheStatus)
	h.policy.decorate(w.Header(), status, cacheStatus, now)
}

// setCacheStatus records r's cache status.
func setCacheStatus(r *http.Request, cacheStatus string) {
	caddyhttp.SetVar(r.Context(), cacheStatusVar, boxedStatus(cacheStatus))
}

// cacheStatusOf is the cache status recorded for r: "" when none was, as
// for a client that left before it was answered.
func cacheStatusOf(r *http.Request) string {
	s, _ := caddyhttp.GetVar(r.Context(), cacheStatusVar).(string)
	return s
}

// boxedStatus is a cache status as an interface value, boxed from its
// constant: boxing a string that is not a constant costs an allocation,
// on every request.
func boxedStatus(cacheStatus string) any {
	switch cacheStatus {
	case cacheHit:
		return cacheHit
	case cacheMiss:
		return cacheMiss
	case cacheBypass:
		return cacheBypass
	case cacheExpired:
		return cacheExpired
	case cacheRevalidated:
		return cacheRevalidated
	case cacheStale:
		return cacheStale
	case cacheUpdating:
		return cacheUpdating
	}
	return cacheStatus
}
