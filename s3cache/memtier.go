package s3cache

import (
	"bytes"
	"container/list"
	"io"
	"sync"
)

// A hit over TLS, HTTP/2 or HTTP/3 passes the body through this process
// (to be encrypted and framed), so it cannot be handed to sendfile: it is
// read from the entry file a block at a time, each block checked against
// its CRC. For the small objects that make most of a media host's requests
// (avatars, previews, emoji), that read and check are a fair share of the
// hit's cost. The memory tier keeps the checked bodies of small entries
// that such hits read a second time, so the next ones write them straight
// from memory.
//
// A body is kept under its entry's cache key and generation, and served
// only to a request that found that very entry in the index: a purge, an
// eviction or a new version of the object (a new generation) can never be
// answered from memory. Their memory is given back as the tier's own LRU
// order reaches them, so the tier never holds more than its bound.

// memTierObjectMax is the largest body the memory tier keeps. Over HTTP/2
// a body from memory goes to the h2 writer in one Write, where one read
// from the file goes in 64 KiB checked blocks, each a hand-off to the
// connection's writer: for a 1 MB image, memory made the hit 25% faster
// with one stream per connection and 43% with eight (h2load, 32
// connections, server on one core). Past 1 MiB, bodies are videos and
// originals, fetched in ranges more than whole.
const memTierObjectMax = 1 << 20

// defaultMemoryCache is the bound of a site's memory tier.
const defaultMemoryCache = 32 << 20

// memTierSeenKeys is how many keys the tier remembers having been asked
// for once. A body is read into the tier on its second hit, as nginx's
// proxy_cache_min_uses 2 stores an object on its second request: a scan
// of distinct objects over TLS then reads their files, as it would with
// no tier, instead of pushing the hot bodies out and allocating a body
// for each object scanned. The set starts over when full, so it costs at
// most this many keys.
const memTierSeenKeys = 4096

// memTier is bounded by the bytes of the bodies it holds plus those of
// the bodies responses are still sending: a body that leaves the tier (an
// eviction, a new generation) while a slow client is still being sent it
// stays counted until that response ends. When the bodies being sent
// fill the bound, a new body is not read into memory and its response
// reads the file block by block instead, so slow readers cannot make the
// tier hold more than its bound.
type memTier struct {
	mu      sync.Mutex
	max     int64
	used    int64 // bytes of bodies held or being sent
	sending int64 // of which, bytes of bodies being sent
	items   map[string]*memItem
	lru     list.List           // of *memItem, most recently used first
	seen    map[string]struct{} // keys asked for once, not kept yet
}

// memItem is one body. readers counts the responses sending it, and elem
// is nil once the body has left the tier.
type memItem struct {
	key     string
	gen     uint64
	body    []byte
	elem    *list.Element
	readers int
}

func newMemTier(max int64) *memTier {
	return &memTier{max: max, items: make(map[string]*memItem), seen: make(map[string]struct{})}
}

// secondAsk reports whether key was asked for before, among the last
// memTierSeenKeys keys the tier did not hold, and remembers it.
func (t *memTier) secondAsk(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.seen[key]; ok {
		return true
	}
	if len(t.seen) >= memTierSeenKeys {
		clear(t.seen)
	}
	t.seen[key] = struct{}{}
	return false
}

// get returns the body kept for generation gen of key, held for one
// response until it calls done, or nil.
func (t *memTier) get(key string, gen uint64) *memItem {
	t.mu.Lock()
	defer t.mu.Unlock()
	it, ok := t.items[key]
	if !ok {
		return nil
	}
	if it.gen != gen {
		// Generations only grow: a body older than the entry asked for
		// is of an entry that is gone; a newer one is for requests that
		// found the newer entry.
		if it.gen < gen {
			t.removeLocked(it)
		}
		return nil
	}
	t.lru.MoveToFront(it.elem)
	t.holdLocked(it)
	return it
}

// reserve returns room for a body of n bytes, for generation gen of key,
// held for one response until it calls done: a body to fill and then
// admit. It makes the room by dropping the least recently used bodies
// that no response is sending. It returns nil when the bodies being sent
// leave no room.
func (t *memTier) reserve(key string, gen uint64, n int64) *memItem {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sending+n > t.max {
		return nil
	}
	// Once every body no response is sending is dropped, used is
	// sending, so the check above guarantees the room.
	for e := t.lru.Back(); e != nil && t.used+n > t.max; {
		it := e.Value.(*memItem)
		e = e.Prev()
		if it.readers == 0 {
			t.removeLocked(it)
		}
	}
	it := &memItem{key: key, gen: gen, body: make([]byte, n)}
	t.used += n
	t.holdLocked(it)
	return it
}

// admit puts a reserved body, now filled, in the tier, in place of an
// older body of its key. A body older than the one there is not kept: it
// leaves with its response.
func (t *memTier) admit(it *memItem) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.items[it.key]; ok {
		if old.gen > it.gen {
			return
		}
		t.removeLocked(old)
	}
	it.elem = t.lru.PushFront(it)
	t.items[it.key] = it
}

// done ends one response's hold on a body from get or reserve.
func (t *memTier) done(it *memItem) {
	t.mu.Lock()
	defer t.mu.Unlock()
	it.readers--
	if it.readers > 0 {
		return
	}
	n := int64(len(it.body))
	t.sending -= n
	if it.elem == nil {
		t.used -= n // it left the tier while being sent
	}
}

func (t *memTier) holdLocked(it *memItem) {
	if it.readers == 0 {
		t.sending += int64(len(it.body))
	}
	it.readers++
}

// removeLocked takes a body out of the tier; a body being sent stays
// counted until done.
func (t *memTier) removeLocked(it *memItem) {
	t.lru.Remove(it.elem)
	it.elem = nil
	delete(t.items, it.key)
	if it.readers == 0 {
		t.used -= int64(len(it.body))
	}
}

// bytes is what the tier holds, with the bodies being sent.
func (t *memTier) bytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.used
}

// memBody is a body served from the memory tier. It was checked, block by
// block, when it was read from its entry file.
type memBody []byte

func (b memBody) section(off, n int64) (io.Reader, error) {
	return bytes.NewReader(b[off : off+n]), nil
}

// memoryBody returns e's body from the memory tier, reading it from its
// file (checked block by block) into the tier when it is not there yet and
// was asked for before, held for the caller's response until it calls
// done. It returns nil when the tier does not keep e's body (the tier is
// off, the body too large, its first hit, the bodies being sent fill the
// tier), for the caller to serve the file itself. The caller has checked that the file is still the one last
// checked whole (checkBeforeHit): an entry file damaged or removed by
// hand is noticed there, as on any hit, and its body in memory is not
// served.
func (h *Handler) memoryBody(e *entry, file *checkedBody) (*memItem, error) {
	if h.memory == nil || e.meta.bodyLen > memTierObjectMax {
		return nil, nil
	}
	if it := h.memory.get(e.meta.Key, e.gen); it != nil {
		h.metrics.countMemoryHit()
		return it, nil
	}
	if !h.memory.secondAsk(e.meta.Key) {
		return nil, nil
	}
	it := h.memory.reserve(e.meta.Key, e.gen, e.meta.bodyLen)
	if it == nil {
		return nil, nil
	}
	r, err := file.section(0, e.meta.bodyLen)
	if err == nil {
		defer closeSection(r)
		_, err = io.ReadFull(r, it.body)
	}
	if err != nil {
		h.memory.done(it)
		return nil, err
	}
	h.memory.admit(it)
	return it, nil
}
