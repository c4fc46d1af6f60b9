package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/s3mediacache/caddy-s3-media-cache/cli"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// awsCLI runs the aws command line against the gateway as Mastodon's
// guide does, with the gateway's keys in its environment and a config
// file of its own: chunkSize, when not empty, is its
// s3.multipart_chunksize (awscli's default is 8 MiB). A missing aws is a
// failure, never a skip.
func awsCLI(t *testing.T, chunkSize string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("aws")
	if err != nil {
		t.Fatalf("the aws command is needed to seed the bucket as Mastodon's guide does: install it with scripts/install-tools awscli (%v)", err)
	}
	config := filepath.Join(t.TempDir(), "aws-config")
	settings := "[default]\n"
	if chunkSize != "" {
		settings += "s3 =\n    multipart_chunksize = " + chunkSize + "\n"
	}
	must(t, os.WriteFile(config, []byte(settings), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoint-url", env.gateway.Endpoint(), "--only-show-errors"}, args...)...)
	cmd.Env = append(os.Environ(),
		"AWS_ACCESS_KEY_ID="+env.gateway.AccessKey,
		"AWS_SECRET_ACCESS_KEY="+env.gateway.SecretKey,
		"AWS_DEFAULT_REGION="+s3test.Region,
		"AWS_CONFIG_FILE="+config,
		"AWS_SHARED_CREDENTIALS_FILE="+os.DevNull,
	)
	out, err := cmd.CombinedOutput()
	wantNoKeysIn(t, "aws output", string(out))
	if err != nil {
		t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// randomFile writes size random bytes at rel under dir and returns them.
func randomFile(t *testing.T, dir, rel string, size int, seed uint64) []byte {
	t.Helper()
	body := randomBytes(rand.New(rand.NewPCG(seed, 0x9a57)), size)
	writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), body)
	return body
}

// wantMultipartETag fails unless the object was uploaded in parts:
// the test is about those.
func wantMultipartETag(t *testing.T, objects map[string]types.Object, key string, parts int) {
	t.Helper()
	etag := strings.Trim(aws.ToString(objects[key].ETag), `"`)
	if !strings.HasSuffix(etag, fmt.Sprintf("-%d", parts)) {
		t.Fatalf("%s has ETag %q, want a multipart one of %d parts", key, etag, parts)
	}
}

// requestsWith counts the requests of a method whose query contains
// query ("" for any).
func requestsWith(p *s3test.Proxy, method, query string) int {
	n := 0
	for _, r := range p.Requests() {
		if r.Method == method && strings.Contains(r.RawQuery, query) {
			n++
		}
	}
	return n
}

// A bucket seeded with Mastodon's guide, `aws s3 sync --acl public-read`,
// holds the files over 8 MiB as multipart uploads with no
// x-amz-meta-sha256. verify finds every file the same, by hashing it in
// the part sizes the tools use, without reading anything back; then sync
// uploads nothing. Files uploaded with other chunk sizes (5 MiB, one of
// the candidates; 7 MiB, which only a HEAD of part 1 reveals) are the
// same too.
func TestVerifyAndSyncAcceptWhatAwsS3SyncUploaded(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 30, 11, 3<<20, 9<<20, 20<<20+12345)
	bucket := newCLIBucket(t, "cli-aws-sync")
	awsCLI(t, "", "s3", "sync", "--acl", "public-read", source, "s3://"+bucket+"/")

	// Uploaded on their own with other chunk sizes, then put in the tree.
	others := t.TempDir()
	five := "media_attachments/files/999/001/000/original/five.mp4"
	seven := "media_attachments/files/999/001/001/original/seven.mp4"
	tree[five] = randomFile(t, others, five, 12<<20, 1)
	tree[seven] = randomFile(t, others, seven, 22<<20, 2)
	awsCLI(t, "5MB", "s3", "cp", "--acl", "public-read", filepath.Join(others, five), "s3://"+bucket+"/"+five)
	awsCLI(t, "7MB", "s3", "cp", "--acl", "public-read", filepath.Join(others, seven), "s3://"+bucket+"/"+seven)
	for _, rel := range []string{five, seven} {
		writeFile(t, filepath.Join(source, filepath.FromSlash(rel)), tree[rel])
	}

	objects := listBucket(t, bucket, "")
	if len(objects) != len(tree) {
		t.Fatalf("aws put %d objects, want %d", len(objects), len(tree))
	}
	wantMultipartETag(t, objects, "cache/media_attachments/files/999/000/001/original/big1.mp4", 2) // 9 MiB in 8 MiB parts
	wantMultipartETag(t, objects, "cache/media_attachments/files/999/000/002/original/big2.mp4", 3) // 20 MiB in 8 MiB parts
	wantMultipartETag(t, objects, five, 3)
	wantMultipartETag(t, objects, seven, 4)

	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())
	sum, out, err := runVerify(t, f.BucketFlags)
	if err != nil || cli.ExitCode(err) != 0 || sum.Same != int64(len(tree)) || sum.Different+sum.Missing+sum.Failed != 0 {
		t.Fatalf("verify of the bucket aws seeded: %v (exit %d), %+v\n%s", err, cli.ExitCode(err), sum, out)
	}
	if sum.ReadBack != 0 || requestsWith(proxy, http.MethodGet, "") != 0 {
		t.Errorf("verify read objects back (%d, %d GETs); the part sizes should have matched\n%s", sum.ReadBack, requestsWith(proxy, http.MethodGet, ""), out)
	}
	// Only the 7 MiB parts needed the bucket's word on the part size.
	if got := requestsWith(proxy, http.MethodHead, "partNumber=1"); got != 1 {
		t.Errorf("%d HEADs of part 1, want 1 (for %s); counts %v", got, seven, proxy.Counts())
	}
	if strings.Contains(out, "read back") || strings.Contains(out, "different:") {
		t.Errorf("verify output:\n%s", out)
	}

	proxy.Reset()
	sum, out, err = runSync(t, f)
	if err != nil || sum.Uploaded != 0 || sum.Same != int64(len(tree)) {
		t.Fatalf("sync after verify: %v, %+v\n%s", err, sum, out)
	}
	if puts := putKeys(t, proxy); len(puts) != 0 {
		t.Errorf("sync uploaded %v; everything was in the bucket", puts)
	}
	if !strings.Contains(out, "uploaded  0 files") {
		t.Errorf("sync output:\n%s", out)
	}
}

