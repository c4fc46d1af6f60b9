package s3cache

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// These tests drive the cache engine with a scripted origin, to hold a
// body mid-transfer or break it on cue. The integration suite runs the same
// behaviours against versitygw through a throttling proxy.

// gatedBody releases its bytes chunk by chunk: one chunk per value sent on
// gate, and fails with failWith once gate is closed early.
type gatedBody struct {
	data     []byte
	chunk    int
	gate     chan struct{}
	failWith error
	off      int
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	if b.gate != nil {
		if _, ok := <-b.gate; !ok {
			if b.failWith != nil {
				return 0, b.failWith
			}
			// gate closed without failure: release everything at once
			b.gate = nil
		}
	}
	n := b.chunk
	if b.gate == nil {
		n = len(b.data) - b.off
	}
	n = copy(p, b.data[b.off:min(b.off+n, len(b.data))])
	b.off += n
	return n, nil
}

func (b *gatedBody) Close() error { return nil }

func objectBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// servingOrigin answers every fetch as S3 would for an object holding
// data (see answerFor).
func servingOrigin(data []byte) *scriptedOrigin {
	return &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		return answerFor(data, req, nil), nil
	}}
}

func okResponse(data []byte, body io.ReadCloser) *originResponse {
	return &originResponse{status: 200, header: http.Header{
		"Content-Length": {strconv.Itoa(len(data))},
		"Content-Type":   {"video/mp4"},
		"Etag":           {testETag},
		"Last-Modified":  {testLastModified},
	}, body: body}
}

func newCachedHandler(t *testing.T, o origin, dir string, configure func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{origin: o, logger: zap.NewNop(), MaxSize: 64 << 20}
	h.originCfg.bucket = "b"
	h.mapping.bucket = "b"
	if configure != nil {
		configure(h)
	}
	p, err := h.buildHeaderPolicy()
	if err != nil {
		t.Fatal(err)
	}
	h.policy = p
	if err := h.buildFreshness(); err != nil {
		t.Fatal(err)
	}
	if err := h.openCache(dir, t, "the test's site"); err != nil {
		t.Fatal(err)
	}
	h.buildFillRules()
	t.Cleanup(func() { releaseStore(dir) })
	waitLoaded(t, h.store)
	return h
}

func waitLoaded(t *testing.T, s *store) {
	t.Helper()
	select {
	case <-s.loaded:
	case <-time.After(5 * time.Second):
		t.Fatal("store did not load")
	}
}

func get(t *testing.T, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return mustFetch(t, http.DefaultClient, url, headers...)
}

// mustFetch is fetch failing t on any error.
func mustFetch(t *testing.T, client *http.Client, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := fetch(client, url, headers...)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

// fetch GETs url through client with "Name", "value" header pairs and
// reads the whole body. The error is the request's or the read's: a
// transfer cut short shows as one.
func fetch(client *http.Client, url string, headers ...string) (*http.Response, []byte, error) {
	return send(client, http.MethodGet, url, headers...)
}

// send is fetch with another method than GET.
func send(client *http.Client, method, url string, headers ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// slicesOnDisk reads the entry file of key as the loader would, and
// returns how many of its slices are present, and how many it has.
func slicesOnDisk(t *testing.T, h *Handler, key string) (present, total int) {
	t.Helper()
	ef, err := readEntryFile(h.store.entryPath(h.mapping.cacheKey(key)))
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0
	}
	if err != nil {
		t.Fatalf("reading the entry file of %s: %v", key, err)
	}
	return ef.table.count(), len(ef.table.present)
}

// wantNoBodyStored checks that no byte of key's body is in the cache: no
// slice present on disk, and no complete entry in the index. (An entry
// may remain with the object's metadata alone.)
func wantNoBodyStored(t *testing.T, h *Handler, key string) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // let the fill's workers finish
	if present, _ := slicesOnDisk(t, h, key); present != 0 {
		t.Fatalf("%d slices of %s on disk, want none", present, key)
	}
	if e, ok := h.store.lookup(h.mapping.cacheKey(key), time.Now()); ok && e.complete {
		t.Fatalf("%s is indexed as complete", key)
	}
}

func assertNoEntryFiles(t *testing.T, dir string) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // let the last reader release the temp file
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("unexpected file in the cache: %s", path)
		}
		return nil
	})
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && isEntryName(d.Name()) {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// damageBlock flips one byte of a file in place and puts its mtime back.
func damageBlock(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xAA}, off); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// failingAfter yields left bytes of r, then a connection reset.
type failingAfter struct {
	r    io.ReadCloser
	left int
}

func (b *failingAfter) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	n, err := b.r.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, err
}

func (b *failingAfter) Close() error { return b.r.Close() }

// waitIdle waits until no fill of key is running.
func waitIdle(t *testing.T, h *Handler, key string) {
	t.Helper()
	for range 1000 {
		if !h.store.inFlight(h.mapping.cacheKey(key)) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("the fill of %s did not end", key)
}

// storeExpired serves o through a cache that keeps a 200 for 50ms and may
// serve it stale on useStale, stores v/a.mp4 and lets its copy expire.
func storeExpired(t *testing.T, o origin, useStale ...string) *httptest.Server {
	t.Helper()
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(50 * time.Millisecond)}
		h.UseStale = useStale
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	time.Sleep(80 * time.Millisecond)
	return srv
}
