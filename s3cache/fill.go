package s3cache

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// fill is one S3 fetch of one key, shared by every request that wants the
// key while it runs. Like nginx's proxy_cache_lock, S3 sees one request;
// unlike it, waiters do not poll for a complete entry: the body is written
// to a temp file and every reader streams from it as the bytes arrive.
//
// The fill belongs to the store, not to the request that started it: it
// runs in the store's context, so a client that disconnects does not cut
// the others off.
type fill struct {
	key   string
	ready chan struct{} // closed once the outcome below is known

	// Set before ready is closed; read-only afterwards.
	outcome fillOutcome
	meta    entryMeta // for fillStreaming and fillNegative
	err     error     // for fillFailed: why S3 could not be read
	file    *os.File  // for fillStreaming: the temp file, body at meta.bodyOffset()

	mu       sync.Mutex // guards the fields below
	written  int64      // body bytes in the file, readable by readers
	finished bool       // no more bytes will come
	bodyErr  error      // the body failed after the headers were sent
	progress chan struct{}
	refs     int // users of file: the writer and each reader

	purged bool // guarded by store.mu: the key was purged; do not commit

	passThrough *originResponse // for fillUncacheable: S3's response, for one waiter
	tookOver    bool            // guarded by mu: a waiter has passThrough
}

// fillOutcome is what became of a fill once S3 answered.
type fillOutcome int

const (
	// fillStreaming: a 200 whose body is being written; read it from the file.
	fillStreaming fillOutcome = iota
	// fillNotModified: S3 confirmed the stale entry (304); serve the entry.
	fillNotModified
	// fillNegative: S3 has no such key, and that answer is cached.
	fillNegative
	// fillUncacheable: S3 answered, but the answer is not to be stored
	// (too large, no-store, no room); each waiter asks S3 itself.
	fillUncacheable
	// fillFailed: S3 could not be read; err says how.
	fillFailed
)

func newFill(key string) *fill {
	return &fill{
		key:      key,
		ready:    make(chan struct{}),
		progress: make(chan struct{}),
		refs:     1, // the writer's
	}
}

// settle publishes an outcome that involves no streaming.
func (f *fill) settle(outcome fillOutcome, meta entryMeta, err error) {
	f.outcome, f.meta, f.err = outcome, meta, err
	f.mu.Lock()
	f.finished = true
	f.mu.Unlock()
	close(f.ready)
}

// passOn publishes an uncacheable 200, offering S3's response itself to
// one waiter (takeOver) so that it is not fetched twice.
func (f *fill) passOn(resp *originResponse) {
	f.passThrough = resp
	f.settle(fillUncacheable, entryMeta{}, nil)
}

// takeOver hands the fill's S3 response to its caller, once; the caller
// closes its body.
func (f *fill) takeOver() *originResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.passThrough == nil || f.tookOver {
		return nil
	}
	f.tookOver = true
	return f.passThrough
}

// handsOver reports whether resp is, or may still be, taken over by a
// waiter, in which case its body is not the fill's to close.
func (f *fill) handsOver(resp *originResponse) bool {
	return f.passThrough == resp
}

// startStreaming publishes a body about to be written to file.
func (f *fill) startStreaming(meta entryMeta, file *os.File) {
	f.outcome, f.meta, f.file = fillStreaming, meta, file
	close(f.ready)
}

// advance makes n more body bytes visible to readers.
func (f *fill) advance(n int64) {
	f.mu.Lock()
	f.written += n
	close(f.progress)
	f.progress = make(chan struct{})
	f.mu.Unlock()
}

// finish ends the body, with err if it broke.
func (f *fill) finish(err error) {
	f.mu.Lock()
	f.finished = true
	f.bodyErr = err
	close(f.progress)
	f.progress = make(chan struct{})
	f.mu.Unlock()
}

// acquire takes a reference on the temp file for a reader.
func (f *fill) acquire() {
	f.mu.Lock()
	f.refs++
	f.mu.Unlock()
}

// release drops a reference; the last one closes the temp file and, if
// the fill did not commit it, removes it.
func (f *fill) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last && f.passThrough != nil {
		f.mu.Lock()
		taken := f.tookOver
		f.tookOver = true
		f.mu.Unlock()
		if !taken {
			// Nobody wanted it whole: stop the download.
			f.passThrough.body.Close()
		}
	}
	if last && f.file != nil {
		name := f.file.Name()
		f.file.Close()
		// After a commit the name is gone (renamed into place); this
		// only removes the temp file of a fill that did not commit.
		_ = os.Remove(name)
	}
}

// section returns a reader of body bytes [off, off+n) that waits for them
// to be written. It fails with the fill's error if the body breaks, and
// with ctx's error if the reader's client goes away.
func (f *fill) section(ctx context.Context, off, n int64) io.Reader {
	return &fillReader{f: f, ctx: ctx, off: off, end: off + n}
}

// errClientGone ends a fill reader whose own client went away; it is not a
// failure of the fill.
var errClientGone = errors.New("client went away while waiting for the fill")

type fillReader struct {
	f        *fill
	ctx      context.Context
	off, end int64
}

func (r *fillReader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	for {
		r.f.mu.Lock()
		written, finished, bodyErr, progress := r.f.written, r.f.finished, r.f.bodyErr, r.f.progress
		r.f.mu.Unlock()

		if r.off < written {
			n := min(int64(len(p)), written-r.off, r.end-r.off)
			got, err := r.f.file.ReadAt(p[:n], r.f.meta.bodyOffset()+r.off)
			r.off += int64(got)
			if err == io.EOF && got > 0 {
				err = nil
			}
			return got, err
		}
		if bodyErr != nil {
			return 0, bodyErr
		}
		if finished {
			return 0, io.ErrUnexpectedEOF
		}
		select {
		case <-progress:
		case <-r.ctx.Done():
			return 0, errClientGone
		}
	}
}

// joinOrStart returns the fill in flight for key, or registers a new one
// and reports that the caller must run it. Either way the caller holds a
// reader reference and must call release.
//
// seen is the storedAt of the entry the caller found (zero if none). If a
// newer entry was committed since the caller's lookup, joinOrStart returns
// nil: starting a fill then would fetch an object that is already stored.
func (s *store) joinOrStart(key string, seen time.Time) (f *fill, started bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.fills[key]; ok {
		f.acquire()
		return f, false
	}
	if e, ok := s.entries[key]; ok && e.meta.storedAt.After(seen) {
		return nil, false
	}
	f = newFill(key)
	f.refs++ // the caller's reader reference
	s.fills[key] = f
	return f, true
}

// inFlight reports whether a fill for key is running.
func (s *store) inFlight(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.fills[key]
	return ok
}

// endFill unregisters a fill. For a committed fill, commit does this under
// the same lock as the index insert, so a request always finds one or the
// other.
func (s *store) endFill(f *fill) {
	s.mu.Lock()
	if s.fills[f.key] == f {
		delete(s.fills, f.key)
	}
	s.mu.Unlock()
}
