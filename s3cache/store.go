package s3cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
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
	maxEntries   int
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

	mu        sync.Mutex // guards the fields below
	limits    storeLimits
	entries   map[string]*entry  // by cache key
	lru       list.List          // of *entry with a file; front is most recently used
	negatives negatives          // S3's 404s, in memory only
	dirBytes  int64              // disk taken by the level directories
	used      int64              // disk bytes of indexed entries
	reserved  int64              // disk bytes promised to slices being fetched and entries being created
	fills     map[string]*fill   // fills in flight, by cache key
	mappings  map[keyMapping]int // sites using the store, with a use count
	claims    []limitsClaim      // what each site using the store asked of it
	// passes are keys found uncacheable, with when to try them again.
	passes  map[string]time.Time
	gen     uint64 // last entry generation handed out
	open    int    // entry files kept open
	maxOpen int    // bound on open; 0 once the store is destructed
	stats   storeStats

	// Requests answered by the handlers using this store, for the admin
	// API: every media request (as requests_total counts them), those
	// answered without the cache (local files, refused methods), hits,
	// S3 failures, and cache-buster or admin purge requests. Atomics, so
	// the hit path does not take the lock for them.
	requests, bypassed, hits, s3Errors, purgeRequests atomic.Int64
}

// StoreStats is a snapshot of a store, as the admin API reports it.
type StoreStats struct {
	CacheDir        string `json:"cache_dir"`
	Loaded          bool   `json:"index_loaded"`
	Entries         int    `json:"entries"`
	PartialEntries  int    `json:"partial_entries"`
	NegativeEntries int    `json:"negative_entries"`
	MaxEntries      int    `json:"max_entries"`
	Bytes           int64  `json:"bytes"`
	MaxBytes        int64  `json:"max_bytes"`
	ReservedBytes   int64  `json:"reserved_bytes"`
	FillsInFlight   int    `json:"fills_in_flight"`
	FillWaiters     int    `json:"fill_waiters"`
	// Requests are the media requests answered, as requests_total counts
	// them (purge requests aside); Bypassed, those of them answered
	// without the cache (local files, refused methods).
	Requests int64 `json:"requests"`
	Bypassed int64 `json:"bypassed"`
	Hits     int64 `json:"hits"`
	// HitRatio is Hits over the requests that went through the cache.
	HitRatio float64 `json:"hit_ratio"`
	S3Errors int64   `json:"s3_errors"`
	// Evictions and Purges count entries removed (a purge of a prefix
	// may remove many); PurgeRequests, the purges asked for, by the
	// cache buster or the admin API, whether or not they found anything.
	Evictions      int64 `json:"evictions"`
	Purges         int64 `json:"purges"`
	PurgeRequests  int64 `json:"purge_requests"`
	CorruptRemoved int64 `json:"corrupt_removed"`
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
	st.Entries, st.Bytes, st.MaxBytes, st.ReservedBytes = len(s.entries), s.used+s.dirBytes, s.limits.maxBytes, s.reserved
	st.PartialEntries, st.NegativeEntries, st.MaxEntries = s.stats.partial, len(s.negatives.byKey), s.limits.maxEntries
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
	st.Requests, st.Bypassed, st.Hits = s.requests.Load(), s.bypassed.Load(), s.hits.Load()
	st.S3Errors, st.PurgeRequests = s.s3Errors.Load(), s.purgeRequests.Load()
	if cached := st.Requests - st.Bypassed; cached > 0 {
		st.HitRatio = float64(st.Hits) / float64(cached)
	}
	return st
}

// countRequest records the X-Cache-Status of a media request answered by
// a handler using the store, as metrics.countRequest does: a request
// answered without one (a malformed path, say) is in neither.
func (s *store) countRequest(cacheStatus string) {
	switch cacheStatus {
	case "":
		return
	case cacheBypass:
		s.bypassed.Add(1)
	case cacheHit:
		s.hits.Add(1)
	}
	s.requests.Add(1)
}

// storeStats are counters for the admin API and metrics.
type storeStats struct {
	purges         int64
	evictions      int64
	loadedEntries  int64
	removedCorrupt int64
	partial        int // entries indexed that are not complete
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
	if loaded && !equalLevels(s.levels, levels) {
		stores.Delete(dir)
		return nil, fmt.Errorf("cache_dir %s is already in use with levels %s; a different levels needs an empty directory", dir, formatLevels(s.levels))
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
		negatives:     negatives{byKey: make(map[string]*negativeEntry)},
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
