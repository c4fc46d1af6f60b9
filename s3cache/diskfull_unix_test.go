//go:build linux

package s3cache

import (
	"bytes"
	"syscall"
	"testing"
)

// TestUnwritableCacheServesFromS3 makes the disk refuse the entry file
// (RLIMIT_FSIZE: a file may not grow past the limit, as on a full disk)
// and checks that the client still gets every byte, from S3, and that
// nothing is stored. A disk that fills up midway is
// TestSliceTheCacheCannotTakeComesFromS3, and, on a real full tmpfs,
// the integration suite's disk faults.
func TestUnwritableCacheServesFromS3(t *testing.T) {
	data := objectBytes(2 << 20)
	o := servingOrigin(data)
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
	// The first slice, which goes to the client as the first chunk of
	// the object passed through, and the second chunk.
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d S3 requests, want 2 (the first slice, then the rest)", n)
	}
	assertNoEntryFiles(t, dir)
}
