package s3cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// stores holds one store per cache directory. A store outlives config
// reloads: the new config's handlers get the same index, the same fills in
// flight and the same files, instead of a second store racing the first on
// one directory. Two sites naming one directory share it too.
var stores = caddy.NewUsagePool()

// storeLimits are the bounds a store enforces. They may change on reload.
type storeLimits struct {
	maxBytes     int64
	inactiveFor  time.Duration
	minFreeBytes int64
}

// store is the disk cache: entry files under dir, sharded by levels like
// nginx's proxy_cache_path, an in-memory index of them with an LRU list,
// and the fills that write them. An entry file appears under its final
// name only by the rename of a temp file holding its header, and its body
// is written slice by slice in place after that (see entry.go), so a
// reader or a crash never sees a slice that is only half there.
//
// The store owns every fill from start to end: the fills run in its
// context and its wait group, so Destruct stops and joins them.
type store struct {
	dir    string
	tmpDir string
	levels []int
	logger *zap.Logger

	// ctx lives as long as the store; fills and background refreshes run
	// in it, so they survive the request and the config that started them.
	ctx    context.Context
	cancel context.CancelFunc
	loaded chan struct{} // closed when the loader has indexed the directory

	limitsChanged chan struct{} // wakes the manager after a reload

	// wg joins the store's goroutines; lifeMu and closed make sure none
	// is added once Destruct has started waiting (see goBackground).
	wg     sync.WaitGroup
	lifeMu sync.Mutex
	closed bool

	// pathLocks serialise the creation and removal of entry files, by
	// the key's hash, without the global lock: a file is renamed into
	// place or unlinked under its stripe, so a removal never deletes
	// the file of a newer entry of the same key.
	pathLocks [64]sync.Mutex

	mu       sync.Mutex // guards the fields below
	limits   storeLimits
	entries  map[string]*entry  // by cache key
	lru      list.List          // of *entry; front is most recently used
	used     int64              // disk bytes of indexed entries
	reserved int64              // disk bytes promised to slices being fetched and entries being created
	fills    map[string]*fill   // fills in flight, by cache key
	mappings map[keyMapping]int // sites using the store, with a use count
	// passes are keys found uncacheable, with when to try them again.
	passes  map[string]time.Time
	gen     uint64 // last entry generation handed out
	open    int    // entry files kept open
	maxOpen int    // bound on open; 0 once the store is destructed
	stats   storeStats

	// Requests answered through this store, for the admin API's hit
	// ratio; atomics, so the hit path does not take the lock for them.
	hits, lookups, s3Errors atomic.Int64
}

// StoreStats is a snapshot of a store, as the admin API reports it.
type StoreStats struct {
	CacheDir       string  `json:"cache_dir"`
	Loaded         bool    `json:"index_loaded"`
	Entries        int     `json:"entries"`
	PartialEntries int     `json:"partial_entries"`
	Bytes          int64   `json:"bytes"`
	MaxBytes       int64   `json:"max_bytes"`
	ReservedBytes  int64   `json:"reserved_bytes"`
	FillsInFlight  int     `json:"fills_in_flight"`
	FillWaiters    int     `json:"fill_waiters"`
	Requests       int64   `json:"requests"`
	Hits           int64   `json:"hits"`
	HitRatio       float64 `json:"hit_ratio"`
	S3Errors       int64   `json:"s3_errors"`
	Evictions      int64   `json:"evictions"`
	Purges         int64   `json:"purges"`
	CorruptRemoved int64   `json:"corrupt_removed"`
}

