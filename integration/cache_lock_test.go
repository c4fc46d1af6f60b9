package integration

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// A cold object wanted by a hundred clients at once costs one S3 GET, and
// nobody waits for the whole fill: every client is streamed the bytes as
// they come in, like nginx's proxy_cache_lock without its polling.
func TestStampedeMakesOneS3GetAndStreamsToEveryone(t *testing.T) {
	dir := t.TempDir()
	obj := bigObject(t)
	loadCache(t, dir)
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: slowLink})

	type client struct {
		method     string
		header     string // a Range, or ""
		wave       int
		wantStatus int
		want       []byte
		wantRange  string // Content-Range
	}
	size := obj.Size
	var clients []client
	// The first wave arrives together on the cold key; the second while
	// the fill is a third of the way through.
	for range 50 {
		clients = append(clients, client{method: http.MethodGet, wave: 1, wantStatus: http.StatusOK, want: obj.Body})
	}
	for range 30 {
		clients = append(clients, client{method: http.MethodGet, wave: 2, wantStatus: http.StatusOK, want: obj.Body})
	}
	for range 10 {
		clients = append(clients, client{method: http.MethodHead, wave: 2, wantStatus: http.StatusOK})
	}
	ranges := []struct{ from, to int64 }{
		{0, 1023}, {1 << 20, 2<<20 - 1}, {5000000, 5000099}, {size - 1024, size - 1}, {0, size - 1},
	}
	for i := range 10 {
		r := ranges[i%len(ranges)]
		clients = append(clients, client{
			method: http.MethodGet, header: fmt.Sprintf("Range: bytes=%d-%d", r.from, r.to), wave: 1 + i%2,
			wantStatus: http.StatusPartialContent, want: obj.Body[r.from : r.to+1],
			wantRange: fmt.Sprintf("bytes %d-%d/%d", r.from, r.to, size),
		})
	}

	url := env.baseURL() + urlPath(obj.Key)
	results := make([]streamed, len(clients))
	var wg sync.WaitGroup
	start := time.Now()
	secondWave := start.Add(600 * time.Millisecond)
	for i, c := range clients {
		wg.Go(func() {
			if c.wave == 2 {
				time.Sleep(time.Until(secondWave))
			}
			var headers []string
			if c.header != "" {
				headers = append(headers, c.header)
			}
			results[i] = stream(context.Background(), c.method, url, nil, headers...)
		})
	}
	wg.Wait()

	// The fill ends when the fastest full GET has its last byte.
	var fillEnd time.Time
	for i, c := range clients {
		if r := results[i]; c.method == http.MethodGet && c.header == "" && r.n == size {
			if fillEnd.IsZero() || r.lastByte.Before(fillEnd) {
				fillEnd = r.lastByte
			}
		}
	}
	if fillEnd.IsZero() {
		t.Fatal("no client got the whole object")
	}
	fill := fillEnd.Sub(start)
	t.Logf("fill took %s", fill)
	if fill < 1500*time.Millisecond {
		t.Fatalf("the fill took %s; the link to S3 is not throttled to about 2s, so this test proves nothing", fill)
	}

	var ttfbs []time.Duration
	for i, c := range clients {
		r := results[i]
		name := fmt.Sprintf("client %d (%s %s, wave %d)", i, c.method, c.header, c.wave)
		if c.method == http.MethodHead {
			if r.err != nil || r.status != http.StatusOK || r.length != size || r.n != 0 {
				t.Errorf("%s: status %d, Content-Length %d, %d body bytes, error %v; want 200, %d, none", name, r.status, r.length, r.n, r.err, size)
			}
			if !r.headersAt.Before(fillEnd) {
				t.Errorf("%s: answered %s after the start, after the fill ended (%s)", name, r.headersAt.Sub(start), fill)
			}
		} else if ok, why := r.complete(c.wantStatus, c.want); !ok {
			t.Errorf("%s: %s", name, why)
		}
		if r.err == nil {
			wantMediaHeaders(t, r.response(), "MISS")
		}
		if got := r.header.Get("Content-Range"); got != c.wantRange {
			t.Errorf("%s: Content-Range = %q, want %q", name, got, c.wantRange)
		}
		if c.method == http.MethodGet && c.header == "" {
			ttfbs = append(ttfbs, r.ttfb())
			// A client that joined mid-fill is streamed what is
			// already there, not held until the end.
			if c.wave == 2 && !r.firstByte.Before(fillEnd) {
				t.Errorf("%s: first byte %s after the start, not before the fill ended (%s)", name, r.firstByte.Sub(start), fill)
			}
		}
	}
	if m := median(ttfbs); m > fill/4 {
		t.Errorf("median time to first byte %s, want well under the fill's %s", m, fill)
	} else {
		t.Logf("median time to first byte %s, slowest %s", m, ttfbs[len(ttfbs)-1])
	}
	wantS3Gets(t, obj, 1)

	waitEntry(t, dir, obj)
	wantHitWithoutS3(t, obj)
}

