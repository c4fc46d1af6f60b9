package s3cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// entryFile is what readEntryFile learns of an entry file.
type entryFile struct {
	meta  entryMeta
	table sliceTable
	id    fileIdentity
	// diskBytes is what the file takes on disk: its blocks as the
	// filesystem counts them, and at least its header and slices. A
	// crash mid-slice leaves blocks that no record claims yet; they
	// count until the entry goes.
	diskBytes int64
}

// readEntryFile opens an entry file and checks its header, size and slice
// table. The identity is returned even on failure, for the removal of a
// bad file.
func readEntryFile(path string) (entryFile, error) {
	var ef entryFile
	f, err := os.Open(path)
	if err != nil {
		return ef, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return ef, err
	}
	ef.id = identityOf(info)
	if ef.meta, err = readEntryHeader(f); err != nil {
		return ef, err
	}
	if info.Size() != ef.meta.fileSize() {
		return ef, fmt.Errorf("%w: file is %d bytes, header says %d", errCorruptEntry, info.Size(), ef.meta.fileSize())
	}
	if ef.table, err = readSliceTable(f, &ef.meta); err != nil {
		return ef, err
	}
	ef.diskBytes = max(diskUsage(&ef.meta, ef.table.present), allocated(info))
	return ef, nil
}

// allocated is the disk a file takes: its blocks, as du counts them.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// indexLocked adds a file found on disk to the index, unless the key is
// indexed already (a fill or the loader got there first).
func (s *store) indexLocked(path string, ef entryFile, now time.Time) *entry {
	if e, ok := s.entries[ef.meta.Key]; ok {
		return e
	}
	complete := ef.table.complete()
	if complete {
		ef.meta.blockCRCs = ef.table.crcs
	}
	// Last use is not on disk (a hit writes nothing), so a loaded entry
	// counts as used now, as in nginx's loader: a restart must not
	// evict everything stored more than inactive ago.
	return s.insertLocked(ef.meta.Key, path, ef.meta, complete, ef.diskBytes, ef.id, now)
}

// probe indexes the entry file of key, if there is a valid one.
func (s *store) probe(key string, now time.Time) (entry, bool) {
	path := s.entryPath(key)
	ef, err := readEntryFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.discardCorruptFile(path, ef.id, err)
		}
		return entry{}, false
	}
	if ef.meta.Key != key || ef.meta.Status != http.StatusOK {
		return entry{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := *s.indexLocked(path, ef, now)
	return e, true
}

// load is nginx's cache loader: it indexes every entry file in the
// directory, in the background, while requests are served (and probe
// indexes the keys they ask for first). Files that fail their checks are
// removed; entries with slices missing are indexed as they are, and their
// missing slices fetched when someone wants them.
func (s *store) load() {
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
			if info, err := d.Info(); err == nil && path != s.dir {
				s.mu.Lock()
				s.dirBytes += allocated(info)
				s.mu.Unlock()
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
	n, partial, used := len(s.entries), s.stats.partial, s.used
	doomed := append(s.evictUntilUnderLocked(0), s.trimLocked()...)
	s.mu.Unlock()
	s.removeFiles(doomed)
	s.logger.Info("cache index loaded", zap.Int("entries", n), zap.Int("partial", partial),
		zap.Int64("bytes", used), zap.Duration("took", time.Since(start)))
}

func (s *store) loadFile(path string) {
	ef, err := readEntryFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) { // removed meanwhile
			s.discardCorruptFile(path, ef.id, err)
		}
		return
	}
	if s.entryPath(ef.meta.Key) != path {
		// A file from another levels layout, or renamed by hand.
		s.discardCorruptFile(path, ef.id, fmt.Errorf("%w: file name does not match its key", errCorruptEntry))
		return
	}
	if ef.meta.Status != http.StatusOK {
		// A negative answer kept on disk by an earlier build: they live
		// in memory now, and a minute at most.
		s.removeFile(doomedFile{path: path, id: ef.id})
		return
	}
	s.mu.Lock()
	if _, ok := s.entries[ef.meta.Key]; !ok {
		s.indexLocked(path, ef, time.Now())
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
	var doomed []doomedFile
	s.mu.Lock()
	// Negative entries go as soon as they expire: a scan of missing
	// keys must not hold memory for inactive.
	s.dropExpiredNegativesLocked(now)
	if s.limits.inactiveFor > 0 {
		for back := s.lru.Back(); back != nil; {
			e := back.Value.(*entry)
			back = back.Prev()
			if now.Sub(e.lastUsed) < s.limits.inactiveFor {
				break
			}
			if e.pins > 0 {
				continue // being filled: in use, whatever its last lookup
			}
			if _, ok := s.removeLocked(e.meta.Key); ok {
				doomed = append(doomed, doomedOf(e))
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
		var victim *entry
		for back := s.lru.Back(); back != nil && victim == nil; back = back.Prev() {
			if e := back.Value.(*entry); e.pins == 0 {
				victim = e
			}
		}
		if victim != nil {
			s.removeLocked(victim.meta.Key)
			s.stats.evictions++
		}
		s.mu.Unlock()
		if victim == nil {
			return
		}
		s.removeFile(doomedOf(victim))
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

// parseLevels reads nginx's levels syntax: one to three numbers, each 1 or
// 2, separated by colons.
func parseLevels(s string) ([]int, error) {
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
