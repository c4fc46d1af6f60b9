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
// that such hits read, so the next one writes them straight from memory.
//
// A body is kept under its entry's cache key and generation, and served
// only to a request that found that very entry in the index: a purge, an
// eviction or a new version of the object (a new generation) can never be
// answered from memory. Their memory is given back as the tier's own LRU
// order reaches them, so the tier never holds more than its bound.

// memTierObjectMax is the largest body the memory tier keeps: past it the
// file read is a small part of the hit.
const memTierObjectMax = 256 << 10

// defaultMemoryCache is the bound of a site's memory tier.
const defaultMemoryCache = 32 << 20

type memTier struct {
	mu    sync.Mutex
	max   int64
	used  int64
	items map[string]*memItem
	lru   list.List // of *memItem, most recently used first
}

type memItem struct {
	key  string
	gen  uint64
	body []byte
	elem *list.Element
}

func newMemTier(max int64) *memTier {
	return &memTier{max: max, items: make(map[string]*memItem)}
}

// get returns the body kept for generation gen of key, or nil.
func (t *memTier) get(key string, gen uint64) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	it, ok := t.items[key]
	if !ok {
		return nil
	}
	if it.gen != gen {
		t.removeLocked(it) // an older version: its entry is gone
		return nil
	}
	t.lru.MoveToFront(it.elem)
	return it.body
}

// put keeps body for generation gen of key, making room by dropping the
// least recently used bodies.
func (t *memTier) put(key string, gen uint64, body []byte) {
	n := int64(len(body))
	if n > t.max {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if it, ok := t.items[key]; ok {
		t.removeLocked(it)
	}
	for t.used+n > t.max {
		t.removeLocked(t.lru.Back().Value.(*memItem))
	}
	it := &memItem{key: key, gen: gen, body: body}
	it.elem = t.lru.PushFront(it)
	t.items[key] = it
	t.used += n
}

func (t *memTier) removeLocked(it *memItem) {
	t.lru.Remove(it.elem)
	delete(t.items, it.key)
	t.used -= int64(len(it.body))
}

// bytes is what the tier holds.
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
// file (checked block by block) into the tier when it is not there yet.
// It returns nil when the tier does not keep e's body (the tier is off,
// the body too large), for the caller to serve the file itself. The
// caller has checked that the file is still the one last checked whole
// (checkBeforeHit): an entry file damaged or removed by hand is noticed
// there, as on any hit, and its body in memory is not served.
func (h *Handler) memoryBody(e *entry, file *checkedBody) (memBody, error) {
	if h.memory == nil || e.meta.bodyLen > memTierObjectMax || e.meta.bodyLen > h.memory.max {
		return nil, nil
	}
	if b := h.memory.get(e.meta.Key, e.gen); b != nil {
		h.metrics.countMemoryHit()
		return b, nil
	}
	r, err := file.section(0, e.meta.bodyLen)
	if err != nil {
		return nil, err
	}
	defer closeSection(r)
	b := make([]byte, e.meta.bodyLen)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	h.memory.put(e.meta.Key, e.gen, b)
	return b, nil
}
