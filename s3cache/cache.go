package s3cache

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The rest of nginx's $upstream_cache_status vocabulary, used once the
// cache is on (see headers.go for MISS and BYPASS).
const (
	cacheHit         = "HIT"         // a fresh entry
	cacheExpired     = "EXPIRED"     // an expired entry, replaced by a new download
	cacheRevalidated = "REVALIDATED" // an expired entry, confirmed by S3 with a 304
	cacheStale       = "STALE"       // an expired entry, served because S3 failed
	cacheUpdating    = "UPDATING"    // an expired entry, served while a refresh runs
)

var (
	// errCacheWrite ends a fill whose temp file could not be written
	// (disk full, I/O error): its readers resume from S3 instead.
	errCacheWrite     = errors.New("writing the cache failed")
	errEntryGone      = errors.New("cache entry disappeared")
	errCachedNotFound = errors.New("no such key (cached answer)")
)

// cacheKey names an object in the store. The bucket is part of it so two
// sites sharing a cache_dir with different buckets cannot collide.
func (h *Handler) cacheKey(key string) string {
	return h.originCfg.bucket + "/" + key
}

// objectKeyOf is the object key of a cache key, for logs, which name the
// object and never the bucket.
func (h *Handler) objectKeyOf(ckey string) string {
	return strings.TrimPrefix(ckey, h.originCfg.bucket+"/")
}

// serveCached answers a request through the disk cache: a fresh entry is
// served from disk; otherwise the request joins or starts the one fill of
// the key, and is streamed from it.
func (h *Handler) serveCached(w http.ResponseWriter, r *http.Request, key string) error {
	ckey := h.cacheKey(key)
	// Twice at most: the second lookup happens only when an entry was
	// committed between the first one and joining the fill.
	for range 2 {
		err := h.serveCachedOnce(w, r, ckey, key)
		if !errors.Is(err, errEntryAppeared) {
			return err
		}
	}
	return h.serveFromOrigin(w, r, key, cacheMiss)
}

var errEntryAppeared = errors.New("an entry was stored meanwhile")

func (h *Handler) serveCachedOnce(w http.ResponseWriter, r *http.Request, ckey, key string) error {
	now := time.Now()
	e, found := h.store.lookup(ckey, now)
	if found && isFresh(&e.meta, now) {
		if err := h.serveEntry(w, r, &e, cacheHit); !errors.Is(err, errEntryGone) {
			return err
		}
		found = false
	}
	if found && h.fresh.staleOn.onUpdating {
		h.refreshInBackground(ckey, key, e)
		if err := h.serveEntry(w, r, &e, cacheUpdating); !errors.Is(err, errEntryGone) {
			return err
		}
		found = false
	}
	var stale *entry
	if found {
		stale = &e
	}
	return h.serveThroughFill(w, r, ckey, key, stale)
}

// serveThroughFill joins the fill of ckey, starting it if none runs, and
// answers from whatever it turns out to be.
func (h *Handler) serveThroughFill(w http.ResponseWriter, r *http.Request, ckey, key string, stale *entry) error {
	word := cacheMiss
	if stale != nil {
		word = cacheExpired
	}
	if h.lockDisabled && h.store.inFlight(ckey) {
		// Like proxy_cache_lock off: a concurrent request goes to S3
		// on its own, and only the first one stores the object.
		return h.serveFromOrigin(w, r, key, word)
	}
	var seen time.Time
	var validators *entryMeta
	if stale != nil {
		seen, validators = stale.meta.storedAt, &stale.meta
	}
	f, started := h.store.joinOrStart(ckey, seen)
	if f == nil {
		return errEntryAppeared
	}
	defer f.release()
	if started {
		go h.runFill(f, key, validators)
	}
	if !h.waitReady(r, f, !started) {
		// proxy_cache_lock_timeout: past it, a waiter goes to S3
		// itself, uncached, rather than wait any longer for headers.
		return h.serveFromOrigin(w, r, key, word)
	}

	switch f.outcome {
	case fillStreaming:
		resume := func(off, n int64) (io.ReadCloser, error) {
			return h.resumeFromOrigin(r, key, f.meta.ETag, off, n)
		}
		return h.respondStored(w, r, &f.meta, word, fillBody{f: f, ctx: r.Context(), resume: resume})
	case fillNegative:
		h.policy.decorate(w.Header(), http.StatusNotFound, word, time.Now())
		return caddyhttp.Error(http.StatusNotFound, errCachedNotFound)
	case fillNotModified:
		if e, ok := h.store.lookup(ckey, time.Now()); ok {
			if err := h.serveEntry(w, r, &e, cacheRevalidated); !errors.Is(err, errEntryGone) {
				return err
			}
		}
		return h.serveFromOrigin(w, r, key, word)
	case fillFailed:
		if stale != nil && h.fresh.staleOn.allows(f.err) {
			if err := h.serveEntry(w, r, stale, cacheStale); !errors.Is(err, errEntryGone) {
				return err
			}
		}
		return h.originFailure(w, f.err, word)
	default: // fillUncacheable
		// The fill's own response goes to one waiter that wants it
		// whole, as nginx gives an uncacheable response to the request
		// that fetched it; the others ask S3 for exactly what they need.
		if isPlainGet(r) {
			if resp := f.takeOver(); resp != nil {
				defer resp.body.Close()
				return h.respondOrigin(w, r, key, word, resp)
			}
		}
		return h.serveFromOrigin(w, r, key, word)
	}
}

