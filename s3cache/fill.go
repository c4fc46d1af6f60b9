package s3cache

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// A fill is how bytes of an object come from S3 into its entry while
// requests want them. It fetches the body in slices (entry.go), each with
// one ranged GET pinned to the object's version, and only the slices that
// its readers need plus a bounded read-ahead, up to fillRules.parallel at
// once. Every slice is fetched at most once however many readers want
// it, and every reader is streamed a slice's bytes as they land in the
// file.
//
// nginx's slice module caches an object as separate one-slice entries and
// its proxy_cache_lock makes the requests that wait for an entry poll for
// it, then go to the origin themselves; here the slices are one entry, a
// waiter reads bytes as they arrive, and a slow S3 is waited for, not
// stampeded.
//
// The store owns a fill from start to end: it is registered in store.fills
// when the first request needs it, its goroutines run in the store's wait
// group, and it ends, unregistering itself and unpinning its entry, when
// no request holds it and no slice is being fetched. A request that goes
// away does not stop a slice being fetched: the others still get it.

// fillRules are what a handler tells the fills it starts: where objects
// come from and how they are stored. Built once, at Provision.
type fillRules struct {
	origin         origin
	fresh          *freshnessPolicy
	maxObjectBytes int64
	// sliceBytes is the slice size of new entries (slice).
	sliceBytes int64
	// aheadBytes bounds the read-ahead of each reader, and objects of at
	// most this size are fetched whole once started (fill_ahead).
	aheadBytes int64
	// parallel is the most slices of one fill fetched at once
	// (fill_parallel).
	parallel int
	// lockTimeout is how long a reader waits for a slice whose fetch
	// has stopped sending bytes before it reads from S3 itself.
	lockTimeout time.Duration
	// checkETag: check a complete body against its ETag where that is
	// its MD5 (etag_check).
	checkETag bool
	logger    *zap.Logger
}

// fillPlan is what the request that starts a fill knows.
type fillPlan struct {
	objectKey string
	// base is the entry the request found, or nil. With fresh, the fill
	// serves it and fetches only its missing slices; otherwise it is
	// revalidated (or replaced) first.
	base  *entry
	fresh bool
	// head: learn the object with a HEAD rather than with a slice of its
	// body. Otherwise the first slice fetched is the one holding
	// firstByte.
	head      bool
	firstByte int64
}

// fillOutcome is what became of a fill once S3 answered.
type fillOutcome int

const (
	// fillOpen: the entry is indexed; serve it through the fill.
	fillOpen fillOutcome = iota
	// fillNegative: S3 has no such key, and that answer is cached.
	fillNegative
	// fillUncacheable: S3 answered, but the object is not to be stored
	// (too large, no-store, no room); each request asks S3 itself.
	fillUncacheable
	// fillFailed: S3 could not be read; err says how.
	fillFailed
)

var (
	// errCacheWrite: a slice could not be written to disk (full, I/O
	// error); readers of it get it from S3 directly.
	errCacheWrite = errors.New("writing the cache failed")
	// errObjectChanged ends the readers of an entry whose object S3 no
	// longer has in that version (If-Match failed).
	errObjectChanged = errors.New("the object changed in S3 while being fetched")
	errStoreClosed   = errors.New("the cache is shutting down")
	errBadSlice      = errors.New("S3 answered a slice request with another range")
)

