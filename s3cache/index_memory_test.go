package s3cache

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
)

// indexHeap measures the heap n index entries made by add take, per entry.
func indexHeap(t *testing.T, n int, add func(s *store, i int)) float64 {
	t.Helper()
	s := &store{entries: map[string]*entry{}, negatives: negatives{byKey: map[string]*negativeEntry{}}, limits: storeLimits{maxBytes: 1 << 60, maxEntries: 1 << 30}, logger: zap.NewNop()}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s.mu.Lock()
	for i := range n {
		add(s, i)
	}
	s.mu.Unlock()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// TestIndexMemoryPerEntry measures what the index holds per entry, the
// figures README's "Sizing the cache" gives and max_entries is sized from:
// a Mastodon image of 100 KB with the headers S3 sends, and a negative
// answer for a key scanners make up.
func TestIndexMemoryPerEntry(t *testing.T) {
	const n = 50_000
	now := time.Now()
	key := func(i int) string {
		return fmt.Sprintf("mastodon-media/media_attachments/files/%03d/%03d/%03d/%03d/original/%016x.png", i%1000, i/1000%1000, i/1000000, i%977, i*7919)
	}
	body := indexHeap(t, n, func(s *store, i int) {
		m := entryMeta{
			Key: key(i), Status: 200, ContentType: "image/png",
			ETag: fmt.Sprintf(`"%032x"`, i), LastModified: "Wed, 25 Nov 2026 10:00:00 GMT",
			UpstreamCacheControl: "public, max-age=315576000, immutable",
			storedAt:             now, expiresAt: now.Add(time.Hour), bodyLen: 100 << 10, sliceLen: 1 << 20,
			blockCRCs: make([]uint32, 2),
		}
		s.insertLocked(m.Key, "/var/cache/caddy/s3-media/c/29/"+hashKey(m.Key), m, true, 104<<10, fileIdentity{}, now)
	})
	negative := indexHeap(t, n, func(s *store, i int) {
		s.insertNegativeLocked(key(i), entryMeta{Key: key(i), Status: 404, storedAt: now, expiresAt: now.Add(time.Minute)})
	})
	t.Logf("index memory: %.0f bytes per 100 KB image, %.0f bytes per negative entry", body, negative)
	// The bounds README documents, with room for Go's map growth.
	if body > 1100 || negative > 320 {
		t.Errorf("index memory: %.0f bytes per entry (want at most 1100), %.0f per negative entry (at most 320)", body, negative)
	}
}

// TestIndexStaysWithinMaxEntries fills the index past max_entries with
// entries and negative answers, as a scan would: negatives never take
// more than a quarter of it and go first, the index never holds more than
// max_entries, and expired negatives are dropped by the manager's pass.
func TestIndexStaysWithinMaxEntries(t *testing.T) {
	const maxEntries = 100
	s := &store{entries: map[string]*entry{}, negatives: negatives{byKey: map[string]*negativeEntry{}},
		limits: storeLimits{maxBytes: 1 << 60, maxEntries: maxEntries}, logger: zap.NewNop()}
	now := time.Now()
	insert := func(key string) {
		s.mu.Lock()
		s.insertLocked(key, "", entryMeta{Key: key, Status: 200}, true, 4096, fileIdentity{}, now)
		s.trimLocked()
		s.mu.Unlock()
	}
	negative := func(key string, ttl time.Duration) {
		s.storeNegative(key, entryMeta{Key: key, Status: 404, storedAt: now, expiresAt: now.Add(ttl)})
	}
	for i := range 1000 {
		negative(fmt.Sprintf("missing/%d", i), time.Minute)
	}
	if n := len(s.negatives.byKey); n != maxEntries/4 {
		t.Fatalf("%d negative entries after a scan of 1000 missing keys, want %d (a quarter of max_entries)", n, maxEntries/4)
	}
	if _, ok := s.lookup("missing/999", now); !ok {
		t.Fatal("the newest negative answer was evicted")
	}
	for i := range 90 {
		insert(fmt.Sprintf("object/%d", i))
	}
	if total := len(s.entries) + len(s.negatives.byKey); total > maxEntries || len(s.entries) != 90 {
		t.Fatalf("%d entries and %d negatives, want the 90 entries kept and at most %d in all", len(s.entries), len(s.negatives.byKey), maxEntries)
	}
	for i := 90; i < 200; i++ {
		insert(fmt.Sprintf("object/%d", i))
	}
	if len(s.entries) != maxEntries || len(s.negatives.byKey) != 0 {
		t.Fatalf("%d entries and %d negatives, want %d entries and no negative (they go first)", len(s.entries), len(s.negatives.byKey), maxEntries)
	}
	if _, ok := s.entries["object/199"]; !ok {
		t.Fatal("the newest entry was evicted rather than the oldest")
	}

	negative("short", time.Second)
	s.mu.Lock()
	s.dropExpiredNegativesLocked(now.Add(2 * time.Second))
	_, kept := s.negatives.byKey["short"]
	s.mu.Unlock()
	if kept {
		t.Fatal("an expired negative entry is still held")
	}
}

// TestScanOfAMillionMissingKeys scans a million distinct missing keys
// through a store sized by the defaults for a 10GiB cache: the index keeps
// a quarter of max_entries negatives at most, and the heap they take stays
// within the figure README documents for a scan (20 MB for 10GiB).
func TestScanOfAMillionMissingKeys(t *testing.T) {
	maxEntries := max(minDefaultEntries, int((10<<30)/bytesPerDefaultEntry))
	s := &store{entries: map[string]*entry{}, negatives: negatives{byKey: map[string]*negativeEntry{}},
		limits: storeLimits{maxBytes: 10 << 30, maxEntries: maxEntries}, logger: zap.NewNop()}
	now := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1_000_000 {
		key := fmt.Sprintf("mastodon-media/media_attachments/files/%03d/%03d/%03d/original/%016x.png", i%1000, i/1000%1000, i%977, i*7919)
		s.storeNegative(key, entryMeta{Key: key, Status: 404, storedAt: now, expiresAt: now.Add(time.Minute)})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	held := len(s.negatives.byKey)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("a scan of 1,000,000 missing keys: %d negatives held (max_entries %d), %.1f MB of heap", held, maxEntries, float64(heap)/1e6)
	if held != maxEntries/4 {
		t.Errorf("%d negatives held, want %d (a quarter of max_entries)", held, maxEntries/4)
	}
	if heap > 20e6 {
		t.Errorf("heap after the scan grew by %d bytes, want at most 20 MB", heap)
	}
}
