package integration

import (
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// localTree is a root directory laid out like Mastodon's public/system,
// with a file that shadows an S3 object, a directory where S3 has a file,
// and symlinks that stay inside or lead outside the root.
type localTree struct {
	root string
	// shadow is the local copy of s3test.KeyOriginalPNG, with other bytes.
	shadow []byte
	// outside is a directory next to root, and outsideSecret the content
	// of its secret.txt, which the escaping symlinks point at.
	outside       string
	outsideSecret []byte
}

func newLocalTree(t *testing.T) localTree {
	t.Helper()
	root := t.TempDir()
	outside := t.TempDir()
	lt := localTree{root: root, outside: outside, shadow: s3test.PNG(30, 30, 200), outsideSecret: []byte("outside the root\n")}

	write := func(rel string, body []byte) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(s3test.KeyOriginalPNG, lt.shadow)
	write("static/inside.png", lt.shadow)
	// Where S3 has a file, the root has a directory: not a regular
	// file, so S3 answers.
	if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(s3test.KeySmallPNG)), 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret.txt")
	if err := os.WriteFile(secret, lt.outsideSecret, 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, os.Symlink(secret, filepath.Join(root, "static", "escape.txt")))
	must(t, os.Symlink(outside, filepath.Join(root, "static", "escapedir")))
	must(t, os.Symlink("../../../../../../../../.."+secret, filepath.Join(root, "static", "relative-escape.txt")))
	must(t, os.Symlink("inside.png", filepath.Join(root, "static", "link-inside.png")))
	// A chain that starts inside the root and ends outside it, a link
	// to the filesystem's root, one to a system file, and a loop.
	must(t, os.Symlink("escape.txt", filepath.Join(root, "static", "chain.txt")))
	must(t, os.Symlink("/", filepath.Join(root, "static", "slash")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(root, "static", "passwd")))
	must(t, os.Symlink("loop-b", filepath.Join(root, "static", "loop-a")))
	must(t, os.Symlink("loop-a", filepath.Join(root, "static", "loop-b")))
	// A FIFO: opening it for reading would block until a writer came.
	must(t, syscall.Mkfifo(filepath.Join(root, "static", "fifo"), 0o644))
	return lt
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestLocalFileWinsOverS3(t *testing.T) {
	lt := newLocalTree(t)
	load(t, siteConfig(blockFor("root "+lt.root)))

	for _, method := range []string{http.MethodGet, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			env.proxy.Reset()
			r := do(t, method, urlPath(s3test.KeyOriginalPNG))
			if r.status != http.StatusOK {
				t.Fatalf("status = %d, want 200", r.status)
			}
			if method == http.MethodGet {
				wantBody(t, r, http.StatusOK, lt.shadow)
			} else if len(r.body) != 0 || r.length != int64(len(lt.shadow)) {
				t.Errorf("HEAD: %d body bytes, Content-Length %d; want 0 and %d", len(r.body), r.length, len(lt.shadow))
			}
			if got := r.header.Get("Content-Type"); got != "image/png" {
				t.Errorf("Content-Type = %q, want image/png", got)
			}
			for _, name := range []string{"ETag", "Last-Modified"} {
				if r.header.Get(name) == "" {
					t.Errorf("%s missing on a local file", name)
				}
			}
			wantMediaHeaders(t, r, "BYPASS")
			wantS3Requests(t, 0)
		})
	}
}