type fill struct {
	key       string // cache key
	objectKey string
	store     *store
	rules     *fillRules
	ctx       context.Context // the store's, for the fill's life
	cancel    context.CancelFunc

	ready chan struct{} // closed once the outcome below is known
	// Set before ready is closed; read-only afterwards.
	outcome fillOutcome
	meta    entryMeta // for fillOpen and fillNegative
	err     error     // for fillFailed: why S3 could not be read
	// cacheStatus is the X-Cache-Status of the requests it serves: MISS,
	// EXPIRED, REVALIDATED, or HIT for an entry found fresh.
	cacheStatus string

	mu      sync.Mutex // guards the fields below
	users   int        // requests holding the fill
	workers int        // goroutines fetching
	ended   bool
	// detached: purged, changed or corrupt; nothing more is stored, and
	// only what current readers need is fetched.
	detached bool
	gen      uint64   // index generation of the entry, once it exists
	file     *os.File // the entry file, read and written with pread/pwrite
	slices   []sliceState
	crcs     []uint32 // per block; valid for present slices
	cursors  map[*fillCursor]struct{}
	changed  chan struct{} // closed and replaced on every change
	verdict  verdict
	// verdictErr is why a complete entry failed its check.
	verdictErr error
	// noAheadUntil pauses read-ahead after it found every S3 slot taken.
	noAheadUntil time.Time
	// headNoted: the first bytes of slice 0 were looked at; moovSlice is
	// the slice an MP4's moov begins in, to fetch early (moovhint.go).
	headNoted bool
	moovSlice int64
	// failures counts the slice fetches that failed.
	failures uint64

	// passThrough, for fillUncacheable, is S3's answer holding the whole
	// object, for one request to take over.
	passThrough      *originResponse
	passThroughTaken bool
}

// fillCursor is where one reader of a fill is: the byte it reads next and
// the end of its section. Cursors decide which slices are fetched.
type fillCursor struct {
	pos, end int64
	consumed int64     // bytes read so far, which earns read-ahead
	joined   time.Time // when the reader joined, which earns it faster
	// err is set when a fetch of the slice this cursor waits for fails:
	// its reader sees the failure rather than retrying it.
	err error
	// since is the fill's failure count when the cursor's request joined
	// it: failures after that are the request's own.
	since uint64
}

// A reader's read-ahead doubles, from as much as it has read to twice that,
// once it has both stayed doubleAheadAfter and read doubleAheadPast slices.
// A client that hangs up as soon as it has the headers may still have
// "read" a slice or more into the kernel's socket buffers before the
// server notices (on loopback within a millisecond, over the internet
// after a round trip, later on a busy server): it must not earn more than
// the slice after those. A reader that streams passes both gates within a
// couple of slices and then ramps up twice as fast.
const (
	doubleAheadAfter = 100 * time.Millisecond
	doubleAheadPast  = 2
)

// readAhead is how far past its position c may have slices fetched, at
// now: half a slice to start with, then as much as it has read, then twice
// that; limit at most.
func (c *fillCursor) readAhead(now time.Time, sliceLen, limit int64) int64 {
	earned := c.consumed
	if earned >= doubleAheadPast*sliceLen && now.Sub(c.joined) >= doubleAheadAfter {
		earned *= 2
	}
	return min(limit, max(sliceLen/2, earned))
}

// failedFor returns the failure of slice k that c's request must see: one
// that happened since it joined the fill.
func (f *fill) failedFor(c *fillCursor, k int64) error {
	if st := &f.slices[k]; st.failed && st.failSeq > c.since {
		return st.failErr
	}
	return nil
}

// joinFill returns the fill of key, starting it with plan if none runs,
// and the fill's failure count at the time of joining (see fillCursor).
// The caller holds the fill until it calls leave. It returns
// errEntryAppeared when the index holds another entry than the one the
// caller based its plan on: the caller looks again.
func (s *store) joinFill(key string, rules *fillRules, plan fillPlan) (*fill, uint64, error) {
	s.mu.Lock()
	if f, ok := s.fills[key]; ok {
		if since, ok := f.join(); ok {
			s.mu.Unlock()
			return f, since, nil
		}
	}
	if e, ok := s.peekLocked(key); ok && (plan.base == nil || e.gen != plan.base.gen || !e.meta.storedAt.Equal(plan.base.meta.storedAt)) {
		s.mu.Unlock()
		return nil, 0, errEntryAppeared
	}
	f := &fill{
		key:       key,
		objectKey: plan.objectKey,
		store:     s,
		rules:     rules,
		ready:     make(chan struct{}),
		users:     1,
		cursors:   make(map[*fillCursor]struct{}),
		changed:   make(chan struct{}),
	}
	f.ctx, f.cancel = context.WithCancel(s.ctx)
	s.fills[key] = f
	s.mu.Unlock()
	f.start(plan)
	return f, 0, nil
}

