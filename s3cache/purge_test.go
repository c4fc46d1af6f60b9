package s3cache

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func withPurge(h *Handler) {
	h.purgeHeader = "X-Cache-Buster-Secret"
	h.purgeSecretSum = sha256.Sum256([]byte("s3cret"))
	h.purgeMethod = http.MethodGet
	h.wrongPurges = &logLimiter{}
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

// TestPurgeSecretLeavesNoTrace checks that the cache buster's header is
// gone from the request once the handler has run, as Caddy's access log
// would read it, for right and wrong secrets alike; and that a flood of
// wrong guesses is one warning, not one per guess.
func TestPurgeSecretLeavesNoTrace(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := newCachedHandler(t, servingOrigin(objectBytes(1000)), t.TempDir(), withPurge)
	h.logger = zap.New(core)
	for i, secret := range []string{"s3cret", "wrong", "wrong", "s3cret"} {
		for range 25 {
			r := httptest.NewRequest(http.MethodGet, "/v/a.mp4", nil)
			r.Header.Set("X-Cache-Buster-Secret", secret)
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, nil); err != nil {
				t.Fatal(err)
			}
			if v, ok := r.Header["X-Cache-Buster-Secret"]; ok {
				t.Fatalf("request %d: the header is still on the request after the handler: %q", i, v)
			}
			if want := map[bool]int{true: 204, false: 200}[secret == "s3cret"]; w.Code != want {
				t.Fatalf("request %d with secret %q: %d, want %d", i, secret, w.Code, want)
			}
		}
	}
	if n := logs.FilterMessageSnippet("wrong secret").Len(); n != 1 {
		t.Fatalf("%d warnings for 50 wrong guesses in a row, want 1", n)
	}
	for _, entry := range logs.All() {
		for _, f := range entry.Context {
			if strings.Contains(f.String, "s3cret") || strings.Contains(f.String, "wrong") && f.Key != "msg" {
				t.Fatalf("a log field holds a secret: %s=%q", f.Key, f.String)
			}
		}
	}
}