// resumeFromOrigin fetches the rest of a body from S3 for a reader whose
// fill could not be written to disk: bytes [off, off+n) of the same
// version (If-Match on its ETag), so the client never notices.
func (h *Handler) resumeFromOrigin(r *http.Request, key, etag string, off, n int64) (io.ReadCloser, error) {
	req := originRequest{
		key:       key,
		rangeSpec: "bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(off+n-1, 10),
		ifMatch:   etag,
	}
	resp, err := h.origin.fetch(r.Context(), req)
	if err != nil {
		return nil, err
	}
	want := "bytes " + strconv.FormatInt(off, 10) + "-"
	if resp.status != http.StatusPartialContent || resp.body == nil || !strings.HasPrefix(resp.header.Get("Content-Range"), want) {
		if resp.body != nil {
			resp.body.Close()
		}
		return nil, fmt.Errorf("resuming from S3: got status %d", resp.status)
	}
	return resp.body, nil
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

// waitReady waits for the fill's headers: at most lock_timeout for a
// waiter, as long as the fill takes (bounded by first_byte_timeout) for the
// request that started it, which, as in nginx, holds the lock and is not
// sent to S3 a second time.
func (h *Handler) waitReady(r *http.Request, f *fill, isWaiter bool) bool {
	select {
	case <-f.ready:
		return true
	default:
	}
	if !isWaiter {
		select {
		case <-f.ready:
			return true
		case <-r.Context().Done():
			return false
		}
	}
	timer := time.NewTimer(h.lockTimeout)
	defer timer.Stop()
	select {
	case <-f.ready:
		return true
	case <-timer.C:
		return false
	case <-r.Context().Done():
		return false
	}
}

// refreshInBackground starts one refresh of an expired entry, unless one
// runs already, for use_stale updating.
func (h *Handler) refreshInBackground(ckey, key string, stale entry) {
	f, started := h.store.joinOrStart(ckey, stale.meta.storedAt)
	if f == nil {
		return // refreshed meanwhile
	}
	f.release() // nobody reads this fill here
	if started {
		go h.runFill(f, key, &stale.meta)
	}
}

// serveEntry answers from a committed entry. It returns errEntryGone when
// the entry vanished or failed its checks, for the caller to go to S3.
func (h *Handler) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, cacheStatus string) error {
	if e.meta.Status == http.StatusNotFound {
		h.policy.decorate(w.Header(), http.StatusNotFound, cacheStatus, time.Now())
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
	body := &checkedBody{f: file.f, meta: &e.meta, store: h.store, path: e.path}
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

// serveEntryDirect answers from a committed entry through directBody. The
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
	body := &directBody{checked: checkedBody{f: f, meta: &e.meta, store: h.store, path: e.path}}
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
		h.store.discardCorrupt(e.path, err)
		return errEntryGone
	}
	h.store.markKnown(e, id)
	return nil
}

// checkAllBlocks checks an entry file against the index: its size, its
// header, and every block of its body.
func checkAllBlocks(f *os.File, m *entryMeta, size int64) error {
	if size != m.fileSize() {
		return fmt.Errorf("%w: file is %d bytes, index says %d", errCorruptEntry, size, m.fileSize())
	}
	onDisk, err := readEntryHeader(f)
	if err != nil {
		return err
	}
	if onDisk.Key != m.Key || onDisk.bodyLen != m.bodyLen || onDisk.tableCRC != m.tableCRC {
		return fmt.Errorf("%w: header does not match the index", errCorruptEntry)
	}
	cr := &checkedReader{body: &checkedBody{f: f, meta: m}, end: m.bodyLen}
	defer cr.release()
	for block := int64(0); block < m.blockCount(); block++ {
		if err := cr.load(block); err != nil {
			return err
		}
	}
	return nil
}

// originFailure answers a failed S3 fetch with its status (404, 502, 504).
func (h *Handler) originFailure(w http.ResponseWriter, err error, cacheStatus string) error {
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
	h.policy.decorate(w.Header(), status, cacheStatus, time.Now())
	return caddyhttp.Error(status, err)
}

