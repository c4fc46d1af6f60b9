package s3cache

import (
	"bytes"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// keep reserves, fills and admits a body of n bytes, and ends the
// response that read it.
func keep(t *testing.T, tier *memTier, key string, gen uint64, n int64) {
	t.Helper()
	it := tier.reserve(key, gen, n)
	if it == nil {
		t.Fatalf("no room for %s (%d bytes) in a tier holding %d", key, n, tier.bytes())
	}
	tier.admit(it)
	tier.done(it)
}

// kept reports whether the tier answers generation gen of key, ending the
// response it would have served at once.
func kept(tier *memTier, key string, gen uint64) bool {
	it := tier.get(key, gen)
	if it != nil {
		tier.done(it)
	}
	return it != nil
}

func TestMemTierKeepsWithinItsBound(t *testing.T) {
	tier := newMemTier(100)
	keep(t, tier, "a", 1, 40)
	keep(t, tier, "b", 1, 40)
	if !kept(tier, "a", 1) { // a is now the most recently used
		t.Fatal("a is not kept")
	}
	keep(t, tier, "c", 1, 40) // over the bound: b goes
	if kept(tier, "b", 1) || !kept(tier, "a", 1) || !kept(tier, "c", 1) {
		t.Fatal("want b evicted, a and c kept")
	}
	if got := tier.bytes(); got != 80 {
		t.Fatalf("%d bytes held, want 80", got)
	}
	if kept(tier, "a", 0) || !kept(tier, "a", 1) {
		t.Fatal("a body was returned for an older entry, or dropped when one asked for it")
	}
	if kept(tier, "a", 2) || kept(tier, "a", 1) {
		t.Fatal("a body of another generation was returned, or kept after a newer entry asked for it")
	}
	if tier.reserve("huge", 1, 101) != nil || tier.bytes() > 100 {
		t.Fatal("room was made for a body over the bound")
	}
}

// TestMemTierTakesABodyOnItsSecondAsk checks the tier's admission: a key
// is wanted on its second ask, and the keys asked for once are forgotten
// when their set fills, so it stays bounded.
func TestMemTierTakesABodyOnItsSecondAsk(t *testing.T) {
	tier := newMemTier(100)
	if tier.secondAsk("avatar") {
		t.Fatal("a key asked for the first time is wanted")
	}
	if !tier.secondAsk("avatar") {
		t.Fatal("a key asked for the second time is not wanted")
	}
	for i := range memTierSeenKeys {
		tier.secondAsk(fmt.Sprintf("scanned-%d", i))
	}
	if len(tier.seen) > memTierSeenKeys {
		t.Fatalf("%d keys remembered, more than %d", len(tier.seen), memTierSeenKeys)
	}
	if tier.secondAsk("avatar") {
		t.Fatal("a key is still remembered after a scan of more keys than the set holds")
	}
}

// TestMemTierCountsBodiesBeingSent holds bodies as slow clients would:
// a body that leaves the tier while it is being sent stays counted until
// its response ends, and when the bodies being sent fill the bound no
// room is made, so the tier never holds more than its bound.
func TestMemTierCountsBodiesBeingSent(t *testing.T) {
	tier := newMemTier(100)
	keep(t, tier, "a", 1, 40)
	slowA := tier.get("a", 1) // a slow client is sent a
	keep(t, tier, "b", 1, 40)
	slowB := tier.get("b", 1)
	if r := tier.reserve("c", 1, 40); r != nil {
		t.Fatalf("room made for c while a and b, 80 of 100 bytes, are being sent; tier holds %d", tier.bytes())
	}
	if !kept(tier, "a", 1) || !kept(tier, "b", 1) {
		t.Fatal("a body being sent was dropped to make room")
	}

	// A new generation of a replaces it while the slow client still
	// reads the old one: both count.
	tier.done(slowB)
	keep(t, tier, "a", 2, 20)
	if kept(tier, "a", 1) || !kept(tier, "a", 2) || !kept(tier, "b", 1) {
		t.Fatal("want a's new generation and b kept, a's old one gone")
	}
	if got := tier.bytes(); got != 100 {
		t.Fatalf("%d bytes counted, want 100: b, the new a and the old one still being sent", got)
	}
	// Room for c: b, the least recently used body no one is sent, goes;
	// the old a, still being sent, cannot.
	kept(tier, "a", 2)
	keep(t, tier, "c", 1, 40)
	if kept(tier, "b", 1) || !kept(tier, "a", 2) || !kept(tier, "c", 1) {
		t.Fatal("want b dropped for c, the new a kept")
	}
	tier.done(slowA)
	if got := tier.bytes(); got != 60 {
		t.Fatalf("%d bytes counted once the old a was sent, want 60", got)
	}

	// A body reserved and never admitted (its file failed to read)
	// gives its room back.
	tier.done(tier.reserve("d", 1, 30))
	if got := tier.bytes(); got != 60 || kept(tier, "d", 1) {
		t.Fatalf("%d bytes counted after a failed read, want 60, and d not kept", got)
	}

	// An old a, admitted late by a response that read it before the new
	// one came, does not replace the new one.
	late := tier.reserve("a", 1, 10)
	tier.admit(late)
	tier.done(late)
	if !kept(tier, "a", 2) || tier.bytes() != 60 {
		t.Fatalf("an older body replaced the newer one, or stayed counted (%d bytes, want 60)", tier.bytes())
	}
}

// newTLSMemoryHandler is a caching handler on o with memory_cache set to
// memory and metrics of its own, served over TLS (so hits cannot use
// sendfile).
func newTLSMemoryHandler(t *testing.T, o origin, memory int64) (*Handler, *httptest.Server) {
	t.Helper()
	reg := prometheus.NewRegistry()
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.MemoryCache = memory
		m, err := newMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		h.metrics = m
	})
	srv := httptest.NewTLSServer(handlerFor(h))
	t.Cleanup(srv.Close)
	return h, srv
}

