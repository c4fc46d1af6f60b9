package s3cache

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

func TestCorruptEntryIsNeverServed(t *testing.T) {
	data := objectBytes(70_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	e, ok := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now())
	if !ok {
		t.Fatal("not stored")
	}
	f, err := os.OpenFile(e.path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := f.Stat()
	f.WriteAt([]byte("XXXX"), e.meta.bodyOffset()+1000) // same size, different bytes
	f.Close()
	os.Chtimes(e.path, info.ModTime(), info.ModTime()) // bit rot: the mtime does not change

	resp, body := get(t, srv.URL+"/v/a.mp4")
	if !bytes.Equal(body, data) || resp.Header.Get("X-Cache-Status") != "MISS" {
		t.Fatalf("altered entry: status %s, bytes equal %v", resp.Header.Get("X-Cache-Status"), bytes.Equal(body, data))
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d S3 requests, want 2 (the corrupt entry refetched)", n)
	}
}

// TestDamagedEntryIsNeverServed damages a later block of an entry file
// in three ways and checks that its bytes never reach a client:
//
//   - altered in place (mtime put back, but the change time moves): found
//     before the status line, on any connection, and answered from S3;
//   - bit rot no metadata shows, on a TLS connection (read through
//     checkedBody): a range in a good block is still a HIT, the whole
//     object is cut short at the bad block, and the entry is removed;
//   - the same rot on TLS with the memory tier on: the body is read and
//     checked whole before the status line, and answered from S3;
//   - the same rot on a sendfile connection: the file is trusted only
//     for reverifyInterval after its last full check, and the check that
//     follows finds it before the status line.
func TestDamagedEntryIsNeverServed(t *testing.T) {
	data := objectBytes(3 * blockSize)
	tests := []struct {
		name string
		tls  bool
		// invisible makes the store see the damaged file as the one
		// it checked, as a disk's bit rot would leave it; checkedAgo
		// is how long ago that check was.
		invisible  bool
		checkedAgo time.Duration
		wantCut    bool // the whole object is cut short (else a clean MISS)
		// hitFirst serves one HIT before the damage, which leaves an
		// open descriptor of the file pooled for the next one.
		hitFirst bool
		// memoryOff turns the memory tier off, so that a TLS hit
		// streams the file through checkedBody.
		memoryOff bool
	}{
		{name: "altered in place", tls: false},
		{name: "altered in place after a sendfile hit", tls: false, hitFirst: true},
		{name: "altered in place after a TLS hit", tls: true, hitFirst: true},
		{name: "altered in place, TLS", tls: true},
		{name: "bit rot, TLS", tls: true, invisible: true, wantCut: true, memoryOff: true},
		// The hit before the damage reads the file; the tier takes the
		// body on the next hit, reading it all (checked) before it sends
		// a byte.
		{name: "bit rot, TLS, read into the memory tier", tls: true, invisible: true, hitFirst: true},
		{name: "bit rot, sendfile, at the next check", tls: false, invisible: true, checkedAgo: reverifyInterval},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newCachedHandler(t, servingOrigin(data), t.TempDir(), func(h *Handler) {
				if tt.memoryOff {
					h.MemoryCache = -1
				}
			})
			srv := httptest.NewUnstartedServer(handlerFor(h))
			if tt.tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			getObject := func(headers ...string) (*http.Response, []byte, error) {
				return fetch(srv.Client(), srv.URL+"/v/a.mp4", headers...)
			}

			if _, _, err := getObject(); err != nil {
				t.Fatal(err)
			}
			waitStored(t, h, "v/a.mp4")
			if tt.hitFirst {
				if resp, body, err := getObject(); err != nil || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
					t.Fatalf("the hit before the damage: %v", err)
				}
			}
			ckey := h.mapping.cacheKey("v/a.mp4")
			e, _ := h.store.lookup(ckey, time.Now())
			damageBlock(t, e.path, e.meta.bodyOffset()+2*blockSize+5)
			if tt.invisible {
				info, err := os.Stat(e.path)
				if err != nil {
					t.Fatal(err)
				}
				h.store.markKnown(&e, identityOf(info))
				h.store.mu.Lock()
				h.store.entries[ckey].verifiedAt = time.Now().Add(-tt.checkedAgo)
				h.store.mu.Unlock()
			}

			if tt.wantCut {
				resp, body, err := getObject("Range", "bytes=0-99")
				if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, data[:100]) || resp.Header.Get("X-Cache-Status") != "HIT" {
					t.Fatalf("range in a good block: %v", err)
				}
				if _, got, err := getObject(); err == nil {
					t.Fatalf("a corrupt entry was served as a complete response (%d bytes, equal %v)", len(got), bytes.Equal(got, data))
				}
				if _, ok := h.store.lookup(ckey, time.Now()); ok {
					t.Fatal("the corrupt entry is still indexed")
				}
			}
			resp, body, err := getObject()
			if err != nil || resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) {
				t.Fatalf("after the damage: err %v, want a MISS with the right bytes", err)
			}
			resp, body, err = getObject()
			if err != nil || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("once fetched again: err %v, want a HIT with the right bytes", err)
			}
		})
	}
}

// TestEntryRemovedByHandIsFetchedAgain checks that an entry file deleted
// from the cache directory by hand (rm -rf to clear the cache) is not
// served on from the descriptor a previous hit left open: the next request
// drops the entry, fetches the object again and stores a new file, and the
// old file's descriptors are closed.
func TestEntryRemovedByHandIsFetchedAgain(t *testing.T) {
	data := objectBytes(blockSize + 300)
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "sendfile", true: "TLS"}[tls], func(t *testing.T) {
			o := servingOrigin(data)
			h := newCachedHandler(t, o, t.TempDir(), nil)
			srv := httptest.NewUnstartedServer(handlerFor(h))
			if tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			url := srv.URL + "/v/a.mp4"
			mustFetch(t, srv.Client(), url)
			waitStored(t, h, "v/a.mp4")
			if resp, body := mustFetch(t, srv.Client(), url); resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("the hit before the removal: %s, %d bytes", resp.Header.Get("X-Cache-Status"), len(body))
			}
			ckey := h.mapping.cacheKey("v/a.mp4")
			e, _ := h.store.lookup(ckey, time.Now())
			if err := os.Remove(e.path); err != nil {
				t.Fatal(err)
			}

			resp, body := mustFetch(t, srv.Client(), url)
			if resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) {
				t.Fatalf("after the removal: %s, %d bytes; want a MISS with the right bytes", resp.Header.Get("X-Cache-Status"), len(body))
			}
			if got := o.calls.Load(); got != 2 {
				t.Fatalf("S3 fetches = %d, want 2", got)
			}
			waitStored(t, h, "v/a.mp4")
			if _, err := os.Stat(e.path); err != nil {
				t.Fatalf("the object was not stored again: %v", err)
			}
			h.store.mu.Lock()
			open := h.store.open
			h.store.mu.Unlock()
			if open != 0 {
				t.Fatalf("%d descriptors open after the new entry's fill, want 0 (the old file's closed, the new one not yet used)", open)
			}
			if resp, body := mustFetch(t, srv.Client(), url); resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("once stored again: %s, %d bytes; want a HIT", resp.Header.Get("X-Cache-Status"), len(body))
			}
		})
	}
}