// runFill performs the one S3 fetch of a fill and publishes its outcome.
// It runs in the store's context: the request that started it may be
// long gone. stale, when set, makes it a revalidation.
func (h *Handler) runFill(f *fill, key string, stale *entryMeta) {
	defer f.release() // the writer's reference
	req := originRequest{key: key}
	if stale != nil && h.fresh.revalidate {
		req.ifNoneMatch = stale.ETag
		if req.ifNoneMatch == "" {
			req.ifModifiedSince = parseHTTPDate(stale.LastModified)
		}
	}
	resp, err := h.origin.fetch(h.store.ctx, req)
	now := time.Now()
	if err != nil {
		var oe *originError
		if errors.As(err, &oe) && oe.status == http.StatusNotFound {
			if ttl, ok := h.fresh.lifetime(http.StatusNotFound, nil, now); ok {
				if m, err := h.storeNegative(f, now, ttl); err == nil {
					f.settle(fillNegative, m, nil)
					return
				}
			}
		}
		h.store.endFill(f)
		f.settle(fillFailed, entryMeta{}, err)
		return
	}
	defer func() {
		// Unless a waiter took the response over (see passOn).
		if resp.body != nil && !f.handsOver(resp) {
			resp.body.Close()
		}
	}()

	switch {
	case resp.status == http.StatusNotModified && stale != nil:
		// A 304 should repeat the object's freshness headers; when S3
		// does not, the ones stored with the entry still apply.
		fresh := resp.header
		if fresh.Get("Cache-Control") == "" && fresh.Get("Expires") == "" {
			fresh = http.Header{}
			if stale.UpstreamCacheControl != "" {
				fresh.Set("Cache-Control", stale.UpstreamCacheControl)
			}
			if stale.UpstreamExpires != "" {
				fresh.Set("Expires", stale.UpstreamExpires)
			}
		}
		ttl, ok := h.fresh.lifetime(http.StatusOK, fresh, now)
		if v, set := h.fresh.validFor[http.StatusNotModified]; set {
			ttl, ok = v, v > 0
		}
		if !ok {
			ttl = 0
		}
		if err := h.store.refresh(f.key, now, now.Add(ttl)); err != nil {
			h.logger.Warn("could not refresh revalidated entry; serving from S3", zap.String("key", key), zap.Error(err))
			h.store.endFill(f)
			f.settle(fillUncacheable, entryMeta{}, nil)
			return
		}
		h.store.endFill(f)
		f.settle(fillNotModified, entryMeta{}, nil)
	case resp.status == http.StatusOK && resp.body != nil:
		h.streamToStore(f, key, resp, now)
	default:
		h.store.endFill(f)
		f.settle(fillUncacheable, entryMeta{}, nil)
	}
}

// bufferPool holds the copy buffers of fills: large enough that a 20 MB
// object is a few hundred reads, allocated once.
var bufferPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// streamToStore writes a 200 body to a temp file that readers stream
// from, then commits it as an entry. Anything that stops the object from
// being stored before the body starts (no room, no Content-Length,
// too large, no-store, a disk error) turns the fill into a pass-through
// for every waiter; a disk error is logged, and requests keep working.
func (h *Handler) streamToStore(f *fill, key string, resp *originResponse, now time.Time) {
	ttl, cacheable := h.fresh.lifetime(http.StatusOK, resp.header, now)
	size, err := strconv.ParseInt(resp.header.Get("Content-Length"), 10, 64)
	if err != nil || size < 0 {
		cacheable = false
	}
	m := metaFromUpstream(f.key, http.StatusOK, resp.header)
	m.storedAt, m.expiresAt, m.bodyLen = now, now.Add(ttl), size
	metaJSON, err := encodeMeta(&m)
	if err != nil || !cacheable || size > h.maxObjectBytes {
		h.store.endFill(f)
		f.passOn(resp)
		return
	}
	reserved := m.fileSize()
	if !h.store.reserve(reserved) {
		h.store.endFill(f)
		f.passOn(resp)
		return
	}
	tmp, err := h.writeEntryStart(&m, metaJSON)
	if err != nil {
		h.logger.Warn("cannot write to the cache; serving from S3 uncached", zap.Error(err))
		h.store.unreserve(reserved)
		h.store.endFill(f)
		f.passOn(resp)
		return
	}
	f.startStreaming(m, tmp)

	crcs, heldBack, err := copyBody(f, tmp, resp.body, size)
	if err == nil {
		m.blockCRCs = crcs
		if err := h.finishEntry(f, tmp, &m, reserved); err != nil {
			// Readers get every byte all the same; only storing failed.
			if errors.Is(err, errPurged) {
				h.logger.Debug("fill purged while running; not stored", zap.String("key", key))
			} else {
				h.logger.Warn("cannot commit a cache entry; it will be fetched again", zap.String("key", key), zap.Error(err))
			}
			h.store.unreserve(reserved)
			h.store.endFill(f)
		}
		// The last bytes are released only now, so a client that has
		// read the whole object finds it stored on its next request.
		f.advance(heldBack)
		f.finish(nil)
		return
	}
	if errors.Is(err, errCacheWrite) {
		h.logger.Warn("cannot write to the cache (disk full?); readers continue from S3", zap.String("key", key), zap.Error(err))
	}
	h.store.unreserve(reserved)
	h.store.endFill(f)
	f.finish(err)
}

