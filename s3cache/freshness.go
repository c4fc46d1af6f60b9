package s3cache

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// freshnessPolicy decides how long a response stays fresh in the cache,
// following nginx: upstream Cache-Control (s-maxage, then max-age) and
// then Expires win when present, unless told to ignore them
// (proxy_ignore_headers); otherwise the configured validity for the status
// applies (proxy_cache_valid). Mastodon uploads media with
// "Cache-Control: public, max-age=315576000, immutable", so by default its
// objects stay fresh for ten years and are never revalidated; that is
// correct for immutable media, and deletions reach the cache by purge.
type freshnessPolicy struct {
	validFor       map[int]time.Duration // by status; absent or 0: not cached
	ignoreCacheCtl bool                  // ignore upstream Cache-Control
	ignoreExpires  bool                  // ignore upstream Expires
	revalidate     bool                  // revalidate expired entries with conditional GETs
	staleOn        staleConditions
}

// lifetime returns how long a response with this status and these upstream
// headers stays fresh, or false when it must not be stored. Upstream
// headers are read for 200 only: S3 sends none with its errors.
func (p *freshnessPolicy) lifetime(status int, h http.Header, now time.Time) (time.Duration, bool) {
	if status == http.StatusOK {
		if !p.ignoreCacheCtl {
			if d, verdict := cacheControlLifetime(h.Get("Cache-Control")); verdict != ccAbsent {
				return d, verdict == ccMaxAge && d > 0
			}
		}
		if v := h.Get("Expires"); v != "" && !p.ignoreExpires {
			t := parseHTTPDate(v)
			// An invalid or past Expires means "already stale".
			return t.Sub(now), !t.IsZero() && t.After(now)
		}
	}
	d, ok := p.validFor[status]
	return d, ok && d > 0
}

type ccVerdict int

const (
	ccAbsent  ccVerdict = iota // no directive about freshness
	ccMaxAge                   // a max-age or s-maxage
	ccNoStore                  // no-store, no-cache or private: do not store
)

// cacheControlLifetime reads the directives of Cache-Control that decide
// whether and how long a shared cache may store a response. Like nginx,
// no-cache is treated as no-store rather than as "store but revalidate".
func cacheControlLifetime(v string) (time.Duration, ccVerdict) {
	if v == "" {
		return 0, ccAbsent
	}
	verdict := ccAbsent
	var maxAge, sMaxAge time.Duration = -1, -1
	for directive := range strings.SplitSeq(v, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "no-store", "no-cache", "private":
			return 0, ccNoStore
		case "max-age":
			if n, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && n >= 0 {
				maxAge = seconds(n)
				verdict = ccMaxAge
			}
		case "s-maxage":
			if n, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && n >= 0 {
				sMaxAge = seconds(n)
				verdict = ccMaxAge
			}
		}
	}
	if sMaxAge >= 0 {
		return sMaxAge, verdict
	}
	return maxAge, verdict
}

// seconds converts without overflowing: ten years of seconds is fine,
// a hostile max-age=99999999999999999 is clamped to about 292 years.
func seconds(n int64) time.Duration {
	const maxSeconds = int64(^uint64(0)>>1) / int64(time.Second)
	return time.Duration(min(n, maxSeconds)) * time.Second
}

// staleConditions are the failures under which an expired entry is served
// rather than an error, as in nginx's proxy_cache_use_stale.
type staleConditions struct {
	onError    bool         // S3 unreachable, connection reset, bad answer
	onTimeout  bool         // connect or first-byte timeout
	onUpdating bool         // serve stale at once while one refresh runs
	onStatus   map[int]bool // S3 answered this status (http_500, http_502, …)
}

// parseUseStale reads nginx's use_stale words.
func parseUseStale(words []string) (staleConditions, error) {
	c := staleConditions{onStatus: map[int]bool{}}
	for _, w := range words {
		switch w {
		case "off":
			if len(words) != 1 {
				return c, errors.New(`use_stale: "off" cannot be combined with other conditions`)
			}
		case "error":
			c.onError = true
		case "timeout":
			c.onTimeout = true
		case "updating":
			c.onUpdating = true
		case "http_500", "http_502", "http_503", "http_504", "http_403", "http_404", "http_429":
			n, _ := strconv.Atoi(strings.TrimPrefix(w, "http_"))
			c.onStatus[n] = true
		default:
			return c, errors.New("use_stale: unknown condition " + strconv.Quote(w) + " (want error, timeout, updating, http_500, http_502, http_503, http_504, http_403, http_404, http_429 or off)")
		}
	}
	return c, nil
}

// allows reports whether a failed fetch may be answered with a stale copy.
func (c staleConditions) allows(err error) bool {
	var oe *originError
	if !errors.As(err, &oe) {
		return c.onError
	}
	switch {
	case oe.timeout:
		return c.onTimeout
	case oe.upstreamStatus != 0:
		return c.onStatus[oe.upstreamStatus]
	default:
		return c.onError
	}
}

// isFresh reports whether an entry may be served without asking S3.
func isFresh(m *entryMeta, now time.Time) bool {
	return now.Before(m.expiresAt)
}
