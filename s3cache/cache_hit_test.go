package s3cache

import (
	"bytes"
	"cmp"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHitAnswersRangesConditionalsAndHead stores one object, then asks
// for it the ways players and browsers do; each answer comes from disk.
func TestHitAnswersRangesConditionalsAndHead(t *testing.T) {
	data := objectBytes(100_000)
	o := servingOrigin(data)
	h := newCachedHandler(t, o, t.TempDir(), nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")

	tests := []struct {
		name    string
		method  string   // GET when empty
		headers []string // "Name", "value" pairs
		status  int
		body    []byte // the exact body, when not nil
		// header maps names to their exact value; "" means absent.
		header       map[string]string
		headerPrefix map[string]string
		headerSet    []string // names that must have a value
		bodyHas      []byte   // bytes the body must contain
		length       int64    // the Content-Length, when not 0
		lengthIsBody bool     // the Content-Length is the body's
	}{
		{name: "single range", headers: []string{"Range", "bytes=100-199"}, status: 206, body: data[100:200],
			header: map[string]string{"Content-Range": "bytes 100-199/100000", "X-Cache-Status": "HIT"}},
		{name: "suffix range", headers: []string{"Range", "bytes=-10"}, status: 206, body: data[len(data)-10:]},
		{name: "multi range", headers: []string{"Range", "bytes=0-1,10-11"}, status: 206,
			headerPrefix: map[string]string{"Content-Type": "multipart/byteranges; boundary="}, bodyHas: data[10:12], lengthIsBody: true},
		{name: "unsatisfiable", headers: []string{"Range", "bytes=200000-"}, status: 416,
			header: map[string]string{"Content-Range": "bytes */100000", "Cache-Control": ""}},
		{name: "If-None-Match", headers: []string{"If-None-Match", `"v1"`}, status: 304, body: []byte{},
			header: map[string]string{"Etag": `"v1"`}, headerSet: []string{"Cache-Control"}},
		{name: "If-Modified-Since", headers: []string{"If-Modified-Since", "Wed, 25 Nov 2026 10:00:00 GMT"}, status: 304},
		{name: "stale If-Range gives the whole object", headers: []string{"Range", "bytes=0-9", "If-Range", `"old"`}, status: 200, body: data},
		{name: "HEAD", method: http.MethodHead, status: 200, length: int64(len(data)),
			header: map[string]string{"X-Cache-Status": "HIT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, err := send(http.DefaultClient, cmp.Or(tt.method, http.MethodGet), srv.URL+"/v/a.mp4", tt.headers...)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.body != nil && !bytes.Equal(body, tt.body) {
				t.Errorf("%d bytes, want the object's %d", len(body), len(tt.body))
			}
			for name, want := range tt.header {
				if got := resp.Header.Get(name); got != want {
					t.Errorf("%s %q, want %q", name, got, want)
				}
			}
			for name, prefix := range tt.headerPrefix {
				if got := resp.Header.Get(name); !strings.HasPrefix(got, prefix) {
					t.Errorf("%s %q, want it to start with %q", name, got, prefix)
				}
			}
			for _, name := range tt.headerSet {
				if resp.Header.Get(name) == "" {
					t.Errorf("no %s", name)
				}
			}
			if tt.bodyHas != nil && !bytes.Contains(body, tt.bodyHas) {
				t.Errorf("the body lacks bytes %v", tt.bodyHas)
			}
			if tt.length != 0 && resp.ContentLength != tt.length {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, tt.length)
			}
			if tt.lengthIsBody && resp.ContentLength != int64(len(body)) {
				t.Errorf("Content-Length %d for a body of %d bytes", resp.ContentLength, len(body))
			}
		})
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1", n)
	}
}