// The fill belongs to the cache, not to the client that started it.
func TestFillSurvivesItsFirstClientLeaving(t *testing.T) {
	obj := bigObject(t)
	url := env.baseURL() + urlPath(obj.Key)

	t.Run("a client that joined gets every byte", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink})

		leaderCtx, leave := context.WithCancel(context.Background())
		defer leave()
		leaderHasBytes := make(chan struct{})
		followerHasBytes := make(chan struct{})
		var leader, follower streamed
		var wg sync.WaitGroup
		wg.Go(func() {
			leader = stream(leaderCtx, http.MethodGet, url, func() { close(leaderHasBytes) })
		})
		<-leaderHasBytes
		wg.Go(func() {
			follower = stream(context.Background(), http.MethodGet, url, func() { close(followerHasBytes) })
		})
		<-followerHasBytes
		leave()
		wg.Wait()

		if leader.n >= obj.Size {
			t.Fatalf("the first client got all %d bytes before leaving; the fill was too quick to test this", leader.n)
		}
		if ok, why := follower.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("the client that stayed: %s", why)
		}
		wantS3Gets(t, obj, 1)
		waitEntry(t, dir, obj)
		wantHitWithoutS3(t, obj)
	})

	t.Run("nobody else waiting", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink})

		ctx, leave := context.WithCancel(context.Background())
		r := stream(ctx, http.MethodGet, url, leave)
		if r.n >= obj.Size {
			t.Fatalf("the client got all %d bytes before leaving", r.n)
		}
		// The fill goes on alone and lands on disk.
		waitEntry(t, dir, obj)
		wantS3Gets(t, obj, 1)
		wantHitWithoutS3(t, obj)
	})
}

// If S3 fails mid-body, everyone reading the fill sees a broken transfer,
// never a complete-looking 200, and nothing is stored.
func TestS3FailureMidFillAbortsEveryReaderAndStoresNothing(t *testing.T) {
	obj := bigObject(t)

	t.Run("body cut", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink, CutAfter: 4 << 20})
		abortedFill(t, dir, obj, func() {})
		env.proxy.ClearFault()
		recovered(t, dir, obj)
	})

	// SIGTERM lets versitygw finish the responses in flight (the whole
	// object arrives, and rightly is stored); SIGKILL is the crash this
	// is about.
	t.Run("versitygw killed", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		restartGatewayAtCleanup(t)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink / 4})
		abortedFill(t, dir, obj, func() {
			if err := env.gateway.Kill(); err != nil {
				t.Error(err)
			}
		})
		if err := env.gateway.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		env.proxy.Reset()
		recovered(t, dir, obj)
	})
}

// abortedFill starts a fill of obj with three readers, calls fail once
// they all have bytes, and checks that each of them sees the transfer
// break and that nothing is left in the cache.
func abortedFill(t *testing.T, dir string, obj s3test.Seeded, fail func()) {
	t.Helper()
	url := env.baseURL() + urlPath(obj.Key)
	results := make([]streamed, 3)
	var wg sync.WaitGroup
	for i := range results {
		hasBytes := make(chan struct{})
		wg.Go(func() {
			results[i] = stream(context.Background(), http.MethodGet, url, func() { close(hasBytes) })
		})
		<-hasBytes
	}
	fail()
	wg.Wait()
	for i, r := range results {
		if !r.aborted() {
			t.Errorf("client %d: status %d, %d of %d bytes (Content-Length %d), read error %v: want a broken transfer",
				i, r.status, r.n, obj.Size, r.length, r.readErr)
		}
		if r.n == obj.Size && r.sum != obj.SHA256 {
			t.Errorf("client %d: got %d bytes that are not the object's", i, r.n)
		}
	}
	if n := env.proxy.CountFor(http.MethodGet, s3Path(privateBucket, obj.S3Key)); n != 1 {
		t.Errorf("S3 GETs = %d, want 1 shared by the three clients: %v", n, env.proxy.Counts())
	}
	wantTempEmpty(t, dir)
	wantNoEntry(t, dir)
}

