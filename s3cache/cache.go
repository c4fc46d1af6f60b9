package s3cache

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

var (
	errEntryGone      = errors.New("cache entry disappeared")
	errCachedNotFound = errors.New("no such key (cached answer)")
)

// serveCached answers a request through the disk cache: a fresh complete
// entry is served from disk; anything else goes through the key's fill,
// which fetches from S3 what the request needs and is not on disk.
func (h *Handler) serveCached(w http.ResponseWriter, r *http.Request, key string) error {
	ckey := h.mapping.cacheKey(key)
	// Twice at most: the second lookup happens only when an entry was
	// stored between the first one and joining the fill.
	for range 2 {
		err := h.serveCachedOnce(w, r, ckey, key)
		if !errors.Is(err, errEntryAppeared) {
			return err
		}
	}
	return h.serveFromOrigin(w, r, key, cacheMiss)
}

func (h *Handler) serveCachedOnce(w http.ResponseWriter, r *http.Request, ckey, key string) error {
	now := time.Now()
	e, found := h.store.lookup(ckey, now)
	plan := planFor(r, key)
	if found && isFresh(&e.meta, now) {
		if !e.complete {
			plan.base, plan.fresh = &e, true
			return h.serveThroughFill(w, r, ckey, plan)
		}
		if err := h.serveEntry(w, r, &e, cacheHit); !errors.Is(err, errEntryGone) {
			return err
		}
		found = false
	}
	if found && e.complete && h.fresh.staleOn.onUpdating {
		h.refreshInBackground(ckey, key, e)
		if err := h.serveEntry(w, r, &e, cacheUpdating); !errors.Is(err, errEntryGone) {
			return err
		}
		found = false
	}
	if found {
		plan.base = &e
	}
	return h.serveThroughFill(w, r, ckey, plan)
}

// planFor says how a fill started by r learns its object: a HEAD for a
// HEAD, or for a suffix Range (its first byte depends on the size), and
// otherwise the slice holding the first byte r wants.
func planFor(r *http.Request, key string) fillPlan {
	plan := fillPlan{objectKey: key}
	if r.Method == http.MethodHead {
		plan.head = true
		return plan
	}
	plan.firstByte, plan.head = firstByteWanted(r.Header.Get("Range"))
	return plan
}

// firstByteWanted is the lowest first byte of a Range header's ranges (0
// for none, or for a header that will be ignored), and whether it depends
// on the object's size (a suffix range such as bytes=-500).
func firstByteWanted(header string) (first int64, suffix bool) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok {
		return 0, false
	}
	first = -1
	for part := range strings.SplitSeq(spec, ",") {
		start, _, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			return 0, false
		}
		if start = strings.TrimSpace(start); start == "" {
			return 0, true
		}
		n, err := parseDigits(start)
		if err != nil {
			return 0, false
		}
		if first < 0 || n < first {
			first = n
		}
	}
	return max(first, 0), false
}

// serveThroughFill joins the fill of ckey, starting it if none runs, and
// answers from whatever it turns out to be.
func (h *Handler) serveThroughFill(w http.ResponseWriter, r *http.Request, ckey string, plan fillPlan) error {
	cacheStatus := cacheMiss
	if plan.base != nil && !plan.fresh {
		cacheStatus = cacheExpired
	}
	if h.lockDisabled && h.store.inFlight(ckey) {
		// Like proxy_cache_lock off: a concurrent request goes to S3
		// on its own, and only the first one stores the object.
		return h.serveFromOrigin(w, r, plan.objectKey, cacheStatus)
	}
	if plan.base == nil && h.store.passing(ckey, time.Now()) {
		return h.serveFromOrigin(w, r, plan.objectKey, cacheStatus)
	}
	f, since, err := h.store.joinFill(ckey, h.fills, plan)
	if err != nil {
		return err
	}
	defer f.leave()
	select {
	case <-f.ready:
	case <-r.Context().Done():
		return nil // nobody to answer
	}

	switch f.outcome {
	case fillOpen:
		status := f.cacheStatus
		if plan.fresh {
			// Found fresh: a HIT if every byte it sends is on disk,
			// whoever started the fill it joined.
			status = cacheHit
		}
		err := h.respondStored(w, r, &f.meta, status, fillBody{f: f, ctx: r.Context(), resume: h.resumer(r, plan.objectKey, f.meta.ETag), since: since})
		return h.afterFillBody(w, r, plan, cacheStatus, err)
	case fillNegative:
		h.decorate(w, r, http.StatusNotFound, cacheStatus, time.Now())
		return caddyhttp.Error(http.StatusNotFound, errCachedNotFound)
	case fillFailed:
		return h.staleOrFailure(w, r, plan.base, f.err, cacheStatus)
	default: // fillUncacheable
		if isPlainGet(r) {
			if resp := f.takePassThrough(); resp != nil {
				defer func() { resp.body.Close() }() // spooled by then
				return h.respondOrigin(w, r, plan.objectKey, cacheStatus, resp)
			}
		}
		return h.serveFromOrigin(w, r, plan.objectKey, cacheStatus)
	}
}

