package s3cache

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// bodySource yields the bytes of a stored body: a complete entry file, or
// an entry served through its fill, whose slices may still be coming.
// A section reader that is an io.Closer is closed when it is done with.
type bodySource interface {
	section(off, n int64) (io.Reader, error)
}

// partialSource is a bodySource that may not have every byte on disk yet.
type partialSource interface {
	covers(off, n int64) bool
}

// checkedBody is a committed entry file. Its sections are read a block at
// a time and each block is checked against its CRC-32C before any of its
// bytes is handed out, so a corrupted file is never served, whole or in
// part: the first bad block ends the response (before the status line, if
// it is the first block) and removes the entry.
type checkedBody struct {
	f     *os.File
	entry *entry // the snapshot being served
	// store is where to remove the entry when a block fails; a nil store
	// (a check that is not serving anyone) removes nothing.
	store *store
}

// corrupt removes the entry whose block failed with err.
func (b *checkedBody) corrupt(err error) {
	if b.store != nil {
		b.store.discardCorrupt(b.entry, err)
	}
}

// blockPool holds the block buffers of checked reads.
var blockPool = sync.Pool{New: func() any { b := make([]byte, blockSize); return &b }}

func (b *checkedBody) section(off, n int64) (io.Reader, error) {
	cr := &checkedReader{body: b, off: off, end: off + n}
	if n > 0 {
		// Check the first block now, while the client can still be
		// answered from S3 instead.
		if err := cr.load(off / blockSize); err != nil {
			return nil, err
		}
	}
	return cr, nil
}

type checkedReader struct {
	body     *checkedBody
	off, end int64   // body bytes still to hand out
	bufp     *[]byte // the current block, checked
	bufStart int64   // body offset of the current block
	bufLen   int
}

func (c *checkedReader) load(block int64) error {
	m := &c.body.entry.meta
	if block >= int64(len(m.blockCRCs)) {
		return fmt.Errorf("%w: block %d beyond the table", errCorruptEntry, block)
	}
	if c.bufp == nil {
		c.bufp = blockPool.Get().(*[]byte)
	}
	start := block * blockSize
	n := int(min(blockSize, m.bodyLen-start))
	buf := (*c.bufp)[:n]
	if _, err := c.body.f.ReadAt(buf, m.bodyOffset()+start); err != nil {
		err = fmt.Errorf("%w: reading block %d: %v", errCorruptEntry, block, err)
		c.body.corrupt(err)
		return err
	}
	if crc32.Checksum(buf, castagnoli) != m.blockCRCs[block] {
		err := fmt.Errorf("%w: block %d fails its checksum", errCorruptEntry, block)
		c.body.corrupt(err)
		return err
	}
	c.bufStart, c.bufLen = start, n
	return nil
}

func (c *checkedReader) Read(p []byte) (int, error) {
	if c.off >= c.end {
		c.release()
		return 0, io.EOF
	}
	if c.bufp == nil || c.off < c.bufStart || c.off >= c.bufStart+int64(c.bufLen) {
		if err := c.load(c.off / blockSize); err != nil {
			c.release()
			return 0, err
		}
	}
	from := c.off - c.bufStart
	to := min(int64(c.bufLen), c.end-c.bufStart)
	n := copy(p, (*c.bufp)[from:to])
	c.off += int64(n)
	return n, nil
}

