package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// slowReader is a client that reads a body a few hundred bytes at a time,
// through a small socket receive buffer, as a hostile or badly connected
// client does.
type slowReader struct {
	client *http.Client
}

func newSlowReader() *slowReader {
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8192)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &slowReader{client: &http.Client{Transport: &http.Transport{
		Proxy: nil, DisableCompression: true, DialContext: dialer.DialContext,
	}}}
}

// read GETs url and reads 256 bytes every 100ms until ctx ends. It returns
// the status and the bytes read.
func (s *slowReader) read(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var got []byte
	buf := make([]byte, 256)
	for ctx.Err() == nil {
		n, err := io.ReadFull(resp.Body, buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return resp.StatusCode, got, nil
}

// Clients reading distinct cold objects at a couple of KB/s do not hold
// S3 requests or slots for as long as they read: S3's bytes are taken at
// S3's pace (into the cache, or a slice-sized chunk at a time into memory
// when nothing is stored), so while they crawl along no S3 request stays
// open, and a newcomer is served at once rather than waiting for a slot
// until a 503. Three times: without a cache, with a cache that has room,
// and with one too small to store a slice (every body a pass-through).
func TestSlowReadersDoNotHoldS3(t *testing.T) {
	const readers, fills = 12, 4
	var objs []s3test.Object
	for i := range readers + 1 {
		objs = append(objs, s3test.Object{Key: testKey(t, fmt.Sprintf("slow-%02d.mp4", i)),
			Body: s3test.RandomBytes(8<<20+i*4099, 5000+uint64(i)), ContentType: "video/mp4", CacheControl: mastodonCacheControl})
	}
	seeded := seedObjects(t, objs...)
	limits := []string{fmt.Sprintf("max_concurrent_fills %d", fills), "fill_queue_timeout 3s"}
	modes := []struct {
		name  string
		block func(dir string) string
	}{
		{"no cache", func(string) string { return blockFor(limits...) }},
		{"a cache with room", func(dir string) string { return cacheBlock(dir, limits...) }},
		{"a cache too small to store a slice", func(dir string) string {
			return cacheBlock(dir, append([]string{"max_size 512KiB"}, limits...)...)
		}},
	}
	for m, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			load(t, siteConfig(mode.block(t.TempDir())))
			warmUp(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			type result struct {
				status int
				got    []byte
				err    error
			}
			results := make([]result, readers)
			var wg sync.WaitGroup
			for i := range readers {
				// Each mode reads other objects, so each starts cold.
				obj := seeded[objs[(i+m)%readers].Key]
				wg.Go(func() {
					status, got, err := newSlowReader().read(ctx, env.baseURL()+urlPath(obj.Key))
					results[i] = result{status, got, err}
				})
			}
			// Once the readers have had their first bytes and S3 has sent
			// what their buffers took, no S3 request stays open: sampled
			// over the last second of their reading.
			time.Sleep(3500 * time.Millisecond)
			open := 0
			for range 20 {
				open = max(open, env.proxy.InFlight())
				time.Sleep(50 * time.Millisecond)
			}
			peak := env.proxy.Peak()

			// A newcomer for a cold object is served now, whole.
			newcomer := seeded[objs[readers].Key]
			start := time.Now()
			r := do(t, http.MethodGet, urlPath(newcomer.Key))
			took := time.Since(start)
			wantBody(t, r, http.StatusOK, newcomer.Body)
			wg.Wait()

			var read int64
			for i, res := range results {
				obj := seeded[objs[(i+m)%readers].Key]
				if res.err != nil || res.status != http.StatusOK {
					t.Errorf("slow reader %d: status %d, %v", i, res.status, res.err)
					continue
				}
				if len(res.got) == 0 || !bytes.Equal(res.got, obj.Body[:len(res.got)]) {
					t.Errorf("slow reader %d: %d bytes, not the object's first bytes", i, len(res.got))
				}
				read += int64(len(res.got))
			}
			t.Logf("%s: %d slow readers read %d bytes; S3 requests open in their last second: at most %d; peak %d of %d; the newcomer took %s",
				mode.name, readers, read, open, peak, fills, took.Round(time.Millisecond))
			if open > 0 {
				t.Errorf("%d S3 requests still open while the slow readers read, want none", open)
			}
			if peak > fills {
				t.Errorf("S3 had %d requests open at once, more than max_concurrent_fills %d", peak, fills)
			}
			recordFault(t, abuseArea, "12 clients reading at 2.5 KB/s, "+mode.name, !t.Failed(),
				fmt.Sprintf("S3 requests open: %d; peak %d of %d; newcomer %s", open, peak, fills, took.Round(time.Millisecond)))
		})
	}
}
