package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeTestFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The walk hands the workers every regular file with its key, in
// lexical order; symlinks and sockets are noted and skipped; a name that
// cannot be a key is a failure; the counting walk finds the same totals.
func TestWalkSendsRegularFilesAndNotesTheRest(t *testing.T) {
	root := t.TempDir()
	writeTestFile(t, filepath.Join(root, "media_attachments/files/1/original/b.png"), "bb")
	writeTestFile(t, filepath.Join(root, "accounts/avatars/1/original/a.jpg"), "a")
	writeTestFile(t, filepath.Join(root, "empty.bin"), "")
	writeTestFile(t, filepath.Join(root, "bad/back\\slash.png"), "ccc")
	if err := os.Symlink(filepath.Join(root, "accounts"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	var out bytes.Buffer
	r := &treeRun{flags: SyncFlags{BucketFlags: BucketFlags{Prefix: "pre"}}, progress: newProgress(&out, modeSync)}
	files := make(chan file, 10)
	if err := r.walk(context.Background(), root, files); err != nil {
		t.Fatal(err)
	}
	close(files)
	var keys []string
	for f := range files {
		keys = append(keys, f.key)
		if want, _ := filepath.Rel(root, f.path); f.key != "pre/"+filepath.ToSlash(want) {
			t.Errorf("%s has key %s", f.path, f.key)
		}
	}
	want := []string{"pre/accounts/avatars/1/original/a.jpg", "pre/empty.bin", "pre/media_attachments/files/1/original/b.png"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	countTree(context.Background(), root, r.progress)
	sum := r.progress.finish()
	if sum.Files != 4 || sum.Failed != 1 || sum.Ignored != 2 {
		t.Errorf("summary %+v, want 4 files, 1 failed, 2 ignored", sum)
	}
	if r.progress.totalFiles != 4 || r.progress.totalBytes != 6 || !r.progress.counted {
		t.Errorf("counted %d files, %d bytes (done %v), want 4 and 6", r.progress.totalFiles, r.progress.totalBytes, r.progress.counted)
	}
	for _, note := range []string{
		"skipped " + filepath.Join(root, "link") + ": symlink, not followed",
		"skipped " + filepath.Join(root, "sock") + ": socket, not a regular file",
		"back\\slash.png: cannot be an object key: it contains a backslash",
	} {
		if !strings.Contains(out.String(), note) {
			t.Errorf("no note %q in\n%s", note, out.String())
		}
	}
}

func TestWalkStopsWhenTheContextEnds(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"a", "b", "c"} {
		writeTestFile(t, filepath.Join(root, name), name)
	}
	r := &treeRun{progress: newProgress(&bytes.Buffer{}, modeSync)}
	ctx, cancel := context.WithCancel(context.Background())
	files := make(chan file) // nobody reads: the walk blocks on the first file
	go cancel()
	if err := r.walk(ctx, root, files); err != nil {
		t.Errorf("an interrupted walk is not an error of its own: %v", err)
	}
}

// public/system is often a symlink to a bigger disk: the source's own
// link is followed, to a directory only.
func TestSourceRootFollowsItsOwnSymlink(t *testing.T) {
	target := t.TempDir()
	link := filepath.Join(t.TempDir(), "system")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	got, err := sourceRoot(link)
	if want, _ := filepath.EvalSymlinks(target); err != nil || got != want {
		t.Errorf("sourceRoot(link) = %q, %v; want %q", got, err, want)
	}
	writeTestFile(t, filepath.Join(target, "file"), "x")
	for _, bad := range []string{filepath.Join(target, "file"), filepath.Join(target, "missing")} {
		if _, err := sourceRoot(bad); ExitCode(err) != 2 || !strings.Contains(err.Error(), "--source") {
			t.Errorf("sourceRoot(%s) = %v, want a usage error naming --source", bad, err)
		}
	}
}

func TestCheckACLAcceptsCannedACLsOrNone(t *testing.T) {
	for _, ok := range []string{"", "public-read", "private", "bucket-owner-full-control"} {
		if err := checkACL(ok); err != nil {
			t.Errorf("checkACL(%q) = %v", ok, err)
		}
	}
	if err := checkACL("public"); ExitCode(err) != 2 || !strings.Contains(err.Error(), "R2") {
		t.Errorf("checkACL(public) = %v", err)
	}
}

// A provider that refuses every upload (here with 403; R2 given --acl
// does the same with NotImplemented) stops the run after giveUpAfter
// failures instead of printing one per file.
func TestSyncGivesUpWhenTheFirstUploadsAllFail(t *testing.T) {
	var mu sync.Mutex
	puts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodHead:
			w.WriteHeader(http.StatusNotFound)
		case http.MethodPut:
			mu.Lock()
			puts++
			mu.Unlock()
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
		default:
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	source := t.TempDir()
	for i := range 200 {
		writeTestFile(t, filepath.Join(source, fmt.Sprintf("media/%03d.png", i)), "png")
	}
	t.Setenv("S3MC_UNIT_ACCESS", "AKIDEXAMPLE")
	t.Setenv("S3MC_UNIT_SECRET", "wJalrXUtnFEMI")
	f := SyncFlags{BucketFlags: BucketFlags{
		Source: source, Bucket: "b", Endpoint: srv.URL, PathStyle: true,
		AccessKeyEnv: "S3MC_UNIT_ACCESS", SecretKeyEnv: "S3MC_UNIT_SECRET", Concurrency: 4,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	sum, err := Sync(ctx, f, &out)
	if !errors.Is(err, errGaveUp) || ExitCode(err) != 1 || !strings.Contains(err.Error(), "uploading the first 20 files all failed") {
		t.Fatalf("error %v, want giving up", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if puts < giveUpAfter || puts > giveUpAfter+f.Concurrency || sum.Failed > int64(puts) {
		t.Errorf("%d PUTs, %d failed; want the run stopped after %d", puts, sum.Failed, giveUpAfter)
	}
	if strings.Contains(out.String(), "wJalrXUtnFEMI") || strings.Contains(err.Error(), "wJalrXUtnFEMI") {
		t.Error("the secret key was printed")
	}
}
