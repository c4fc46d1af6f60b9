package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/s3mediacache/caddy-s3-media-cache/cli"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// The environment variables the CLI tests keep the gateway's keys in,
// named with --access-key-env and --secret-key-env.
const (
	cliAccessKeyEnv = "S3MC_CLI_TEST_ACCESS_KEY"
	cliSecretKeyEnv = "S3MC_CLI_TEST_SECRET_KEY"
)

// mediaTree is a generated public/system: relative path to bytes.
type mediaTree map[string][]byte

// writeMediaTree writes n small files (about 1 KB each) shaped like
// Mastodon's Paperclip paths under dir, plus one file per size in big,
// and returns them.
func writeMediaTree(t *testing.T, dir string, n int, seed uint64, big ...int) mediaTree {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	exts := []string{".png", ".jpg", ".mp4", ".webp", ""}
	tree := mediaTree{}
	for i := range n {
		rel := fmt.Sprintf("media_attachments/files/%03d/%03d/%03d/%s/%016x%s",
			i/1000, i/100%10, i/10%10, []string{"original", "small"}[i%2], rng.Uint64(), exts[i%len(exts)])
		tree[rel] = randomBytes(rng, 512+rng.IntN(1024))
	}
	for i, size := range big {
		tree[fmt.Sprintf("cache/media_attachments/files/999/000/%03d/original/big%d.mp4", i, i)] = randomBytes(rng, size)
	}
	for rel, body := range tree {
		writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), body)
	}
	return tree
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func writeFile(t *testing.T, path string, body []byte) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, body, 0o644))
}

// wantContentType is the type sync must give a file of the tree.
func wantContentType(rel string) string {
	switch path.Ext(rel) {
	case ".png":
		return "image/png"
	case ".jpg":
		return "image/jpeg"
	case ".mp4":
		return "video/mp4"
	case ".webp":
		return "image/webp"
	}
	return "application/octet-stream"
}

// cliBuckets numbers the buckets newCLIBucket creates, so that a test
// run again in the same process (-count=2) starts from an empty one.
var cliBuckets atomic.Int64

// newCLIBucket creates an empty bucket of the test's own on the gateway.
func newCLIBucket(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name = fmt.Sprintf("%s-%d", name, cliBuckets.Add(1))
	must(t, s3test.CreateBucket(ctx, env.gateway.Client(), name))
	return name
}