// snapshot reports the store's state.
func (s *store) snapshot() StoreStats {
	st := StoreStats{CacheDir: s.dir}
	select {
	case <-s.loaded:
		st.Loaded = true
	default:
	}
	s.mu.Lock()
	st.Entries, st.Bytes, st.MaxBytes, st.ReservedBytes = len(s.entries), s.used, s.limits.maxBytes, s.reserved
	st.PartialEntries = s.stats.partial
	st.Evictions, st.Purges, st.CorruptRemoved = s.stats.evictions, s.stats.purges, s.stats.removedCorrupt
	st.FillsInFlight = len(s.fills)
	fills := make([]*fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	for _, f := range fills {
		st.FillWaiters += f.readerCount()
	}
	st.Requests, st.Hits, st.S3Errors = s.lookups.Load(), s.hits.Load(), s.s3Errors.Load()
	if st.Requests > 0 {
		st.HitRatio = float64(st.Hits) / float64(st.Requests)
	}
	return st
}

// countRequest records the X-Cache-Status of a request that used the store.
func (s *store) countRequest(cacheStatus string) {
	switch cacheStatus {
	case cacheBypass, "":
		return
	case cacheHit:
		s.hits.Add(1)
	}
	s.lookups.Add(1)
}

// storeStats are counters for the admin API and metrics.
type storeStats struct {
	purges         int64
	evictions      int64
	loadedEntries  int64
	removedCorrupt int64
	partial        int // entries indexed that are not complete
}

// entry is one entry of the index. Its fields are guarded by store.mu; a
// request works on a copy (a snapshot) taken under it.
type entry struct {
	meta     entryMeta
	path     string
	lastUsed time.Time
	elem     *list.Element
	gen      uint64 // tells this entry from a later one for the same key

	// complete: every slice of the body is on disk and meta.blockCRCs
	// holds their checksums; hits read it directly. An entry that is
	// not complete is read through a fill, which fetches what is absent.
	complete bool
	// diskBytes is what the entry counts against max_size: its header
	// and the slices it has, in whole filesystem blocks.
	diskBytes int64
	// pins counts the fills writing this entry; eviction passes over a
	// pinned entry (purge does not).
	pins int
	// id is the file's identity when it was indexed, so a removal that
	// runs outside the lock unlinks this file and not a newer one.
	id fileIdentity

	file *openFile // the file kept open for hits, or nil
	// Descriptors of the file waiting for the next sendfile hit (see
	// takeSpare): sendfile reads from the file offset, so each serves one
	// request at a time, and the pool saves a hit its open and close.
	spares []*os.File

	// The identity of the file when its whole body last passed its
	// checks (zero: never, for entries found on disk at startup). A hit
	// on a file whose identity differs, because it was loaded from disk
	// or changed there since, checks every block before answering;
	// otherwise blocks are checked as they are sent.
	known fileIdentity
	// When the whole body last passed its checks: written by this
	// process, or read back in full. directBody trusts a file only for
	// reverifyInterval after that.
	verifiedAt time.Time
}

// fileIdentity is what fstat says about a file, enough to notice that it
// was replaced or written to. The change time is in it because nothing
// short of root can set it back: a file altered in place and given its old
// mtime with touch -r still shows as changed.
type fileIdentity struct {
	ino   uint64
	size  int64
	mtime int64
	ctime int64
}

func identityOf(info fs.FileInfo) fileIdentity {
	id := fileIdentity{size: info.Size(), mtime: info.ModTime().UnixNano()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		id.ino = st.Ino
		id.ctime = changeTime(st)
	}
	return id
}

// sameFile reports whether two identities name one file: the same inode.
// A newer entry renamed over a path has an inode of its own, allocated
// while the old file still held its number. (The change time cannot be
// compared: a fill writes slices into the file after it is indexed.)
func (id fileIdentity) sameFile(other fileIdentity) bool {
	return id.ino == other.ino && id.ino != 0
}

// unlinked reports whether the file behind an open descriptor has no name
// left: someone removed it from the cache directory by hand (rm -rf to
// clear the cache). A descriptor kept open would go on serving it, and its
// disk space would stay in use, until the entry is evicted.
func unlinked(info fs.FileInfo) bool {
	st, ok := info.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}

// openStore returns the store for dir, creating and loading it on first
// use. The caller must call releaseStore(dir) when done (in Cleanup).
func openStore(dir string, levels []int, limits storeLimits, logger *zap.Logger) (*store, error) {
	val, loaded, err := stores.LoadOrNew(dir, func() (caddy.Destructor, error) {
		return newStore(dir, levels, limits, logger)
	})
	if err != nil {
		return nil, err
	}
	s := val.(*store)
	if loaded {
		if !equalLevels(s.levels, levels) {
			stores.Delete(dir)
			return nil, fmt.Errorf("cache_dir %s is already in use with levels %s; a different levels needs an empty directory", dir, formatLevels(s.levels))
		}
		s.setLimits(limits)
	}
	return s, nil
}

func releaseStore(dir string) {
	_, _ = stores.Delete(dir)
}

func newStore(dir string, levels []int, limits storeLimits, logger *zap.Logger) (*store, error) {
	tmpDir := filepath.Join(dir, "temp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating cache_dir %s: %w (check that Caddy's user may write there)", dir, err)
	}
	// Temp files are entries that were being created when the process
	// died. Failing to remove them (a cache_dir mounted read-only) is
	// not a reason to refuse the config: they are never read, and with
	// nothing writable the cache serves what it has and passes the rest
	// through from S3.
	if err := clearDir(tmpDir); err != nil {
		logger.Warn("cannot remove the temp files of an earlier run; the cache may be read-only",
			zap.String("temp", tmpDir), zap.Error(err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &store{
		dir:           dir,
		tmpDir:        tmpDir,
		levels:        levels,
		logger:        logger.With(zap.String("cache_dir", dir)),
		ctx:           ctx,
		cancel:        cancel,
		loaded:        make(chan struct{}),
		limitsChanged: make(chan struct{}, 1),
		limits:        limits,
		entries:       make(map[string]*entry),
		fills:         make(map[string]*fill),
		mappings:      make(map[keyMapping]int),
		passes:        make(map[string]time.Time),
		maxOpen:       maxOpenEntryFiles(),
	}
	s.goBackground(s.load)
	s.goBackground(s.manage)
	return s, nil
}

// goBackground runs fn in a goroutine that Destruct waits for, unless the
// store is already being destructed, in which case it reports false.
func (s *store) goBackground(fn func()) bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// Destruct stops the store's goroutines, fills included, when the last
// config using it is gone, and waits for them. Entries stay on disk for
// the next start; a slice being fetched is fetched again then.
func (s *store) Destruct() error {
	s.lifeMu.Lock()
	s.closed = true
	s.lifeMu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	for _, e := range s.entries {
		s.doomFileLocked(e)
	}
	// Requests of the old config still draining keep nothing open
	// from here on: their descriptors are closed when they are done.
	s.maxOpen = 0
	s.mu.Unlock()
	return nil
}

func (s *store) setLimits(l storeLimits) {
	s.mu.Lock()
	s.limits = l
	doomed := s.evictUntilUnderLocked(0)
	s.mu.Unlock()
	s.removeFiles(doomed)
	select {
	case s.limitsChanged <- struct{}{}:
	default: // the manager has a wake-up pending already
	}
}

// hashKey names the entry file of a cache key.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// entryPath is where the entry for key lives: like nginx's levels, the
// directory names are taken from the end of the hash, so "1:2" gives
// dir/c/29/…29c.
func (s *store) entryPath(key string) string {
	return s.pathOfHash(hashKey(key))
}

func (s *store) pathOfHash(h string) string {
	parts := []string{s.dir}
	end := len(h)
	for _, n := range s.levels {
		parts = append(parts, h[end-n:end])
		end -= n
	}
	return filepath.Join(append(parts, h)...)
}

// pathLock is the stripe that serialises file operations on path, an
// entry path (its last two characters are hex digits of the key's hash).
func (s *store) pathLock(path string) *sync.Mutex {
	h, err := strconv.ParseUint(path[len(path)-2:], 16, 8)
	if err != nil {
		h = 0
	}
	return &s.pathLocks[h%uint64(len(s.pathLocks))]
}

// lookup returns a copy of the entry for key and marks it used. The
// recency is recorded in memory only: a hit costs no disk write.
func (s *store) lookup(key string, now time.Time) (entry, bool) {
	s.mu.Lock()
	e, ok := s.entries[key]
	if ok {
		e.lastUsed = now
		s.lru.MoveToFront(e.elem)
		snapshot := *e
		s.mu.Unlock()
		return snapshot, true
	}
	s.mu.Unlock()

	select {
	case <-s.loaded:
		return entry{}, false
	default:
	}
	// The loader has not reached this key yet: look at its file directly,
	// so a restart with a warm cache serves hits at once.
	return s.probe(key, now)
}

// insertLocked adds or replaces the index entry for key.
func (s *store) insertLocked(key, path string, m entryMeta, complete bool, diskBytes int64, id fileIdentity, lastUsed time.Time) *entry {
	if _, ok := s.entries[key]; ok {
		s.removeLocked(key)
	}
	m.lengthStr = strconv.FormatInt(m.bodyLen, 10)
	s.gen++
	e := &entry{meta: m, path: path, lastUsed: lastUsed, gen: s.gen, complete: complete, diskBytes: diskBytes, id: id}
	e.elem = s.lru.PushFront(e)
	s.entries[key] = e
	s.used += diskBytes
	if !complete {
		s.stats.partial++
	}
	return e
}

// removeLocked drops key from the index and returns the entry, whose file
// the caller removes with removeFiles.
func (s *store) removeLocked(key string) (*entry, bool) {
	e, ok := s.entries[key]
	if !ok {
		return nil, false
	}
	delete(s.entries, key)
	s.lru.Remove(e.elem)
	s.used -= e.diskBytes
	if !e.complete {
		s.stats.partial--
	}
	s.doomFileLocked(e)
	return e, true
}

// currentLocked returns the index entry of the snapshot e if it is still
// the current one for its key.
func (s *store) currentLocked(key string, gen uint64) (*entry, bool) {
	e, ok := s.entries[key]
	if !ok || e.gen != gen {
		return nil, false
	}
	return e, true
}

// doomedFile is an entry file to unlink once the global lock is released.
type doomedFile struct {
	path string
	id   fileIdentity
}

func doomedOf(e *entry) doomedFile { return doomedFile{path: e.path, id: e.id} }

// removeFiles unlinks the files of entries that left the index, each under
// its path's stripe and only if the file at the path is still the one the
// entry had: a newer entry of the same key may have been renamed into
// place meanwhile.
func (s *store) removeFiles(files []doomedFile) {
	for _, d := range files {
		s.removeFile(d)
	}
}

func (s *store) removeFile(d doomedFile) {
	mu := s.pathLock(d.path)
	mu.Lock()
	defer mu.Unlock()
	info, err := os.Lstat(d.path)
	if err != nil || !identityOf(info).sameFile(d.id) {
		return
	}
	_ = os.Remove(d.path)
}

// forget drops the entry snapshot e from the index, if it is still
// current, without touching the cache directory: for an entry whose file
// is already gone.
func (s *store) forget(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.currentLocked(e.meta.Key, e.gen); ok {
		s.removeLocked(e.meta.Key)
	}
}

// markKnown records that the entry snapshot e's file, with identity id,
// passed a check of every block.
func (s *store) markKnown(e *entry, id fileIdentity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.currentLocked(e.meta.Key, e.gen); ok {
		cur.known, cur.verifiedAt = id, time.Now()
	}
}

// discardCorrupt removes the entry snapshot e, whose file failed a check,
// with the warning an operator needs: a disk that corrupts files corrupts
// other things too.
func (s *store) discardCorrupt(e *entry, cause error) {
	s.logger.Warn("removing corrupt cache entry", zap.String("file", e.path), zap.Error(cause))
	s.mu.Lock()
	s.stats.removedCorrupt++
	_, ok := s.currentLocked(e.meta.Key, e.gen)
	if ok {
		s.removeLocked(e.meta.Key)
	}
	s.mu.Unlock()
	if ok {
		s.removeFile(doomedOf(e))
	}
}

// discardCorruptFile removes a file that failed its checks before it was
// indexed (at load, or probed), if it is still the file that failed.
func (s *store) discardCorruptFile(path string, id fileIdentity, cause error) {
	s.logger.Warn("removing corrupt cache entry", zap.String("file", path), zap.Error(cause))
	s.mu.Lock()
	s.stats.removedCorrupt++
	s.mu.Unlock()
	s.removeFile(doomedFile{path: path, id: id})
}

// refresh extends an entry's freshness after S3 answered 304 Not Modified,
// and returns the refreshed snapshot. The header is rewritten under the
// path's stripe, not the global lock.
func (s *store) refresh(key string, storedAt, expiresAt time.Time) (entry, error) {
	s.mu.Lock()
	e, ok := s.entries[key]
	if !ok {
		s.mu.Unlock()
		return entry{}, errors.New("entry vanished before its refresh")
	}
	m, path, gen := e.meta, e.path, e.gen
	s.mu.Unlock()

	m.storedAt, m.expiresAt = storedAt, expiresAt
	mu := s.pathLock(path)
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	_, ok = s.currentLocked(key, gen)
	s.mu.Unlock()
	if !ok {
		return entry{}, errors.New("entry replaced before its refresh")
	}
	if err := rewriteFixedHeader(path, &m); err != nil {
		return entry{}, fmt.Errorf("updating entry header: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.currentLocked(key, gen)
	if !ok {
		return entry{}, errors.New("entry replaced during its refresh")
	}
	cur.meta.storedAt, cur.meta.expiresAt = storedAt, expiresAt
	return *cur, nil
}

// diskUsage is what an entry with the given header and the given slices
// present takes on disk, in whole blocks of bodyAlign bytes: the header
// region, and each slice (slices of a multi-slice body start on a block
// boundary; a one-slice body shares the header's last block).
func diskUsage(m *entryMeta, slicesPresent []bool) int64 {
	roundUp := func(n int64) int64 { return (n + bodyAlign - 1) / bodyAlign * bodyAlign }
	if m.sliceCount() <= 1 {
		n := m.bodyOffset()
		if len(slicesPresent) == 1 && slicesPresent[0] {
			n += m.bodyLen
		}
		return roundUp(n)
	}
	total := roundUp(m.bodyOffset())
	for k, ok := range slicesPresent {
		if ok {
			_, n := m.sliceSpan(int64(k))
			total += roundUp(n)
		}
	}
	return total
}

// sliceUsage is what slice k adds to an entry's disk usage once present.
func sliceUsage(m *entryMeta, k int64) int64 {
	if m.sliceCount() <= 1 {
		return diskUsage(m, []bool{true}) - diskUsage(m, []bool{false})
	}
	_, n := m.sliceSpan(k)
	return (n + bodyAlign - 1) / bodyAlign * bodyAlign
}

// reserve promises n disk bytes to a fill, evicting least-recently-used
// entries so that used plus promised bytes stay under max_size. It fails
// when that cannot be done (the space is promised to other fills, or the
// entries left are pinned by fills): the caller then serves the bytes
// without storing them.
func (s *store) reserve(n int64) bool {
	s.mu.Lock()
	if n > s.limits.maxBytes {
		s.mu.Unlock()
		return false
	}
	doomed := s.evictUntilUnderLocked(n)
	ok := s.used+s.reserved+n <= s.limits.maxBytes
	if ok {
		s.reserved += n
	}
	s.mu.Unlock()
	s.removeFiles(doomed)
	return ok
}

func (s *store) unreserve(n int64) {
	s.mu.Lock()
	s.reserved -= n
	s.mu.Unlock()
}

// maxPinnedSkips bounds how many pinned entries one eviction pass steps
// over before it gives up: pinned entries are being filled, so they are
// recently used and rarely near the back of the list.
const maxPinnedSkips = 64

// evictUntilUnderLocked drops least-recently-used entries until used plus
// promised plus extra bytes fit under max_size, and returns their files,
// which the caller removes with removeFiles once the lock is released.
func (s *store) evictUntilUnderLocked(extra int64) []doomedFile {
	var doomed []doomedFile
	skips := 0
	for back := s.lru.Back(); back != nil && s.used+s.reserved+extra > s.limits.maxBytes; {
		e := back.Value.(*entry)
		back = back.Prev()
		if e.pins > 0 {
			if skips++; skips > maxPinnedSkips {
				break
			}
			continue
		}
		if _, ok := s.removeLocked(e.meta.Key); ok {
			doomed = append(doomed, doomedOf(e))
			s.stats.evictions++
		}
	}
	return doomed
}

// errPurged stops storing anything more of a fill whose key was purged
// while it ran: its bytes predate the purge.
var errPurged = errors.New("purged while being fetched")

// createEntry indexes a new entry for the fill f, described by m with no
// slice present yet (m's metadata length and checksum are set here), and
// returns its file open for reading and writing.
// The file is written in the temp directory at its full size (a hole where
// the body will be) and renamed into place, under the path's stripe, so
// its name never shows a half-written header. A previous entry of the key
// is replaced.
func (s *store) createEntry(f *fill, m *entryMeta) (*os.File, uint64, error) {
	start, err := encodeEntryStart(m)
	if err != nil {
		return nil, 0, err
	}
	usage := diskUsage(m, make([]bool, m.sliceCount()))
	if !s.reserve(usage) {
		return nil, 0, errNoRoom
	}
	file, gen, err := s.writeEntryFile(f, m, start, usage)
	if err != nil {
		s.unreserve(usage)
	}
	return file, gen, err
}

// errNoRoom: max_size cannot make room for what is to be stored.
var errNoRoom = errors.New("no room in the cache under max_size")

func (s *store) writeEntryFile(f *fill, m *entryMeta, start []byte, usage int64) (*os.File, uint64, error) {
	tmp, err := os.CreateTemp(s.tmpDir, "entry-*")
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errCacheWrite, err)
	}
	fail := func(err error) (*os.File, uint64, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, 0, fmt.Errorf("%w: %w", errCacheWrite, err)
	}
	if _, err := tmp.WriteAt(start, 0); err != nil {
		return fail(err)
	}
	if err := tmp.Truncate(m.fileSize()); err != nil {
		return fail(err)
	}
	info, err := tmp.Stat()
	if err != nil {
		return fail(err)
	}
	path := s.entryPath(m.Key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fail(err)
	}

	mu := s.pathLock(path)
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	if f.isDetached() {
		s.mu.Unlock()
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, 0, errPurged
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		s.mu.Unlock()
		return fail(err)
	}
	s.reserved -= usage
	complete := m.bodyLen == 0
	e := s.insertLocked(m.Key, path, *m, complete, usage, identityOf(info), time.Now())
	e.pins++
	if complete {
		e.known, e.verifiedAt = identityOf(info), time.Now()
	}
	gen := e.gen
	s.mu.Unlock()
	return tmp, gen, nil
}

// sliceStored turns the bytes reserved for a slice of the entry gen of
// key, now on disk, into bytes it uses. If that entry has left the index
// meanwhile, the reservation is simply dropped.
func (s *store) sliceStored(key string, gen uint64, usage int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved -= usage
	if e, ok := s.currentLocked(key, gen); ok {
		e.diskBytes += usage
		s.used += usage
	}
}

// markComplete records that every slice of the entry gen of key is on
// disk and passed its checks, as a file with identity id; hits read it
// directly from now on.
func (s *store) markComplete(key string, gen uint64, crcs []uint32, id fileIdentity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.currentLocked(key, gen)
	if !ok || e.complete {
		return
	}
	e.complete = true
	s.stats.partial--
	e.meta.blockCRCs = crcs
	e.known, e.verifiedAt = id, time.Now()
}

// unpin ends a fill's hold on the entry gen of key.
func (s *store) unpin(key string, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.currentLocked(key, gen); ok && e.pins > 0 {
		e.pins--
	}
}

// purge removes the entry of key and detaches its fill in flight, if any,
// so that nothing more of it is stored and the next request fetches the
// object afresh. Readers already streaming from the fill finish.
func (s *store) purge(key string) (removed bool) {
	s.mu.Lock()
	e, ok := s.removeLocked(key)
	delete(s.passes, key)
	if f, inFlight := s.fills[key]; inFlight {
		delete(s.fills, key)
		f.detach()
		removed = true
	}
	s.stats.purges++
	s.mu.Unlock()
	if ok {
		s.removeFile(doomedOf(e))
		removed = true
	}
	return removed
}

// purgePrefix purges every entry and fill whose key starts with prefix,
// and returns how many there were.
func (s *store) purgePrefix(prefix string) int {
	s.mu.Lock()
	var keys []string
	for key := range s.entries {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	for key := range s.fills {
		if _, indexed := s.entries[key]; !indexed && strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, key := range keys {
		if s.purge(key) {
			n++
		}
	}
	return n
}

// maxPasses bounds the keys remembered as uncacheable: a scan of
// uncacheable keys must not grow memory without bound.
const maxPasses = 4096

// markPass remembers key as uncacheable until until.
func (s *store) markPass(key string, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.passes) >= maxPasses {
		now := time.Now()
		for k, t := range s.passes {
			if t.Before(now) || len(s.passes) >= maxPasses {
				delete(s.passes, k)
			}
		}
	}
	s.passes[key] = until
}

// passing reports whether key was found uncacheable lately: its requests
// go straight to S3.
func (s *store) passing(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.passes[key]
	if ok && !now.Before(until) {
		delete(s.passes, key)
		ok = false
	}
	return ok
}
