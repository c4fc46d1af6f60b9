package s3cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
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

// slicePhase is where a slice of the entry being filled stands.
type slicePhase uint8

const (
	sliceAbsent   slicePhase = iota // not on disk, not being fetched
	sliceFetching                   // a worker is fetching it
	slicePresent                    // on disk, sealed
	sliceUnstored                   // could not be stored: readers get it from S3 directly
)

type sliceState struct {
	phase slicePhase
	// got is how many bytes of the slice are in the file: while it is
	// fetched, as they arrive; while it is absent, the whole blocks a
	// fetch that stopped had written (and recorded), from which the next
	// fetch resumes.
	got      int64
	lastByte time.Time // when the last byte arrived; zero before the first
	// reserved is the disk space reserved for the slice under max_size,
	// held from its first fetch until it is sealed or the fill ends.
	reserved int64
	// failed: the last fetch of it failed, with failErr, as the fill's
	// failSeq-th failure. A request that joined the fill before that
	// failure gets it; one that came after fetches the slice again.
	// Read-ahead passes a failed slice by, so a failing S3 is asked once
	// per request, not in a loop.
	failed  bool
	failSeq uint64
	failErr error
}

// verdict is what a fill knows of its entry as a whole.
type verdict uint8

const (
	verdictPending      verdict = iota // slices still to come
	verdictChecking                    // complete, being read back (checkComplete)
	verdictVerified                    // complete, every block and the ETag checked
	verdictFailed                      // complete but wrong: removed; see verdictErr
	verdictUnverifiable                // will not complete here (a slice unstored, purged, changed)
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
	// word is the X-Cache-Status of the requests it serves: MISS,
	// EXPIRED, REVALIDATED, or HIT for an entry found fresh.
	word string

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
	// failures counts the slice fetches that failed.
	failures uint64

	// passThrough, for fillUncacheable, is S3's answer holding the whole
	// object, for one request to take over.
	passThrough *originResponse
	tookOver    bool
}

