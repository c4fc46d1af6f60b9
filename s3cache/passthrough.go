package s3cache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serveFromOrigin streams the object from S3 to the client without
// storing it: when there is no cache, or this request cannot use it. A GET
// of the whole object, or of a range from a given byte, asks S3 for its
// first chunk only and the rest chunk by chunk (spool.go), so memory stays
// flat whatever the object's size and the client's pace holds no S3
// request: the client is answered as if S3 had sent it all at once.
func (h *Handler) serveFromOrigin(w http.ResponseWriter, r *http.Request, key, cacheStatus string) error {
	req := clientOriginRequest(r, key)
	asked, chunked := req.rangeSpec, false
	if h.spoolBudget != nil && r.Method == http.MethodGet {
		req.rangeSpec, chunked = firstChunk(req.rangeSpec, h.fills.sliceBytes)
	}
	resp, err := h.origin.fetch(r.Context(), req)
	if err == nil && chunked && resp.status == http.StatusRequestedRangeNotSatisfiable && asked == "" {
		// An empty object refuses any range: ask for it whole.
		req.rangeSpec = ""
		resp, err = h.origin.fetch(r.Context(), req)
	}
	if err != nil {
		return h.originFailure(w, r, err, cacheStatus)
	}
	defer func() {
		if resp.body != nil {
			resp.body.Close() // the spooled body, once spool has wrapped it
		}
	}()
	if chunked && resp.status == http.StatusPartialContent {
		first, last, _, ok := parseContentRange(resp.header.Get("Content-Range"))
		if !ok || resp.header.Get("Content-Length") != strconv.FormatInt(last-first+1, 10) {
			// S3's Content-Length and Content-Range disagree: which
			// one frames the body cannot be known.
			return h.originFailure(w, r, &originError{status: http.StatusBadGateway, op: req.op(), reason: "S3's Content-Length and Content-Range disagree"}, cacheStatus)
		}
		widen(resp, asked)
	}
	return h.respondOrigin(w, r, key, cacheStatus, resp)
}

// firstChunk is the Range that asks S3 for the first chunk of what the
// client asked: the start of the object for a plain GET, or of a range
// with a first byte (a suffix range goes as it is). It reports whether it
// changed anything.
func firstChunk(asked string, chunk int64) (string, bool) {
	if asked == "" {
		return rangeSpec(0, chunk), true
	}
	spec, _ := strings.CutPrefix(asked, "bytes=")
	first, last, _ := strings.Cut(spec, "-")
	from, err := parseDigits(first)
	if err != nil {
		return asked, false // a suffix range
	}
	to := from + chunk - 1
	if last != "" {
		end, err := parseDigits(last)
		if err != nil {
			return asked, false
		}
		to = min(to, end)
	}
	return "bytes=" + strconv.FormatInt(from, 10) + "-" + strconv.FormatInt(to, 10), true
}

// widen turns S3's answer for the first chunk into the answer to what the
// client asked (asked, its Range or none): 200 with the whole object's
// length, or 206 with the client's range, clipped to the object.
func widen(resp *originResponse, asked string) {
	first, _, total, ok := parseContentRange(resp.header.Get("Content-Range"))
	if !ok || total < 0 {
		return
	}
	if asked == "" {
		resp.status = http.StatusOK
		resp.header.Del("Content-Range")
		resp.header.Set("Content-Length", strconv.FormatInt(total, 10))
		return
	}
	end := total - 1
	spec, _ := strings.CutPrefix(asked, "bytes=")
	if _, last, _ := strings.Cut(spec, "-"); last != "" {
		if n, err := parseDigits(last); err == nil {
			end = min(end, n)
		}
	}
	resp.header.Set("Content-Range", byteRange{first, end - first + 1}.contentRange(total))
	resp.header.Set("Content-Length", strconv.FormatInt(end-first+1, 10))
}

// respondOrigin relays an S3 response through the header policy.
func (h *Handler) respondOrigin(w http.ResponseWriter, r *http.Request, key, cacheStatus string, resp *originResponse) error {
	hdr := w.Header()
	h.policy.copyUpstream(hdr, resp.header)
	if resp.status == http.StatusOK || resp.status == http.StatusPartialContent {
		// Validators S3 was not sent (a list too long to forward, see
		// forwardableValidators) are evaluated here; for those it was
		// sent, S3 already did and this finds nothing to add.
		if status := preconditionStatus(r, resp.header.Get("Etag"), resp.header.Get("Last-Modified")); status != 0 {
			h.writeBodiless(w, r, status, cacheStatus, time.Now())
			return nil
		}
	}
	h.decorate(w, r, resp.status, cacheStatus, time.Now())
	w.WriteHeader(resp.status)
	if resp.body == nil || r.Method == http.MethodHead {
		return nil
	}
	h.spool(r.Context(), resp, key)
	h.copyOrAbort(w, resp.body, key, cacheStatus)
	return nil
}

// clientOriginRequest forwards the client's range and validators to S3.
// A Range made conditional by If-Range is dropped rather than forwarded
// unconditionally: S3 has no If-Range, and a full 200 is always a correct
// answer to one (RFC 9110, section 13.1.5).
func clientOriginRequest(r *http.Request, key string) originRequest {
	req := originRequest{
		key:         key,
		head:        r.Method == http.MethodHead,
		rangeSpec:   forwardableRange(r.Header.Get("Range")),
		ifNoneMatch: forwardableValidators(r.Header.Get("If-None-Match")),
		ifMatch:     forwardableValidators(r.Header.Get("If-Match")),
	}
	if r.Header.Get("If-Range") != "" {
		req.rangeSpec = ""
	}
	// If-Modified-Since is ignored when If-None-Match is present
	// (RFC 9110, section 13.1.3); S3 would apply both.
	if req.ifNoneMatch == "" {
		req.ifModifiedSince = parseHTTPDate(r.Header.Get("If-Modified-Since"))
	}
	if req.ifMatch == "" {
		req.ifUnmodifiedSince = parseHTTPDate(r.Header.Get("If-Unmodified-Since"))
	}
	return req
}

// maxForwardedValidators bounds an If-None-Match or If-Match list sent
// to S3. A browser sends one ETag; a list long enough to push S3's request
// headers over its limit would turn the client's request into S3's 400,
// which the client would see as a 502.
const maxForwardedValidators = 1024

// forwardableRange is the client's Range if it is one well-formed byte
// range, which S3 answers; anything else (several ranges, which S3 ignores
// anyway, other units, garbage) is dropped, and the whole object is sent,
// as RFC 9110 allows a server to do with a Range it does not honour.
func forwardableRange(v string) string {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return ""
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok || (first == "" && last == "") || len(first) > 19 || len(last) > 19 ||
		strings.Trim(first, "0123456789") != "" || strings.Trim(last, "0123456789") != "" {
		return ""
	}
	return v
}

// forwardableValidators drops an ETag list too long to forward; S3 then
// sends the object, and respondOrigin evaluates the list itself.
func forwardableValidators(v string) string {
	if len(v) > maxForwardedValidators {
		return ""
	}
	return v
}
