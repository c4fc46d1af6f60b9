package s3cache

import (
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// keptHeaders are the only S3 response headers a client ever sees. Listing
// what we keep, rather than what we strip, means a header S3 adds tomorrow
// (another x-amz-*, a cookie from a CDN in front of the bucket) cannot leak
// by default. Cache-Control and Expires are not kept because we set our own,
// like the recipe's "add_header Cache-Control" plus "expires 1y".
var keptHeaders = []string{
	"Content-Type",
	"Content-Length",
	"Content-Range",
	"Content-Encoding",
	"Content-Disposition",
	"Content-Language",
	"Accept-Ranges",
	"ETag",
	"Last-Modified",
}

// headerPolicy decides which upstream headers reach the client and which we
// add. It is built once at Provision, so the request path only copies
// strings.
type headerPolicy struct {
	keep   []string        // canonical names of the S3 headers copied to clients
	hidden []string        // canonical names of kept headers switched off by hide_header
	hide   map[string]bool // hidden, as a set

	cacheControl string        // "" sends none
	expiresAfter time.Duration // 0 sends no Expires
	corsOrigin   string        // "" sends no Access-Control-Allow-Origin
	csp          string        // "" sends no Content-Security-Policy
	nosniff      bool

	expires *expiresCache
}

// expiresCache holds the Expires value of the current second: formatting
// an HTTP date on every hit costs more than the rest of the header work.
type expiresCache struct {
	stamp atomic.Pointer[expiresStamp]
}

type expiresStamp struct {
	unix  int64
	value string
}

// newHeaderPolicy builds a policy; hidden names are removed from the kept
// set, like nginx's proxy_hide_header.
func newHeaderPolicy(hidden []string) headerPolicy {
	p := headerPolicy{hide: make(map[string]bool, len(hidden)), expires: &expiresCache{}}
	for _, name := range hidden {
		p.hide[http.CanonicalHeaderKey(name)] = true
	}
	for _, name := range keptHeaders {
		name = http.CanonicalHeaderKey(name)
		if p.hide[name] {
			p.hidden = append(p.hidden, name)
		} else {
			p.keep = append(p.keep, name)
		}
	}
	return p
}

// copyUpstream copies the kept headers of an S3 response into dst.
func (p *headerPolicy) copyUpstream(dst, upstream http.Header) {
	for _, name := range p.keep {
		if v, ok := upstream[name]; ok {
			dst[name] = v
		}
	}
}

// headerValues hands out one-element value slices from a single backing
// array: one allocation per response instead of one per header. Each slice
// has its capacity capped, so a later handler's Add copies rather than
// writing over its neighbour.
type headerValues struct {
	backing []string
}

func (hv *headerValues) set(h http.Header, name, value string) {
	hv.backing = append(hv.backing, value)
	n := len(hv.backing)
	h[name] = hv.backing[n-1 : n : n]
}

// copyMeta writes the kept headers of a cached entry into dst: the same
// result as copyUpstream on the headers S3 sent, without rebuilding them.
func (p *headerPolicy) copyMeta(dst http.Header, m *entryMeta) {
	hv := headerValues{backing: make([]string, 0, 6)}
	for _, f := range [...]struct{ name, value string }{
		{"Content-Type", m.ContentType},
		{"Content-Encoding", m.ContentEncoding},
		{"Content-Disposition", m.ContentDisposition},
		{"Content-Language", m.ContentLanguage},
		{"Etag", m.ETag},
		{"Last-Modified", m.LastModified},
	} {
		if f.value != "" && !p.hide[f.name] {
			hv.set(dst, f.name, f.value)
		}
	}
}

// decorate adds our headers for a response with the given status. Only
// successful and not-modified responses are made cacheable by browsers and
// CDNs for a year; an error must never be pinned for that long. The
// cross-origin and CSP headers follow the same rule, as in the recipe,
// where add_header without "always" applies to 2xx and 3xx only.
func (p *headerPolicy) decorate(h http.Header, status int, cacheStatus string, now time.Time) {
	hv := headerValues{backing: make([]string, 0, 6)}
	hv.set(h, "X-Cache-Status", cacheStatus)
	if p.nosniff {
		hv.set(h, "X-Content-Type-Options", "nosniff")
	}
	if status >= 400 {
		return
	}
	if p.cacheControl != "" {
		hv.set(h, "Cache-Control", p.cacheControl)
	}
	if p.expiresAfter > 0 {
		hv.set(h, "Expires", p.expiresValue(now))
	}
	if p.corsOrigin != "" {
		hv.set(h, "Access-Control-Allow-Origin", p.corsOrigin)
	}
	if p.csp != "" {
		hv.set(h, "Content-Security-Policy", p.csp)
	}
}

// expiresValue is now + expires as an HTTP date, formatted once a second.
func (p *headerPolicy) expiresValue(now time.Time) string {
	sec := now.Unix()
	if s := p.expires.stamp.Load(); s != nil && s.unix == sec {
		return s.value
	}
	v := now.Add(p.expiresAfter).UTC().Format(http.TimeFormat)
	p.expires.stamp.Store(&expiresStamp{unix: sec, value: v})
	return v
}

// hideLocal removes the hidden headers that the local-file path sets itself
// (http.ServeContent sets Last-Modified and friends, we set ETag).
func (p *headerPolicy) hideLocal(h http.Header) {
	for _, name := range p.hidden {
		delete(h, name)
	}
}

// keeps reports whether a media header reaches clients.
func (p *headerPolicy) keeps(name string) bool {
	name = http.CanonicalHeaderKey(name)
	for _, k := range p.keep {
		if k == name {
			return true
		}
	}
	return false
}

// policyWriter applies the header policy at the moment the status is known.
// Local files go through http.ServeContent, which picks 200, 206, 304, 412
// or 416 itself; this is the only point where we learn which.
type policyWriter struct {
	http.ResponseWriter
	policy      *headerPolicy
	cacheStatus string
	now         time.Time
	wroteHeader bool
	status      int
}

func (w *policyWriter) WriteHeader(status int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		w.status = status
		hdr := w.Header()
		w.policy.hideLocal(hdr)
		if status >= 400 {
			// http.ServeContent explains a 416 in a text body; ours
			// are empty, like every other error this handler sends.
			delete(hdr, "Content-Type")
			delete(hdr, "Content-Length")
		}
		w.policy.decorate(hdr, status, w.cacheStatus, w.now)
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *policyWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.status >= 400 {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps sendfile(2) on the local-file path: io.Copy in
// http.ServeContent finds it here and hands the file to the connection.
func (w *policyWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *policyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// localETag is an entity tag for a local file in nginx's format
// ("mtime-size" in hex), so browser caches filled by the nginx recipe
// revalidate instead of downloading again after the switch.
func localETag(modTime time.Time, size int64) string {
	return `"` + strconv.FormatInt(modTime.Unix(), 16) + "-" + strconv.FormatInt(size, 16) + `"`
}
