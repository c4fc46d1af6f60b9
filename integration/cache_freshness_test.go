package integration

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Cache-Control values stored with objects, as an uploader sets them.
const (
	mastodonCacheControl = "public, max-age=315576000, immutable"
	oneSecond            = "public, max-age=1"
)

// staleWithoutUpdating is use_stale minus "updating": an expired entry is
// then revalidated while the client waits, so REVALIDATED, EXPIRED and
// STALE can be seen.
const staleWithoutUpdating = "use_stale error timeout http_500 http_502 http_503 http_504"

// expire waits until an entry stored with max-age=1 (or valid 1s) has
// expired.
func expire() { time.Sleep(1200 * time.Millisecond) }

// seedMedia uploads a generated image under this test's key name, stored
// with cacheControl, and returns it as seeded.
func seedMedia(t *testing.T, name, cacheControl string, seed uint8) s3test.Seeded {
	t.Helper()
	obj := s3test.Object{Key: testKey(t, name), Body: s3test.PNG(24, 24, seed), ContentType: "image/png", CacheControl: cacheControl}
	return seedObjects(t, obj)[obj.Key]
}

// wantConditionalGet checks that S3 saw exactly one request since the
// last reset: a GET of obj carrying obj's ETag as If-None-Match, answered
// with status.
func wantConditionalGet(t *testing.T, obj s3test.Seeded, etag string, status int) {
	t.Helper()
	// The proxy records its answer once it has sent it, which may be a
	// moment after the handler has read it.
	var reqs []s3test.Request
	waitFor(time.Second, func() bool {
		reqs = env.proxy.Requests()
		return len(reqs) > 0 && reqs[0].Status != 0
	})
	if len(reqs) != 1 || reqs[0].Method != http.MethodGet || reqs[0].Path != s3Path(privateBucket, obj.S3Key) {
		t.Fatalf("S3 saw %v, want one GET of %s", env.proxy.Counts(), obj.Key)
	}
	if got := reqs[0].Header.Get("If-None-Match"); got != etag {
		t.Errorf("the GET carried If-None-Match %q, want the entry's ETag %q", got, etag)
	}
	if reqs[0].Status != status {
		t.Errorf("S3 answered %d, want %d", reqs[0].Status, status)
	}
	if status == http.StatusNotModified && reqs[0].BodyBytes != 0 {
		t.Errorf("S3 sent %d body bytes with its 304", reqs[0].BodyBytes)
	}
}

// Mastodon's own Cache-Control keeps media fresh for ten years, whatever
// valid says.
func TestImmutableMediaStaysFresh(t *testing.T) {
	obj := seedMedia(t, "immutable.png", mastodonCacheControl, 1)
	dir := t.TempDir()
	loadCache(t, dir, "valid 200 1s", staleWithoutUpdating)
	fillEntry(t, dir, obj)
	expire()
	wantHitWithoutS3(t, obj)
}

// An expired entry is revalidated with one conditional GET, however many
// clients want it; S3's 304 is answered from the entry without a body
// download. The object's max-age still applies after that.
func TestExpiredEntryIsRevalidated(t *testing.T) {
	obj := seedMedia(t, "short.png", oneSecond, 2)
	dir := t.TempDir()
	loadCache(t, dir, staleWithoutUpdating)
	fillEntry(t, dir, obj)

	// Ten clients at once on the expired entry share one revalidation.
	expire()
	env.proxy.Reset()
	results := make([]streamed, 10)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i] = stream(context.Background(), http.MethodGet, env.baseURL()+urlPath(obj.Key), nil) })
	}
	wg.Wait()
	revalidated := 0
	for i, r := range results {
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("client %d: %s", i, why)
			continue
		}
		// A client whose lookup comes after the refresh landed finds a
		// fresh entry: a HIT, as in nginx. None may go to S3 itself.
		switch got := r.header.Get("X-Cache-Status"); got {
		case "REVALIDATED":
			revalidated++
		case "HIT":
		default:
			t.Errorf("client %d: X-Cache-Status = %q, want REVALIDATED (or HIT once refreshed)", i, got)
		}
	}
	if revalidated == 0 {
		t.Errorf("no client saw the revalidation")
	}
	wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
	wantHitWithoutS3(t, obj)

	// Revalidated, the entry is fresh for the object's max-age again, not
	// for valid's 48h: a 304 only refreshes the stored response, whose
	// Cache-Control still applies (RFC 9111, section 4.3.4).
	expire()
	env.proxy.Reset()
	wantGet(t, obj, "REVALIDATED")
	wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
}