// TestSendfileHitsReuseDescriptors checks the pool of descriptors for
// sendfile hits: sequential hits share one descriptor, ranges and HEADs
// included, and a purge or a replacement of the entry closes it.
func TestSendfileHitsReuseDescriptors(t *testing.T) {
	data := objectBytes(2*blockSize + 77)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	srv := httptest.NewServer(handlerFor(h))
	t.Cleanup(srv.Close)
	url := srv.URL + "/v/a.mp4"
	storeObject(t, h, srv.URL, "v/a.mp4")
	ckey := h.mapping.cacheKey("v/a.mp4")
	spares := func() (perEntry, open int) {
		h.store.mu.Lock()
		defer h.store.mu.Unlock()
		if e, ok := h.store.entries[ckey]; ok {
			perEntry = len(e.spares)
		}
		return perEntry, h.store.open
	}

	// One after the other, on the same entry: each hit must give back the
	// descriptor the previous one left pooled.
	hits := []struct {
		rng    string
		status int
		body   []byte
	}{
		{"", http.StatusOK, data},
		{"bytes=0-99", http.StatusPartialContent, data[:100]},
		{"bytes=100-", http.StatusPartialContent, data[100:]},
		{"", http.StatusOK, data},
		{"bytes=-10", http.StatusPartialContent, data[len(data)-10:]},
	}
	for i, hit := range hits {
		rng, want, wantStatus := hit.rng, hit.body, hit.status
		resp, body, err := fetch(srv.Client(), url, "Range", rng)
		if err != nil || resp.StatusCode != wantStatus || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, want) {
			t.Fatalf("hit %d (Range %q): err %v, status %d, %d bytes; want %d with the right %d bytes",
				i, rng, err, resp.StatusCode, len(body), wantStatus, len(want))
		}
		// The handler gives the descriptor back after the client has its
		// last byte: wait a moment for it.
		var perEntry, open int
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if perEntry, open = spares(); perEntry == 1 && open == 1 {
				break
			}
		}
		if perEntry != 1 || open != 1 {
			t.Fatalf("after hit %d: %d pooled descriptors for the entry, %d open in the store; want 1 and 1", i, perEntry, open)
		}
	}

	if !h.store.purge(ckey) {
		t.Fatal("purge found no entry")
	}
	if _, open := spares(); open != 0 {
		t.Fatalf("after the purge: %d descriptors still open", open)
	}

	// A new entry for the key does not inherit the old one's descriptors.
	storeObject(t, h, srv.URL, "v/a.mp4")
	mustFetch(t, srv.Client(), url)
	old, _ := h.store.lookup(ckey, time.Now())
	storeAgain := func() {
		h.store.mu.Lock()
		defer h.store.mu.Unlock()
		cur := h.store.entries[ckey]
		h.store.insertLocked(ckey, cur.path, cur.meta, true, cur.diskBytes, cur.id, time.Now())
	}
	storeAgain()
	if _, open := spares(); open != 0 {
		t.Fatalf("after the entry was replaced: %d descriptors still open", open)
	}
	if f := h.store.takeSpare(&old); f != nil {
		t.Fatal("the replaced entry's snapshot still hands out descriptors")
	}
}

// TestDestructedStoreKeepsNothingOpen checks that the store of a config
// gone for good closes its pooled descriptors and does not pool those of
// requests still draining.
func TestDestructedStoreKeepsNothingOpen(t *testing.T) {
	data := objectBytes(1000)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	srv := httptest.NewServer(handlerFor(h))
	t.Cleanup(srv.Close)
	storeObject(t, h, srv.URL, "v/a.mp4")
	if resp, _ := get(t, srv.URL+"/v/a.mp4"); resp.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("want a HIT, got %q", resp.Header.Get("X-Cache-Status"))
	}
	e, _ := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now())
	draining, err := os.Open(e.path)
	if err != nil {
		t.Fatal(err)
	}

	if err := h.store.Destruct(); err != nil {
		t.Fatal(err)
	}
	h.store.putSpare(&e, draining)
	h.store.mu.Lock()
	open := h.store.open
	h.store.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d descriptors open after Destruct, want 0", open)
	}
	if _, err := draining.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("a draining request's descriptor was kept: Stat says %v", err)
	}
}
