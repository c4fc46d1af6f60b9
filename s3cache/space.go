package s3cache

// max_size: what entries take on disk, what fills reserve before they
// write, and eviction in LRU order to stay under it.

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
	ok := s.diskLocked()+n <= s.limits.maxBytes
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

// diskLocked is the disk counted against max_size: entry files, the
// space promised to fills, and the level directories.
func (s *store) diskLocked() int64 {
	return s.used + s.reserved + s.dirBytes
}

// evictUntilUnderLocked drops least-recently-used entries until used plus
// promised plus extra bytes fit under max_size, and returns their files,
// which the caller removes with removeFiles once the lock is released.
func (s *store) evictUntilUnderLocked(extra int64) []doomedFile {
	return s.evictLocked(func() bool { return s.diskLocked()+extra > s.limits.maxBytes })
}

// trimLocked drops entries while the index holds more than max_entries:
// negative entries first, then the least recently used ones. It returns
// the files to remove once the lock is released.
func (s *store) trimLocked() []doomedFile {
	over := func() bool { return len(s.entries)+len(s.negatives.byKey) > s.limits.maxEntries }
	for over() {
		last := s.negatives.lru.Back()
		if last == nil {
			break
		}
		s.removeNegativeLocked(last.Value.(*negativeEntry))
	}
	return s.evictLocked(over)
}

// evictLocked drops least-recently-used entries while over reports the
// store past a limit, passing over pinned ones (at most maxPinnedSkips of
// them), and returns their files for the caller to remove once the lock
// is released.
func (s *store) evictLocked(over func() bool) []doomedFile {
	var doomed []doomedFile
	skips := 0
	for back := s.lru.Back(); back != nil && over(); {
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