// isPlainGet reports whether r wants the whole object, unconditionally.
func isPlainGet(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	for _, name := range []string{"Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		if r.Header.Get(name) != "" {
			return false
		}
	}
	return true
}

// afterFillBody handles a response from a fill whose first bytes could
// not be had: nothing has been written yet, so the client still gets a
// status of its own.
func (h *Handler) afterFillBody(w http.ResponseWriter, r *http.Request, plan fillPlan, cacheStatus string, err error) error {
	if !errors.Is(err, errEntryGone) {
		return err
	}
	switch {
	case errors.Is(err, errClientGone):
		return nil
	case errors.Is(err, errCorruptEntry), errors.Is(err, errObjectChanged), errors.Is(err, errCacheWrite):
		// The entry went bad, or the object changed: S3 directly.
		return h.serveFromOrigin(w, r, plan.objectKey, cacheStatus)
	default:
		// The slice's fetch failed: the client gets the failure (or
		// the stale copy) once, and S3 is not asked again for it.
		return h.staleOrFailure(w, r, plan.base, asOriginError(err), cacheStatus)
	}
}

// asOriginError describes a failed slice fetch as the failure of an S3
// request, for its status: 504 for a body that stalled past read_timeout,
// 502 for one that broke.
func asOriginError(err error) error {
	var oe *originError
	switch {
	case errors.As(err, &oe):
		return err
	case isTimeout(err):
		return &originError{status: http.StatusGatewayTimeout, timeout: true, op: "GetObject", reason: "the body stalled past read_timeout"}
	default:
		return &originError{status: http.StatusBadGateway, op: "GetObject", reason: "the body broke: " + bodyFailureReason(err)}
	}
}

// staleOrFailure answers a failed S3 fetch with the stale copy when
// use_stale allows it, else with the failure's status.
func (h *Handler) staleOrFailure(w http.ResponseWriter, r *http.Request, stale *entry, err error, cacheStatus string) error {
	if stale != nil && stale.complete && h.fresh.staleOn.allows(err) {
		if err := h.serveEntry(w, r, stale, cacheStale); !errors.Is(err, errEntryGone) {
			return err
		}
	}
	return h.originFailure(w, r, err, cacheStatus)
}

// resumer returns how a reader of a fill reads part of the object from S3
// itself: bytes [off, off+n) of the same version (If-Match on its ETag),
// spooled so that the client's pace does not hold S3 (see spool.go).
func (h *Handler) resumer(r *http.Request, key, etag string) func(off, n int64) (io.ReadCloser, error) {
	return func(off, n int64) (io.ReadCloser, error) {
		return h.spoolRange(r.Context(), key, etag, off, n), nil
	}
}

// refreshInBackground starts one refresh of an expired entry, unless one
// runs already, for use_stale updating.
func (h *Handler) refreshInBackground(ckey, key string, stale entry) {
	f, _, err := h.store.joinFill(ckey, h.fills, fillPlan{objectKey: key, base: &stale})
	if err == nil {
		f.leave() // nobody reads this fill here; its fetch goes on
	}
}

// serveEntry answers from a complete entry. It returns errEntryGone when
// the entry vanished or failed its checks, for the caller to go to S3.
func (h *Handler) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, cacheStatus string) error {
	if e.meta.Status == http.StatusNotFound {
		h.decorate(w, r, http.StatusNotFound, cacheStatus, time.Now())
		return caddyhttp.Error(http.StatusNotFound, errCachedNotFound)
	}
	defer corkFor(r)()
	if canSendfile(r) {
		return h.serveEntryDirect(w, r, e, cacheStatus)
	}
	file := h.store.acquireFile(e)
	if file == nil {
		f, err := os.Open(e.path)
		if err != nil {
			return errEntryGone // evicted or purged since the lookup
		}
		file = h.store.adoptFile(e, f)
	}
	defer h.store.releaseFile(file)
	// Blocks are checked as they are sent, so only a file that is not
	// the one last checked in full is checked now.
	if err := h.checkBeforeHit(e, file.f, 0); err != nil {
		return err
	}
	body := &checkedBody{f: file.f, entry: e, store: h.store}
	if r.Method == http.MethodGet {
		// The file is still the one whose blocks were checked (above):
		// a body kept in memory from it is the file's.
		it, err := h.memoryBody(e, body)
		if err != nil {
			return fmt.Errorf("%w: %w", errEntryGone, err)
		}
		if it != nil {
			defer h.memory.done(it)
			return h.respondStored(w, r, &e.meta, cacheStatus, memBody(it.body))
		}
	}
	return h.respondStored(w, r, &e.meta, cacheStatus, body)
}

