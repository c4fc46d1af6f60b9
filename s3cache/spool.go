package s3cache

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// A body that goes from S3 to a client without being stored (a
// pass-through, a slice the cache has no room for, a fetch that stalled)
// is read a chunk at a time, each chunk into memory at S3's pace, and the
// client is served from memory at its own. The S3 request, and the
// max_concurrent_fills slot it holds, are released as soon as S3 has sent
// the chunk, so a client reading at 1 KB/s does not hold them for an hour:
// like nginx's proxy_buffering, but in chunks of a slice rather than one
// temp file per response. The chunks after the first are ranged GETs of the
// same version (If-Match). A client that keeps up earns the next chunk
// ahead of time, asked for while the current one arrives so that a fast
// client sees no pause between chunks: once what S3 was asked for stays
// within 1.1 times what the client read plus one chunk, so a client that
// leaves has cost at most a chunk more than it read. A read-ahead takes a
// max_concurrent_fills slot only if one is free. Memory is bounded by a budget per site; a chunk that
// finds it spent is read straight from S3 at the client's pace, which
// max_concurrent_fills still bounds.

// spoolBudget is the memory the chunks of a site's pass-throughs may hold
// at once.
type spoolBudget struct {
	mu   sync.Mutex
	free int64
}

func newSpoolBudget(n int64) *spoolBudget { return &spoolBudget{free: n} }

func (b *spoolBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.free < n {
		return false
	}
	b.free -= n
	return true
}

func (b *spoolBudget) give(n int64) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
}

// spooledBody is bytes [off, end) of one version of an object, read from
// S3 a chunk at a time (see above).
type spooledBody struct {
	// fetch asks S3 for n bytes from off of the same version; ahead
	// for a read-ahead, which takes a slot only if one is free.
	fetch  func(off, n int64, ahead bool) (io.ReadCloser, error)
	chunk  int64
	budget *spoolBudget
	start  int64 // the first byte of the body
	off    int64 // the next byte to hand out
	end    int64
	// first is the answer the body started with, for the first chunk.
	first io.ReadCloser
	cur   *chunkFill
	// ahead is the chunk after cur, fetched ahead of the client, or nil.
	ahead *chunkFill
	// digest checks the whole object against its ETag when the body is
	// the whole object and the ETag is its MD5; its last byte is held
	// until it has.
	digest hash.Hash
	want   []byte
	closed bool
}

// chunkFill is one chunk being read from S3 into memory by a goroutine,
// or, without budget, read from S3 as the client reads it.
type chunkFill struct {
	start  int64 // body offset of the chunk
	n      int64
	budget *spoolBudget

	mu     sync.Mutex
	cond   *sync.Cond
	src    io.ReadCloser // nil while a read-ahead waits for S3's answer
	buf    []byte        // nil when read directly
	filled int64
	err    error
	given  bool // its budget is given back: the chunk is done with
}