var errEntryAppeared = errors.New("an entry was stored meanwhile")

// forgetFill unregisters f, unless another fill of its key has taken its
// place: later requests for the key start a fill of their own.
func (s *store) forgetFill(f *fill) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fills[f.key] == f {
		delete(s.fills, f.key)
	}
}

// inFlight reports whether a fill for key is running.
func (s *store) inFlight(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.fills[key]
	return ok
}

// join adds a request to the fill's holders, unless it is ending.
func (f *fill) join() (since uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return 0, false
	}
	f.users++
	return f.failures, true
}

// leave ends a request's hold on the fill.
func (f *fill) leave() {
	f.mu.Lock()
	f.users--
	end := f.endingLocked()
	f.mu.Unlock()
	if end {
		f.end()
	}
}

// endingLocked reports, once, that the fill has nothing left to do.
func (f *fill) endingLocked() bool {
	if f.ended || f.users > 0 || f.workers > 0 {
		return false
	}
	f.ended = true
	return true
}

// end unregisters the fill and lets its entry go. The disk reserved for
// slices it left unfinished is given back, but for their whole blocks
// written, which stay in the entry for the next fill to resume after.
func (f *fill) end() {
	s := f.store
	f.mu.Lock()
	var kept, freed int64
	for k := range f.slices {
		st := &f.slices[k]
		if st.reserved == 0 {
			continue
		}
		written := (st.got + bodyAlign - 1) / bodyAlign * bodyAlign
		if f.detached || written == 0 {
			freed += st.reserved
		} else {
			kept += min(written, st.reserved)
			freed += st.reserved - min(written, st.reserved)
		}
		st.reserved = 0
	}
	f.mu.Unlock()
	if kept > 0 {
		s.sliceStored(f.key, f.gen, kept)
	}
	s.unreserve(freed)
	s.forgetFill(f)
	if f.gen != 0 {
		s.unpin(f.key, f.gen)
	}
	if f.file != nil {
		f.file.Close()
	}
	if resp := f.takePassThrough(); resp != nil {
		resp.body.Close() // nobody wanted it whole
	}
	f.cancel()
}

// readerCount is the number of readers streaming from the fill.
func (f *fill) readerCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.cursors)
}

// detach stops the fill from storing anything more: its key was purged.
// Called with store.mu held.
func (f *fill) detach() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detachLocked()
}

func (f *fill) detachLocked() {
	f.detached = true
	if f.verdict == verdictPending {
		f.verdict = verdictUnverifiable
	}
	f.broadcastLocked()
}

func (f *fill) isDetached() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.detached
}

func (f *fill) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// start opens the fill as plan says: on the fresh entry the request found,
// or by asking S3 about the object.
func (f *fill) start(plan fillPlan) {
	if plan.fresh {
		if err := f.openEntry(*plan.base, cacheHit); err == nil {
			return
		}
		plan.base, plan.fresh = nil, false // gone or bad: fetch afresh
	}
	f.mu.Lock()
	f.workers++
	f.mu.Unlock()
	if !f.store.goBackground(func() { f.identify(plan) }) {
		f.mu.Lock()
		f.workers--
		f.mu.Unlock()
		f.settle(fillFailed, errStoreClosed)
	}
}

// settle publishes an outcome that serves no body from the entry. A
// failure, or an object not stored, is told to the requests that joined
// while S3 was asked, and to no later one: the fill leaves the registry
// first, so a request that comes after asks afresh instead of inheriting
// an answer about the past (a stale copy served seconds after S3 came
// back, or nothing stored after the disk could be written again).
func (f *fill) settle(outcome fillOutcome, err error) {
	f.outcome, f.err = outcome, err
	if outcome == fillFailed || outcome == fillUncacheable {
		f.store.forgetFill(f)
	}
	close(f.ready)
}

// publish makes the fill's entry available to its requests.
func (f *fill) publish(cacheStatus string) {
	f.outcome, f.cacheStatus = fillOpen, cacheStatus
	close(f.ready)
}
