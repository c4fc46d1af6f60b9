package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Request targets that must never become an S3 key. They are sent byte
// for byte, so no client library gets to clean them first.
func TestMalformedPathsAre400WithoutTouchingS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	targets := []string{
		"/../etc/passwd",
		"/media_attachments/../accounts/avatars/x.png",
		"/%2e%2e/x",
		"/%2E%2E/x",
		"/media_attachments/%2e%2e/%2e%2e/etc/passwd",
		"/./x.png",
		"/media_attachments/./x.png",
		"/%2e/x.png",
		"/a%2Fb",
		"/a%2fb",
		"/media_attachments%2F..%2F..%2Fetc%2Fpasswd",
		"/a%5Cb",
		"/a%5cb",
		`/a\b`,
		`/media_attachments\..\x.png`,
		"/a%00b",
		"/a%00",
		"//x",
		"//" + s3test.KeyOriginalPNG,
		"/media_attachments//files/x.png",
		"/a%01b",
		"/a%0Ab",
		"/a%0D%0ASet-Cookie:%20x=y",
		"/a%1Fb",
		"/a%7Fb",
		"/a%09b",
		"/a%FFb",
		"/a%C3%28b",
	}
	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			env.proxy.Reset()
			r := rawRequest(t, http.MethodGet, target)
			wantEmptyError(t, r, http.StatusBadRequest)
			wantS3Requests(t, 0)
		})
	}
}

// Raw control bytes in the request line never reach the handler: Go's
// HTTP server refuses them. What matters is that S3 is not asked.
func TestRawControlBytesNeverReachS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, target := range []string{"/a\x01b", "/a\x7fb", "/a\x00b"} {
		env.proxy.Reset()
		r := rawRequest(t, http.MethodGet, target)
		if r.status != http.StatusBadRequest {
			t.Errorf("%q: status = %d, want 400", target, r.status)
		}
		wantS3Requests(t, 0)
	}
}

func TestDirectoryPathsAre404WithoutListing(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, target := range []string{"/", "/media_attachments/", "/media_attachments/files/109/876/543/210/original/", "/?list-type=2", "/?prefix=media"} {
		t.Run(target, func(t *testing.T) {
			env.proxy.Reset()
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				r := rawRequest(t, method, target)
				wantEmptyError(t, r, http.StatusNotFound)
			}
			wantS3Requests(t, 0)
		})
	}
}

func TestStripPathPrefixMapsURLToKey(t *testing.T) {
	root := t.TempDir()
	local := s3test.PNG(5, 5, 99)
	if err := os.MkdirAll(filepath.Join(root, "local"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "local", "only-here.png"), local, 0o644); err != nil {
		t.Fatal(err)
	}
	load(t, siteConfig(blockFor("strip_path_prefix /system", "root "+root)))
	obj := env.objects.Get(s3test.KeyOriginalPNG)

	t.Run("under the prefix comes from S3 without it", func(t *testing.T) {
		env.proxy.Reset()
		r := get(t, "/system"+urlPath(obj.Key))
		wantBody(t, r, http.StatusOK, obj.Body)
		if n := env.proxy.CountFor(http.MethodGet, s3Path(privateBucket, obj.Key)); n != 1 {
			t.Errorf("S3 requests = %v, want one GET of %s", env.proxy.Counts(), obj.Key)
		}
		wantS3Requests(t, 1)
	})
	t.Run("UTF-8 and spaces survive stripping", func(t *testing.T) {
		utf := env.objects.Get(s3test.KeySpaceUTF8)
		wantBody(t, get(t, "/system"+urlPath(utf.Key)), http.StatusOK, utf.Body)
	})
	t.Run("local root is looked up after stripping", func(t *testing.T) {
		env.proxy.Reset()
		r := get(t, "/system/local/only-here.png")
		wantBody(t, r, http.StatusOK, local)
		if got := r.header.Get("X-Cache-Status"); got != "BYPASS" {
			t.Errorf("X-Cache-Status = %q, want BYPASS", got)
		}
		wantS3Requests(t, 0)
	})
	for _, target := range []string{urlPath(obj.Key), "/systemd" + urlPath(obj.Key), "/sys", "/system", "/system/", "/other/system" + urlPath(obj.Key)} {
		t.Run("outside the prefix: "+target, func(t *testing.T) {
			env.proxy.Reset()
			wantEmptyError(t, rawRequest(t, http.MethodGet, target), http.StatusNotFound)
			wantS3Requests(t, 0)
		})
	}
}

func TestPrefixIsPrependedToTheKey(t *testing.T) {
	for _, prefix := range []string{keyPrefix, keyPrefix + "/", "/" + keyPrefix + "/"} {
		t.Run(prefix, func(t *testing.T) {
			load(t, siteConfig(blockFor("prefix "+prefix)))
			obj := env.prefixed.Get(s3test.KeyOriginalPNG)
			r := get(t, urlPath(obj.Key))
			wantBody(t, r, http.StatusOK, obj.Body)
			if n := env.proxy.CountFor(http.MethodGet, s3Path(privateBucket, keyPrefix+"/"+obj.Key)); n != 1 {
				t.Errorf("S3 requests = %v, want one GET of %s/%s", env.proxy.Counts(), keyPrefix, obj.Key)
			}
			only := env.prefixed.Get("only/under/prefix.png")
			wantBody(t, get(t, urlPath(only.Key)), http.StatusOK, only.Body)

			// An object that exists only at the bucket root is not
			// reachable through a prefixed handler.
			env.proxy.Reset()
			wantEmptyError(t, do(t, http.MethodGet, urlPath(s3test.KeySmallPNG)), http.StatusNotFound)
			wantS3Requests(t, 1)
		})
	}
}

func TestStripPathPrefixAndPrefixTogether(t *testing.T) {
	load(t, siteConfig(blockFor("strip_path_prefix /system/", "prefix "+keyPrefix)))
	obj := env.prefixed.Get(s3test.KeyOriginalPNG)
	wantBody(t, get(t, "/system"+urlPath(obj.Key)), http.StatusOK, obj.Body)
	if n := env.proxy.CountFor(http.MethodGet, s3Path(privateBucket, keyPrefix+"/"+obj.Key)); n != 1 {
		t.Errorf("S3 requests = %v, want one GET of %s/%s", env.proxy.Counts(), keyPrefix, obj.Key)
	}
}
