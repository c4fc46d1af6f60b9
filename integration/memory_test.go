package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// patternReader yields n deterministic bytes without holding them.
type patternReader struct{ off, n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	k := int(min(int64(len(b)), p.n-p.off))
	for i := range k {
		b[i] = byte((p.off + int64(i)) * 31 >> 3)
	}
	p.off += int64(k)
	return k, nil
}

// Seek lets the SDK rewind the body to hash it before sending it.
func (p *patternReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		p.off = offset
	case io.SeekCurrent:
		p.off += offset
	case io.SeekEnd:
		p.off = p.n + offset
	}
	return p.off, nil
}

// TestHundredMegabyteObjectKeepsMemoryFlat streams a 100 MB object through
// Caddy, uncached and then through the cache (fill, then hit), and checks
// that the process allocates a small fraction of it: no path buffers the
// object. Caddy runs in this test process, so its allocations are counted.
func TestHundredMegabyteObjectKeepsMemoryFlat(t *testing.T) {
	const size = 100 << 20
	key := testKey(t, "hundred.mp4")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := env.gateway.Client().PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(privateBucket), Key: aws.String(key),
		Body: &patternReader{n: size}, ContentLength: aws.Int64(size), ContentType: aws.String("video/mp4"),
	}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.New()
	io.Copy(sum, &patternReader{n: size})
	want := hex.EncodeToString(sum.Sum(nil))

	// What must stay flat is the live heap while the object streams
	// (Caddy's own writers allocate and drop a copy buffer per chunk, so
	// total allocations grow with the size whatever the handler does).
	fetch := func(label string) {
		t.Helper()
		// Collect garbage eagerly, so the heap measures what is live.
		defer debug.SetGCPercent(debug.SetGCPercent(5))
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		baseline := ms.HeapInuse
		peak := baseline
		done := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			ticker := time.NewTicker(20 * time.Millisecond)
			defer ticker.Stop()
			for {
				select {
				case <-done:
					return
				case <-ticker.C:
					var s runtime.MemStats
					runtime.ReadMemStats(&s)
					peak = max(peak, s.HeapInuse)
				}
			}
		}()
		resp, err := send(t, func() (*http.Response, error) { return client().Get(env.baseURL() + urlPath(key)) })
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		close(done)
		<-sampled
		if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != want {
			t.Fatalf("%s: %d bytes, %v, sha256 match %v", label, n, err, hex.EncodeToString(h.Sum(nil)) == want)
		}
		grew := int64(peak) - int64(baseline)
		t.Logf("%s (X-Cache-Status %s): heap in use grew by at most %.1f MB for a %d MB object", label, resp.Header.Get("X-Cache-Status"), float64(grew)/(1<<20), size>>20)
		if grew > 32<<20 {
			t.Errorf("%s: heap in use grew by %d bytes for a %d-byte object: something buffers it", label, grew, size)
		}
	}

	load(t, siteConfig(blockFor()))
	fetch("pass-through")
	dir := t.TempDir()
	loadCache(t, dir, "max_size 1GiB")
	fetch("fill")
	if !waitFor(10*time.Second, func() bool { return exists(entryPathForKey(dir, privateBucket+"/"+key)) }) {
		t.Fatal("the object was not stored")
	}
	fetch("hit")
}
