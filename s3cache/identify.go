package s3cache

import (
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// How a fill learns the object it stores: from S3's answer to its first
// request (identify), or from an entry already indexed (openEntry).

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
		if ttl, ok := f.rules.fresh.lifetime(http.StatusNotFound, nil, now); ok && !f.isDetached() {
			m := entryMeta{Key: f.key, Status: http.StatusNotFound, storedAt: now, expiresAt: now.Add(ttl)}
			f.store.storeNegative(f.key, m)
			f.meta = m
			f.settle(fillNegative, nil)
			return
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
		f.settleUncacheable(resp, start, size)
		return
	}
	file, gen, err := f.store.createEntry(f, &m)
	if err != nil {
		if errors.Is(err, errCacheWrite) {
			f.rules.logger.Warn("cannot write to the cache; serving from S3 uncached", zap.Error(err))
		}
		f.settleUncacheable(resp, start, size)
		return
	}
	cacheStatus := cacheMiss
	if plan.base != nil {
		cacheStatus = cacheExpired
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
	// Room for the slices in hand first, before readers woken by publish
	// reserve it for their read-ahead: bytes S3 has sent are not thrown
	// away to make room for bytes not asked for yet.
	for k := first; k < last && f.reserveSlice(k); k++ {
	}
	f.publish(cacheStatus)
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

// settleUncacheable settles a fill whose object is not stored. When S3's
// answer starts at the object's first byte, it is offered to one request
// that wants the whole object (takePassThrough), as the first chunk of a
// pass-through (spool.go), so an object the cache will not store is still
// fetched once; the other requests ask S3 for what they need.
func (f *fill) settleUncacheable(resp *originResponse, start, size int64) {
	if resp.body != nil && start == 0 {
		if resp.status == http.StatusPartialContent {
			widen(resp, "")
		}
		f.passThrough = resp
	} else if resp.body != nil {
		resp.body.Close()
	}
	f.settle(fillUncacheable, nil)
}

// takePassThrough hands the fill's S3 response to its caller, once; the
// caller closes its body.
func (f *fill) takePassThrough() *originResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.passThrough == nil || f.passThroughTaken {
		return nil
	}
	f.passThroughTaken = true
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
func (f *fill) openEntry(e entry, cacheStatus string) error {
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
	if e.complete {
		// Checked when it completed; its blocks are checked as read.
		f.mu.Lock()
		f.verdict = verdictVerified
		f.mu.Unlock()
	}
	f.publish(cacheStatus)
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