// writeEntryStart creates the temp file and writes the header, the
// metadata and room for the block table, which finishEntry fills in: the
// body is then appended where it belongs.
func (h *Handler) writeEntryStart(m *entryMeta, metaJSON []byte) (*os.File, error) {
	tmp, err := h.store.newTempFile()
	if err != nil {
		return nil, err
	}
	start := slices.Concat(encodeFixedHeader(m), metaJSON, make([]byte, m.bodyOffset()-m.tableOffset()))
	if _, err := tmp.Write(start); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, err
	}
	return tmp, nil
}

// copyBody copies exactly size bytes from S3 to the temp file, making each
// chunk visible to readers as soon as it is written, except the last one,
// which it returns the length of for the caller to release after the
// commit. It returns the CRC-32C of each block of the body. A short body is
// an error: S3 promised size bytes.
func copyBody(f *fill, tmp *os.File, body io.Reader, size int64) (crcs []uint32, heldBack int64, err error) {
	bufp := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(bufp)
	buf := *bufp
	crcs = make([]uint32, 0, (size+blockSize-1)/blockSize)
	var blockCRC uint32
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if total+int64(n) > size {
				return nil, 0, fmt.Errorf("S3 sent more than its Content-Length")
			}
			if _, err := tmp.Write(buf[:n]); err != nil {
				return nil, 0, fmt.Errorf("%w: %w", errCacheWrite, err)
			}
			// Checksum block by block, across read boundaries.
			for chunk := buf[:n]; len(chunk) > 0; {
				room := blockSize - int(total%blockSize)
				part := chunk[:min(room, len(chunk))]
				blockCRC = crc32.Update(blockCRC, castagnoli, part)
				total += int64(len(part))
				chunk = chunk[len(part):]
				if total%blockSize == 0 || total == size {
					crcs = append(crcs, blockCRC)
					blockCRC = 0
				}
			}
			if total < size {
				f.advance(int64(n))
			} else {
				heldBack = int64(n)
			}
		}
		if rerr == io.EOF || (rerr == nil && total == size && n == 0) {
			break
		}
		if rerr != nil {
			return nil, 0, rerr
		}
	}
	if total != size {
		return nil, 0, io.ErrUnexpectedEOF
	}
	return crcs, heldBack, nil
}

// finishEntry writes the block table, records its checksum in the
// header, and commits the file.
func (h *Handler) finishEntry(f *fill, tmp *os.File, m *entryMeta, reserved int64) error {
	table := encodeBlockTable(m)
	if _, err := tmp.WriteAt(table, m.tableOffset()); err != nil {
		return fmt.Errorf("%w: writing block table: %w", errCacheWrite, err)
	}
	if _, err := tmp.WriteAt(encodeFixedHeader(m), 0); err != nil {
		return fmt.Errorf("%w: writing entry header: %w", errCacheWrite, err)
	}
	info, err := tmp.Stat()
	if err != nil {
		return err
	}
	return h.store.commit(f, tmp.Name(), *m, identityOf(info), reserved)
}

// storeNegative caches S3's "no such key" for ttl, as an entry without a
// body, so a scan of missing keys does not become a scan of the bucket.
func (h *Handler) storeNegative(f *fill, now time.Time, ttl time.Duration) (entryMeta, error) {
	m := entryMeta{Key: f.key, Status: http.StatusNotFound, storedAt: now, expiresAt: now.Add(ttl)}
	encodeBlockTable(&m) // empty, but its CRC goes in the header
	metaJSON, err := encodeMeta(&m)
	if err != nil {
		return m, err
	}
	if !h.store.reserve(m.fileSize()) {
		return m, errors.New("no room for a negative entry")
	}
	tmp, err := h.writeEntryStart(&m, metaJSON)
	if err != nil {
		h.store.unreserve(m.fileSize())
		return m, err
	}
	info, err := tmp.Stat()
	tmp.Close()
	if err == nil {
		err = h.store.commit(f, tmp.Name(), m, identityOf(info), m.fileSize())
	}
	if err != nil {
		h.store.unreserve(m.fileSize())
		os.Remove(tmp.Name())
		return m, err
	}
	return m, nil
}
