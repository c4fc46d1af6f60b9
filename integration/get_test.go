package integration

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

func TestGetServesEachObjectKindByteExact(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, key := range allObjectKeys() {
		t.Run(key, func(t *testing.T) {
			obj := env.objects.Get(key)
			env.proxy.Reset()
			r := get(t, urlPath(key))
			wantBody(t, r, http.StatusOK, obj.Body)
			if got := r.header.Get("Content-Type"); got != obj.ContentType {
				t.Errorf("Content-Type = %q, want %q", got, obj.ContentType)
			}
			if got := r.header.Get("ETag"); got != obj.ETag {
				t.Errorf("ETag = %q, want S3's %q", got, obj.ETag)
			}
			if r.header.Get("Last-Modified") == "" {
				t.Error("Last-Modified missing")
			}
			wantMediaHeaders(t, r, "MISS")
			if obj.Size == 0 {
				// S3 refuses a range of an empty object; it is then
				// asked for whole.
				if got := rangeCounts(); len(got) != 2 || got[""] != 1 {
					t.Errorf("S3 saw %v for the empty object, want the first chunk refused, then a plain GET", got)
				}
				return
			}
			wantS3Chunks(t, obj, 0, obj.Size-1, true)
		})
	}
}

func TestHeadGivesLengthAndNoBody(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, key := range allObjectKeys() {
		t.Run(key, func(t *testing.T) {
			obj := env.objects.Get(key)
			env.proxy.Reset()
			r := do(t, http.MethodHead, urlPath(key))
			if r.status != http.StatusOK {
				t.Fatalf("status = %d, want 200", r.status)
			}
			if r.length != obj.Size {
				t.Errorf("Content-Length = %d, want %d", r.length, obj.Size)
			}
			if len(r.body) != 0 {
				t.Errorf("HEAD body has %d bytes, want none", len(r.body))
			}
			if got := r.header.Get("Content-Type"); got != obj.ContentType {
				t.Errorf("Content-Type = %q, want %q", got, obj.ContentType)
			}
			wantMediaHeaders(t, r, "MISS")
			// A HEAD must be a HeadObject, never a GetObject whose body
			// is thrown away.
			if n := env.proxy.CountFor(http.MethodHead, s3Path(privateBucket, key)); n != 1 {
				t.Errorf("HEAD %s at S3 = %d, want 1: %v", key, n, env.proxy.Counts())
			}
			wantS3Requests(t, 1)
		})
	}
}

func TestLargeObjectStreamsByteExact(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyThirtyMB)
	env.proxy.Reset()
	r := get(t, urlPath(obj.Key))
	wantBody(t, r, http.StatusOK, obj.Body)
	wantS3Chunks(t, obj, 0, obj.Size-1, true)
}

func TestQueryStringIsNotPartOfTheKey(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	for _, query := range []string{
		"?foo=bar", "?versionId=123&x-id=ListObjects", "?", "?acl", "?list-type=2",
		"?response-content-type=text/html", "?partNumber=1", "?uploads", "?tagging", "?torrent",
		"?X-Amz-Credential=AKIAEVIL%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00",
	} {
		t.Run(query, func(t *testing.T) {
			defer recordAbuse(t, "query strings never reach S3", query)
			env.proxy.Reset()
			r := get(t, urlPath(obj.Key)+query)
			wantBody(t, r, http.StatusOK, obj.Body)
			if got := r.header.Get("Content-Type"); got != obj.ContentType {
				t.Errorf("Content-Type = %q, want the object's %q", got, obj.ContentType)
			}
			reqs := env.proxy.Requests()
			if len(reqs) != 1 {
				t.Fatalf("S3 requests = %v, want one", env.proxy.Counts())
			}
			if reqs[0].Path != s3Path(privateBucket, obj.Key) {
				t.Errorf("S3 path = %q, want %q", reqs[0].Path, s3Path(privateBucket, obj.Key))
			}
			// The SDK adds its own x-id=GetObject; nothing from the
			// client's query may reach S3.
			for _, leaked := range []string{"foo", "versionId", "ListObjects", "acl", "list-type", "response-", "partNumber", "uploads", "tagging", "torrent", "AKIAEVIL"} {
				if containsFold(reqs[0].RawQuery, leaked) {
					t.Errorf("S3 query %q carries the client's %q", reqs[0].RawQuery, leaked)
				}
			}
		})
	}
}

// The client must get the first bytes while S3 is still sending: a
// handler that buffered the object would hold them until S3 finished.
func TestLargeObjectIsStreamedNotBuffered(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyThirtyMB)
	const stall = 3 * time.Second
	env.proxy.SetFault(s3test.Fault{StallAfter: 2 << 20, Stall: stall})

	start := time.Now()
	resp, err := send(t, func() (*http.Response, error) { return client().Get(env.baseURL() + urlPath(obj.Key)) })
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("reading the first MiB: %v", err)
	}
	if elapsed := time.Since(start); elapsed > stall/2 {
		t.Errorf("first MiB took %s, while S3 paused for %s after 2 MiB: the body is buffered", elapsed, stall)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the rest: %v", err)
	}
	if got := s3test.SHA256Hex(append(head, rest...)); got != obj.SHA256 {
		t.Errorf("sha256 %s, want %s", got, obj.SHA256)
	}
}