// newCountingProxy is a recording proxy of the test's own in front of the
// gateway, so its PUTs can be counted without other tests' requests.
func newCountingProxy(t *testing.T) *s3test.Proxy {
	t.Helper()
	p, err := s3test.NewProxy(env.gateway.Endpoint())
	must(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// putKeys returns the paths ("/bucket/key") the proxy saw PUT, and logs
// those PUT more than once: the SDK retries a PUT that S3 answered with
// a 5xx or whose connection dropped, and that is not a second upload of
// the file.
func putKeys(t *testing.T, p *s3test.Proxy) map[string]bool {
	t.Helper()
	statuses := map[string][]int{}
	for _, r := range p.Requests() {
		if r.Method == http.MethodPut {
			statuses[r.Path] = append(statuses[r.Path], r.Status)
		}
	}
	keys := map[string]bool{}
	for key, st := range statuses {
		keys[key] = true
		if len(st) > 1 {
			t.Logf("%s was PUT %d times, answered %v", key, len(st), st)
		}
	}
	return keys
}

func countMethod(p *s3test.Proxy, method string) int {
	n := 0
	for _, r := range p.Requests() {
		if r.Method == method {
			n++
		}
	}
	return n
}

// syncFlags are the flags of a sync of source into bucket through
// endpoint, with the gateway's keys in the environment.
func syncFlags(t *testing.T, source, bucket, endpoint string) cli.SyncFlags {
	t.Setenv(cliAccessKeyEnv, env.gateway.AccessKey)
	t.Setenv(cliSecretKeyEnv, env.gateway.SecretKey)
	return cli.SyncFlags{BucketFlags: cli.BucketFlags{
		Source:       source,
		Bucket:       bucket,
		Endpoint:     endpoint,
		Region:       s3test.Region,
		PathStyle:    true,
		AccessKeyEnv: cliAccessKeyEnv,
		SecretKeyEnv: cliSecretKeyEnv,
	}}
}

// runSync runs sync under a time bound and returns its summary, its
// output (which must not contain the keys) and its error.
func runSync(t *testing.T, f cli.SyncFlags) (cli.Summary, string, error) {
	t.Helper()
	return runBounded(t, func(ctx context.Context, out io.Writer) (cli.Summary, error) { return cli.Sync(ctx, f, out) })
}

func runVerify(t *testing.T, f cli.BucketFlags) (cli.Summary, string, error) {
	t.Helper()
	return runBounded(t, func(ctx context.Context, out io.Writer) (cli.Summary, error) { return cli.Verify(ctx, f, out) })
}

func runBounded(t *testing.T, run func(context.Context, io.Writer) (cli.Summary, error)) (cli.Summary, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	sum, err := run(ctx, &out)
	wantNoKeysIn(t, "output", out.String())
	return sum, out.String(), err
}

func wantNoKeysIn(t *testing.T, where, s string) {
	t.Helper()
	for _, secret := range []string{env.gateway.AccessKey, env.gateway.SecretKey} {
		if strings.Contains(s, secret) {
			t.Errorf("%s contains a key", where)
		}
	}
}

// listBucket maps every key under prefix to its size and ETag.
func listBucket(t *testing.T, bucket, prefix string) map[string]types.Object {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	objects := map[string]types.Object{}
	pages := s3.NewListObjectsV2Paginator(env.gateway.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		must(t, err)
		for _, o := range page.Contents {
			objects[aws.ToString(o.Key)] = o
		}
	}
	return objects
}

// wantBucketHolds checks that the bucket holds exactly the tree under
// prefix: every object with the file's bytes, its Content-Type,
// Mastodon's Cache-Control and the SHA-256 metadata, and nothing else.
func wantBucketHolds(t *testing.T, bucket, prefix string, tree mediaTree) {
	t.Helper()
	listed := listBucket(t, bucket, prefix)
	if len(listed) != len(tree) {
		t.Errorf("bucket has %d objects under %q, want %d", len(listed), prefix, len(tree))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := env.gateway.Client()
	rels := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var problems []string
	for range 8 {
		wg.Go(func() {
			for rel := range rels {
				if p := checkObject(ctx, client, bucket, path.Join(prefix, rel), rel, tree[rel]); p != "" {
					mu.Lock()
					problems = append(problems, p)
					mu.Unlock()
				}
			}
		})
	}
	for rel := range tree {
		rels <- rel
	}
	close(rels)
	wg.Wait()
	for i, p := range problems {
		if i == 10 {
			t.Errorf("… and %d more", len(problems)-10)
			break
		}
		t.Error(p)
	}
}

// checkObject describes what is wrong with one object, "" if nothing.
func checkObject(ctx context.Context, client *s3.Client, bucket, key, rel string, want []byte) string {
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Sprintf("GET %s: %v", key, err)
	}
	defer out.Body.Close()
	body, err := io.ReadAll(out.Body)
	switch {
	case err != nil:
		return fmt.Sprintf("GET %s: reading: %v", key, err)
	case !bytes.Equal(body, want):
		return fmt.Sprintf("%s: %d bytes differ from the file's %d", key, len(body), len(want))
	case aws.ToString(out.ContentType) != wantContentType(rel):
		return fmt.Sprintf("%s: Content-Type %q, want %q", key, aws.ToString(out.ContentType), wantContentType(rel))
	case aws.ToString(out.CacheControl) != mastodonCacheControl:
		return fmt.Sprintf("%s: Cache-Control %q", key, aws.ToString(out.CacheControl))
	case out.Metadata["sha256"] != s3test.SHA256Hex(want):
		return fmt.Sprintf("%s: x-amz-meta-sha256 %q, want %s", key, out.Metadata["sha256"], s3test.SHA256Hex(want))
	}
	return ""
}

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

// Objects uploaded in parts have an ETag that is not an MD5: sync
// compares the x-amz-meta-sha256 it writes, or without it the multipart
// ETag the file has when cut into parts the same way; an object of other
// bytes is different (found by reading it back), and uploaded again.
func TestSyncComparesMultipartObjectsBySHA256(t *testing.T) {
	source := t.TempDir()
	tree := mediaTree{
		"a/with-sha.png":    []byte("bytes with a sha256"),
		"a/without-sha.png": []byte("bytes with no sha256"),
		"a/other-bytes.png": []byte("bytes of the file here"),
	}
	for rel, body := range tree {
		writeFile(t, filepath.Join(source, rel), body)
	}
	bucket := newCLIBucket(t, "cli-sync-multipart")
	putMultipart(t, bucket, "a/with-sha.png", tree["a/with-sha.png"], map[string]string{"sha256": s3test.SHA256Hex(tree["a/with-sha.png"])})
	putMultipart(t, bucket, "a/without-sha.png", tree["a/without-sha.png"], nil)
	putMultipart(t, bucket, "a/other-bytes.png", []byte("bytes in the bucket th"), nil)

	f := syncFlags(t, source, bucket, env.gateway.Endpoint())
	sum, out, err := runVerify(t, f.BucketFlags)
	if cli.ExitCode(err) != 1 || sum.Same != 2 || sum.Different != 1 ||
		!strings.Contains(out, "different: a/other-bytes.png: same size, different bytes (read back from the bucket)") {
		t.Fatalf("verify: %v, %+v\n%s", err, sum, out)
	}
	sum, out, err = runSync(t, f)
	if err != nil || sum.Same != 2 || sum.Uploaded != 1 {
		t.Fatalf("sync: %v, %+v\n%s", err, sum, out)
	}
	if _, out, err := runVerify(t, f.BucketFlags); err != nil {
		t.Fatalf("verify after sync: %v\n%s", err, out)
	}
}

func putMultipart(t *testing.T, bucket, key string, body []byte, meta map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := env.gateway.Client()
	up, err := client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key), Metadata: meta})
	must(t, err)
	part, err := client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: up.UploadId, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
	})
	must(t, err)
	done, err := client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{{ETag: part.ETag, PartNumber: aws.Int32(1)}}},
	})
	must(t, err)
	if !strings.Contains(aws.ToString(done.ETag), "-") {
		t.Fatalf("multipart ETag %s has no part count; the test needs one", aws.ToString(done.ETag))
	}
}

