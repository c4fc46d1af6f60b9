package s3cache

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"go.uber.org/zap"
)

// fillBody is the body of an entry served through its fill: bytes on disk
// are read from the entry file, the others are fetched as the reader gets
// to them. resume reads a part of the object from S3 directly, for slices
// the disk could not take and for a fetch that stopped making progress.
type fillBody struct {
	f      *fill
	ctx    context.Context
	resume func(off, n int64) (io.ReadCloser, error)
	since  uint64 // the fill's failure count when the request joined it
}

// section returns a reader of body bytes [off, off+n). It returns once
// the first of them can be read, so a failure to get them is still an
// error status rather than a cut transfer.
func (b fillBody) section(off, n int64) (io.Reader, error) {
	r := b.f.newReader(b.ctx, off, n, b.since, b.resume)
	if n > 0 {
		if err := r.prime(); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

// covers reports whether every byte of [off, off+n) is on disk already,
// for the X-Cache-Status of a request served from a partial entry.
func (b fillBody) covers(off, n int64) bool {
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if n <= 0 {
		return true
	}
	for k := off / f.meta.sliceLen; k <= (off+n-1)/f.meta.sliceLen; k++ {
		if f.slices[k].phase != slicePresent {
			return false
		}
	}
	return true
}

// fillReader reads a section of a fill's entry, waiting for slices to
// arrive and asking for them through its cursor.
type fillReader struct {
	f      *fill
	ctx    context.Context
	cur    *fillCursor
	resume func(off, n int64) (io.ReadCloser, error)
	// whole: the section is the whole object, whose last byte is held
	// back until the entry has passed its check (see checkComplete), so
	// a body that fails it is never delivered complete.
	whole bool
	// direct replaces the fill while the reader reads from S3 itself,
	// up to directEnd; then it reads from the fill again.
	direct    io.ReadCloser
	directEnd int64
	// block is the last present block read and checked.
	bufp     *[]byte
	bufStart int64
	bufLen   int
	closed   bool
}

func (f *fill) newReader(ctx context.Context, off, n int64, since uint64, resume func(off, n int64) (io.ReadCloser, error)) *fillReader {
	r := &fillReader{
		f:      f,
		ctx:    ctx,
		cur:    &fillCursor{pos: off, end: off + n, since: since, joined: time.Now()},
		resume: resume,
		whole:  off == 0 && n == f.meta.bodyLen,
	}
	f.mu.Lock()
	f.cursors[r.cur] = struct{}{}
	f.kickLocked()
	f.mu.Unlock()
	return r
}

// Close takes the reader's cursor out of the fill's plans.
func (r *fillReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.f.mu.Lock()
	delete(r.f.cursors, r.cur)
	r.f.mu.Unlock()
	if r.bufp != nil {
		blockPool.Put(r.bufp)
		r.bufp = nil
	}
	if r.direct != nil {
		r.direct.Close()
	}
	return nil
}

// errClientGone ends a fill reader whose own client went away; it is not a
// failure of the fill.
var errClientGone = errors.New("client went away while waiting for the fill")

// source is where the reader's next bytes come from.
type source int

const (
	fromDisk  source = iota // a present slice: a checked block read
	fromFetch               // bytes of a slice being fetched, just written
	fromS3                  // read from S3 directly
	notYet                  // wait for the fill
	finished                // the section is done
	failed                  // the fill failed this reader
	heldBack                // the last byte waits for the entry's check
)

func (r *fillReader) Read(p []byte) (int, error) {
	for {
		if r.direct != nil {
			return r.readDirect(p)
		}
		src, avail, crc, wait, err := r.next()
		switch src {
		case finished:
			return 0, io.EOF
		case failed:
			return 0, err
		case fromS3:
			if err := r.goDirect(r.sliceEnd()); err != nil {
				return 0, err
			}
		case fromDisk:
			return r.readChecked(p, avail, crc)
		case fromFetch:
			return r.readFresh(p, avail)
		case notYet, heldBack:
			if err := r.wait(wait); err != nil {
				return 0, err
			}
		}
	}
}

// prime waits until the first byte of the section can be read.
func (r *fillReader) prime() error {
	for {
		src, _, _, wait, err := r.next()
		switch src {
		case failed:
			return err
		case fromS3:
			return r.goDirect(r.sliceEnd())
		case notYet:
			if err := r.wait(wait); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// waitFor is what a waiting reader waits on: a change of the fill, and,
// for a slice whose fetch has started sending, the moment that fetch will
// have been silent for lock_timeout.
type waitFor struct {
	changed  <-chan struct{}
	lastByte time.Time
}

// next says where the reader's next bytes come from, under the fill's
// lock: how many can be read now, the checksum of the block they are in
// for a present slice, or what to wait on.
func (r *fillReader) next() (src source, avail int64, crc uint32, w waitFor, err error) {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	c := r.cur
	switch {
	case c.err != nil:
		return failed, 0, 0, w, c.err
	case c.pos >= c.end:
		return finished, 0, 0, w, nil
	}
	m := &f.meta
	k := c.pos / m.sliceLen
	start, _ := m.sliceSpan(k)
	st := &f.slices[k]
	switch st.phase {
	case slicePresent:
		avail = c.end - c.pos
		crc = f.crcs[c.pos/blockSize]
		src = fromDisk
	case sliceUnstored:
		return fromS3, 0, 0, w, nil
	default:
		// Being fetched, or not: the bytes written so far are read as
		// they are, the rest waited for (and, for an absent slice,
		// asked for).
		if avail = start + st.got - c.pos; avail > 0 {
			src = fromFetch
			avail = min(avail, c.end-c.pos)
		} else if st.phase == sliceFetching {
			src, w.lastByte = notYet, st.lastByte
		} else {
			if err := f.failedFor(c, k); err != nil {
				return failed, 0, 0, w, err
			}
			f.kickLocked()
			src = notYet
		}
	}
	if src != notYet && r.whole && c.pos+avail >= m.bodyLen {
		// The last byte waits for the entry's check.
		switch f.verdict {
		case verdictPending, verdictChecking:
			if avail > 1 {
				avail--
			} else {
				src = heldBack
			}
		case verdictFailed:
			return failed, 0, 0, w, f.verdictErr
		}
	}
	w.changed = f.changed
	return src, avail, crc, w, nil
}

// wait blocks until the fill changes, the client goes away, or the fetch
// being waited for has been silent for lock_timeout, in which case the
// reader goes to S3 itself (nginx's proxy_cache_lock_timeout, counted from
// the last byte received rather than from the request: a slow first byte
// from S3 is not a reason to stampede it).
func (r *fillReader) wait(w waitFor) error {
	var timeout <-chan time.Time
	if !w.lastByte.IsZero() && r.f.rules.lockTimeout > 0 {
		timer := time.NewTimer(r.f.rules.lockTimeout - time.Since(w.lastByte))
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-w.changed:
		return nil
	case <-r.ctx.Done():
		return errClientGone
	case <-timeout:
		return r.goDirect(r.cur.end)
	}
}

// sliceEnd is where the slice under the cursor ends, within the section.
func (r *fillReader) sliceEnd() int64 {
	k := r.cur.pos / r.f.meta.sliceLen
	start, n := r.f.meta.sliceSpan(k)
	return min(start+n, r.cur.end)
}

// advance moves the cursor past n bytes read, which may earn read-ahead.
func (r *fillReader) advance(n int) {
	f := r.f
	f.mu.Lock()
	r.cur.pos += int64(n)
	r.cur.consumed += int64(n)
	f.kickLocked()
	f.mu.Unlock()
}

// readFresh reads bytes of a slice not sealed yet: written by this
// process a moment ago, or, left by a fetch that stopped, checked against
// their recorded CRCs when the fill opened (checkWritten).
func (r *fillReader) readFresh(p []byte, avail int64) (int, error) {
	n := int(min(int64(len(p)), avail))
	got, err := r.f.file.ReadAt(p[:n], r.f.meta.bodyOffset()+r.cur.pos)
	if got > 0 {
		r.advance(got)
		err = nil
	}
	return got, err
}

// readChecked reads at most avail bytes from the block at the cursor, a
// block of a present slice, checking it against its CRC first.
func (r *fillReader) readChecked(p []byte, avail int64, crc uint32) (int, error) {
	m := &r.f.meta
	pos := r.cur.pos
	if r.bufp == nil || pos < r.bufStart || pos >= r.bufStart+int64(r.bufLen) {
		if r.bufp == nil {
			r.bufp = blockPool.Get().(*[]byte)
		}
		start := pos / blockSize * blockSize
		buf := (*r.bufp)[:min(blockSize, m.bodyLen-start)]
		if _, err := r.f.file.ReadAt(buf, m.bodyOffset()+start); err != nil || crc32.Checksum(buf, castagnoli) != crc {
			r.bufLen = 0
			err = fmt.Errorf("%w: block %d of a partial entry fails its checksum", errCorruptEntry, start/blockSize)
			r.f.corrupt(err)
			return 0, err
		}
		r.bufStart, r.bufLen = start, len(buf)
	}
	from := pos - r.bufStart
	to := min(int64(r.bufLen), pos+avail-r.bufStart)
	n := copy(p, (*r.bufp)[from:to])
	r.advance(n)
	return n, nil
}

// goDirect switches the reader to reading its section from S3 itself up
// to until (a slice the disk could not take, or, for a fetch that stopped
// making progress, the rest), taking its cursor out of the fill's plans
// meanwhile.
func (r *fillReader) goDirect(until int64) error {
	f := r.f
	f.mu.Lock()
	off := r.cur.pos
	delete(f.cursors, r.cur)
	f.mu.Unlock()
	if r.resume == nil {
		return errCacheWrite
	}
	body, err := r.resume(off, until-off)
	if err != nil {
		return err
	}
	r.direct, r.directEnd = body, until
	return nil
}

func (r *fillReader) readDirect(p []byte) (int, error) {
	if rest := r.directEnd - r.cur.pos; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.direct.Read(p)
	r.cur.pos += int64(n) // the cursor has left the fill: no lock needed
	if r.cur.pos < r.directEnd {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	// Done with S3: back to the fill for the rest.
	r.direct.Close()
	r.direct = nil
	r.f.mu.Lock()
	r.f.cursors[r.cur] = struct{}{}
	r.f.kickLocked()
	r.f.mu.Unlock()
	return n, nil
}

// corrupt drops an entry whose present slice failed its check, and cuts
// its readers.
func (f *fill) corrupt(err error) {
	f.mu.Lock()
	for c := range f.cursors {
		if c.err == nil {
			c.err = err
		}
	}
	f.detachLocked()
	gen := f.gen
	f.mu.Unlock()
	f.store.logger.Warn("removing corrupt cache entry", zap.String("key", f.objectKey), zap.Error(err))
	f.store.dropEntry(f.key, gen, true)
}