func newChunkFill(start, n int64, budget *spoolBudget) *chunkFill {
	c := &chunkFill{start: start, n: n, budget: budget}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// spool wraps resp, S3's answer of 200 or 206 to a GET of key, so that its
// body is read as described above, checked against the object's ETag when
// that is the MD5 of a whole body (etag_check).
func (h *Handler) spool(ctx context.Context, resp *originResponse, key string) {
	if h.spoolBudget == nil || resp.body == nil || (resp.status != http.StatusOK && resp.status != http.StatusPartialContent) {
		return
	}
	fetch := h.rangeFetcher(ctx, key, resp.header.Get("Etag"), resp.header.Get("Last-Modified"))
	off, end := int64(0), int64(-1)
	if resp.status == http.StatusPartialContent {
		first, last, _, ok := parseContentRange(resp.header.Get("Content-Range"))
		if !ok {
			return
		}
		off, end = first, last+1
	} else if n, err := strconv.ParseInt(resp.header.Get("Content-Length"), 10, 64); err == nil {
		end = n
	}
	if end < 0 {
		return // no length to chunk by: stream it as it is
	}
	b := &spooledBody{fetch: fetch, chunk: h.fills.sliceBytes, budget: h.spoolBudget, start: off, off: off, end: end, first: resp.body}
	if want, ok := md5OfETag(resp.header); ok && enabled(h.ETagCheck) && resp.status == http.StatusOK {
		b.digest, b.want = md5.New(), want
	}
	resp.body = b
}

// spoolRange returns bytes [off, off+n) of the version of key with etag,
// read from S3 as described above: for a reader of a fill that must read a
// part of the object from S3 itself.
func (h *Handler) spoolRange(ctx context.Context, key, etag string, off, n int64) io.ReadCloser {
	return &spooledBody{fetch: h.rangeFetcher(ctx, key, etag, ""), chunk: h.fills.sliceBytes, budget: h.spoolBudget, start: off, off: off, end: off + n}
}

// rangeFetcher returns how the chunks of a body after the first are read:
// ranged GETs of key pinned to one version, by its ETag (or, with none,
// its Last-Modified). An answer that is not exactly the range asked for is
// an error.
func (h *Handler) rangeFetcher(ctx context.Context, key, etag, lastModified string) func(off, n int64, ahead bool) (io.ReadCloser, error) {
	return func(off, n int64, ahead bool) (io.ReadCloser, error) {
		req := originRequest{key: key, rangeSpec: rangeSpec(off, n), ifMatch: etag, noQueue: ahead}
		if etag == "" {
			req.ifUnmodifiedSince = parseHTTPDate(lastModified)
		}
		resp, err := h.origin.fetch(ctx, req)
		if err != nil {
			return nil, err
		}
		first, last, _, ok := parseContentRange(resp.header.Get("Content-Range"))
		ok = ok && first == off && last == off+n-1 && resp.header.Get("Content-Length") == strconv.FormatInt(n, 10)
		if resp.status != http.StatusPartialContent || resp.body == nil || !ok {
			if resp.body != nil {
				resp.body.Close()
			}
			if resp.status == http.StatusPreconditionFailed {
				return nil, errObjectChanged
			}
			return nil, fmt.Errorf("reading a range from S3: got status %d", resp.status)
		}
		return resp.body, nil
	}
}

func (b *spooledBody) Read(p []byte) (int, error) {
	if b.off >= b.end {
		return 0, io.EOF
	}
	if b.cur == nil || b.off >= b.cur.start+b.cur.n {
		if err := b.next(); err != nil {
			return 0, err
		}
	}
	n, err := b.cur.read(p[:min(int64(len(p)), b.cur.start+b.cur.n-b.off)], b.off-b.cur.start)
	if n > 0 && b.digest != nil {
		b.digest.Write(p[:n])
		// The last byte goes only with the whole body checked.
		if b.off+int64(n) == b.end && !bytes.Equal(b.digest.Sum(nil), b.want) {
			b.off += int64(n - 1)
			return n - 1, errETagMismatch
		}
	}
	b.off += int64(n)
	if err == nil {
		b.readAhead()
	}
	return n, err
}

// next moves on to the chunk at b.off: the one read ahead if there is
// one, else the first answer or a ranged GET.
func (b *spooledBody) next() error {
	b.cur.release()
	b.cur = nil
	if c := b.ahead; c != nil {
		b.ahead = nil
		if c.start == b.off && c.usable() {
			b.cur = c
			return nil
		}
		c.release() // failed: ask again, now that the client waits for it
	}
	n := min(b.chunk, b.end-b.off)
	src := b.first
	b.first = nil
	if src == nil {
		var err error
		if src, err = b.fetch(b.off, n, false); err != nil {
			return err
		}
	}
	c := newChunkFill(b.off, n, b.budget)
	c.src = src
	if b.budget.take(n) {
		c.buf = make([]byte, n)
		go c.fill()
	}
	b.cur = c
	return nil
}

// readAhead starts fetching the chunk after the current one once the
// client has earned it (see above) and S3 has sent half of the current
// one, so the next answer's first byte overlaps the end of this one.
func (b *spooledBody) readAhead() {
	c := b.cur
	after := c.start + c.n
	if b.ahead != nil || after >= b.end || c.buf == nil || !c.receivedHalf() {
		return
	}
	n := min(b.chunk, b.end-after)
	if after+n-b.start > (b.off-b.start)*11/10+b.chunk || !b.budget.take(n) {
		return
	}
	ahead := newChunkFill(after, n, b.budget)
	ahead.buf = make([]byte, n)
	b.ahead = ahead
	go func() {
		src, err := b.fetch(after, n, true)
		ahead.mu.Lock()
		if err == nil && ahead.given {
			// The body was closed meanwhile.
			src.Close()
			err = errClosed
		}
		ahead.src, ahead.err = src, err
		ahead.cond.Broadcast()
		ahead.mu.Unlock()
		if err == nil {
			ahead.fill()
		}
	}()
}

// errClosed ends a read-ahead whose body was closed before S3 answered.
var errClosed = errors.New("the body was closed")

// fill reads the chunk from S3 as fast as S3 sends it, then lets the S3
// request go.
func (c *chunkFill) fill() {
	for c.filled < c.n {
		m, err := c.src.Read(c.buf[c.filled:])
		c.mu.Lock()
		c.filled += int64(m)
		if err != nil && c.filled < c.n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			c.err = err
		}
		stop := c.err != nil
		c.cond.Broadcast()
		c.mu.Unlock()
		if stop {
			break
		}
	}
	if c.err == nil {
		// Read to the end, so the connection goes back to the pool (and
		// the slot at once): S3 promised exactly these bytes.
		var extra [1]byte
		if m, _ := c.src.Read(extra[:]); m > 0 {
			c.mu.Lock()
			c.err = errBadSlice
			c.cond.Broadcast()
			c.mu.Unlock()
		}
	}
	c.src.Close()
}

