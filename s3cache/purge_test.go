package s3cache

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"testing"
	"time"
)

func withPurge(h *Handler) {
	h.purgeHeader = "X-Cache-Buster-Secret"
	h.purgeSecretSum = sha256.Sum256([]byte("s3cret"))
	h.purgeMethod = http.MethodGet
}

// TestCacheBusterPurgesWithTheRightSecretOnly sends the request Mastodon's
// CacheBusterWorker sends (GET, the media URL, the secret header).
func TestCacheBusterPurgesWithTheRightSecretOnly(t *testing.T) {
	data := objectBytes(20_000)
	o := servingOrigin(data)
	h := newCachedHandler(t, o, t.TempDir(), withPurge)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")

	resp, body := get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "wrong")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
		t.Fatalf("wrong secret: %d %s; want an ordinary HIT", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "s3cret")
	if resp.StatusCode != 204 || len(body) != 0 {
		t.Fatalf("purge: %d, %d bytes; want 204 without a body", resp.StatusCode, len(body))
	}
	if _, ok := h.store.lookup(h.cacheKey("v/a.mp4"), time.Now()); ok {
		t.Fatal("entry still indexed after the purge")
	}
	if n := dirBytes(t, h.storeDir); n != 0 {
		t.Fatalf("%d bytes of entries left on disk", n)
	}
	resp, body = get(t, srv.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) || o.calls.Load() != 2 {
		t.Fatalf("after purge: %s, %d S3 requests", resp.Header.Get("X-Cache-Status"), o.calls.Load())
	}
}

func TestPurgeDuringFillKeepsItsBytesOutOfTheCache(t *testing.T) {
	data := objectBytes(256 << 10)
	body := &gatedBody{data: data, chunk: 16 << 10, gate: make(chan struct{})}
	first := true
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		if first {
			first = false
			return okResponse(data, body), nil
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), withPurge)
	srv := serve(t, h)
	done := make(chan []byte)
	go func() { _, b := get(t, srv.URL+"/v/a.mp4"); done <- b }()
	body.gate <- struct{}{}
	for !h.store.inFlight(h.cacheKey("v/a.mp4")) {
		time.Sleep(time.Millisecond)
	}
	if resp, _ := get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "s3cret"); resp.StatusCode != 204 {
		t.Fatalf("purge: %d", resp.StatusCode)
	}
	close(body.gate)
	if got := <-done; !bytes.Equal(got, data) {
		t.Fatal("the reader of the purged fill did not get its bytes")
	}
	time.Sleep(20 * time.Millisecond)
	if _, ok := h.store.lookup(h.cacheKey("v/a.mp4"), time.Now()); ok {
		t.Fatal("a fill purged while running was stored")
	}
	if _, total := slicesOnDisk(t, h, "v/a.mp4"); total != 0 {
		t.Fatal("the purged fill's entry file is still on disk")
	}
}