// verify names the object deleted from the bucket and the ones changed
// there, with or without a change of size, and exits 1; an object
// rewritten with the same bytes by another tool still counts as the same.
func TestVerifyReportsMissingAndChangedObjects(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 20, 4)
	bucket := newCLIBucket(t, "cli-verify")
	f := syncFlags(t, source, bucket, env.gateway.Endpoint())
	if _, out, err := runSync(t, f); err != nil {
		t.Fatalf("sync: %v\n%s", err, out)
	}
	rels := sortedKeys(tree)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := env.gateway.Client()
	_, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(rels[0])})
	must(t, err)
	changed := bytes.Clone(tree[rels[1]])
	changed[len(changed)-1] ^= 1
	shorter := tree[rels[2]][1:]
	for key, body := range map[string][]byte{rels[1]: changed, rels[2]: shorter, rels[3]: tree[rels[3]]} {
		_, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body)})
		must(t, err)
	}

	sum, out, err := runVerify(t, f.BucketFlags)
	if !errors.Is(err, cli.ErrProblems) || cli.ExitCode(err) != 1 {
		t.Errorf("verify: error %v (exit %d), want problems and exit 1", err, cli.ExitCode(err))
	}
	if sum.Missing != 1 || sum.Different != 2 || sum.Same != int64(len(tree)-3) || sum.Failed != 0 {
		t.Errorf("verify summary %+v, want 1 missing and 2 different", sum)
	}
	for _, want := range []string{
		"missing: " + rels[0],
		"different: " + rels[1] + ": same size, different checksum",
		fmt.Sprintf("different: %s: %d bytes in the bucket, %d here", rels[2], len(shorter), len(tree[rels[2]])),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, rels[3]) {
		t.Errorf("verify reports %s, rewritten with the same bytes:\n%s", rels[3], out)
	}
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
	for name, edit := range map[string]func(*cli.SyncFlags){
		"no source":       func(f *cli.SyncFlags) { f.Source = "" },
		"missing source":  func(f *cli.SyncFlags) { f.Source = filepath.Join(source, "nope") },
		"no bucket":       func(f *cli.SyncFlags) { f.Bucket = "" },
		"bad endpoint":    func(f *cli.SyncFlags) { f.Endpoint = "ftp://example" },
		"bad acl":         func(f *cli.SyncFlags) { f.ACL = "world-writable" },
		"bad concurrency": func(f *cli.SyncFlags) { f.Concurrency = -1 },
		"one key only":    func(f *cli.SyncFlags) { f.SecretKeyEnv = "S3MC_CLI_TEST_UNSET" },
	} {
		f := good
		edit(&f)
		_, _, err := runSync(t, f)
		if cli.ExitCode(err) != 2 {
			t.Errorf("%s: error %v, exit %d; want 2", name, err, cli.ExitCode(err))
		}
	}
	if n := proxy.Count(); n != 0 {
		t.Errorf("bad flags sent %d requests to S3", n)
	}

	t.Setenv(cliSecretKeyEnv, "not-the-secret")
	start := time.Now()
	sum, out, err := runSync(t, good)
	if err == nil || !strings.Contains(err.Error(), "giving up") || sum.Failed > 30 || time.Since(start) > 15*time.Second {
		t.Errorf("sync with a wrong secret: %v after %s, %+v\n%s", err, time.Since(start), sum, tail(out))
	}
}

