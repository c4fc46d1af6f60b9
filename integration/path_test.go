package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Request targets that must never become an S3 key or a file name. They
// are sent byte for byte, so no client library gets to clean them first,
// to a site whose root has a secret file next to it: a traversal that
// worked would serve it.
func TestMalformedPathsAre400WithoutTouchingS3(t *testing.T) {
	lt := newLocalTree(t)
	load(t, siteConfig(blockFor("root "+lt.root)))
	targets := []string{
		// Dot segments, plain and percent-encoded in every case mix.
		"/../etc/passwd",
		"/media_attachments/../accounts/avatars/x.png",
		"/%2e%2e/x",
		"/%2E%2E/x",
		"/%2e%2E/x",
		"/.%2e/x",
		"/%2e./x",
		"/media_attachments/%2e%2e/%2e%2e/etc/passwd",
		"/media_attachments/..",
		"/media_attachments/%2e%2e",
		"/./x.png",
		"/media_attachments/./x.png",
		"/%2e/x.png",
		"/../" + filepath.Base(lt.outside) + "/secret.txt",
		"/static/../../" + filepath.Base(lt.outside) + "/secret.txt",
		"/%2e%2e/" + filepath.Base(lt.outside) + "/secret.txt",
		// Encoded separators: after decoding they would be real ones.
		"/a%2Fb",
		"/a%2fb",
		"/media_attachments%2F..%2F..%2Fetc%2Fpasswd",
		"/..%2f..%2fetc%2fpasswd",
		"/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
		"/a%5Cb",
		"/a%5cb",
		"/..%5c..%5cetc%5cpasswd",
		"/%2e%2e%5c%2e%2e%5cwin.ini",
		// Beside a character Go's URL escaping would re-encode ({, }, |,
		// ", ^), so that EscapedPath falls back to re-encoding the
		// decoded path and a %2F in it turns into a real /.
		"/odd%2Fa{b.png",
		"/odd%2fa}b.png",
		"/odd%2Fa|b.png",
		"/odd%2Fa^b.png",
		"/odd%5Ca{b.png",
		"/media_attachments{%2F..%2F..%2Fetc%2Fpasswd",
		// Backslashes as sent, which Windows-minded servers treat as /.
		`/a\b`,
		`/media_attachments\..\x.png`,
		`/..\..\etc\passwd`,
		`/static\escape.txt`,
		// NUL, which ends a C string early.
		"/a%00b",
		"/a%00",
		"/x.png%00.txt",
		"/static/escape.txt%00",
		// Empty segments.
		"//x",
		"//" + s3test.KeyOriginalPNG,
		"/media_attachments//files/x.png",
		"/static//escape.txt",
		// Control characters and invalid UTF-8, including the overlong
		// encodings of '.', '/' and '\' that decoders once accepted.
		"/a%01b",
		"/a%0Ab",
		"/a%0D%0ASet-Cookie:%20x=y",
		"/a%1Fb",
		"/a%7Fb",
		"/a%09b",
		"/a%FFb",
		"/a%C3%28b",
		"/%c0%ae%c0%ae/etc/passwd",
		"/%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
		"/%e0%80%ae%e0%80%ae/etc/passwd",
		"/%f0%80%80%ae%f0%80%80%ae/x",
		"/..%c0%af..%c0%afetc%c0%afpasswd",
		"/..%c1%9c..%c1%9cwin.ini",
		"/%c0%2e%c0%2e/x",
		"/%ed%a0%80.png",
		// Not a path at all.
		"*",
		"x.png",
		// Bad percent-escapes: refused by Go's server before the handler.
		"/%u002e%u002e/etc/passwd",
		"/%%32%65%%32%65/x",
		"/a%",
		"/a%zzb",
	}
	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			defer recordAbuse(t, "path traversal and encoding", target)
			env.proxy.Reset()
			r := rawRequest(t, http.MethodGet, target)
			wantRefused(t, r, http.StatusBadRequest)
			if bytes.Contains(r.body, lt.outsideSecret) {
				t.Error("served the file outside the root")
			}
			wantS3Requests(t, 0)
		})
	}
}

