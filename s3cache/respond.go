package s3cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// bodySource yields the bytes of a stored body: a committed entry file,
// or a fill's temp file that may still be growing.
type bodySource interface {
	section(off, n int64) (io.Reader, error)
}

// fileBody is a committed entry. Sections are an io.LimitedReader over
// the *os.File itself, which is the shape net/http hands to sendfile(2).
type fileBody struct {
	f    *os.File
	base int64 // where the body starts in the file
}

func (b fileBody) section(off, n int64) (io.Reader, error) {
	if _, err := b.f.Seek(b.base+off, io.SeekStart); err != nil {
		return nil, err
	}
	return io.LimitReader(b.f, n), nil
}

// fillBody is a body still being fetched; reads wait for the bytes. If
// the fill cannot write them to disk, resume fetches the rest from S3.
type fillBody struct {
	f      *fill
	ctx    context.Context
	resume func(off, n int64) (io.ReadCloser, error)
}

func (b fillBody) section(off, n int64) (io.Reader, error) {
	return &resumingReader{r: b.f.section(b.ctx, off, n), off: off, end: off + n, resume: b.resume}, nil
}

// resumingReader reads a section of a fill and, if the fill fails to
// write the cache, switches once to a ranged S3 read for the rest.
type resumingReader struct {
	r        io.Reader
	off, end int64
	resume   func(off, n int64) (io.ReadCloser, error)
	resumed  io.ReadCloser
}

func (rr *resumingReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	rr.off += int64(n)
	if rr.resumed != nil && err != nil {
		rr.resumed.Close()
	}
	if err == nil || rr.resume == nil || !errors.Is(err, errCacheWrite) {
		return n, err
	}
	body, rerr := rr.resume(rr.off, rr.end-rr.off)
	rr.resume = nil
	if rerr != nil {
		return n, rerr
	}
	rr.r, rr.resumed = io.LimitReader(body, rr.end-rr.off), body
	return n, nil
}

// respondStored answers a GET or HEAD from a stored representation, from
// the cache or from a fill in flight, as nginx answers from its cache:
// conditional requests (304, 412), a single Range (206), several ranges
// (206 multipart/byteranges), an unsatisfiable Range (416).
func (h *Handler) respondStored(w http.ResponseWriter, r *http.Request, m *entryMeta, cacheStatus string, src bodySource) {
	now := time.Now()
	hdr := w.Header()
	h.policy.copyMeta(hdr, m)
	size := m.bodyLen

	if status := preconditionStatus(r, m.ETag, m.LastModified); status != 0 {
		h.writeBodiless(w, status, cacheStatus, now)
		return
	}

	var ranges []byteRange
	if rh := r.Header.Get("Range"); rh != "" && r.Method == http.MethodGet && rangeApplies(r, m.ETag, m.LastModified) {
		var err error
		ranges, err = parseRange(rh, size)
		if errors.Is(err, errUnsatisfiable) {
			hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			h.writeBodiless(w, http.StatusRequestedRangeNotSatisfiable, cacheStatus, now)
			return
		}
	}
	if h.policy.keeps("Accept-Ranges") {
		hdr["Accept-Ranges"] = []string{"bytes"}
	}

	switch len(ranges) {
	case 0:
		h.writeSection(w, r, m, http.StatusOK, cacheStatus, now, src, byteRange{0, size})
	case 1:
		hdr.Set("Content-Range", ranges[0].contentRange(size))
		h.writeSection(w, r, m, http.StatusPartialContent, cacheStatus, now, src, ranges[0])
	default:
		h.writeMultipart(w, m, cacheStatus, now, src, ranges)
	}
}

// writeBodiless sends a 304, 412 or 416: the validators stay, the
// description of a body that is not there goes.
func (h *Handler) writeBodiless(w http.ResponseWriter, status int, cacheStatus string, now time.Time) {
	hdr := w.Header()
	for _, name := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Content-Disposition", "Content-Language", "Accept-Ranges"} {
		delete(hdr, name)
	}
	h.policy.decorate(hdr, status, cacheStatus, now)
	w.WriteHeader(status)
}

func (h *Handler) writeSection(w http.ResponseWriter, r *http.Request, m *entryMeta, status int, cacheStatus string, now time.Time, src bodySource, br byteRange) {
	key := m.Key
	hdr := w.Header()
	hdr["Content-Length"] = []string{m.lengthOf(br)}
	h.policy.decorate(hdr, status, cacheStatus, now)
	w.WriteHeader(status)
	if r.Method == http.MethodHead || br.length == 0 {
		return
	}
	body, err := src.section(br.start, br.length)
	if err != nil {
		h.abort(key, err)
	}
	h.copyOrAbort(w, body, key, cacheStatus)
}

// writeMultipart sends several ranges as multipart/byteranges (RFC 9110,
// section 14.6), with an exact Content-Length computed up front.
func (h *Handler) writeMultipart(w http.ResponseWriter, m *entryMeta, cacheStatus string, now time.Time, src bodySource, ranges []byteRange) {
	boundary := randomBoundary()
	partHeaders := make([]string, len(ranges))
	length := int64(0)
	for i, br := range ranges {
		head := "\r\n--" + boundary + "\r\n"
		if i == 0 {
			head = "--" + boundary + "\r\n"
		}
		if m.ContentType != "" {
			head += "Content-Type: " + m.ContentType + "\r\n"
		}
		head += "Content-Range: " + br.contentRange(m.bodyLen) + "\r\n\r\n"
		partHeaders[i] = head
		length += int64(len(head)) + br.length
	}
	tail := "\r\n--" + boundary + "--\r\n"
	length += int64(len(tail))

	hdr := w.Header()
	hdr["Content-Type"] = []string{"multipart/byteranges; boundary=" + boundary}
	hdr["Content-Length"] = []string{strconv.FormatInt(length, 10)}
	h.policy.decorate(hdr, http.StatusPartialContent, cacheStatus, now)
	w.WriteHeader(http.StatusPartialContent)
	for i, br := range ranges {
		if _, err := io.WriteString(w, partHeaders[i]); err != nil {
			return
		}
		body, err := src.section(br.start, br.length)
		if err != nil {
			h.abort(m.Key, err)
		}
		h.copyOrAbort(w, body, m.Key, cacheStatus)
	}
	_, _ = io.WriteString(w, tail)
}

// copyOrAbort copies a body to the client. If the source fails, the
// status line is already gone, so the only honest signal left is to cut
// the connection: the client sees a truncated transfer, never a short
// response that looks complete. Caddy's reverse proxy does the same. If the
// client fails, there is nobody left to tell.
func (h *Handler) copyOrAbort(w http.ResponseWriter, body io.Reader, key, cacheStatus string) {
	src := &readErrorRecorder{r: body}
	n, err := io.Copy(w, src)
	h.metrics.countBytes(sourceOf(cacheStatus), n)
	if err != nil {
		if src.err == nil || errors.Is(src.err, errClientGone) {
			h.logger.Debug("client stopped reading", zap.String("key", key), zap.Error(err))
			return
		}
		h.abort(key, src.err)
	}
}

func (h *Handler) abort(key string, cause error) {
	h.logger.Warn("body failed mid-transfer; aborting the response",
		zap.String("key", key), zap.String("reason", bodyFailureReason(cause)))
	panic(http.ErrAbortHandler)
}

func randomBoundary() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
