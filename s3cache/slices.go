package s3cache

import (
	"encoding/binary"
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

// How a fill fetches, writes and seals the slices of its entry.

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
// goes away or reads at 1 KB/s) costs one slice; then as much as it has
// read so far, and twice that once it has read a couple of slices over a
// moment (fillCursor.readAhead), up to aheadBytes. A fast reader soon has
// parallel slices in flight; a slow one never more than the one it is in
// and the next.
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
	if k, ok := f.moovHintLocked(); ok {
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
		ahead := c.readAhead(now, sliceLen, f.rules.aheadBytes)
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
			if k == 0 && got == 0 {
				f.mu.Lock()
				f.noteHeadLocked(buf[:m])
				f.mu.Unlock()
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