// WriteTo writes the section block by block straight from the checked
// buffer, without the extra copy io.Copy would make through its own.
func (c *checkedReader) WriteTo(w io.Writer) (int64, error) {
	defer c.release()
	var total int64
	for c.off < c.end {
		if c.bufp == nil || c.off < c.bufStart || c.off >= c.bufStart+int64(c.bufLen) {
			if err := c.load(c.off / blockSize); err != nil {
				return total, err
			}
		}
		from := c.off - c.bufStart
		to := min(int64(c.bufLen), c.end-c.bufStart)
		n, err := w.Write((*c.bufp)[from:to])
		total += int64(n)
		c.off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (c *checkedReader) release() {
	if c.bufp != nil {
		blockPool.Put(c.bufp)
		c.bufp = nil
	}
}

// directBody is a committed entry file whose every block passed its
// check recently (reverifyInterval), answered on a connection that can
// take sendfile(2): plain HTTP/1.x. A section that runs to the end of the
// body (a whole object, or an open-ended range such as a video player's
// "bytes=0-") goes to the socket from the page cache without passing
// through this process, as nginx sends its cache files; other sections are
// read and checked block by block like checkedBody's.
//
// f is the request's own descriptor: sendfile reads from the file offset,
// which the descriptors kept open for concurrent hits cannot share.
type directBody struct {
	checked checkedBody // its f is the request's own descriptor
	tail    fileTail    // the one section that runs to the end of the body
}

func (b *directBody) section(off, n int64) (io.Reader, error) {
	m := &b.checked.entry.meta
	if n > 0 && off+n == m.bodyLen {
		if _, err := b.checked.f.Seek(m.bodyOffset()+off, io.SeekStart); err == nil {
			b.tail = fileTail{f: b.checked.f, n: n}
			return &b.tail, nil
		}
	}
	return b.checked.section(off, n)
}

// fileTail is the last n bytes of f, from its current offset to its end.
type fileTail struct {
	f *os.File
	n int64
}

// Read makes fileTail an io.Reader for any caller other than
// copyOrAbort; it stops after n bytes.
func (t *fileTail) Read(p []byte) (int, error) {
	if t.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > t.n {
		p = p[:t.n]
	}
	n, err := t.f.Read(p)
	t.n -= int64(n)
	return n, err
}

// sendTo hands the file itself to w's ReadFrom, which Caddy's writers pass
// down to net/http and the TCP connection: sendfile(2). Caddy's idle
// timeout writer cuts the transfer into chunks of its MaxWriteChunk, each
// an *io.LimitedReader around this *os.File, which the net package still
// sends with sendfile. Anything wrapping the file (io.LimitReader of our
// own, io.Copy's fallback) would turn it into a read-and-write loop, which
// is why the file runs exactly to the end of the section.
func (t *fileTail) sendTo(w io.Writer) (int64, error) {
	if rf, ok := w.(io.ReaderFrom); ok {
		return rf.ReadFrom(t.f)
	}
	return io.Copy(w, t.f)
}

// respondStored answers a GET or HEAD from a stored representation, from
// the cache or from a fill in flight, as nginx answers from its cache:
// conditional requests (304, 412), a single Range (206), several ranges
// (206 multipart/byteranges), an unsatisfiable Range (416). It returns
// errEntryGone, having written nothing, when the first bytes to send fail
// their check; the caller then goes to S3.
func (h *Handler) respondStored(w http.ResponseWriter, r *http.Request, m *entryMeta, cacheStatus string, src bodySource) error {
	now := time.Now()
	hdr := w.Header()
	size := m.bodyLen

	if status := preconditionStatus(r, m.ETag, m.LastModified); status != 0 {
		h.policy.copyMeta(hdr, m)
		h.writeBodiless(w, r, status, cacheStatus, now)
		return nil
	}

	var ranges []byteRange
	if rh := r.Header.Get("Range"); rh != "" && r.Method == http.MethodGet && rangeApplies(r, m.ETag, m.LastModified) {
		var err error
		ranges, err = parseRange(rh, size)
		if errors.Is(err, errUnsatisfiable) {
			h.policy.copyMeta(hdr, m)
			hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			h.writeBodiless(w, r, http.StatusRequestedRangeNotSatisfiable, cacheStatus, now)
			return nil
		}
	}
	if len(ranges) > 1 {
		cacheStatus = coverageStatus(cacheStatus, src, ranges, byteRange{})
		h.policy.copyMeta(hdr, m)
		h.setAcceptRanges(hdr)
		h.writeMultipart(w, r, m, cacheStatus, now, src, ranges)
		return nil
	}

	status, br := http.StatusOK, byteRange{0, size}
	if len(ranges) == 1 {
		status, br = http.StatusPartialContent, ranges[0]
	}
	var body io.Reader
	if r.Method != http.MethodHead && br.length > 0 {
		cacheStatus = coverageStatus(cacheStatus, src, ranges, br)
		var err error
		if body, err = src.section(br.start, br.length); err != nil {
			return fmt.Errorf("%w: %w", errEntryGone, err)
		}
		defer closeSection(body)
	}
	h.policy.copyMeta(hdr, m)
	h.setAcceptRanges(hdr)
	if status == http.StatusPartialContent {
		hdr.Set("Content-Range", br.contentRange(size))
	}
	hdr["Content-Length"] = []string{m.lengthOf(br)}
	h.decorate(w, r, status, cacheStatus, now)
	w.WriteHeader(status)
	if body != nil {
		h.copyOrAbort(w, body, h.mapping.objectKeyOf(m.Key), cacheStatus)
	}
	return nil
}

// coverageStatus is HIT only if every byte the response sends is on disk
// already: a partial entry answering with bytes still to fetch is a MISS,
// as nginx's slice module reports the slices it has to fetch.
func coverageStatus(cacheStatus string, src bodySource, ranges []byteRange, whole byteRange) string {
	p, ok := src.(partialSource)
	if !ok || cacheStatus != cacheHit {
		return cacheStatus
	}
	if len(ranges) <= 1 {
		ranges = []byteRange{whole}
	}
	for _, br := range ranges {
		if !p.covers(br.start, br.length) {
			return cacheMiss
		}
	}
	return cacheStatus
}

// closeSection ends a section reader that needs it (a fill's).
func closeSection(body io.Reader) {
	if c, ok := body.(io.Closer); ok {
		c.Close()
	}
}

func (h *Handler) setAcceptRanges(hdr http.Header) {
	if h.policy.keeps("Accept-Ranges") {
		hdr["Accept-Ranges"] = []string{"bytes"}
	}
}

// writeBodiless sends a 304, 412 or 416: the validators stay, the
// description of a body that is not there goes.
func (h *Handler) writeBodiless(w http.ResponseWriter, r *http.Request, status int, cacheStatus string, now time.Time) {
	hdr := w.Header()
	for _, name := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Content-Disposition", "Content-Language", "Accept-Ranges"} {
		delete(hdr, name)
	}
	h.decorate(w, r, status, cacheStatus, now)
	w.WriteHeader(status)
}

// writeMultipart sends several ranges as multipart/byteranges (RFC 9110,
// section 14.6), with an exact Content-Length computed up front.
func (h *Handler) writeMultipart(w http.ResponseWriter, r *http.Request, m *entryMeta, cacheStatus string, now time.Time, src bodySource, ranges []byteRange) {
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
	h.decorate(w, r, http.StatusPartialContent, cacheStatus, now)
	w.WriteHeader(http.StatusPartialContent)
	for i, br := range ranges {
		if _, err := io.WriteString(w, partHeaders[i]); err != nil {
			return
		}
		body, err := src.section(br.start, br.length)
		if err != nil {
			h.abort(h.mapping.objectKeyOf(m.Key), err)
		}
		h.copyOrAbort(w, body, h.mapping.objectKeyOf(m.Key), cacheStatus)
		closeSection(body)
	}
	_, _ = io.WriteString(w, tail)
}

// copyOrAbort copies a body to the client. If the source fails, the
// status line is already gone, so the only honest signal left is to cut
// the connection: the client sees a truncated transfer, never a short
// response that looks complete. Caddy's reverse proxy does the same. If the
// client fails, there is nobody left to tell.
func (h *Handler) copyOrAbort(w http.ResponseWriter, body io.Reader, key, cacheStatus string) {
	var n int64
	var err, srcErr error // srcErr: the body's own failure, as opposed to the client's
	switch b := body.(type) {
	case *fileTail:
		n, err = b.sendTo(w)
		if err == nil && n != b.n {
			srcErr = fmt.Errorf("%w: sent %d of %d bytes: the file changed while being sent", errCorruptEntry, n, b.n)
		}
	case *checkedReader:
		n, err = b.WriteTo(w)
		if errors.Is(err, errCorruptEntry) {
			srcErr = err
		}
	case *bytes.Reader:
		// A body from the memory tier: one Write of the whole section,
		// with no copy through a buffer of ours.
		n, err = b.WriteTo(writeOnly{w})
	default:
		// One pooled block buffer, rather than the two 32 KiB buffers
		// io.Copy would allocate through the ReadFrom of Caddy's and
		// net/http's writers for each client streaming a fill.
		src := &readErrorRecorder{r: body}
		buf := blockPool.Get().(*[]byte)
		n, err = io.CopyBuffer(writeOnly{w}, src, *buf)
		blockPool.Put(buf)
		if src.err != nil && !errors.Is(src.err, errClientGone) {
			srcErr = src.err
		}
	}
	h.metrics.countBytes(sourceOf(cacheStatus), n)
	if srcErr != nil {
		h.abort(key, srcErr)
	}
	if err != nil {
		h.logger.Debug("client stopped reading", zap.String("key", key), zap.Error(err))
	}
}

// writeOnly hides a writer's ReadFrom, so that io.CopyBuffer uses the
// buffer it is given.
type writeOnly struct{ w io.Writer }

func (o writeOnly) Write(p []byte) (int, error) { return o.w.Write(p) }

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

// readErrorRecorder remembers a read error so a failed copy can be blamed
// on the right side: S3 (abort the client) or the client (just stop).
type readErrorRecorder struct {
	r   io.Reader
	err error
}

func (rr *readErrorRecorder) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && err != io.EOF {
		rr.err = err
	}
	return n, err
}