// recovered checks that, S3 being fine again, obj is fetched anew and
// stored.
func recovered(t *testing.T, dir string, obj s3test.Seeded) {
	t.Helper()
	wantMissFromS3(t, obj)
	waitEntry(t, dir, obj)
}

// lock off is nginx's proxy_cache_lock off: concurrent requests for a key
// being filled go to S3 on their own.
func TestLockOffSendsConcurrentRequestsToS3(t *testing.T) {
	dir := t.TempDir()
	obj := bigObject(t)
	loadCache(t, dir, "lock off")
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink})

	url := env.baseURL() + urlPath(obj.Key)
	results := make([]streamed, 4)
	var wg sync.WaitGroup
	first := make(chan struct{})
	wg.Go(func() { results[0] = stream(context.Background(), http.MethodGet, url, func() { close(first) }) })
	<-first
	for i := 1; i < len(results); i++ {
		wg.Go(func() { results[i] = stream(context.Background(), http.MethodGet, url, nil) })
	}
	wg.Wait()
	for i, r := range results {
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("client %d: %s", i, why)
		}
	}
	// The first client's fill, and one GET of their own for the others.
	wantS3Gets(t, obj, len(results))
	waitEntry(t, dir, obj)
}

// Whatever the first request for a cold key is (a Range, a HEAD, a
// conditional GET), the fill is one full, unconditional GET, and the
// request is answered from it.
func TestColdRequestsOfAnyKindFillTheWholeObject(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOneMB)
	cases := []struct {
		name    string
		method  string
		headers []string
		check   func(t *testing.T, r response)
	}{
		{"Range", http.MethodGet, []string{"Range: bytes=100-199"}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPartialContent, obj.Body[100:200], "MISS")
			wantContentRange(t, r, fmt.Sprintf("bytes 100-199/%d", obj.Size))
		}},
		{"HEAD", http.MethodHead, nil, func(t *testing.T, r response) {
			if r.status != http.StatusOK || r.length != obj.Size || len(r.body) != 0 {
				t.Errorf("status %d, Content-Length %d, %d body bytes; want 200, %d, none", r.status, r.length, len(r.body), obj.Size)
			}
			wantMediaHeaders(t, r, "MISS")
		}},
		{"If-None-Match", http.MethodGet, []string{"If-None-Match: " + obj.ETag}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusNotModified, nil, "MISS")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			loadCache(t, dir)
			c.check(t, do(t, c.method, urlPath(obj.Key), c.headers...))
			wantS3Gets(t, obj, 1)
			for _, r := range env.proxy.Requests() {
				for _, h := range []string{"Range", "If-None-Match", "If-Modified-Since", "If-Match"} {
					if v := r.Header.Get(h); v != "" {
						t.Errorf("the fill's GET carried the client's %s: %q", h, v)
					}
				}
			}
			waitEntry(t, dir, obj)
			wantHitWithoutS3(t, obj)
		})
	}
}

// lock_timeout bounds how long a request waits for someone else's fill to
// get S3's headers; past it, that request goes to S3 on its own, like
// nginx's proxy_cache_lock_timeout. The fill itself is not abandoned, nor
// duplicated for the request that started it.
func TestLockTimeoutSendsWaitersToS3(t *testing.T) {
	dir := t.TempDir()
	obj := env.objects.Get(s3test.KeyCachedMP4)
	loadCache(t, dir, "lock_timeout 500ms")
	// S3 takes 1.5s to answer each request.
	env.proxy.SetFault(s3test.Fault{Delay: 1500 * time.Millisecond})

	url := env.baseURL() + urlPath(obj.Key)
	var leader, waiter streamed
	var wg sync.WaitGroup
	wg.Go(func() { leader = stream(context.Background(), http.MethodGet, url, nil) })
	time.Sleep(100 * time.Millisecond)
	wg.Go(func() { waiter = stream(context.Background(), http.MethodGet, url, nil) })
	wg.Wait()
	for name, r := range map[string]streamed{"first client": leader, "waiter": waiter} {
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("%s: %s", name, why)
		}
	}
	// One GET for the fill, one for the waiter that gave up on it.
	wantS3Gets(t, obj, 2)
	waitEntry(t, dir, obj)
}
