package s3cache

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestEvictionKeepsStoreUnderMaxSize(t *testing.T) {
	data := objectBytes(100_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	const maxSize = 1_000_000
	h := newCachedHandler(t, o, dir, func(h *Handler) { h.MaxSize = maxSize })
	srv := serve(t, h)
	for i := range 50 { // 5 MB through a 1 MB cache
		resp, body := get(t, srv.URL+"/v/"+strconv.Itoa(i)+".mp4")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("object %d: %d", i, resp.StatusCode)
		}
		waitStored(t, h, "v/"+strconv.Itoa(i)+".mp4")
		if used := dirBytes(t, dir); used > maxSize {
			t.Fatalf("after object %d the cache holds %d bytes, over max_size %d", i, used, maxSize)
		}
	}
	resp, _ := get(t, srv.URL+"/v/49.mp4")
	if resp.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("the most recent object was evicted: %s", resp.Header.Get("X-Cache-Status"))
	}
	resp, _ = get(t, srv.URL+"/v/0.mp4")
	if resp.Header.Get("X-Cache-Status") != "MISS" {
		t.Fatalf("the oldest object survived: %s", resp.Header.Get("X-Cache-Status"))
	}
}

func TestRestartServesHitsFromDisk(t *testing.T) {
	data := objectBytes(70_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	releaseStore(dir) // the process stops: the store is destroyed

	h2 := newCachedHandler(t, o, dir, nil)
	srv2 := serve(t, h2)
	resp, body := get(t, srv2.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
		t.Fatalf("after restart: %s, %d bytes", resp.Header.Get("X-Cache-Status"), len(body))
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1", n)
	}
}

func TestOversizedObjectIsPassedThrough(t *testing.T) {
	data := objectBytes(10_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, func(h *Handler) { h.MaxObjectSize = 5_000 })
	srv := serve(t, h)
	for range 2 {
		resp, body := get(t, srv.URL+"/v/big.mp4")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("X-Cache-Status") != "MISS" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
		}
	}
	assertNoEntryFiles(t, dir)
}

// TestSliceTheCacheCannotTakeComesFromS3 gives the cache room for the
// first slice of an object and not the second: the client still gets
// every byte, the rest read from S3 directly with one ranged GET of the
// same version, and only the slice that fitted is stored.
func TestSliceTheCacheCannotTakeComesFromS3(t *testing.T) {
	data := objectBytes(2<<20 + 100) // three slices
	o := &scriptedOrigin{}
	var resumes []originRequest
	var mu sync.Mutex
	o.respond = func(req originRequest) (*originResponse, error) {
		if o.calls.Load() > 1 {
			mu.Lock()
			resumes = append(resumes, req)
			mu.Unlock()
		}
		return answerFor(data, req, nil), nil
	}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.MaxSize = 1<<20 + 6*bodyAlign // the header, the small last slice, the level directories
	})
	srv := serve(t, h)
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("got %d, %d bytes (equal %v); want the whole object", resp.StatusCode, len(body), bytes.Equal(body, data))
	}
	// The second slice, read directly, and the third (a few bytes that
	// fit), fetched for the cache.
	var ranges []string
	mu.Lock()
	defer mu.Unlock()
	for _, req := range resumes {
		if req.ifMatch != testETag {
			t.Errorf("%s without If-Match on the ETag", req.rangeSpec)
		}
		ranges = append(ranges, req.rangeSpec)
	}
	slices.Sort(ranges)
	if want := []string{"bytes=1048576-2097151", "bytes=2097152-3145727"}; !slices.Equal(ranges, want) {
		t.Fatalf("S3 requests after the first slice: %v; want %v", ranges, want)
	}
	time.Sleep(20 * time.Millisecond)
	if present, total := slicesOnDisk(t, h, "v/a.mp4"); present != 2 || total != 3 {
		t.Fatalf("%d of %d slices on disk, want the two that fitted", present, total)
	}
	if st := h.store.snapshot(); st.Bytes > h.MaxSize || st.ReservedBytes != 0 {
		t.Fatalf("store at %d bytes (%d reserved), max_size %d", st.Bytes, st.ReservedBytes, h.MaxSize)
	}
}

// TestSliceResumesAfterTheBlocksWritten breaks S3's answer for a slice
// midway: the next fetch of that slice asks only for the bytes after the
// whole blocks already written, in the same process and after a restart,
// and the object comes out byte-exact.
func TestSliceResumesAfterTheBlocksWritten(t *testing.T) {
	data := objectBytes(3<<20 + 1000) // four slices
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "same process", true: "after a restart"}[restart], func(t *testing.T) {
			var mu sync.Mutex
			var ranges []string
			broke := false
			o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
				mu.Lock()
				defer mu.Unlock()
				ranges = append(ranges, req.rangeSpec)
				// The first GET of slice 1 breaks after three and a half
				// blocks.
				if req.rangeSpec == "bytes=1048576-2097151" && !broke {
					broke = true
					return answerFor(data, req, func(b io.ReadCloser) io.ReadCloser {
						return &failingAfter{r: b, left: 3*blockSize + blockSize/2}
					}), nil
				}
				return answerFor(data, req, nil), nil
			}}
			dir := t.TempDir()
			h := newCachedHandler(t, o, dir, nil)
			srv := serve(t, h)
			if _, _, err := fetch(http.DefaultClient, srv.URL+"/v/a.mp4"); err == nil {
				t.Fatal("the transfer was not cut where S3's answer broke")
			}
			waitIdle(t, h, "v/a.mp4")
			if restart {
				releaseStore(dir)
				h = newCachedHandler(t, o, dir, nil)
				srv = serve(t, h)
			}
			mu.Lock()
			ranges = nil
			mu.Unlock()
			resp, body := get(t, srv.URL+"/v/a.mp4")
			if resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("after the break: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, data))
			}
			waitStored(t, h, "v/a.mp4")
			mu.Lock()
			defer mu.Unlock()
			if !slices.Contains(ranges, "bytes=1245184-2097151") || slices.Contains(ranges, "bytes=1048576-2097151") {
				t.Fatalf("S3 requests after the break: %v; want slice 1 asked from its fourth block on (bytes=1245184-2097151), not whole", ranges)
			}
		})
	}
}