// reverifyInterval is how long a file whose every block passed its check
// is trusted without checking blocks as they are sent (see directBody).
// Past it the next direct hit reads the file through once more, from the
// page cache if it is hot: some milliseconds for a 20 MB video. It bounds
// how long bit rot that leaves a file's identity alone could go unnoticed.
const reverifyInterval = 10 * time.Minute

// canSendfile reports whether a response to r may be sent with sendfile:
// plain HTTP/1.x. TLS encrypts in this process, and HTTP/2 and 3 frame the
// body, so they read through checkedBody.
func canSendfile(r *http.Request) bool {
	return r.TLS == nil && r.ProtoMajor == 1
}

// serveEntryDirect answers from a complete entry through directBody. The
// descriptor is the request's own, from the entry's pool of spares or
// opened now, and goes back to the pool when the answer is sent. Blocks
// are not checked as they are sent, so the file is trusted only for
// reverifyInterval after its last full check (checkBeforeHit).
func (h *Handler) serveEntryDirect(w http.ResponseWriter, r *http.Request, e *entry, cacheStatus string) error {
	f := h.store.takeSpare(e)
	if f == nil {
		var err error
		if f, err = os.Open(e.path); err != nil {
			return errEntryGone // evicted or purged since the lookup
		}
	}
	if err := h.checkBeforeHit(e, f, reverifyInterval); err != nil {
		f.Close()
		return err
	}
	body := &directBody{checked: checkedBody{f: f, entry: e, store: h.store}}
	err := h.respondStored(w, r, &e.meta, cacheStatus, body)
	// A block that failed its check removed the entry: putSpare then
	// closes f rather than pooling it.
	h.store.putSpare(e, f)
	return err
}

// checkBeforeHit makes sure f, an open descriptor of the entry snapshot
// e's file, may be answered from. A file removed by hand drops the entry.
// A file that is not the one last checked in full (its identity differs:
// found on disk at startup, replaced since the lookup, or written to on
// disk) or, with a trust window, whose last full check is older than it,
// has every block checked now, before a byte is sent, so such a file is
// answered from S3 rather than cut off midway; a failure removes it. It
// returns errEntryGone when the caller must go to S3.
func (h *Handler) checkBeforeHit(e *entry, f *os.File, trustFor time.Duration) error {
	info, err := f.Stat()
	if err != nil || unlinked(info) {
		h.store.forget(e)
		return errEntryGone
	}
	id := identityOf(info)
	if id == e.known && (trustFor == 0 || time.Since(e.verifiedAt) < trustFor) {
		return nil
	}
	if err := checkAllBlocks(f, &e.meta, info.Size()); err != nil {
		h.store.discardCorrupt(e, err)
		return errEntryGone
	}
	h.store.markKnown(e, id)
	return nil
}

// checkAllBlocks checks a complete entry file against the index: its
// size, its header, and every block of its body.
func checkAllBlocks(f *os.File, m *entryMeta, size int64) error {
	if size != m.fileSize() {
		return fmt.Errorf("%w: file is %d bytes, index says %d", errCorruptEntry, size, m.fileSize())
	}
	onDisk, err := readEntryHeader(f)
	if err != nil {
		return err
	}
	if onDisk.Key != m.Key || onDisk.bodyLen != m.bodyLen || onDisk.sliceLen != m.sliceLen || onDisk.metaLen != m.metaLen {
		return fmt.Errorf("%w: header does not match the index", errCorruptEntry)
	}
	cr := &checkedReader{body: &checkedBody{f: f, entry: &entry{meta: *m}}, end: m.bodyLen}
	defer cr.release()
	for block := int64(0); block < m.blockCount(); block++ {
		if err := cr.load(block); err != nil {
			return err
		}
	}
	return nil
}

// originFailure answers a failed S3 fetch with its status (404, 502, 503,
// 504).
func (h *Handler) originFailure(w http.ResponseWriter, r *http.Request, err error, cacheStatus string) error {
	status := http.StatusBadGateway
	var oe *originError
	if errors.As(err, &oe) {
		status = oe.status
		if oe.busy {
			// A slot frees as soon as any fill finishes; a second is
			// a polite guess that keeps a retrying client from
			// hammering.
			w.Header().Set("Retry-After", "1")
		}
	}
	h.decorate(w, r, status, cacheStatus, time.Now())
	return caddyhttp.Error(status, err)
}
