package s3cache

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// testETag and testLastModified are the validators of every object the
// scripted origins serve.
const (
	testETag         = `"v1"`
	testLastModified = "Wed, 25 Nov 2026 10:00:00 GMT"
)

// answerFor answers req the way S3 answers for an object holding data: a
// HEAD, a 200, a 206 for one byte range (clipped to the object, 416 past
// its end), 412 for an If-Match that is not the ETag and 304 for an
// If-None-Match that is. wrap, if set, wraps the body (to hold it or
// break it on cue).
func answerFor(data []byte, req originRequest, wrap func(io.ReadCloser) io.ReadCloser) *originResponse {
	size := int64(len(data))
	header := func() http.Header {
		return http.Header{
			"Content-Type":  {"video/mp4"},
			"Etag":          {testETag},
			"Last-Modified": {testLastModified},
			"Accept-Ranges": {"bytes"},
		}
	}
	if req.ifMatch != "" && req.ifMatch != testETag {
		return &originResponse{status: http.StatusPreconditionFailed, header: http.Header{}}
	}
	if req.ifNoneMatch == testETag {
		h := header()
		return &originResponse{status: http.StatusNotModified, header: http.Header{"Etag": h["Etag"]}}
	}
	h := header()
	status, part := http.StatusOK, data
	if spec, ok := strings.CutPrefix(req.rangeSpec, "bytes="); ok {
		a, b, _ := strings.Cut(spec, "-")
		first, _ := strconv.ParseInt(a, 10, 64)
		last := size - 1
		switch {
		case a == "": // a suffix: the last b bytes
			n, _ := strconv.ParseInt(b, 10, 64)
			first = max(size-n, 0)
		case b != "":
			last, _ = strconv.ParseInt(b, 10, 64)
			last = min(last, size-1)
		}
		if first >= size {
			return &originResponse{status: http.StatusRequestedRangeNotSatisfiable, header: http.Header{}}
		}
		status, part = http.StatusPartialContent, data[first:last+1]
		h.Set("Content-Range", "bytes "+strconv.FormatInt(first, 10)+"-"+strconv.FormatInt(last, 10)+"/"+strconv.FormatInt(size, 10))
	}
	h.Set("Content-Length", strconv.Itoa(len(part)))
	if req.head {
		return &originResponse{status: status, header: h}
	}
	var body io.ReadCloser = io.NopCloser(bytes.NewReader(part))
	if wrap != nil {
		body = wrap(body)
	}
	return &originResponse{status: status, header: h, body: body}
}