// An object replaced in S3 replaces the expired entry: EXPIRED, with the
// new bytes, then HIT with them.
func TestChangedObjectReplacesTheExpiredEntry(t *testing.T) {
	name := "replaced.png"
	old := seedMedia(t, name, oneSecond, 3)
	dir := t.TempDir()
	loadCache(t, dir, staleWithoutUpdating)
	fillEntry(t, dir, old)

	updated := seedMedia(t, name, oneSecond, 4)
	if updated.ETag == old.ETag {
		t.Fatalf("the new version has the old ETag %s", old.ETag)
	}
	expire()
	env.proxy.Reset()
	wantGet(t, updated, "EXPIRED")
	// The revalidation is the GET of the first slice, conditional: S3
	// sends that slice of the new version.
	wantConditionalGet(t, updated, old.ETag, http.StatusPartialContent)
	waitEntry(t, dir, updated)
	wantHitWithoutS3(t, updated)

	// Deleted from S3 (Mastodon removing media): once the entry has
	// expired, the object is gone for clients too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := env.gateway.Client().DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(privateBucket), Key: aws.String(updated.S3Key)}); err != nil {
		t.Fatal(err)
	}
	expire()
	env.proxy.Reset()
	wantEmptyError(t, get(t, urlPath(updated.Key)), http.StatusNotFound)
	wantOneS3Get(t, updated)
	env.proxy.Reset()
	r := get(t, urlPath(updated.Key))
	wantEmptyError(t, r, http.StatusNotFound)
	wantCacheStatus(t, r, "HIT")
	wantS3Requests(t, 0)
}

// no-store, no-cache and private objects are never stored: each request
// is one S3 GET. The first is the GET of the first slice, whose answer
// (the whole object, here) goes to the client; then, as with Varnish's
// hit-for-miss, the key goes straight to S3 for a while.
func TestUncacheableObjectsAreNeverStored(t *testing.T) {
	for _, cc := range []string{"no-store", "no-cache", "private, max-age=600"} {
		t.Run(cc, func(t *testing.T) {
			obj := seedMedia(t, "private.png", cc, 5)
			dir := t.TempDir()
			loadCache(t, dir)
			for range 3 {
				env.proxy.Reset()
				wantGet(t, obj, "MISS")
				wantOneS3Get(t, obj)
			}
			wantNoEntry(t, dir)
			wantTempEmpty(t, dir)
		})
	}
}

// valid applies when upstream freshness headers are ignored.
func TestValidWithIgnoredHeaders(t *testing.T) {
	obj := seedMedia(t, "ignored.png", mastodonCacheControl, 6)
	dir := t.TempDir()
	loadCache(t, dir, "valid 200 1s", "ignore_headers Cache-Control Expires", staleWithoutUpdating)
	fillEntry(t, dir, obj)
	wantHitWithoutS3(t, obj)
	expire()
	env.proxy.Reset()
	wantGet(t, obj, "REVALIDATED")
	wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
}

// S3's "no such key" is cached for valid 404 (1m by default), so a scan
// of missing keys does not become a scan of the bucket.
func TestMissingKeysAreCachedBriefly(t *testing.T) {
	missing := "media_attachments/files/000/000/000/404/original/gone.png"
	for _, c := range []struct {
		name     string
		extra    []string
		statuses []string // X-Cache-Status of each request
		s3       int
	}{
		{"default", nil, []string{"MISS", "HIT", "HIT"}, 1},
		{"valid 404 off", []string{"valid 404 off"}, []string{"MISS", "MISS", "MISS"}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			loadCache(t, dir, c.extra...)
			for i, want := range c.statuses {
				method := http.MethodGet
				if i == 2 {
					method = http.MethodHead
				}
				r := do(t, method, urlPath(missing))
				wantEmptyError(t, r, http.StatusNotFound)
				wantCacheStatus(t, r, want)
			}
			if n := env.proxy.Count(); n != c.s3 {
				t.Errorf("S3 requests = %d, want %d: %v", n, c.s3, env.proxy.Counts())
			}
			if c.s3 > 1 {
				wantNoEntry(t, dir)
			}
		})
	}
}