// When no part size explains a multipart ETag (parts of unequal sizes
// here), the object is read back and compared: the same bytes are the
// same, whatever the parts. A file of the same size with one byte
// changed is different, which verify reports (exit 1) after reading the
// object back only up to the difference; sync then uploads that file
// alone, and verify passes.
func TestVerifyReadsBackOnlyWhatNoPartSizeExplains(t *testing.T) {
	source := t.TempDir()
	tree := writeMediaTree(t, source, 5, 12, 20<<20)
	changedRel := "cache/media_attachments/files/999/000/000/original/big0.mp4"
	bucket := newCLIBucket(t, "cli-read-back")
	awsCLI(t, "", "s3", "sync", "--acl", "public-read", source, "s3://"+bucket+"/")

	uneven := "media_attachments/files/999/002/000/original/uneven.mp4"
	tree[uneven] = randomFile(t, source, uneven, 14<<20, 3)
	putParts(t, bucket, uneven, tree[uneven], 5<<20, 6<<20) // and 3 MiB

	changed := bytes.Clone(tree[changedRel])
	changed[12<<20] ^= 0x40
	writeFile(t, filepath.Join(source, filepath.FromSlash(changedRel)), changed)

	proxy := newCountingProxy(t)
	f := syncFlags(t, source, bucket, proxy.URL())
	sum, out, err := runVerify(t, f.BucketFlags)
	if cli.ExitCode(err) != 1 || sum.Different != 1 || sum.Same != int64(len(tree)-1) || sum.Failed != 0 {
		t.Fatalf("verify: %v (exit %d), %+v\n%s", err, cli.ExitCode(err), sum, out)
	}
	if want := "different: " + changedRel + ": same size, different bytes (read back from the bucket)"; !strings.Contains(out, want) {
		t.Errorf("verify output lacks %q:\n%s", want, out)
	}
	// uneven: all 14 MiB; the changed file: its first 8 MiB chunk, and
	// the second up to the 64 KiB where the byte at 12 MiB differs.
	if sum.ReadBack != 2 || sum.ReadBackBytes < 14<<20+12<<20 || sum.ReadBackBytes > 14<<20+13<<20 {
		t.Errorf("read back %d objects, %d bytes; want uneven whole and the changed file to its difference", sum.ReadBack, sum.ReadBackBytes)
	}
	if !strings.Contains(out, "read back 2 objects") {
		t.Errorf("the summary does not count the read backs:\n%s", out)
	}

	proxy.Reset()
	sum, out, err = runSync(t, f)
	if err != nil || sum.Uploaded != 1 || sum.Same != int64(len(tree)-1) {
		t.Fatalf("sync: %v, %+v\n%s", err, sum, out)
	}
	if puts := putKeys(t, proxy); len(puts) != 1 || !puts["/"+bucket+"/"+changedRel] {
		t.Errorf("sync uploaded %v, want only %s", puts, changedRel)
	}
	if sum, out, err := runVerify(t, f.BucketFlags); err != nil || sum.Same != int64(len(tree)) {
		t.Errorf("verify after sync: %v, %+v\n%s", err, sum, out)
	}
}

// putParts uploads body in parts of the given sizes, and the rest as
// a last part: parts of unequal sizes, as no tool's default makes them.
func putParts(t *testing.T, bucket, key string, body []byte, sizes ...int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := env.gateway.Client()
	up, err := client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	must(t, err)
	var done []types.CompletedPart
	for start, i := 0, 0; start < len(body); i++ {
		end := len(body)
		if i < len(sizes) {
			end = start + sizes[i]
		}
		part, err := client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(bucket), Key: aws.String(key), UploadId: up.UploadId, PartNumber: aws.Int32(int32(i + 1)),
			Body: bytes.NewReader(body[start:end]), ContentLength: aws.Int64(int64(end - start)),
		})
		must(t, err)
		done = append(done, types.CompletedPart{ETag: part.ETag, PartNumber: aws.Int32(int32(i + 1))})
		start = end
	}
	_, err = client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
	})
	must(t, err)
}
