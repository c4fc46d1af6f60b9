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
// nginx's proxy_cache_path, and an in-memory index of them with an LRU
// list. Entries are only ever created by renaming a complete temp file, so
// a reader or a crash never sees a partial entry under its final name.
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
	wg            sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	limits   storeLimits
	entries  map[string]*entry  // by cache key
	lru      list.List          // of *entry; front is most recently used
	used     int64              // bytes of committed entry files
	reserved int64              // bytes promised to fills in flight
	fills    map[string]*fill   // fills in flight, by cache key
	mappings map[keyMapping]int // sites using the store, with a use count
	gen      uint64             // last entry generation handed out
	open     int                // entry files kept open
	maxOpen  int                // bound on open; 0 once the store is destructed
	tmpSeq   uint64
	stats    storeStats

	// Requests answered through this store, for the admin API's hit
	// ratio; atomics, so the hit path does not take the lock for them.
	hits, lookups, s3Errors atomic.Int64
}

// StoreStats is a snapshot of a store, as the admin API reports it.
type StoreStats struct {
	CacheDir       string  `json:"cache_dir"`
	Loaded         bool    `json:"index_loaded"`
	Entries        int     `json:"entries"`
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
	st.Evictions, st.Purges, st.CorruptRemoved = s.stats.evictions, s.stats.purges, s.stats.removedCorrupt
	st.FillsInFlight = len(s.fills)
	for _, f := range s.fills {
		f.mu.Lock()
		st.FillWaiters += f.refs - 1 // all but the writer
		f.mu.Unlock()
	}
	s.mu.Unlock()
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
}

// entry is one committed cache entry. Its fields are guarded by store.mu.
type entry struct {
	meta     entryMeta
	path     string
	lastUsed time.Time
	elem     *list.Element
	gen      uint64    // tells this entry from a later one for the same key
	file     *openFile // the file kept open for hits, or nil
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

// unlinked reports whether the file behind an open descriptor has no name
// left: someone removed it from the cache directory by hand (rm -rf to
// clear the cache). A descriptor kept open would go on serving it, and its
// disk space would stay in use, until the entry is evicted.
func unlinked(info fs.FileInfo) bool {
	st, ok := info.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}

// forget drops the entry snapshot e from the index, if it is still
// current, without touching the cache directory: for an entry whose file
// is already gone.
func (s *store) forget(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.entries[e.meta.Key]; ok && cur.gen == e.gen {
		s.removeLocked(e.meta.Key)
	}
}

// openFile is an entry file kept open for its hits. Bodies are read with
// pread, so one descriptor serves any number of concurrent requests, and
// a hit costs no open or close. Its fields are guarded by store.mu.
type openFile struct {
	f       *os.File
	users   int  // requests reading it now
	doomed  bool // its entry is gone: close when the last user is done
	counted bool // counts against maxOpenFiles
}

// markKnown records that the entry snapshot e's file, with identity id,
// passed a check of every block.
func (s *store) markKnown(e *entry, id fileIdentity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.entries[e.meta.Key]; ok && cur.gen == e.gen {
		cur.known, cur.verifiedAt = id, time.Now()
	}
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
	// Temp files are fills that were in flight when the process died:
	// none of them is complete, by construction. Failing to remove them
	// (a cache_dir mounted read-only) is not a reason to refuse the
	// config: they are never read, and with nothing writable the cache
	// serves what it has and passes the rest through from S3.
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
		maxOpen:       maxOpenEntryFiles(),
	}
	s.wg.Add(2)
	go s.load()
	go s.manage()
	return s, nil
}

// Destruct stops the store's goroutines when the last config using it is
// gone. Entries stay on disk for the next start.
func (s *store) Destruct() error {
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
	h := hashKey(key)
	parts := []string{s.dir}
	end := len(h)
	for _, n := range s.levels {
		parts = append(parts, h[end-n:end])
		end -= n
	}
	return filepath.Join(append(parts, h)...)
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

// probe indexes the entry file of key, if there is a valid one.
func (s *store) probe(key string, now time.Time) (entry, bool) {
	path := s.entryPath(key)
	m, info, err := readEntryFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.discardCorrupt(path, err)
		}
		return entry{}, false
	}
	if m.Key != key {
		return entry{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[key]; ok { // the loader got there first
		return *e, true
	}
	e := s.insertLocked(key, path, m, info.Size(), now)
	return *e, true
}

// readEntryFile opens an entry file and checks its header and size.
func readEntryFile(path string) (entryMeta, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return entryMeta{}, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return entryMeta{}, nil, err
	}
	m, err := readEntryHeader(f)
	if err != nil {
		return m, info, err
	}
	if info.Size() != m.fileSize() {
		return m, info, fmt.Errorf("%w: file is %d bytes, header says %d", errCorruptEntry, info.Size(), m.fileSize())
	}
	return m, info, readBlockTable(f, &m)
}

