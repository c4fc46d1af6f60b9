package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

func TestRangeFromS3Is206ByteExact(t *testing.T) {
	load(t, siteConfig(blockFor()))
	big := env.objects.Get(s3test.KeyThirtyMB)
	small := env.objects.Get(s3test.KeyOriginalPNG)
	cases := []struct {
		name     string
		obj      s3test.Seeded
		rangeHdr string
		from, to int64 // inclusive
	}{
		{"first bytes", small, "bytes=0-9", 0, 9},
		{"suffix", small, "bytes=-5", small.Size - 5, small.Size - 1},
		{"open ended", small, "bytes=50-", 50, small.Size - 1},
		{"middle of 30 MB", big, "bytes=15000000-15999999", 15000000, 15999999},
		{"last byte of 30 MB", big, fmt.Sprintf("bytes=%d-", big.Size-1), big.Size - 1, big.Size - 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			r := get(t, urlPath(c.obj.Key), "Range: "+c.rangeHdr)
			wantBody(t, r, http.StatusPartialContent, c.obj.Body[c.from:c.to+1])
			want := fmt.Sprintf("bytes %d-%d/%d", c.from, c.to, c.obj.Size)
			if got := r.header.Get("Content-Range"); got != want {
				t.Errorf("Content-Range = %q, want %q", got, want)
			}
			wantMediaHeaders(t, r, "MISS")
			// A suffix range goes to S3 as it is; the others a chunk at
			// a time.
			if reqs := env.proxy.Requests(); strings.HasPrefix(c.rangeHdr, "bytes=-") {
				if len(reqs) != 1 || reqs[0].Header.Get("Range") != c.rangeHdr {
					t.Errorf("S3 saw %v; want one GET with Range %q", describeS3Requests(), c.rangeHdr)
				}
			} else {
				wantS3Chunks(t, c.obj, c.from, c.to, strings.HasSuffix(c.rangeHdr, "-"))
			}
		})
	}
}

func TestRangeWithIfRangeIsDroppedForAFull200(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	for _, ifRange := range []string{obj.ETag, `"stale"`, "Mon, 01 Jan 2001 00:00:00 GMT"} {
		t.Run(ifRange, func(t *testing.T) {
			env.proxy.Reset()
			r := get(t, urlPath(obj.Key), "Range: bytes=0-9", "If-Range: "+ifRange)
			wantBody(t, r, http.StatusOK, obj.Body)
			// The whole object, a chunk at a time: the client's range
			// is not forwarded, nor its If-Range.
			wantS3Chunks(t, obj, 0, obj.Size-1, true)
			for _, req := range env.proxy.Requests() {
				if got := req.Header.Get("If-Range"); got != "" {
					t.Errorf("If-Range %q forwarded to S3", got)
				}
			}
		})
	}
}

func TestConditionalRequestsAreForwardedToS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	first := get(t, urlPath(obj.Key))
	lastModified, err := http.ParseTime(first.header.Get("Last-Modified"))
	if err != nil {
		t.Fatalf("Last-Modified %q: %v", first.header.Get("Last-Modified"), err)
	}
	// S3 ignores an If-Modified-Since in the future (versitygw and AWS
	// alike), and compares to the sub-second mtime. A date strictly after
	// the object was written and not in the future gives a real 304;
	// wait (at most two seconds) until such a date exists.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(lastModified.Add(2*time.Second)) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	notModifiedSince := time.Now().UTC().Format(http.TimeFormat)
	past := "Mon, 01 Jan 2001 00:00:00 GMT"

	cases := []struct {
		name    string
		header  string
		forward string // header S3 must receive
		status  int
	}{
		{"if-none-match current", "If-None-Match: " + obj.ETag, "If-None-Match", http.StatusNotModified},
		{"if-none-match other", `If-None-Match: "other"`, "If-None-Match", http.StatusOK},
		{"if-modified-since after write", "If-Modified-Since: " + notModifiedSince, "If-Modified-Since", http.StatusNotModified},
		{"if-modified-since before write", "If-Modified-Since: " + past, "If-Modified-Since", http.StatusOK},
		{"if-match current", "If-Match: " + obj.ETag, "If-Match", http.StatusOK},
		{"if-match other", `If-Match: "other"`, "If-Match", http.StatusPreconditionFailed},
		{"if-unmodified-since before write", "If-Unmodified-Since: " + past, "If-Unmodified-Since", http.StatusPreconditionFailed},
		// The first chunk of what the client asked: S3 says it is past
		// the end.
		{"unsatisfiable range", "Range: bytes=999999-", "Range", http.StatusRequestedRangeNotSatisfiable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			r := do(t, http.MethodGet, urlPath(obj.Key), c.header)
			var body []byte
			if c.status == http.StatusOK {
				body = obj.Body
			}
			wantOutcome(t, r, c.status, body, "MISS")
			reqs := env.proxy.Requests()
			if len(reqs) != 1 {
				t.Fatalf("S3 requests = %v, want one", env.proxy.Counts())
			}
			_, want, _ := cutHeader(c.header)
			if c.forward == "Range" {
				want = "bytes=999999-2048574"
			}
			if got := reqs[0].Header.Get(c.forward); got != want {
				t.Errorf("S3 got %s %q, want %q", c.forward, got, want)
			}
		})
	}
}

func TestConditionalHeadIsForwardedToS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	r := do(t, http.MethodHead, urlPath(obj.Key), "If-None-Match: "+obj.ETag)
	if r.status != http.StatusNotModified {
		t.Fatalf("status = %d, want 304", r.status)
	}
	wantMediaHeaders(t, r, "MISS")
	if n := env.proxy.CountFor(http.MethodHead, s3Path(privateBucket, obj.Key)); n != 1 {
		t.Errorf("S3 requests = %v, want one HEAD", env.proxy.Counts())
	}
}
