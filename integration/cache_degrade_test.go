package integration

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// A damaged entry file is never served: it is dropped and the object is
// fetched again, whether the damage came with a new mtime (an edit) or
// without one (bit rot), while Caddy ran or while it was stopped.
func TestCorruptEntryIsNeverServed(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOneMB)
	flipTail := func(t *testing.T, path string) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		must(t, err)
		defer f.Close()
		info, err := f.Stat()
		must(t, err)
		tail := make([]byte, 1000)
		_, err = f.ReadAt(tail, info.Size()-int64(len(tail)))
		must(t, err)
		for i := range tail {
			tail[i] ^= 0xff
		}
		_, err = f.WriteAt(tail, info.Size()-int64(len(tail)))
		must(t, err)
	}
	keepingMtime := func(damage func(*testing.T, string)) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			info, err := os.Stat(path)
			must(t, err)
			damage(t, path)
			must(t, os.Chtimes(path, info.ModTime(), info.ModTime()))
		}
	}
	cases := []struct {
		name    string
		damage  func(t *testing.T, path string)
		restart bool // damage the file while Caddy runs without the cache
		// bitRot: nothing about the file changed but its bytes. Checking
		// a large body before sending it costs a read of it, so a cache
		// may instead check it while sending and cut the transfer: the
		// first client then sees a broken transfer, never wrong bytes.
		bitRot bool
	}{
		{"bytes altered", flipTail, false, false},
		{"bytes altered, mtime kept", keepingMtime(flipTail), false, true},
		{"bytes altered while stopped, mtime kept", keepingMtime(flipTail), true, false},
		{"truncated", func(t *testing.T, path string) { must(t, os.Truncate(path, obj.Size/2)) }, false, false},
		{"truncated while stopped", func(t *testing.T, path string) { must(t, os.Truncate(path, obj.Size/2)) }, true, false},
		{"header overwritten", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			must(t, err)
			defer f.Close()
			_, err = f.WriteAt([]byte("GARBAGE!"), 0)
			must(t, err)
		}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			loadCache(t, dir)
			fillEntry(t, dir, obj)
			path := entryPathFor(dir, obj)
			if c.restart {
				load(t, caddyfileFor(env.ports, "respond 404"))
			}
			c.damage(t, path)
			if c.restart {
				loadCache(t, dir)
			}
			if c.bitRot {
				env.proxy.Reset()
				r := do(t, http.MethodGet, urlPath(obj.Key))
				if r.status == http.StatusOK && r.readErr == nil && s3test.SHA256Hex(r.body) != obj.SHA256 {
					t.Fatalf("the damaged entry was served as a complete 200 (X-Cache-Status %s) with wrong bytes", r.header.Get("X-Cache-Status"))
				}
				if r.readErr == nil {
					wantFromCache(t, r, obj, "MISS")
					wantS3Gets(t, obj, 1)
				} else {
					t.Logf("the first client saw a broken transfer (%v); the next must be a MISS", r.readErr)
					wantMissFromS3(t, obj)
				}
			} else {
				wantMissFromS3(t, obj)
			}
			// The damaged file is replaced by a good one.
			if !waitFor(5*time.Second, func() bool { return entryHoldsBody(path, obj.Body) }) {
				t.Fatalf("the entry file was not replaced by a good one")
			}
			wantHitWithoutS3(t, obj)
		})
	}
}

// entryHoldsBody reports whether the entry file at path holds body intact,
// between its header and metadata and its block table.
func entryHoldsBody(path string, body []byte) bool {
	data, err := os.ReadFile(path)
	return err == nil && len(data) > len(body) && bytes.Contains(data, body)
}

// When the cache cannot be written, requests go to S3 uncached: the
// site keeps working, and entries already there are still hits.
func TestUnwritableCacheFallsBackToS3(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	cached := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, cached)

	// Running as root, chmod would not stop a write: a regular file
	// where the temp directory was does.
	temp := filepath.Join(dir, "temp")
	must(t, os.RemoveAll(temp))
	must(t, os.WriteFile(temp, []byte("not a directory"), 0o600))

	obj := env.objects.Get(s3test.KeyOneMB)
	for range 2 {
		wantMissFromS3(t, obj)
	}
	if exists(entryPathFor(dir, obj)) {
		t.Errorf("an entry appeared with no temp directory to write it in")
	}
	wantHitWithoutS3(t, cached)

	// Once the directory is back, the cache stores again.
	must(t, os.Remove(temp))
	must(t, os.Mkdir(temp, 0o700))
	fillEntry(t, dir, obj)
	wantHitWithoutS3(t, obj)
}

// Objects over max_object_size are streamed from S3 and never stored.
func TestObjectsOverMaxObjectSizeAreNotStored(t *testing.T) {
	dir := t.TempDir()
	obj := bigObject(t)
	loadCache(t, dir, "max_object_size 1MB")
	for range 2 {
		wantMissFromS3(t, obj)
	}
	wantNoEntry(t, dir)
	wantTempEmpty(t, dir)

	small := env.objects.Get(s3test.KeyCachedMP4)
	fillEntry(t, dir, small)
}