// receivedHalf reports whether S3 has sent half of the chunk, without
// error so far.
func (c *chunkFill) receivedHalf() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.filled >= c.n/2 && c.err == nil
}

// usable reports whether a chunk read ahead can still serve its bytes:
// S3 answered it, and no error has cut it.
func (c *chunkFill) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.src == nil && c.err == nil {
		c.cond.Wait() // S3's answer to the read-ahead is on its way
	}
	return c.err == nil || c.filled == c.n
}

// read copies bytes of the chunk from offset at into p, waiting for them.
func (c *chunkFill) read(p []byte, at int64) (int, error) {
	if c.buf == nil {
		n, err := io.ReadFull(c.src, p[:min(int64(len(p)), c.n-at)])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("the body from S3 ended early: %w", io.ErrUnexpectedEOF)
		}
		if err == nil && at+int64(n) == c.n {
			// The whole chunk is read: read S3's end of it too, so its
			// request ends cleanly (and its slot is free at once).
			var extra [1]byte
			if m, _ := c.src.Read(extra[:]); m > 0 {
				err = errBadSlice
			}
		}
		return n, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.filled <= at && c.err == nil {
		c.cond.Wait()
	}
	if c.filled <= at {
		return 0, c.err
	}
	return copy(p, c.buf[at:c.filled]), nil
}

// release ends the chunk, if any: its S3 request, and its memory.
func (c *chunkFill) release() {
	if c == nil {
		return
	}
	c.mu.Lock()
	src := c.src
	if !c.given {
		c.given = true
		if c.buf != nil {
			c.budget.give(c.n)
		}
	}
	c.mu.Unlock()
	if src != nil {
		src.Close()
	}
}

func (b *spooledBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.cur.release()
	b.ahead.release()
	b.cur, b.ahead = nil, nil
	if b.first != nil {
		b.first.Close()
	}
	return nil
}