// insertLocked adds or replaces the index entry for key.
func (s *store) insertLocked(key, path string, m entryMeta, size int64, lastUsed time.Time) *entry {
	if old, ok := s.entries[key]; ok {
		s.used -= old.meta.fileSize()
		s.lru.Remove(old.elem)
		s.doomFileLocked(old)
	}
	m.lengthStr = strconv.FormatInt(m.bodyLen, 10)
	s.gen++
	e := &entry{meta: m, path: path, lastUsed: lastUsed, gen: s.gen}
	e.elem = s.lru.PushFront(e)
	s.entries[key] = e
	s.used += size
	return e
}

// removeLocked drops key from the index and returns its file to delete.
func (s *store) removeLocked(key string) (string, bool) {
	e, ok := s.entries[key]
	if !ok {
		return "", false
	}
	delete(s.entries, key)
	s.lru.Remove(e.elem)
	s.used -= e.meta.fileSize()
	s.doomFileLocked(e)
	return e.path, true
}

// doomFileLocked closes the open file of an entry leaving the index, now
// or when its last reader is done, and its spare descriptors.
func (s *store) doomFileLocked(e *entry) {
	for _, f := range e.spares {
		f.Close()
		s.open--
	}
	e.spares = nil
	if e.file == nil {
		return
	}
	e.file.doomed = true
	if e.file.users == 0 {
		s.closeFileLocked(e.file)
	}
	e.file = nil
}

func (s *store) closeFileLocked(of *openFile) {
	of.f.Close()
	if of.counted {
		s.open--
		of.counted = false
	}
}

// adoptFile keeps f open for the hits of the entry snapshot e, if that
// entry is still current and the bound on open files allows; the returned
// openFile has the caller as a user either way.
func (s *store) adoptFile(e *entry, f *os.File) *openFile {
	of := &openFile{f: f, users: 1}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.entries[e.meta.Key]
	if ok && cur.gen == e.gen && cur.file == nil && s.open < s.maxOpen {
		cur.file, of.counted = of, true
		s.open++
	} else {
		of.doomed = true // private to this request
	}
	return of
}

// acquireFile returns the open file of the entry snapshot e, with the
// caller as a user, or nil if the entry has none (or is no longer current).
func (s *store) acquireFile(e *entry) *openFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.entries[e.meta.Key]
	if !ok || cur.gen != e.gen || cur.file == nil {
		return nil
	}
	cur.file.users++
	return cur.file
}

// releaseFile ends a request's use of an open entry file.
func (s *store) releaseFile(of *openFile) {
	s.mu.Lock()
	of.users--
	if of.users == 0 && of.doomed {
		s.closeFileLocked(of)
	}
	s.mu.Unlock()
}

// maxSparesPerEntry bounds the idle descriptors pooled for one entry's
// sendfile hits. A hit holds its descriptor only while its body goes to
// the socket, so even a hot object rarely has more than a few in use.
const maxSparesPerEntry = 8

// takeSpare returns an idle descriptor of the entry snapshot e's file for
// one sendfile hit, or nil if there is none or e is no longer current. The
// caller owns it until putSpare. Its offset is wherever the last hit left
// it: the caller seeks.
func (s *store) takeSpare(e *entry) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.entries[e.meta.Key]
	if !ok || cur.gen != e.gen || len(cur.spares) == 0 {
		return nil
	}
	f := cur.spares[len(cur.spares)-1]
	cur.spares[len(cur.spares)-1] = nil
	cur.spares = cur.spares[:len(cur.spares)-1]
	s.open--
	return f
}

// putSpare gives back a descriptor of the entry snapshot e's file after a
// hit that found the file sound. It is kept for the next hit if e is still
// current and the bounds allow, and closed otherwise.
func (s *store) putSpare(e *entry, f *os.File) {
	s.mu.Lock()
	cur, ok := s.entries[e.meta.Key]
	if ok && cur.gen == e.gen && len(cur.spares) < maxSparesPerEntry && s.open < s.maxOpen {
		cur.spares = append(cur.spares, f)
		s.open++
		f = nil
	}
	s.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// maxOpenEntryFiles bounds the entry files kept open: a quarter of the
// process's descriptor limit (Go raises the soft limit to the hard one at
// startup), at most 8192, so sockets always have room.
func maxOpenEntryFiles() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 256
	}
	return int(min(8192, lim.Cur/4))
}

// remove drops an entry, for a purge or a corrupt file found while serving.
func (s *store) remove(key string) bool {
	s.mu.Lock()
	path, ok := s.removeLocked(key)
	if ok {
		// Under the lock: a fill committing the same key renames its
		// file to the same path, and must not lose it to this remove.
		_ = os.Remove(path)
	}
	s.mu.Unlock()
	return ok
}

