package s3cache

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The index of entries, and the life of an entry and of its file: created
// by a fill, its slices recorded, refreshed, purged, evicted, or dropped
// when it fails its checks.

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
	// negative: a snapshot of a negative entry (negatives.go).
	negative bool
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
	if n, ok := s.negatives.byKey[key]; ok {
		s.mu.Unlock()
		return n.asEntry(), true
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
	s.removeLocked(key)
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
	if n, ok := s.negatives.byKey[key]; ok {
		s.removeNegativeLocked(n)
		snapshot := n.asEntry()
		return &snapshot, true
	}
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

// peekLocked returns a snapshot of the index entry of key, negative or
// not, without marking it used.
func (s *store) peekLocked(key string) (entry, bool) {
	if e, ok := s.entries[key]; ok {
		return *e, true
	}
	if n, ok := s.negatives.byKey[key]; ok {
		return n.asEntry(), true
	}
	return entry{}, false
}

// currentLocked returns the index entry of the snapshot e if it is still
// the current one for its key.
func (s *store) currentLocked(key string, gen uint64) (*entry, bool) {
	e, ok := s.entries[key]
	// (A negative entry has nothing a snapshot's holder may update.)
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
	if d.path == "" {
		return // a negative entry: no file
	}
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
	if err := s.makeDirs(path); err != nil {
		return fail(err)
	}

	// The stripe keeps purges and evictions of this path out while the
	// file is renamed into place and indexed; the rename itself is done
	// without the global lock.
	mu := s.pathLock(path)
	mu.Lock()
	defer mu.Unlock()
	if f.isDetached() {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, 0, errPurged
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail(err)
	}
	s.mu.Lock()
	if f.isDetached() {
		// Purged while the file was renamed: the purge could not know
		// of it, so it goes here.
		s.mu.Unlock()
		tmp.Close()
		os.Remove(path)
		return nil, 0, errPurged
	}
	s.reserved -= usage
	complete := m.bodyLen == 0
	e := s.insertLocked(m.Key, path, *m, complete, usage, identityOf(info), time.Now())
	e.pins++
	if complete {
		e.known, e.verifiedAt = identityOf(info), time.Now()
	}
	gen := e.gen
	doomed := s.trimLocked()
	s.mu.Unlock()
	s.removeFiles(doomed)
	return tmp, gen, nil
}

// makeDirs creates the level directories of an entry path that are not
// there yet. Like nginx's, they are never removed; the disk each takes
// counts against max_size from its creation, so a scan of distinct keys
// cannot grow the directory tree past it.
func (s *store) makeDirs(path string) error {
	var dirs []string
	for dir := filepath.Dir(path); dir != s.dir && len(dirs) <= len(s.levels); dir = filepath.Dir(dir) {
		dirs = append(dirs, dir)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		err := os.Mkdir(dirs[i], 0o700)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if info, err := os.Stat(dirs[i]); err == nil {
			s.mu.Lock()
			s.dirBytes += allocated(info)
			s.mu.Unlock()
		}
	}
	return nil
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
	if ok || removed {
		s.stats.purges++
	}
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
	for key := range s.negatives.byKey {
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
