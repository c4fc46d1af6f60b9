package s3cache

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// discardWriter is a ResponseWriter that throws the body away, so the
// benchmarks measure the handler, not a network stack.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(io.Discard, r)
}

// benchmarkHit measures a hit on plain HTTP/1.1 (directBody: sendfile
// on a real socket, a read loop into discardWriter here) or, with tls, on
// a connection that must read and check every block (checkedBody).
func benchmarkHit(b *testing.B, size int, tls bool) {
	data := objectBytes(size)
	o := servingOrigin(data)
	h := newCachedHandler(&testing.T{}, o, b.TempDir(), nil)
	b.Cleanup(func() { releaseStore(h.storeDir) })
	req := httptest.NewRequest("GET", "/media_attachments/files/1/original/a.png", nil)
	if tls {
		req = httptest.NewRequest("GET", "https://example.social/media_attachments/files/1/original/a.png", nil)
	}
	w := &discardWriter{header: http.Header{}}
	req = asCaddyWould(w, req)
	if err := h.ServeHTTP(w, req, nil); err != nil || w.status != 200 {
		b.Fatalf("fill: %v %d", err, w.status)
	}
	waitStored(b, h, "media_attachments/files/1/original/a.png")
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := &discardWriter{header: make(http.Header, 12)}
		if err := h.ServeHTTP(w, req, nil); err != nil || w.status != 200 || w.header.Get("X-Cache-Status") != "HIT" {
			b.Fatalf("hit: %v %d %v", err, w.status, w.header)
		}
	}
}

func BenchmarkHit50KB(b *testing.B)        { benchmarkHit(b, 50<<10, false) }
func BenchmarkHit1MB(b *testing.B)         { benchmarkHit(b, 1<<20, false) }
func BenchmarkHit50KBChecked(b *testing.B) { benchmarkHit(b, 50<<10, true) }
func BenchmarkHit1MBChecked(b *testing.B)  { benchmarkHit(b, 1<<20, true) }

// BenchmarkFillFanOut measures one fill streamed to many readers at once:
// the cost of the request lock per waiter and per byte.
func BenchmarkFillFanOut(b *testing.B) {
	const readers = 32
	data := objectBytes(1 << 20)
	o := servingOrigin(data)
	h := newCachedHandler(&testing.T{}, o, b.TempDir(), func(h *Handler) { h.MaxSize = 1 << 30 })
	b.Cleanup(func() { releaseStore(h.storeDir) })
	b.SetBytes(int64(len(data)) * readers)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := httptest.NewRequest("GET", "/v/"+strconv.Itoa(i)+".mp4", nil)
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				w := &discardWriter{header: http.Header{}}
				if err := h.ServeHTTP(w, req, nil); err != nil || w.status != 200 {
					b.Errorf("reader: %v %d", err, w.status)
				}
			})
		}
		wg.Wait()
	}
	if calls := o.calls.Load(); calls != int32(i) {
		b.Fatalf("%d S3 requests for %d objects", calls, i)
	}
}

// storeObject GETs key through the server at baseURL and waits for its
// fill to commit, leaving key cached.
func storeObject(t *testing.T, h *Handler, baseURL, key string) {
	t.Helper()
	resp, _ := get(t, baseURL+"/"+key)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("storing %s: %d", key, resp.StatusCode)
	}
	waitStored(t, h, key)
}

// waitStored waits for the entry of key to be complete: its last reader
// can finish a moment before the fill has checked the whole body and
// marked the entry complete.
func waitStored(tb testing.TB, h *Handler, key string) {
	tb.Helper()
	ckey := h.mapping.cacheKey(key)
	for range 1000 {
		h.store.mu.Lock()
		e, ok := h.store.entries[ckey]
		complete := ok && e.complete
		h.store.mu.Unlock()
		if complete && !h.store.inFlight(ckey) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	tb.Fatalf("the entry of %s did not complete", key)
}
