package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/cli"
)

// The whole migration on a tree of a few thousand files: --dry-run first
// (nothing uploaded), then sync (each file PUT once, byte-exact with its
// headers), verify (no problem), and sync again (nothing uploaded).
func TestSyncCopiesATreeThatVerifyFindsComplete(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 3000, 1, 3<<20, 1<<20)
	bucket := newCLIBucket(t, "cli-sync-tree")
	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())

	dry := f
	dry.DryRun = true
	sum, out, err := runSync(t, dry)
	if err != nil || sum.Missing != int64(len(tree)) || sum.Uploaded != 0 {
		t.Fatalf("dry run: %v, %+v\n%s", err, sum, tail(out))
	}
	if n := countMethod(proxy, http.MethodPut); n != 0 {
		t.Fatalf("dry run sent %d PUTs", n)
	}
	if !strings.Contains(out, "would upload media_attachments/files/") {
		t.Errorf("dry run does not list what it would upload:\n%s", tail(out))
	}

	proxy.Reset()
	start := time.Now()
	sum, out, err = runSync(t, f)
	t.Logf("sync of %d files took %s", len(tree), time.Since(start))
	if err != nil || cli.ExitCode(err) != 0 {
		t.Fatalf("sync: %v\n%s", err, tail(out))
	}
	if sum.Uploaded != int64(len(tree)) || sum.Same != 0 || sum.Failed != 0 || sum.Files != int64(len(tree)) {
		t.Errorf("sync summary %+v, want %d uploaded", sum, len(tree))
	}
	if n := len(putKeys(t, proxy)); n != len(tree) {
		t.Errorf("sync PUT %d keys for %d files", n, len(tree))
	}
	if !strings.Contains(out, fmt.Sprintf("uploaded  %d files", len(tree))) {
		t.Errorf("summary does not say what was uploaded:\n%s", tail(out))
	}
	for _, r := range proxy.Requests() {
		if r.Method == http.MethodPut && r.Header.Get("X-Amz-Acl") != "" {
			t.Fatalf("PUT %s carries an ACL without --acl", r.Path)
		}
	}
	wantBucketHolds(t, bucket, "", tree)

	sum, out, err = runVerify(t, f.BucketFlags)
	if err != nil || sum.Same != int64(len(tree)) || sum.Missing+sum.Different+sum.Failed != 0 {
		t.Errorf("verify after sync: %v, %+v\n%s", err, sum, tail(out))
	}

	proxy.Reset()
	sum, out, err = runSync(t, f)
	if err != nil || sum.Same != int64(len(tree)) || sum.Uploaded != 0 {
		t.Errorf("second sync: %v, %+v\n%s", err, sum, tail(out))
	}
	if n := countMethod(proxy, http.MethodPut); n != 0 {
		t.Errorf("second sync sent %d PUTs; everything was there", n)
	}
}

// A sync cancelled part-way, as by Ctrl-C, then run again: the second run
// uploads exactly the files the first did not complete.
func TestSyncResumesAfterInterruption(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 3000, 2)
	bucket := newCLIBucket(t, "cli-sync-resume")
	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())
	f.Prefix = "/mastodon/"

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	interrupt, stop := context.WithCancel(ctx)
	go func() {
		for interrupt.Err() == nil {
			if countMethod(proxy, http.MethodPut) >= 1000 {
				stop()
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	var out bytes.Buffer
	sum, err := cli.Sync(interrupt, f, &out)
	stop()
	if !errors.Is(err, context.Canceled) || cli.ExitCode(err) != 1 || !strings.Contains(err.Error(), "run the same command again") {
		t.Fatalf("interrupted sync: error %v (exit %d), want an interruption\n%s", err, cli.ExitCode(err), tail(out.String()))
	}
	if ctx.Err() != nil {
		t.Fatal("the interrupted sync did not stop within the test's time")
	}
	// The uploads S3 answered with 200 have landed. A few more, cut by
	// the interruption after their bytes were sent, may land too (S3 can
	// finish a PUT its client has given up on), so the second run may
	// find up to one per worker more than these.
	landed := map[string]bool{}
	for _, r := range proxy.Requests() {
		if r.Method == http.MethodPut && r.Status == http.StatusOK {
			landed[r.Path] = true
		}
	}
	if len(landed) == 0 || len(landed) >= len(tree) || sum.Uploaded == 0 {
		t.Fatalf("the first run landed %d of %d files (summary %+v); the test needs an interruption part-way", len(landed), len(tree), sum)
	}

	proxy.Reset()
	sum, out2, err := runSync(t, f)
	if err != nil {
		t.Fatalf("resumed sync: %v\n%s", err, tail(out2))
	}
	put := putKeys(t, proxy)
	for key := range put {
		if landed[key] {
			t.Errorf("%s was uploaded again", key)
		}
	}
	puts := len(put)
	concurrency := 8 // the default
	if puts != len(tree)-int(sum.Same) || sum.Uploaded != int64(puts) || sum.Same < int64(len(landed)) || sum.Same > int64(len(landed)+concurrency) {
		t.Errorf("resumed sync: %d keys PUT, summary %+v; want the %d files not landed uploaded, give or take those in flight at the interruption", puts, sum, len(tree)-len(landed))
	}
	wantBucketHolds(t, bucket, "mastodon", tree)
	t.Logf("interrupted after %d files had landed, the second run uploaded %d", len(landed), puts)
}

// A file changed after a sync is uploaded again, whether its size
// changed or only its bytes; one added is uploaded; the rest is skipped.
func TestSyncReuploadsChangedFiles(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 20, 3)
	bucket := newCLIBucket(t, "cli-sync-changed")
	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())
	if _, out, err := runSync(t, f); err != nil {
		t.Fatalf("first sync: %v\n%s", err, out)
	}

	rels := sortedKeys(tree)
	sameSize := bytes.Clone(tree[rels[0]])
	sameSize[0] ^= 0xff
	tree[rels[0]] = sameSize
	tree[rels[1]] = append(bytes.Clone(tree[rels[1]]), "longer"...)
	tree["media_attachments/files/new/original/added.png"] = []byte("a new file")
	for _, rel := range []string{rels[0], rels[1], "media_attachments/files/new/original/added.png"} {
		writeFile(t, filepath.Join(source, filepath.FromSlash(rel)), tree[rel])
	}

	proxy.Reset()
	sum, out, err := runSync(t, f)
	if err != nil {
		t.Fatalf("second sync: %v\n%s", err, out)
	}
	if puts := countMethod(proxy, http.MethodPut); puts != 3 || sum.Uploaded != 3 || sum.Missing != 1 || sum.Different != 2 || sum.Same != int64(len(tree)-3) {
		t.Errorf("second sync: %d PUTs, summary %+v; want the 3 changed or added files uploaded", puts, sum)
	}
	for _, rel := range []string{rels[0], rels[1]} {
		if n := proxy.CountFor(http.MethodPut, "/"+bucket+"/"+rel); n != 1 {
			t.Errorf("%s was PUT %d times, want once", rel, n)
		}
	}
	wantBucketHolds(t, bucket, "", tree)
}

