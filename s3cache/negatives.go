package s3cache

import (
	"container/list"
	"net/http"
	"time"
)

// Negative entries: S3's answer that an object does not exist (a 404, or
// the 403 that means the same), kept in memory only, for valid 404. They
// are a scan's whole footprint, so they are made small (a key and two
// times, no entry file, no metadata) and kept apart from the entries with
// a body: capped at a quarter of max_entries, evicted first when the index
// is full, and dropped as soon as they expire.

// negativeEntry is one negative answer.
type negativeEntry struct {
	key       string
	gen       uint64
	storedAt  int64 // Unix nanoseconds
	expiresAt int64
	elem      *list.Element // in store.negativeLRU
}

// negatives is the store's set of negative entries; its fields are
// guarded by store.mu.
type negatives struct {
	byKey map[string]*negativeEntry
	lru   list.List // of *negativeEntry; front is newest
}

// asEntry is n as a snapshot of the index, the form requests work on.
func (n *negativeEntry) asEntry() entry {
	return entry{
		meta: entryMeta{
			Key:       n.key,
			Status:    http.StatusNotFound,
			storedAt:  time.Unix(0, n.storedAt),
			expiresAt: time.Unix(0, n.expiresAt),
		},
		gen:      n.gen,
		complete: true,
		negative: true,
	}
}

// insertNegativeLocked records that S3 has no object for key, until m's
// expiry, replacing any entry of the key.
func (s *store) insertNegativeLocked(key string, m entryMeta) {
	s.removeLocked(key)
	for s.negatives.lru.Len() > 0 && s.negatives.lru.Len() >= s.maxNegativesLocked() {
		s.removeNegativeLocked(s.negatives.lru.Back().Value.(*negativeEntry))
	}
	s.gen++
	n := &negativeEntry{key: key, gen: s.gen, storedAt: m.storedAt.UnixNano(), expiresAt: m.expiresAt.UnixNano()}
	n.elem = s.negatives.lru.PushFront(n)
	s.negatives.byKey[key] = n
}

func (s *store) removeNegativeLocked(n *negativeEntry) {
	delete(s.negatives.byKey, n.key)
	s.negatives.lru.Remove(n.elem)
}

// maxNegativesLocked is how many negative entries are kept at most: a
// quarter of max_entries.
func (s *store) maxNegativesLocked() int {
	return max(1, s.limits.maxEntries/4)
}

// storeNegative records that S3 has no object for key (see
// insertNegativeLocked).
func (s *store) storeNegative(key string, m entryMeta) {
	s.mu.Lock()
	s.insertNegativeLocked(key, m)
	doomed := s.trimLocked()
	s.mu.Unlock()
	s.removeFiles(doomed)
}

// dropExpiredNegativesLocked removes the negative entries that have
// expired, oldest first, stopping at the first that has not.
func (s *store) dropExpiredNegativesLocked(now time.Time) {
	for back := s.negatives.lru.Back(); back != nil; back = s.negatives.lru.Back() {
		n := back.Value.(*negativeEntry)
		if now.UnixNano() < n.expiresAt {
			return
		}
		s.removeNegativeLocked(n)
	}
}