func TestLocalFileRangesAndConditionals(t *testing.T) {
	lt := newLocalTree(t)
	load(t, siteConfig(blockFor("root "+lt.root)))
	path := urlPath(s3test.KeyOriginalPNG)
	first := get(t, path)
	etag, lastModified := first.header.Get("ETag"), first.header.Get("Last-Modified")
	size := len(lt.shadow)

	cases := []struct {
		name    string
		headers []string
		status  int
		body    []byte
	}{
		{"range", []string{"Range: bytes=0-9"}, http.StatusPartialContent, lt.shadow[:10]},
		{"suffix range", []string{"Range: bytes=-7"}, http.StatusPartialContent, lt.shadow[size-7:]},
		{"open range", []string{"Range: bytes=20-"}, http.StatusPartialContent, lt.shadow[20:]},
		{"unsatisfiable range", []string{"Range: bytes=99999-"}, http.StatusRequestedRangeNotSatisfiable, nil},
		{"if-none-match", []string{"If-None-Match: " + etag}, http.StatusNotModified, nil},
		{"if-none-match other", []string{`If-None-Match: "other"`}, http.StatusOK, lt.shadow},
		{"if-modified-since", []string{"If-Modified-Since: " + lastModified}, http.StatusNotModified, nil},
		{"if-modified-since old", []string{"If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"}, http.StatusOK, lt.shadow},
		{"if-match wrong", []string{`If-Match: "wrong"`}, http.StatusPreconditionFailed, nil},
		{"if-match right", []string{"If-Match: " + etag}, http.StatusOK, lt.shadow},
		{"if-unmodified-since old", []string{"If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT"}, http.StatusPreconditionFailed, nil},
		{"range with stale if-range", []string{"Range: bytes=0-9", `If-Range: "stale"`}, http.StatusOK, lt.shadow},
		{"range with current if-range", []string{"Range: bytes=0-9", "If-Range: " + etag}, http.StatusPartialContent, lt.shadow[:10]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			r := do(t, http.MethodGet, path, c.headers...)
			wantOutcome(t, r, c.status, c.body, "BYPASS")
			if c.status == http.StatusPartialContent && r.header.Get("Content-Range") == "" {
				t.Error("206 without Content-Range")
			}
			wantS3Requests(t, 0)
		})
	}
}

func TestLocalFallthroughToS3(t *testing.T) {
	lt := newLocalTree(t)
	load(t, siteConfig(blockFor("root "+lt.root)))

	t.Run("absent locally comes from S3", func(t *testing.T) {
		env.proxy.Reset()
		obj := env.objects.Get(s3test.KeyAvatarJPEG)
		r := get(t, urlPath(obj.Key))
		wantBody(t, r, http.StatusOK, obj.Body)
		wantMediaHeaders(t, r, "MISS")
		wantS3Requests(t, 1)
	})
	t.Run("a directory under root falls through to S3", func(t *testing.T) {
		env.proxy.Reset()
		obj := env.objects.Get(s3test.KeySmallPNG)
		r := get(t, urlPath(obj.Key))
		wantBody(t, r, http.StatusOK, obj.Body)
		if got := r.header.Get("X-Cache-Status"); got != "MISS" {
			t.Errorf("X-Cache-Status = %q, want MISS", got)
		}
		wantS3Requests(t, 1)
	})
	t.Run("a symlink inside root is followed", func(t *testing.T) {
		env.proxy.Reset()
		r := get(t, "/static/link-inside.png")
		wantBody(t, r, http.StatusOK, lt.shadow)
		if got := r.header.Get("X-Cache-Status"); got != "BYPASS" {
			t.Errorf("X-Cache-Status = %q, want BYPASS", got)
		}
		wantS3Requests(t, 0)
	})
	for _, target := range []string{
		"/static/escape.txt", "/static/relative-escape.txt", "/static/escapedir/secret.txt", "/static/chain.txt",
		"/static/slash/etc/passwd", "/static/passwd", "/static/loop-a", "/static/fifo",
	} {
		t.Run("a symlink leading outside root is not followed: "+target, func(t *testing.T) {
			defer recordAbuse(t, "symlinks and special files under root", target)
			env.proxy.Reset()
			r := do(t, http.MethodGet, target)
			wantEmptyError(t, r, http.StatusNotFound)
			if containsFold(string(r.body), string(lt.outsideSecret)) || containsFold(string(r.body), "root:") {
				t.Error("served a file from outside the root")
			}
			// It went to S3, which does not have it.
			wantS3Requests(t, 1)
		})
	}
}

// The handler reads the root, it never writes to it.
func TestLocalRootIsLeftUntouched(t *testing.T) {
	lt := newLocalTree(t)
	before := snapshot(t, lt.root)
	load(t, siteConfig(blockFor("root "+lt.root)))
	for _, key := range []string{s3test.KeyOriginalPNG, s3test.KeySmallPNG, s3test.KeyAvatarJPEG, "static/escape.txt", "missing/x.png"} {
		do(t, http.MethodGet, urlPath(key))
		do(t, http.MethodHead, urlPath(key))
	}
	if after := snapshot(t, lt.root); !slices.Equal(before, after) {
		t.Errorf("root changed:\nbefore %v\nafter  %v", before, after)
	}
}

// snapshot lists every entry under root with its size and mtime.
func snapshot(t *testing.T, root string) []string {
	t.Helper()
	var entries []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		entries = append(entries, rel+" "+info.Mode().String()+" "+info.ModTime().Format(time.RFC3339Nano)+" "+itoa(info.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}