// discardCorrupt removes a bad entry file, with the warning an operator
// needs: a disk that corrupts files corrupts other things too.
func (s *store) discardCorrupt(path string, cause error) {
	s.logger.Warn("removing corrupt cache entry", zap.String("file", path), zap.Error(cause))
	s.mu.Lock()
	s.stats.removedCorrupt++
	for key, e := range s.entries {
		if e.path == path {
			s.removeLocked(key)
			break
		}
	}
	_ = os.Remove(path)
	s.mu.Unlock()
}

// refresh extends an entry's freshness after S3 answered 304 Not Modified.
func (s *store) refresh(key string, storedAt, expiresAt time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return fmt.Errorf("entry vanished before its refresh")
	}
	m := e.meta
	m.storedAt, m.expiresAt = storedAt, expiresAt
	if err := rewriteFixedHeader(e.path, &m); err != nil {
		return fmt.Errorf("updating entry header: %w", err)
	}
	e.meta = m
	return nil
}

// reserve promises n bytes to a fill, evicting least-recently-used entries
// so that committed plus promised bytes stay under max_size. It fails when
// that cannot be done (the object is larger than the cache, or the space is
// all promised to other fills): the caller then streams without storing.
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

// evictUntilUnderLocked drops least-recently-used entries until committed
// plus promised plus extra bytes fit under max_size, and returns their
// files, which the caller removes with removeFiles. The files are renamed
// away under the lock, so that a fill committing the same key afterwards
// cannot have its new file deleted by this eviction.
func (s *store) evictUntilUnderLocked(extra int64) []string {
	var doomed []string
	for s.used+s.reserved+extra > s.limits.maxBytes {
		back := s.lru.Back()
		if back == nil {
			break
		}
		e := back.Value.(*entry)
		if path, ok := s.removeLocked(e.meta.Key); ok {
			doomed = append(doomed, s.condemnLocked(path))
			s.stats.evictions++
		}
	}
	return doomed
}

// condemnLocked moves an entry file into the temp directory under a unique
// name, so it can be unlinked outside the lock. A rename is much cheaper
// than an unlink of a large file, which frees its blocks.
func (s *store) condemnLocked(path string) string {
	s.tmpSeq++
	dst := filepath.Join(s.tmpDir, "evicted-"+strconv.FormatUint(s.tmpSeq, 10))
	if err := os.Rename(path, dst); err != nil {
		_ = os.Remove(path)
		return ""
	}
	return dst
}

func (s *store) removeFiles(paths []string) {
	for _, p := range paths {
		if p != "" {
			_ = os.Remove(p)
		}
	}
}

// newTempFile creates a temp file for a fill, in the cache's filesystem so
// that committing it is a rename.
func (s *store) newTempFile() (*os.File, error) {
	return os.CreateTemp(s.tmpDir, "fill-*")
}

// errPurged is returned by commit for a fill whose key was purged while
// it ran: its bytes predate the purge and must not be stored.
var errPurged = errors.New("purged while being fetched")

// commit moves the complete temp file of fill f into place, indexes it,
// turns the bytes reserved for it into used bytes and unregisters the fill,
// all under one lock: a request finds either the fill or the entry, and the
// size bound is never counted twice. It is the only way an entry is
// created.
func (s *store) commit(f *fill, tmpPath string, m entryMeta, id fileIdentity, reserved int64) error {
	path := s.entryPath(m.Key)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating entry directory: %w", err)
	}
	s.mu.Lock()
	if f.purged {
		s.mu.Unlock()
		return errPurged
	}
	if err := os.Rename(tmpPath, path); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("committing entry: %w", err)
	}
	s.reserved -= reserved
	if s.fills[f.key] == f {
		delete(s.fills, f.key)
	}
	e := s.insertLocked(m.Key, path, m, m.fileSize(), time.Now())
	e.known, e.verifiedAt = id, time.Now() // written and checksummed by this process
	doomed := s.evictUntilUnderLocked(0)
	s.mu.Unlock()
	s.removeFiles(doomed)
	return nil
}

