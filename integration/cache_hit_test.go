package integration

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Once an object is in the cache, everything a browser or a CDN asks of
// it is answered from disk: not one request reaches S3.
func TestHitsAreServedFromDiskWithoutS3(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyOneMB)
	path := urlPath(obj.Key)
	wantMissFromS3(t, obj)
	waitEntry(t, dir, obj)

	lastModified := get(t, path).header.Get("Last-Modified")
	if lastModified == "" {
		t.Fatal("a HIT has no Last-Modified")
	}
	size := obj.Size
	cases := []struct {
		name    string
		method  string
		headers []string
		check   func(t *testing.T, r response)
	}{
		{"GET", http.MethodGet, nil, func(t *testing.T, r response) {
			wantFromCache(t, r, obj, "HIT")
			if got := r.header.Get("Accept-Ranges"); got != "bytes" {
				t.Errorf("Accept-Ranges = %q, want bytes", got)
			}
		}},
		{"HEAD", http.MethodHead, nil, func(t *testing.T, r response) {
			if r.status != http.StatusOK || r.length != size || len(r.body) != 0 {
				t.Errorf("status %d, Content-Length %d, %d body bytes; want 200, %d, none", r.status, r.length, len(r.body), size)
			}
			if got := r.header.Get("ETag"); got != obj.ETag {
				t.Errorf("ETag = %q, want %q", got, obj.ETag)
			}
			wantMediaHeaders(t, r, "HIT")
		}},
		{"single range", http.MethodGet, []string{"Range: bytes=1000-1999"}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPartialContent, obj.Body[1000:2000], "HIT")
			wantContentRange(t, r, fmt.Sprintf("bytes 1000-1999/%d", size))
		}},
		{"suffix range", http.MethodGet, []string{"Range: bytes=-10"}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPartialContent, obj.Body[size-10:], "HIT")
			wantContentRange(t, r, fmt.Sprintf("bytes %d-%d/%d", size-10, size-1, size))
		}},
		{"several ranges", http.MethodGet, []string{"Range: bytes=0-9,500000-500099,-5"}, func(t *testing.T, r response) {
			if r.status != http.StatusPartialContent || r.readErr != nil || r.length != int64(len(r.body)) {
				t.Fatalf("status %d, Content-Length %d, %d bytes read (error %v); want a complete 206", r.status, r.length, len(r.body), r.readErr)
			}
			wantMediaHeaders(t, r, "HIT")
			parts := byteranges(t, r.header.Get("Content-Type"), r.body)
			want := []struct{ from, to int64 }{{0, 9}, {500000, 500099}, {size - 5, size - 1}}
			if len(parts) != len(want) {
				t.Fatalf("%d parts, want %d", len(parts), len(want))
			}
			for i, w := range want {
				p := parts[i]
				if cr := fmt.Sprintf("bytes %d-%d/%d", w.from, w.to, size); p.contentRange != cr {
					t.Errorf("part %d: Content-Range %q, want %q", i, p.contentRange, cr)
				}
				if p.contentType != obj.ContentType {
					t.Errorf("part %d: Content-Type %q, want %q", i, p.contentType, obj.ContentType)
				}
				if string(p.body) != string(obj.Body[w.from:w.to+1]) {
					t.Errorf("part %d: wrong bytes", i)
				}
			}
		}},
		{"unsatisfiable range", http.MethodGet, []string{fmt.Sprintf("Range: bytes=%d-", size)}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusRequestedRangeNotSatisfiable, nil, "HIT")
			wantContentRange(t, r, fmt.Sprintf("bytes */%d", size))
		}},
		{"If-None-Match", http.MethodGet, []string{"If-None-Match: " + obj.ETag}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusNotModified, nil, "HIT")
		}},
		{"If-None-Match on HEAD", http.MethodHead, []string{"If-None-Match: " + obj.ETag}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusNotModified, nil, "HIT")
		}},
		{"If-None-Match of another version", http.MethodGet, []string{`If-None-Match: "0123456789abcdef"`}, func(t *testing.T, r response) {
			wantFromCache(t, r, obj, "HIT")
		}},
		{"If-Modified-Since", http.MethodGet, []string{"If-Modified-Since: " + lastModified}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusNotModified, nil, "HIT")
		}},
		{"If-Modified-Since earlier", http.MethodGet, []string{"If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"}, func(t *testing.T, r response) {
			wantFromCache(t, r, obj, "HIT")
		}},
		{"If-Match mismatch", http.MethodGet, []string{`If-Match: "0123456789abcdef"`}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPreconditionFailed, nil, "HIT")
		}},
		{"If-Range matching", http.MethodGet, []string{"Range: bytes=0-99", "If-Range: " + obj.ETag}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPartialContent, obj.Body[:100], "HIT")
		}},
		{"If-Range stale", http.MethodGet, []string{"Range: bytes=0-99", `If-Range: "0123456789abcdef"`}, func(t *testing.T, r response) {
			wantFromCache(t, r, obj, "HIT")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			c.check(t, do(t, c.method, path, c.headers...))
			wantS3Requests(t, 0)
		})
	}
}

func wantContentRange(t *testing.T, r response, want string) {
	t.Helper()
	if got := r.header.Get("Content-Range"); got != want {
		t.Errorf("Content-Range = %q, want %q", got, want)
	}
}

// Every kind of sample, the empty object and the UTF-8 key included, is
// stored and then served byte-exact from disk.
func TestEverySampleIsAHitByteExact(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	for _, key := range allObjectKeys() {
		t.Run(key, func(t *testing.T) {
			obj := env.objects.Get(key)
			if obj.Size == 0 {
				// S3 refuses a range of an empty object (416); a HEAD
				// then says it is empty.
				env.proxy.Reset()
				wantGet(t, obj, "MISS")
				if got := env.proxy.Counts(); len(got) != 2 || got["GET "+s3Path(privateBucket, obj.S3Key)] != 1 || got["HEAD "+s3Path(privateBucket, obj.S3Key)] != 1 {
					t.Errorf("S3 saw %v for the empty object, want a GET and a HEAD", got)
				}
			} else {
				wantMissFromS3(t, obj)
			}
			waitEntry(t, dir, obj)
			wantHitWithoutS3(t, obj)
		})
	}
}
