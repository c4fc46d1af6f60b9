//go:build linux

package s3cache

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestDiskFullMidFillResumesFromS3 makes the disk "fill up" in the middle
// of a fill (RLIMIT_FSIZE: writes past the limit fail, as on a full disk)
// and checks that the client still gets every byte, finished with a ranged
// read from S3, and that nothing is stored.
func TestDiskFullMidFillResumesFromS3(t *testing.T) {
	data := objectBytes(2 << 20)
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		if req.rangeSpec == "" {
			return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
		}
		var start, end int
		if _, err := fmt.Sscanf(req.rangeSpec, "bytes=%d-%d", &start, &end); err != nil || req.ifMatch != `"v1"` {
			return nil, &originError{status: 502, op: "GetObject", reason: "bad resume request " + req.rangeSpec}
		}
		part := data[start : end+1]
		return &originResponse{status: 206, header: http.Header{
			"Content-Length": {strconv.Itoa(len(part))},
			"Content-Range":  {"bytes " + strconv.Itoa(start) + "-" + strconv.Itoa(end) + "/" + strconv.Itoa(len(data))},
		}, body: io.NopCloser(bytes.NewReader(part))}, nil
	}}
	dir := t.TempDir()
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	limited := syscall.Rlimit{Cur: 512 << 10, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}

	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("got %d, %d bytes (equal %v); want the whole object", resp.StatusCode, len(body), bytes.Equal(body, data))
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d S3 requests, want 2 (the fill, then the resume)", n)
	}
	time.Sleep(20 * time.Millisecond)
	if _, ok := h.store.lookup(h.cacheKey("v/a.mp4"), time.Now()); ok {
		t.Fatal("a fill that could not be written was stored")
	}
	if used := dirBytes(t, dir); used != 0 {
		t.Fatalf("%d bytes of entries on disk", used)
	}
}