// fillCursor is where one reader of a fill is: the byte it reads next and
// the end of its section. Cursors decide which slices are fetched.
type fillCursor struct {
	pos, end int64
	consumed int64 // bytes read so far, which earns read-ahead
	// err is set when a fetch of the slice this cursor waits for fails:
	// its reader sees the failure rather than retrying it.
	err error
	// since is the fill's failure count when the cursor's request joined
	// it: failures after that are the request's own.
	since uint64
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
	if e, ok := s.entries[key]; ok && (plan.base == nil || e.gen != plan.base.gen || !e.meta.storedAt.Equal(plan.base.meta.storedAt)) {
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
	s.mu.Lock()
	if s.fills[f.key] == f {
		delete(s.fills, f.key)
	}
	s.mu.Unlock()
	if f.gen != 0 {
		s.unpin(f.key, f.gen)
	}
	if f.file != nil {
		f.file.Close()
	}
	if resp := f.takeOver(); resp != nil {
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

// settle publishes an outcome that serves no body from the entry.
func (f *fill) settle(outcome fillOutcome, err error) {
	f.outcome, f.err = outcome, err
	close(f.ready)
}

// publish makes the fill's entry available to its requests.
func (f *fill) publish(word string) {
	f.outcome, f.word = fillOpen, word
	close(f.ready)
}

// identify learns the object from S3 (a HEAD, or the GET of its first
// wanted slice, conditional when revalidating plan.base), stores what it
// says, and writes the slice that came with it. It runs as one of the
// fill's workers.
func (f *fill) identify(plan fillPlan) {
	defer f.workerDone()
	req := originRequest{key: f.objectKey, head: plan.head}
	var first int64
	if !plan.head {
		first = plan.firstByte / f.rules.sliceBytes * f.rules.sliceBytes
		req.rangeSpec = rangeSpec(first, f.rules.sliceBytes)
	}
	if plan.base != nil && f.rules.fresh.revalidate {
		req.ifNoneMatch = plan.base.meta.ETag
		if req.ifNoneMatch == "" {
			req.ifModifiedSince = parseHTTPDate(plan.base.meta.LastModified)
		}
	}
	resp, err := f.rules.origin.fetch(f.ctx, req)
	if err == nil && resp.status == http.StatusRequestedRangeNotSatisfiable {
		// An empty object, or a first byte past the end: a HEAD says
		// which.
		req.head, req.rangeSpec = true, ""
		resp, err = f.rules.origin.fetch(f.ctx, req)
	}
	now := time.Now()
	switch {
	case err != nil:
		f.notFetched(plan, err, now)
	case resp.status == http.StatusNotModified && plan.base != nil:
		f.revalidated(plan.base, resp.header, now)
	case resp.status == http.StatusOK || resp.status == http.StatusPartialContent:
		f.identified(plan, req, resp, now)
	default:
		if resp.body != nil {
			resp.body.Close()
		}
		f.settle(fillUncacheable, nil)
	}
}

// notFetched settles a fill whose first S3 request failed. S3's "no such
// key" is cached as a negative entry, unless a stale copy may be served
// for it instead.
func (f *fill) notFetched(plan fillPlan, err error, now time.Time) {
	var oe *originError
	if errors.As(err, &oe) && oe.status == http.StatusNotFound && (plan.base == nil || !f.rules.fresh.staleOn.allows(err)) {
		if ttl, ok := f.rules.fresh.lifetime(http.StatusNotFound, nil, now); ok {
			m := entryMeta{Key: f.key, Status: http.StatusNotFound, storedAt: now, expiresAt: now.Add(ttl), sliceLen: f.rules.sliceBytes}
			if file, gen, cerr := f.store.createEntry(f, &m); cerr == nil {
				file.Close()
				f.store.unpin(f.key, gen)
				f.meta = m
				f.settle(fillNegative, nil)
				return
			}
		}
	}
	f.settle(fillFailed, err)
}

// revalidated refreshes plan.base after S3's 304 and serves it.
func (f *fill) revalidated(base *entry, header http.Header, now time.Time) {
	// A 304 should repeat the object's freshness headers; when S3 does
	// not, the ones stored with the entry still apply.
	fresh := header
	if fresh.Get("Cache-Control") == "" && fresh.Get("Expires") == "" {
		fresh = http.Header{}
		if base.meta.UpstreamCacheControl != "" {
			fresh.Set("Cache-Control", base.meta.UpstreamCacheControl)
		}
		if base.meta.UpstreamExpires != "" {
			fresh.Set("Expires", base.meta.UpstreamExpires)
		}
	}
	ttl, ok := f.rules.fresh.lifetime(http.StatusOK, fresh, now)
	if v, set := f.rules.fresh.validFor[http.StatusNotModified]; set {
		ttl, ok = v, v > 0
	}
	if !ok {
		ttl = 0
	}
	e, err := f.store.refresh(f.key, now, now.Add(ttl))
	if err == nil {
		err = f.openEntry(e, cacheRevalidated)
	}
	if err != nil {
		f.rules.logger.Warn("could not refresh a revalidated entry; serving from S3", zap.String("key", f.objectKey), zap.Error(err))
		f.settle(fillUncacheable, nil)
	}
}

// identified stores the object S3 described (a 200 or 206, or a HEAD's
// 200) as a new entry, and writes the body that came with it.
func (f *fill) identified(plan fillPlan, req originRequest, resp *originResponse, now time.Time) {
	size, start, ok := objectSpan(req, resp, f.rules.sliceBytes)
	m := metaFromUpstream(f.key, http.StatusOK, resp.header)
	_, m.ETagIsMD5 = md5OfETag(resp.header)
	ttl, cacheable := f.rules.fresh.lifetime(http.StatusOK, resp.header, now)
	m.storedAt, m.expiresAt, m.bodyLen, m.sliceLen = now, now.Add(ttl), size, f.rules.sliceBytes
	if !ok {
		if resp.body != nil {
			resp.body.Close()
		}
		f.settle(fillFailed, &originError{status: http.StatusBadGateway, op: req.op(), reason: "S3 answered another range than the one asked for"})
		return
	}
	if !cacheable || size > f.rules.maxObjectBytes {
		// Like Varnish's hit-for-miss: the next requests for the key
		// go straight to S3, without a first slice thrown away.
		f.store.markPass(f.key, now.Add(passFor))
		f.passOn(resp, start, size)
		return
	}
	file, gen, err := f.store.createEntry(f, &m)
	if err != nil {
		if errors.Is(err, errCacheWrite) {
			f.rules.logger.Warn("cannot write to the cache; serving from S3 uncached", zap.Error(err))
		}
		f.passOn(resp, start, size)
		return
	}
	word := cacheMiss
	if plan.base != nil {
		word = cacheExpired
	}
	table := sliceTable{present: make([]bool, m.sliceCount()), crcs: make([]uint32, m.blockCount())}
	first, last := int64(0), int64(0) // the slices the response carries
	if resp.body != nil && !req.head && size > 0 {
		first = start / m.sliceLen
		last = first + 1
		if resp.status == http.StatusOK {
			last = m.sliceCount() // S3 ignored the Range: the whole body comes
		}
	}
	f.attach(m, file, gen, table, first, last)
	f.publish(word)
	if last > first {
		f.receive(first, last, resp.body)
	} else {
		if resp.body != nil {
			resp.body.Close()
		}
		f.checkComplete()
	}
}

// passFor is how long a key found uncacheable (no-store, too large) is
// passed straight to S3 before the cache tries it again.
const passFor = time.Minute

// passOn settles a fill whose object is not stored. When S3's answer holds
// the whole object, it is offered to one request that wants exactly that
// (takeOver), so a small uncacheable object still costs one fetch; the
// other requests ask S3 for what they need.
func (f *fill) passOn(resp *originResponse, start, size int64) {
	whole := resp.body != nil && start == 0 && (resp.status == http.StatusOK || resp.header.Get("Content-Length") == strconv.FormatInt(size, 10))
	if whole {
		resp.status = http.StatusOK
		resp.header.Del("Content-Range")
		f.passThrough = resp
	} else if resp.body != nil {
		resp.body.Close()
	}
	f.settle(fillUncacheable, nil)
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

// objectSpan reads the object's size, and where the body S3 sent starts,
// from its answer to req. It fails for an answer that does not say, or
// that is not the range asked for: a Content-Range of another slice, or a
// Content-Length that disagrees with it.
func objectSpan(req originRequest, resp *originResponse, sliceLen int64) (size, start int64, ok bool) {
	if resp.status == http.StatusPartialContent {
		first, last, total, ok := parseContentRange(resp.header.Get("Content-Range"))
		asked, _ := firstByteWanted(req.rangeSpec)
		if !ok || total < 0 || first != asked || last != min(first+sliceLen, total)-1 {
			return 0, 0, false
		}
		if cl := resp.header.Get("Content-Length"); cl != "" && cl != strconv.FormatInt(last-first+1, 10) {
			return 0, 0, false
		}
		return total, first, true
	}
	n, err := strconv.ParseInt(resp.header.Get("Content-Length"), 10, 64)
	return n, 0, err == nil && n >= 0
}

// parseContentRange reads "bytes first-last/total"; total is -1 for "*".
func parseContentRange(v string) (first, last, total int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(spec, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = parseDigits(a)
	last, err2 = parseDigits(b)
	total = -1
	if size != "*" {
		total, err3 = parseDigits(size)
	}
	if err1 != nil || err2 != nil || err3 != nil || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, false
	}
	return first, last, total, true
}

// rangeSpec is the Range header for n bytes from off.
func rangeSpec(off, n int64) string {
	return "bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(off+n-1, 10)
}

// openEntry opens the fill on an indexed entry, whose missing slices it
// fetches as readers need them.
func (f *fill) openEntry(e entry, word string) error {
	file, err := os.OpenFile(e.path, os.O_RDWR, 0)
	if err != nil {
		f.store.forget(&e)
		return err
	}
	table, err := f.checkOpened(file, &e)
	if err == nil {
		err = f.store.pin(&e)
	}
	if err != nil {
		file.Close()
		return err
	}
	f.attach(e.meta, file, e.gen, table, 0, 0)
	f.publish(word)
	f.checkComplete()
	return nil
}

// checkOpened reads the slice table of the entry snapshot e from its
// opened file, after making sure the file is the entry's.
func (f *fill) checkOpened(file *os.File, e *entry) (sliceTable, error) {
	info, err := file.Stat()
	if err != nil {
		return sliceTable{}, err
	}
	if !identityOf(info).sameFile(e.id) {
		return sliceTable{}, errEntryGone
	}
	m, err := readEntryHeader(file)
	if err == nil && (m.Key != e.meta.Key || m.bodyLen != e.meta.bodyLen || m.sliceLen != e.meta.sliceLen) {
		err = fmt.Errorf("%w: header does not match the index", errCorruptEntry)
	}
	var table sliceTable
	if err == nil {
		table, err = readSliceTable(file, &m)
	}
	if err != nil {
		f.store.discardCorrupt(e, err)
		return table, err
	}
	checkWritten(file, &m, &table)
	return table, nil
}

// checkWritten checks the blocks that slices not complete had written
// when their fill stopped (a crash, a failed fetch) against their
// recorded CRCs, and keeps of each only the blocks that pass, in order: a
// block whose bytes did not all reach the disk is fetched again.
func checkWritten(file *os.File, m *entryMeta, t *sliceTable) {
	bufp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bufp)
	for k, n := range t.written {
		start, _ := m.sliceSpan(int64(k))
		good := int64(0)
		for good < n {
			buf := (*bufp)[:min(blockSize, n-good)]
			if _, err := file.ReadAt(buf, m.bodyOffset()+start+good); err != nil || crc32.Checksum(buf, castagnoli) != t.crcs[(start+good)/blockSize] {
				break
			}
			good += int64(len(buf))
		}
		t.written[k] = good
	}
}

// pin marks the entry snapshot e as being filled, if it is still current.
func (s *store) pin(e *entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.currentLocked(e.meta.Key, e.gen)
	if !ok {
		return errEntryGone
	}
	cur.pins++
	return nil
}

// attach gives the fill its entry. Slices [fetchFirst, fetchLast) are
// marked as being fetched by the caller.
func (f *fill) attach(m entryMeta, file *os.File, gen uint64, table sliceTable, fetchFirst, fetchLast int64) {
	f.meta = m
	f.mu.Lock()
	defer f.mu.Unlock()
	f.file, f.gen, f.crcs = file, gen, table.crcs
	f.slices = make([]sliceState, len(table.present))
	for k, ok := range table.present {
		if ok {
			f.slices[k].phase = slicePresent
		} else if table.written != nil {
			f.slices[k].got = table.written[k]
		}
	}
	for k := fetchFirst; k < fetchLast; k++ {
		f.slices[k].phase = sliceFetching
	}
}

// workerDone ends a worker.
func (f *fill) workerDone() {
	f.mu.Lock()
	f.workers--
	end := f.endingLocked()
	f.mu.Unlock()
	if end {
		f.end()
	}
}

// kickLocked starts workers for the slices that are wanted and absent, up
// to rules.parallel at once.
func (f *fill) kickLocked() {
	for f.workers < f.rules.parallel && !f.ended {
		k, urgent, ok := f.pickLocked(time.Now())
		if !ok {
			return
		}
		f.slices[k].phase = sliceFetching
		f.workers++
		if !f.store.goBackground(func() { f.work(k, urgent) }) {
			f.workers--
			f.slices[k].phase = sliceAbsent
			f.failWaitersLocked(k, errStoreClosed)
			return
		}
	}
}

// pickLocked chooses the next slice to fetch: first one that a reader
// waits for now (urgent), then the nearest one within some reader's
// read-ahead, then, for an object no larger than the read-ahead, the first
// one missing. urgent says the fetch may wait for an S3 slot.
//
// A reader earns read-ahead by reading: half a slice to start with, so a
// reader that reads little (a HEAD, a Range of a few bytes, a client that
// goes away or reads at 1 KB/s) costs one slice, then as much as it has
// read so far, up to aheadBytes. A fast reader soon has parallel slices
// in flight; a slow one never more than the one it is in and the next.
// (Twice what it has read grew faster, but a client that left at once
// still "reads" a slice into the kernel's socket buffers before the
// server notices, and so earned two more.)
func (f *fill) pickLocked(now time.Time) (k int64, urgent, ok bool) {
	sliceLen := f.meta.sliceLen
	for c := range f.cursors {
		if c.err == nil && c.pos < c.end {
			if k := c.pos / sliceLen; f.slices[k].phase == sliceAbsent && f.failedFor(c, k) == nil {
				return k, true, true
			}
		}
	}
	if f.detached {
		return 0, false, false
	}
	if k, ok := f.aheadLocked(now); ok {
		return k, false, true
	}
	if f.meta.bodyLen <= f.rules.aheadBytes && f.verdict == verdictPending {
		// Completing a small object is a promise, not a guess: it
		// queues for an S3 slot like a reader's slice.
		for k := range f.slices {
			if f.slices[k].phase == sliceAbsent && !f.slices[k].failed {
				return int64(k), true, true
			}
		}
	}
	return 0, false, false
}

// aheadLocked chooses the absent slice nearest to a reader within its
// read-ahead, unless read-ahead is paused.
func (f *fill) aheadLocked(now time.Time) (int64, bool) {
	if now.Before(f.noAheadUntil) {
		return 0, false
	}
	sliceLen := f.meta.sliceLen
	best, bestDistance := int64(-1), int64(-1)
	for c := range f.cursors {
		if c.err != nil || c.pos >= c.end {
			continue
		}
		ahead := min(f.rules.aheadBytes, max(sliceLen/2, c.consumed))
		from, to := c.pos/sliceLen, (min(c.end, c.pos+ahead)-1)/sliceLen
		for k := from + 1; k <= to; k++ {
			if f.slices[k].phase != sliceAbsent || f.slices[k].failed {
				continue
			}
			if d := k - from; best < 0 || d < bestDistance {
				best, bestDistance = k, d
			}
			break
		}
	}
	return best, best >= 0
}

// work fetches slice k, then whatever pickLocked chooses next, until it
// chooses nothing.
func (f *fill) work(k int64, urgent bool) {
	for {
		f.fetchSlice(k, urgent)
		f.mu.Lock()
		var ok bool
		if !f.ended {
			k, urgent, ok = f.pickLocked(time.Now())
		}
		if !ok {
			f.workers--
			end := f.endingLocked()
			f.mu.Unlock()
			if end {
				f.end()
			}
			return
		}
		f.slices[k].phase = sliceFetching
		f.mu.Unlock()
	}
}

// fetchSlice fetches slice k with a ranged GET pinned to the entry's
// version, from where an earlier fetch of it stopped. Read-ahead (not
// urgent) does not queue for an S3 slot: when max_concurrent_fills are all
// taken it gives up for a second.
func (f *fill) fetchSlice(k int64, urgent bool) {
	start, n := f.meta.sliceSpan(k)
	if !f.reserveSlice(k) {
		f.sliceUnstored(k)
		return
	}
	f.mu.Lock()
	from := f.slices[k].got
	f.mu.Unlock()
	// The rest of the whole slice is asked for even at the end of the
	// object (S3 clips it), so every GET of a slice reads the same.
	req := originRequest{key: f.objectKey, rangeSpec: rangeSpec(start+from, f.meta.sliceLen-from), noQueue: !urgent}
	if f.meta.ETag != "" {
		req.ifMatch = f.meta.ETag
	} else {
		req.ifUnmodifiedSince = parseHTTPDate(f.meta.LastModified)
	}
	resp, err := f.rules.origin.fetch(f.ctx, req)
	if err != nil {
		var oe *originError
		if !urgent && errors.As(err, &oe) && oe.busy {
			f.mu.Lock()
			f.slices[k].phase = sliceAbsent
			f.noAheadUntil = time.Now().Add(time.Second)
			f.broadcastLocked()
			f.mu.Unlock()
			return
		}
		f.sliceFailed(k, err)
		return
	}
	if resp.status == http.StatusPreconditionFailed {
		f.objectChanged()
		return
	}
	if err := f.checkSliceAnswer(resp, start+from, n-from); err != nil {
		if resp.body != nil {
			resp.body.Close()
		}
		f.sliceFailed(k, err)
		return
	}
	f.receive(k, k+1, resp.body)
}

// reserveSlice makes sure slice k, being fetched by the caller, has its
// disk space reserved under max_size.
func (f *fill) reserveSlice(k int64) bool {
	f.mu.Lock()
	reserved := f.slices[k].reserved
	f.mu.Unlock()
	if reserved > 0 {
		return true
	}
	usage := sliceUsage(&f.meta, k)
	if !f.store.reserve(usage) {
		return false
	}
	f.mu.Lock()
	f.slices[k].reserved = usage
	f.mu.Unlock()
	return true
}

// checkSliceAnswer makes sure S3 sent exactly the range asked for, of the
// object version the entry holds: a Content-Range, Content-Length or ETag
// that says otherwise is refused before a byte is stored.
func (f *fill) checkSliceAnswer(resp *originResponse, start, n int64) error {
	if resp.status != http.StatusPartialContent || resp.body == nil {
		return fmt.Errorf("%w: status %d", errBadSlice, resp.status)
	}
	first, last, total, ok := parseContentRange(resp.header.Get("Content-Range"))
	if !ok || first != start || last != start+n-1 || total != f.meta.bodyLen {
		return errBadSlice
	}
	if cl := resp.header.Get("Content-Length"); cl != "" && cl != strconv.FormatInt(n, 10) {
		return errBadSlice
	}
	if etag := resp.header.Get("Etag"); etag != "" && f.meta.ETag != "" && etag != f.meta.ETag {
		return errObjectChanged
	}
	return nil
}

// bufferPool holds the copy buffers of slice fetches.
var bufferPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// receive writes the slices [first, last) from body, which carries
// exactly their bytes (the first one's from where it was left), into the
// entry, making each chunk visible to readers as it lands, and seals each
// slice as it completes.
func (f *fill) receive(first, last int64, body io.ReadCloser) {
	defer body.Close()
	bufp := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(bufp)
	for k := first; k < last; k++ {
		if err := f.receiveSlice(k, body, *bufp); err != nil {
			for rest := k + 1; rest < last; rest++ {
				if errors.Is(err, errNoRoom) || errors.Is(err, errCacheWrite) {
					f.sliceUnstored(rest)
				} else {
					f.sliceFailed(rest, err)
				}
			}
			return
		}
	}
	// Nothing may follow the bytes asked for: S3 promised exactly them.
	var extra [1]byte
	if n, _ := body.Read(extra[:]); n > 0 {
		f.rules.logger.Warn("S3 sent more than the range asked for; the object is fetched again", zap.String("key", f.objectKey))
		f.objectChanged()
	}
}

// receiveSlice writes slice k from body, from where its earlier fetches
// left it. The CRC of each block is recorded as soon as the block is in
// the file, so a fetch that stops (S3 failing, a crash) leaves the whole
// blocks it wrote for the next one to resume after. On failure the slice
// is absent again (or unstored, for a disk that cannot take it) and its
// waiters see the error.
func (f *fill) receiveSlice(k int64, body io.Reader, buf []byte) error {
	start, n := f.meta.sliceSpan(k)
	if !f.reserveSlice(k) {
		f.sliceUnstored(k)
		return errNoRoom
	}
	blocks := (n + blockSize - 1) / blockSize
	crcs := make([]uint32, blocks)
	f.mu.Lock()
	got := f.slices[k].got
	copy(crcs, f.crcs[start/blockSize:start/blockSize+got/blockSize])
	f.mu.Unlock()
	for got < n {
		m, rerr := body.Read(buf[:min(int64(len(buf)), n-got)])
		if m > 0 {
			if err := f.writeChunk(k, crcs, got, buf[:m]); err != nil {
				f.rules.logger.Warn("cannot write to the cache (disk full?); readers continue from S3", zap.String("key", f.objectKey), zap.Error(err))
				f.sliceUnstored(k)
				return fmt.Errorf("%w: %w", errCacheWrite, err)
			}
			got += int64(m)
			f.progress(k, got)
		}
		if rerr != nil && got < n {
			if rerr == io.EOF {
				rerr = io.ErrUnexpectedEOF
			}
			f.sliceFailed(k, rerr)
			return rerr
		}
	}
	record := encodeSliceRecord(&f.meta, k, crcs)
	if _, err := f.file.WriteAt(record, f.meta.tableOffset()+k*f.meta.sliceRecordLen()); err != nil {
		f.sliceUnstored(k)
		return fmt.Errorf("%w: %w", errCacheWrite, err)
	}
	f.sliceDone(k, crcs)
	return nil
}

// writeChunk writes p, the bytes of slice k from offset off within it,
// folds them into the blocks' CRCs, and records the CRC of each block they
// complete.
func (f *fill) writeChunk(k int64, crcs []uint32, off int64, p []byte) error {
	start, n := f.meta.sliceSpan(k)
	if _, err := f.file.WriteAt(p, f.meta.bodyOffset()+start+off); err != nil {
		return err
	}
	updateBlockCRCs(crcs, off, p)
	end := off + int64(len(p))
	var slot [4]byte
	for b := off / blockSize; b < int64(len(crcs)) && min((b+1)*blockSize, n) <= end; b++ {
		binary.LittleEndian.PutUint32(slot[:], crcs[b])
		if _, err := f.file.WriteAt(slot[:], f.meta.blockCRCOffset(k, b)); err != nil {
			return err
		}
	}
	return nil
}

// updateBlockCRCs folds p, the body bytes of a slice from offset off
// within it, into the CRC-32C of each of its blocks.
func updateBlockCRCs(crcs []uint32, off int64, p []byte) {
	for len(p) > 0 {
		block := off / blockSize
		part := p[:min(int64(len(p)), (block+1)*blockSize-off)]
		crcs[block] = crc32.Update(crcs[block], castagnoli, part)
		off += int64(len(part))
		p = p[len(part):]
	}
}

// progress makes the first got bytes of slice k visible to readers.
func (f *fill) progress(k, got int64) {
	f.mu.Lock()
	f.slices[k].got = got
	f.slices[k].lastByte = time.Now()
	f.broadcastLocked()
	f.mu.Unlock()
}

// sliceDone records slice k as present, sealed on disk with crcs.
func (f *fill) sliceDone(k int64, crcs []uint32) {
	f.mu.Lock()
	usage := f.slices[k].reserved
	f.slices[k] = sliceState{phase: slicePresent}
	copy(f.crcs[k*f.meta.blocksPerSlice():], crcs)
	detached := f.detached
	f.broadcastLocked()
	f.mu.Unlock()
	if detached {
		f.store.unreserve(usage)
		return
	}
	f.store.sliceStored(f.key, f.gen, usage)
	f.checkComplete()
}

// sliceFailed puts slice k back to absent after a failed fetch; the
// readers waiting for it get err.
func (f *fill) sliceFailed(k int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures++
	st := &f.slices[k]
	// The whole blocks written (and recorded) stay, for the next fetch
	// to resume after; so does the slice's reservation.
	got := st.got / blockSize * blockSize
	*st = sliceState{phase: sliceAbsent, got: got, reserved: st.reserved, failed: true, failSeq: f.failures, failErr: err}
	f.failWaitersLocked(k, err)
	f.broadcastLocked()
}

func (f *fill) failWaitersLocked(k int64, err error) {
	for c := range f.cursors {
		if c.err == nil && c.pos < c.end && c.pos/f.meta.sliceLen == k {
			c.err = err
		}
	}
}

// sliceUnstored marks slice k as one the disk could not take: its readers
// get it from S3 directly, and the entry will not complete this time.
func (f *fill) sliceUnstored(k int64) {
	f.mu.Lock()
	reserved := f.slices[k].reserved
	f.slices[k] = sliceState{phase: sliceUnstored}
	if f.verdict == verdictPending {
		f.verdict = verdictUnverifiable
	}
	f.broadcastLocked()
	f.mu.Unlock()
	if reserved > 0 {
		f.store.unreserve(reserved)
		start, n := f.meta.sliceSpan(k)
		punchHole(f.file, f.meta.bodyOffset()+start, n)
	}
}

// objectChanged drops an entry whose object is no longer the version in
// S3: every reader of it is cut, never given bytes of two versions, and
// the next request fetches the new one.
func (f *fill) objectChanged() {
	f.mu.Lock()
	for c := range f.cursors {
		if c.err == nil {
			c.err = errObjectChanged
		}
	}
	var freed int64
	for k := range f.slices {
		if st := &f.slices[k]; st.phase != slicePresent {
			if st.phase != sliceFetching {
				freed += st.reserved
				st.reserved = 0
			}
			st.phase = sliceUnstored
		}
	}
	f.detachLocked()
	gen := f.gen
	f.mu.Unlock()
	f.store.unreserve(freed)
	f.store.dropEntry(f.key, gen, false)
}

// dropEntry removes the entry gen of key, if it is still the current one;
// corrupt counts it as an entry that failed its checks.
func (s *store) dropEntry(key string, gen uint64, corrupt bool) {
	s.mu.Lock()
	e, ok := s.currentLocked(key, gen)
	if ok {
		s.removeLocked(key)
		if corrupt {
			s.stats.removedCorrupt++
		}
	}
	s.mu.Unlock()
	if ok {
		s.removeFile(doomedOf(e))
	}
}

// checkComplete finishes an entry whose every slice is present: its body
// is read back once, each block checked and, where the ETag is the body's
// MD5, the whole of it (etag_check), before hits may read it directly. A
// body that fails is removed.
func (f *fill) checkComplete() {
	f.mu.Lock()
	if f.verdict != verdictPending || f.detached {
		f.mu.Unlock()
		return
	}
	for _, st := range f.slices {
		if st.phase != slicePresent {
			f.mu.Unlock()
			return
		}
	}
	f.verdict = verdictChecking // claimed: the next caller returns at once
	crcs := append([]uint32(nil), f.crcs...)
	f.mu.Unlock()

	err := verifyBody(f.file, &f.meta, crcs, f.rules.checkETag)
	var info os.FileInfo
	if err == nil {
		info, err = f.file.Stat()
	}
	f.mu.Lock()
	if err != nil {
		f.verdict, f.verdictErr = verdictFailed, err
		f.detachLocked()
	} else {
		f.verdict = verdictVerified
	}
	f.broadcastLocked()
	f.mu.Unlock()
	if err != nil {
		f.rules.logger.Warn("a fetched object failed its check; not stored", zap.String("key", f.objectKey), zap.String("reason", bodyFailureReason(err)))
		f.store.dropEntry(f.key, f.gen, true)
		return
	}
	f.store.markComplete(f.key, f.gen, crcs, identityOf(info))
}

// verifyBody reads a complete body back and checks every block against
// crcs and, with checkETag and an ETag that is the body's MD5, the whole
// body against it.
func verifyBody(file *os.File, m *entryMeta, crcs []uint32, checkETag bool) error {
	sum := newETagDigest(m, checkETag)
	bufp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bufp)
	for block := range m.blockCount() {
		start := block * blockSize
		buf := (*bufp)[:min(blockSize, m.bodyLen-start)]
		if _, err := file.ReadAt(buf, m.bodyOffset()+start); err != nil {
			return fmt.Errorf("%w: reading block %d: %v", errCorruptEntry, block, err)
		}
		if crc32.Checksum(buf, castagnoli) != crcs[block] {
			return fmt.Errorf("%w: block %d fails its checksum", errCorruptEntry, block)
		}
		sum.write(buf)
	}
	return sum.check()
}

// punchHole gives back the disk blocks of a slice whose fetch failed
// midway, so they do not count against the disk while no record claims
// them.
func punchHole(file *os.File, off, n int64) {
	_ = deallocate(file, off, n)
}