// Paths that look like an attack but decode to ordinary (if odd) names:
// double-encoded dots, look-alike dots, ";" parameters. They are keys like
// any other: asked of S3 once, verbatim, and a 404 when missing, never
// resolved against the root or the bucket's other keys.
func TestLookalikeTraversalsAreLiteralKeys(t *testing.T) {
	lt := newLocalTree(t)
	load(t, siteConfig(blockFor("root "+lt.root)))
	cases := []struct{ target, key string }{
		{"/%252e%252e/%252e%252e/etc/passwd", "%2e%2e/%2e%2e/etc/passwd"},
		{"/%252e%252e%252fetc%252fpasswd", "%2e%2e%2fetc%2fpasswd"},
		{"/..%252fstatic%252fescape.txt", "..%2fstatic%2fescape.txt"},
		{"/%ef%bc%8e%ef%bc%8e/etc/passwd", "．．/etc/passwd"},
		{"/%e2%80%a5/etc/passwd", "‥/etc/passwd"},
		{"/.../etc/passwd", ".../etc/passwd"},
		{"/..;/etc/passwd", "..;/etc/passwd"},
		{"/static/escape.txt;.png", "static/escape.txt;.png"},
		{"/.htaccess", ".htaccess"},
		{"/media_attachments/..png", "media_attachments/..png"},
		{"/" + strings.Repeat("a/", 500) + "x.png", strings.Repeat("a/", 500) + "x.png"},
		// Past S3's 1024-byte key, or a 255-byte segment: no object can
		// have the key, so it is a 404 without asking S3.
		{"/" + strings.Repeat("a/", 600) + "x.png", ""},
		{"/media/" + strings.Repeat("b", 256) + ".png", ""},
	}
	for _, c := range cases {
		t.Run(c.target, func(t *testing.T) {
			defer recordAbuse(t, "path traversal and encoding", c.target)
			env.proxy.Reset()
			r := rawRequest(t, http.MethodGet, c.target)
			if r.status != http.StatusNotFound && r.status != http.StatusBadRequest {
				t.Errorf("status = %d, want 404 (or 400)", r.status)
			}
			wantRefused(t, r, r.status)
			if bytes.Contains(r.body, lt.outsideSecret) {
				t.Error("served the file outside the root")
			}
			if r.status == http.StatusBadRequest {
				wantS3Requests(t, 0)
				return
			}
			if c.key == "" {
				// Asked again and again, as a scanner would: never S3,
				// never a log line above info.
				from := suiteLogSize(t)
				for range 20 {
					r := rawRequest(t, http.MethodGet, c.target)
					wantRefused(t, r, http.StatusNotFound)
				}
				wantS3Requests(t, 0)
				for _, l := range suiteLogSince(t, from) {
					if bytes.Contains(l, []byte(`"level":"error"`)) || bytes.Contains(l, []byte(`"level":"warn"`)) {
						t.Errorf("a key S3 cannot hold was logged: %s", l)
					}
				}
				return
			}
			reqs := env.proxy.Requests()
			if len(reqs) != 1 || reqs[0].Path != s3Path(privateBucket, c.key) {
				t.Errorf("S3 requests = %v, want one of key %q", env.proxy.Counts(), c.key)
			}
		})
	}
}

// Raw control bytes in the request line never reach the handler: Go's
// HTTP server refuses them. What matters is that S3 is not asked.
func TestRawControlBytesNeverReachS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, target := range []string{"/a\x01b", "/a\x7fb", "/a\x00b", "/a\x1bb", "/a\xffb"} {
		t.Run(fmt.Sprintf("%q", target), func(t *testing.T) {
			defer recordAbuse(t, "path traversal and encoding", fmt.Sprintf("%q", target))
			env.proxy.Reset()
			r := rawRequest(t, http.MethodGet, target)
			wantRefused(t, r, http.StatusBadRequest)
			wantS3Requests(t, 0)
		})
	}
}

// Nothing ever lists the bucket: not a directory path, not S3's own
// listing parameters, whatever the method.
func TestDirectoryPathsAre404WithoutListing(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, target := range []string{
		"/", "/media_attachments/", "/media_attachments/files/109/876/543/210/original/",
		"/?list-type=2", "/?prefix=media", "/?delimiter=/", "/?versions", "/?uploads", "/?acl", "/?policy",
		"/media_attachments/?list-type=2&prefix=", "//", "///",
	} {
		t.Run(target, func(t *testing.T) {
			defer recordAbuse(t, "no listing", target)
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