func TestCLIStatsAndPurge(t *testing.T) {
	dir, png, mb := cacheTwoObjects(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin := cli.AdminFlags{Address: fmt.Sprintf("localhost:%d", env.ports.admin)}

	var out bytes.Buffer
	must(t, cli.Stats(ctx, cli.StatsFlags{AdminFlags: admin}, &out))
	if !strings.Contains(out.String(), "CACHE DIR") || !tableRowHas(out.String(), dir, "2") {
		t.Errorf("stats table lacks a row for %s with 2 entries:\n%s", dir, out.String())
	}
	out.Reset()
	must(t, cli.Stats(ctx, cli.StatsFlags{AdminFlags: admin, JSON: true}, &out))
	var stats []s3cache.StoreStats
	must(t, json.Unmarshal(out.Bytes(), &stats))
	found := false
	for _, s := range stats {
		if s.CacheDir == dir {
			found = s.Entries == 2 && s.Bytes >= png.Size+mb.Size
		}
	}
	if !found {
		t.Errorf("stats --json has no %s with 2 entries: %s", dir, out.String())
	}

	out.Reset()
	n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: urlPath(mb.Key)}, &out)
	if err != nil || n != 1 || out.String() != "purged 1 entry\n" {
		t.Fatalf("purge --path: %d, %v, %q", n, err, out.String())
	}
	if exists(entryPathFor(dir, mb)) {
		t.Error("the purged entry is still on disk")
	}
	out.Reset()
	n, err = cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Prefix: "/media_attachments/files/109/"}, &out)
	if err != nil || n != 1 || !waitFor(0, func() bool { return !exists(entryPathFor(dir, png)) }) {
		t.Fatalf("purge --prefix: %d, %v, %q", n, err, out.String())
	}

	_, err = cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: "/../etc/passwd"}, &out)
	if cli.ExitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), "is not a media path") {
		t.Errorf("purge of a bad path: %v (exit %d), want Caddy's 400 message and exit 1", err, cli.ExitCode(err))
	}
	_, err = cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: "/a.png", Prefix: "/b/"}, &out)
	if cli.ExitCode(err) != 2 {
		t.Errorf("purge with --path and --prefix: %v (exit %d), want 2", err, cli.ExitCode(err))
	}
	dead, err := s3test.FreeLoopbackAddr()
	must(t, err)
	err = cli.Stats(ctx, cli.StatsFlags{AdminFlags: cli.AdminFlags{Address: dead}}, &out)
	if cli.ExitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), dead) || !strings.Contains(fmt.Sprint(err), "is Caddy running") {
		t.Errorf("stats with nothing at %s: %v", dead, err)
	}
}

// tableRowHas reports whether a line of table starts with first and has
// second as its next column.
func tableRowHas(table, first, second string) bool {
	for line := range strings.SplitSeq(table, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && fields[0] == first && fields[1] == second {
			return true
		}
	}
	return false
}

func sortedKeys(tree mediaTree) []string {
	keys := make([]string, 0, len(tree))
	for k := range tree {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// tail is the end of a long output, for failure messages.
func tail(out string) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