// Symlinks and special files are skipped with a note; names that cannot
// be keys fail, and make the exit status 1; everything else is copied.
// The source may itself be a symlink (public/system on another disk).
func TestSyncSkipsSymlinksAndFailsBadNames(t *testing.T) {
	target := t.TempDir()
	tree := mediaTree{"accounts/avatars/1/original/a.jpg": []byte("avatar"), "media_attachments/files/1/original/b.png": []byte("media")}
	for rel, body := range tree {
		writeFile(t, filepath.Join(target, rel), body)
	}
	writeFile(t, filepath.Join(target, "bad", "back\\slash.png"), []byte("x"))
	writeFile(t, filepath.Join(target, "bad", "control\x01.png"), []byte("x"))
	must(t, os.Symlink(filepath.Join(target, "accounts"), filepath.Join(target, "linked-dir")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(target, "linked-file.png")))
	source := filepath.Join(t.TempDir(), "system")
	must(t, os.Symlink(target, source))

	bucket := newCLIBucket(t, "cli-sync-odd")
	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())
	f.ACL = "public-read"
	sum, out, err := runSync(t, f)
	if !errors.Is(err, cli.ErrProblems) || cli.ExitCode(err) != 1 {
		t.Errorf("sync: error %v (exit %d), want failures and exit 1", err, cli.ExitCode(err))
	}
	if sum.Uploaded != 2 || sum.Failed != 2 || sum.Ignored != 2 {
		t.Errorf("summary %+v, want 2 uploaded, 2 failed, 2 ignored", sum)
	}
	for _, want := range []string{
		"skipped " + filepath.Join(target, "linked-dir") + ": symlink, not followed",
		"skipped " + filepath.Join(target, "linked-file.png") + ": symlink, not followed",
		`back\slash.png: cannot be an object key: it contains a backslash`,
		`control\x01.png": cannot be an object key: it contains a control character`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x01") {
		t.Error("a control character from a file name reached the output raw")
	}
	for _, r := range proxy.Requests() {
		if r.Method == http.MethodPut && r.Header.Get("X-Amz-Acl") != "public-read" {
			t.Errorf("PUT %s has X-Amz-Acl %q, want public-read", r.Path, r.Header.Get("X-Amz-Acl"))
		}
	}
	wantBucketHolds(t, bucket, "", tree)
}

// Wrong flags are exit status 2 and touch nothing; wrong keys stop the
// run after a bounded number of failures, naming the problem.
func TestSyncRejectsBadFlagsAndGivesUpOnBadKeys(t *testing.T) {
	source := t.TempDir()
	writeMediaTree(t, source, 40, 5)
	bucket := newCLIBucket(t, "cli-sync-flags")
	proxy := newCountingProxy(t)
	good := syncFlags(t, source, bucket, proxy.URL())
	tests := []struct {
		name string
		edit func(*cli.SyncFlags)
	}{
		{"no source", func(f *cli.SyncFlags) { f.Source = "" }},
		{"missing source", func(f *cli.SyncFlags) { f.Source = filepath.Join(source, "nope") }},
		{"no bucket", func(f *cli.SyncFlags) { f.Bucket = "" }},
		{"bad endpoint", func(f *cli.SyncFlags) { f.Endpoint = "ftp://example" }},
		{"bad acl", func(f *cli.SyncFlags) { f.ACL = "world-writable" }},
		{"bad concurrency", func(f *cli.SyncFlags) { f.Concurrency = -1 }},
		{"one key only", func(f *cli.SyncFlags) { f.SecretKeyEnv = "S3MC_CLI_TEST_UNSET" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := good
			tt.edit(&f)
			_, _, err := runSync(t, f)
			if cli.ExitCode(err) != 2 {
				t.Errorf("error %v, exit %d; want 2", err, cli.ExitCode(err))
			}
			if n := proxy.Count(); n != 0 {
				t.Errorf("bad flags sent %d requests to S3", n)
			}
		})
	}

	t.Run("wrong secret", func(t *testing.T) {
		t.Setenv(cliSecretKeyEnv, "not-the-secret")
		start := time.Now()
		sum, out, err := runSync(t, good)
		if err == nil || !strings.Contains(err.Error(), "giving up") || sum.Failed > 30 || time.Since(start) > 15*time.Second {
			t.Errorf("sync with a wrong secret: %v after %s, %+v\n%s", err, time.Since(start), sum, tail(out))
		}
	})
}
