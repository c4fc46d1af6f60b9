package s3cache

import (
	"bytes"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMemTierKeepsWithinItsBound(t *testing.T) {
	tier := newMemTier(100)
	tier.put("a", 1, make([]byte, 40))
	tier.put("b", 1, make([]byte, 40))
	if tier.get("a", 1) == nil { // a is now the most recently used
		t.Fatal("a is not kept")
	}
	tier.put("c", 1, make([]byte, 40)) // over the bound: b goes
	if tier.get("b", 1) != nil || tier.get("a", 1) == nil || tier.get("c", 1) == nil {
		t.Fatal("want b evicted, a and c kept")
	}
	if got := tier.bytes(); got != 80 {
		t.Fatalf("%d bytes held, want 80", got)
	}
	if tier.get("a", 2) != nil || tier.get("a", 1) != nil {
		t.Fatal("a body of another generation was returned, or kept after it was asked for")
	}
	tier.put("huge", 1, make([]byte, 101))
	if tier.get("huge", 1) != nil || tier.bytes() > 100 {
		t.Fatal("a body over the bound was kept")
	}
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
			reg := prometheus.NewRegistry()
			h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
				h.MemoryCache = c.memory
				m, err := newMetrics(reg)
				if err != nil {
					t.Fatal(err)
				}
				h.metrics = m
			})
			srv := httptest.NewTLSServer(handlerFor(h))
			t.Cleanup(srv.Close)
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
			// The first hit reads the file into memory; the next two and
			// the range come from there.
			want := 0.0
			if c.wantMemory {
				want = 3
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