// purge removes the entry of key and detaches its fill in flight, if any,
// so that the fill's bytes are never stored and the next request fetches
// the object afresh. Readers already streaming from the fill finish.
func (s *store) purge(key string) (removed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if path, ok := s.removeLocked(key); ok {
		_ = os.Remove(path)
		removed = true
	}
	if f, ok := s.fills[key]; ok {
		f.purged = true
		delete(s.fills, key)
		removed = true
	}
	s.stats.purges++
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
		if strings.HasPrefix(key, prefix) {
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

// load is nginx's cache loader: it indexes every entry file in the
// directory, in the background, while requests are served (and probe
// indexes the keys they ask for first). Files that fail their checks are
// removed.
func (s *store) load() {
	defer s.wg.Done()
	defer close(s.loaded)
	start := time.Now()
	err := filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		if err != nil {
			return nil // unreadable subdirectory: skip it, keep loading
		}
		if d.IsDir() {
			if path == s.tmpDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !isEntryName(d.Name()) {
			return nil
		}
		s.loadFile(path)
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		s.logger.Warn("cache loader stopped early", zap.Error(err))
	}
	s.mu.Lock()
	n, used := len(s.entries), s.used
	doomed := s.evictUntilUnderLocked(0)
	s.mu.Unlock()
	s.removeFiles(doomed)
	s.logger.Info("cache index loaded", zap.Int("entries", n), zap.Int64("bytes", used), zap.Duration("took", time.Since(start)))
}

func (s *store) loadFile(path string) {
	m, info, err := readEntryFile(path)
	if err != nil {
		s.discardCorrupt(path, err)
		return
	}
	if s.entryPath(m.Key) != path {
		// A file from another levels layout, or renamed by hand.
		s.discardCorrupt(path, fmt.Errorf("%w: file name does not match its key", errCorruptEntry))
		return
	}
	s.mu.Lock()
	if _, ok := s.entries[m.Key]; !ok {
		// Last use is not on disk (a hit writes nothing), so a loaded
		// entry counts as used now, as in nginx's loader: a restart
		// must not evict everything stored more than inactive ago.
		s.insertLocked(m.Key, path, m, info.Size(), time.Now())
		s.stats.loadedEntries++
	}
	s.mu.Unlock()
}

func isEntryName(name string) bool {
	if len(name) != 64 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// manage is nginx's cache manager: it evicts entries unused for longer
// than inactive, and entries in LRU order while the disk has less free
// space than min_free.
func (s *store) manage() {
	defer s.wg.Done()
	timer := time.NewTimer(s.managerInterval())
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.limitsChanged:
			// A reload changed inactive: run now, on the new schedule.
		case <-timer.C:
		}
		s.evictInactive(time.Now())
		s.keepMinFree()
		timer.Reset(s.managerInterval())
	}
}

// managerInterval is how often the manager runs: every 10s, or more often
// for a short inactive, so an entry outlives it by at most a quarter.
func (s *store) managerInterval() time.Duration {
	s.mu.Lock()
	inactive := s.limits.inactiveFor
	s.mu.Unlock()
	return min(10*time.Second, max(inactive/4, 250*time.Millisecond))
}

func (s *store) evictInactive(now time.Time) {
	var doomed []string
	s.mu.Lock()
	if s.limits.inactiveFor > 0 {
		for back := s.lru.Back(); back != nil; back = s.lru.Back() {
			e := back.Value.(*entry)
			if now.Sub(e.lastUsed) < s.limits.inactiveFor {
				break
			}
			if path, ok := s.removeLocked(e.meta.Key); ok {
				doomed = append(doomed, s.condemnLocked(path))
				s.stats.evictions++
			}
		}
	}
	s.mu.Unlock()
	s.removeFiles(doomed)
}

func (s *store) keepMinFree() {
	s.mu.Lock()
	minFree := s.limits.minFreeBytes
	s.mu.Unlock()
	if minFree <= 0 {
		return
	}
	for range 1000 { // bounded: at most 1000 evictions per tick
		free, err := diskFree(s.dir)
		if err != nil || free >= minFree {
			return
		}
		s.mu.Lock()
		back := s.lru.Back()
		var doomed []string
		if back != nil {
			if path, ok := s.removeLocked(back.Value.(*entry).meta.Key); ok {
				doomed = append(doomed, s.condemnLocked(path))
				s.stats.evictions++
			}
		}
		s.mu.Unlock()
		if back == nil {
			return
		}
		s.removeFiles(doomed)
	}
}

// clearDir removes everything inside dir.
func clearDir(dir string) error {
	names, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(dir, n.Name())); err != nil {
			return err
		}
	}
	return nil
}

// ParseLevels reads nginx's levels syntax: one to three numbers, each 1 or
// 2, separated by colons. The Caddyfile parser uses it to report a bad
// value with its line.
func ParseLevels(s string) ([]int, error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return nil, fmt.Errorf("levels %q: at most three levels", s)
	}
	levels := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 2 {
			return nil, fmt.Errorf("levels %q: each level is 1 or 2, as in 1:2", s)
		}
		levels = append(levels, n)
	}
	return levels, nil
}

func formatLevels(levels []int) string {
	parts := make([]string, len(levels))
	for i, n := range levels {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ":")
}

func equalLevels(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