// TestTLSHitsComeFromMemory serves a small object over TLS (no sendfile)
// and checks that hits after the first come from the memory tier, byte
// for byte, ranges included; that a new version of the object is never
// answered from memory; and that memory_cache off keeps nothing.
func TestTLSHitsComeFromMemory(t *testing.T) {
	for _, c := range []struct {
		name       string
		memory     int64
		wantMemory bool
	}{
		{"default", 0, true},
		{"off", -1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var version atomic.Int32
			v1, v2 := objectBytes(100_000), bytes.Repeat([]byte("v2"), 50_000)
			o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
				if version.Load() == 2 {
					return answerFor(v2, req, nil), nil
				}
				return answerFor(v1, req, nil), nil
			}}
			h, srv := newTLSMemoryHandler(t, o, c.memory)
			get := func(headers ...string) (int, string, []byte) {
				t.Helper()
				resp, body := mustFetch(t, srv.Client(), srv.URL+"/v/a.png", headers...)
				return resp.StatusCode, resp.Header.Get("X-Cache-Status"), body
			}
			get()
			waitStored(t, h, "v/a.png")
			for range 3 {
				if code, status, body := get(); code != 200 || status != cacheHit || !bytes.Equal(body, v1) {
					t.Fatalf("hit: %d %s, %d bytes, equal %v", code, status, len(body), bytes.Equal(body, v1))
				}
			}
			if code, status, body := get("Range", "bytes=70000-70099"); code != 206 || status != cacheHit || !bytes.Equal(body, v1[70000:70100]) {
				t.Fatalf("range hit: %d %s, equal %v", code, status, bytes.Equal(body, v1[70000:70100]))
			}
			// The first hit reads the file, and the tier notes the key;
			// the second reads the file into memory; the third and the
			// range come from there.
			want := 0.0
			if c.wantMemory {
				want = 2
			}
			if hits := counterValue(t, h.metrics.memoryHits); hits != want {
				t.Fatalf("%v hits from memory, want %v", hits, want)
			}

			// A new version: purged, fetched again, never answered from
			// the old body in memory.
			version.Store(2)
			h.store.purge(h.mapping.cacheKey("v/a.png"))
			if _, status, body := get(); status != cacheMiss || !bytes.Equal(body, v2) {
				t.Fatalf("after the purge: %s, equal to the new version %v", status, bytes.Equal(body, v2))
			}
			waitStored(t, h, "v/a.png")
			for range 2 {
				if _, status, body := get(); status != cacheHit || !bytes.Equal(body, v2) {
					t.Fatalf("hit of the new version: %s, equal %v", status, bytes.Equal(body, v2))
				}
			}
		})
	}
}

// TestTLSHitsReadTheFileWhileSlowClientsFillTheMemoryTier fills the memory
// tier with bodies being sent, as slow clients would hold them, and checks
// that a hit then reads its file instead, byte for byte, without the tier
// growing past its bound; and that the tier takes bodies again once those
// responses end.
func TestTLSHitsReadTheFileWhileSlowClientsFillTheMemoryTier(t *testing.T) {
	const bound = 256 << 10
	body := objectBytes(100_000)
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) { return answerFor(body, req, nil), nil }}
	h, srv := newTLSMemoryHandler(t, o, bound)
	hit := func() {
		t.Helper()
		resp, got := mustFetch(t, srv.Client(), srv.URL+"/v/a.png")
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != cacheHit || !bytes.Equal(got, body) {
			t.Fatalf("hit: %d %s, %d bytes, equal %v", resp.StatusCode, resp.Header.Get("X-Cache-Status"), len(got), bytes.Equal(got, body))
		}
	}
	mustFetch(t, srv.Client(), srv.URL+"/v/a.png")
	waitStored(t, h, "v/a.png")

	slow := h.memory.reserve("a slow client's body", 1, bound-50_000)
	for range 2 {
		hit()
	}
	if hits := counterValue(t, h.metrics.memoryHits); hits != 0 {
		t.Fatalf("%v hits from memory while slow clients held the tier; want them read from the file", hits)
	}
	if got := h.memory.bytes(); got > bound {
		t.Fatalf("the tier counts %d bytes, over its bound of %d", got, bound)
	}

	h.memory.done(slow)
	hit() // read into the tier
	hit()
	if hits := counterValue(t, h.metrics.memoryHits); hits != 1 {
		t.Fatalf("%v hits from memory once the slow client was done, want 1", hits)
	}
}
