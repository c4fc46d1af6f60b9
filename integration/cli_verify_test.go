package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
