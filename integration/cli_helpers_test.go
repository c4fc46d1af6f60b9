package integration

import (
	"bytes"
	"context"
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
