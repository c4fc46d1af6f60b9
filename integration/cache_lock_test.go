package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// A cold object wanted by a hundred clients at once costs each of its
// slices once from S3, and nobody waits for the whole fill: every client
// is streamed the bytes as they come in, like nginx's proxy_cache_lock
// without its polling.
func TestStampedeFetchesEachSliceOnceAndStreamsToEveryone(t *testing.T) {
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
	// the fill is under way.
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
	// The second wave must find the fill under way. Slices fetched in
	// parallel over the throttled link take 1.2 to 1.5 s here.
	if fill < secondWave.Sub(start)+400*time.Millisecond {
		t.Fatalf("the fill took %s, too little for the second wave (after %s) to join it midway, so this test proves nothing", fill, secondWave.Sub(start))
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
		// The first wave finds nothing: MISS. The second finds the
		// entry the fill is writing: a HIT where every byte it needs is
		// on disk already (a HEAD, a range of slices in), else a MISS.
		if r.err == nil && c.wave == 1 {
			wantMediaHeaders(t, r.response(), "MISS")
		} else if got := r.header.Get("X-Cache-Status"); r.err == nil && got != "MISS" && got != "HIT" {
			t.Errorf("%s: X-Cache-Status %q, want MISS or HIT", name, got)
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
	wantS3Fetches(t, obj, 1)

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
		wantS3Fetches(t, obj, 1)
		waitEntry(t, dir, obj)
		wantHitWithoutS3(t, obj)
	})

	t.Run("a small object is fetched whole, its client gone", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		small := env.objects.Get(s3test.KeyOneMB) // under fill_ahead
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: 2 << 20})
		ctx, leave := context.WithCancel(context.Background())
		r := stream(ctx, http.MethodGet, env.baseURL()+urlPath(small.Key), leave)
		if r.n >= small.Size {
			t.Fatalf("the client got all %d bytes before leaving", r.n)
		}
		// The fill goes on alone and lands on disk.
		waitEntry(t, dir, small)
		wantS3Fetches(t, small, 1)
		wantHitWithoutS3(t, small)
	})

	t.Run("a large object is fetched no further than the read-ahead", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink})
		ctx, leave := context.WithCancel(context.Background())
		r := stream(ctx, http.MethodGet, url, leave)
		if r.n >= obj.Size {
			t.Fatalf("the client got all %d bytes before leaving", r.n)
		}
		// Once the slices in flight are in, nothing more is fetched.
		waitS3Quiet(t, time.Second)
		pulled := s3Bytes(t, obj)
		if limit := r.n + fillAhead + 2*defaultSlice; pulled > limit {
			t.Errorf("S3 sent %d bytes for a client that read %d and left; want at most %d (what it read, fill_ahead and the slice in flight)", pulled, r.n, limit)
		}
		e, err := readEntryOnDisk(entryPathFor(dir, obj))
		if err != nil || e.complete() || !e.holds(obj.Body) {
			t.Errorf("entry after the client left: %d of %d slices, holds the bytes %v, %v; want some, right", e.count(), len(e.present), err == nil && e.holds(obj.Body), err)
		}
		t.Logf("the client read %d bytes; S3 sent %d (%d of %d slices stored)", r.n, pulled, e.count(), len(e.present))

		// The next client gets everything, and S3 only the slices
		// that were missing: no slice twice over both clients.
		wantGet(t, obj, "MISS")
		waitEntry(t, dir, obj)
		ranges := map[string]int{}
		for _, req := range env.proxy.Requests() {
			ranges[req.Header.Get("Range")]++
		}
		for rng, n := range ranges {
			if n > 1 {
				t.Errorf("%s fetched %d times", rng, n)
			}
		}
		if pulled := s3Bytes(t, obj); pulled != obj.Size {
			t.Errorf("S3 sent %d bytes over both clients, want the object's %d exactly", pulled, obj.Size)
		}
	})
}

// getConcurrently sends n GETs of obj at once and returns what each
// client read.
func getConcurrently(obj s3test.Seeded, n int) []streamed {
	url := env.baseURL() + urlPath(obj.Key)
	results := make([]streamed, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i] = stream(context.Background(), http.MethodGet, url, nil) })
	}
	wg.Wait()
	return results
}

// fillAhead is the default fill_ahead: the read-ahead a reader may earn,
// and the size up to which an object is fetched whole once started.
const fillAhead = 8 << 20

// waitS3Quiet waits until S3 has had no request in progress for quiet,
// bounded at 30s.
func waitS3Quiet(t *testing.T, quiet time.Duration) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	since := time.Now()
	for time.Now().Before(deadline) {
		if !s3AnswersOver() {
			since = time.Now()
		} else if time.Since(since) >= quiet {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("S3 still busy after 30s: %s", describeS3Requests())
}

// If S3 fails mid-body, everyone reading the slice that broke sees a
// broken transfer, never a complete-looking 200, and no byte of the broken
// slice is stored.
func TestS3FailureMidFillAbortsEveryReaderAndStoresNothing(t *testing.T) {
	obj := bigObject(t)

	t.Run("body cut", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		// Every answer of S3 breaks half-way through its slice.
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink, CutAfter: defaultSlice / 2})
		abortedFill(t, dir, obj, func() {})
		for rng, n := range rangeCounts() {
			if n > 1 {
				t.Errorf("S3 saw %s %d times: a reader of a failed slice asked again: %v", rng, n, env.proxy.Counts())
			}
		}
		wantNoBodyStored(t, dir)
		env.proxy.ClearFault()
		recovered(t, dir, obj)
	})

	// SIGTERM lets versitygw finish the responses in flight (the whole
	// slice arrives, and rightly is stored); SIGKILL is the crash this
	// is about.
	t.Run("versitygw killed", func(t *testing.T) {
		dir := t.TempDir()
		loadCache(t, dir)
		restartGatewayAtCleanup(t)
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink / 8})
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
// break, that no waiting reader sent S3 the failed slice again, and that
// nothing was stored.
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
	// A slice may have been tried again by a reader that came to it
	// after the failure, never by one that was waiting for it.
	for rng, n := range rangeCounts() {
		if n > len(results) {
			t.Errorf("S3 saw %s %d times for %d readers: %v", rng, n, len(results), env.proxy.Counts())
		}
	}
	wantTempEmpty(t, dir)
	// Slices that were whole before the failure may be kept; none holds
	// a wrong byte.
	if e, err := readEntryOnDisk(entryPathFor(dir, obj)); err == nil && !e.holds(obj.Body) {
		t.Errorf("the entry holds wrong bytes after the failure")
	}
}

// rangeCounts counts the S3 GETs since the last reset by Range header.
func rangeCounts() map[string]int {
	counts := map[string]int{}
	for _, r := range env.proxy.Requests() {
		if r.Method == http.MethodGet {
			counts[r.Header.Get("Range")]++
		}
	}
	return counts
}

// recovered checks that, S3 being fine again, obj is served whole and
// stored, with only what is not already stored fetched, once: slices
// sealed stay, and a slice cut midway is resumed after its whole blocks.
func recovered(t *testing.T, dir string, obj s3test.Seeded) {
	t.Helper()
	stored := int64(0)
	if e, err := readEntryOnDisk(entryPathFor(dir, obj)); err == nil {
		stored = e.storedBytes()
	}
	env.proxy.Reset()
	wantGet(t, obj, "MISS")
	waitEntry(t, dir, obj)
	for rng, n := range rangeCounts() {
		if n != 1 {
			t.Errorf("S3 saw %s %d times, want once", rng, n)
		}
	}
	if pulled, want := s3Bytes(t, obj), obj.Size-stored; pulled != want {
		t.Errorf("S3 sent %d bytes, want %d: the object less the %d bytes already stored", pulled, want, stored)
	}
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
	// The first client's fill, and the others' own reads, each a slice
	// (or a chunk of the same size) at a time: every slice four times.
	waitEntry(t, dir, obj)
	counts := rangeCounts()
	for k := range int64(obj.Size / defaultSlice) {
		if counts[sliceRange(k)] != len(results) {
			t.Errorf("slice %d fetched %d times, want %d (the fill, and each of the others): %v", k, counts[sliceRange(k)], len(results), counts)
		}
	}
}

// A cold request fetches what it needs and no more: a Range the slice
// that holds it, a HEAD no body at all (S3's HEAD), a conditional GET the
// first slice. What S3 is asked is the cache's own request, never the
// client's range or validators, so what is stored is the object itself;
// the next GET completes the entry.
func TestColdRequestsFetchOnlyWhatTheyNeed(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOneMB)
	cases := []struct {
		name    string
		method  string
		headers []string
		check   func(t *testing.T, r response)
		s3      []string // what S3 sees: "GET <Range>" or "HEAD"
	}{
		{"Range", http.MethodGet, []string{"Range: bytes=100-199"}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusPartialContent, obj.Body[100:200], "MISS")
			wantContentRange(t, r, fmt.Sprintf("bytes 100-199/%d", obj.Size))
		}, []string{"GET " + sliceRange(0)}},
		{"HEAD", http.MethodHead, nil, func(t *testing.T, r response) {
			if r.status != http.StatusOK || r.length != obj.Size || len(r.body) != 0 {
				t.Errorf("status %d, Content-Length %d, %d body bytes; want 200, %d, none", r.status, r.length, len(r.body), obj.Size)
			}
			wantMediaHeaders(t, r, "MISS")
		}, []string{"HEAD "}},
		{"If-None-Match", http.MethodGet, []string{"If-None-Match: " + obj.ETag}, func(t *testing.T, r response) {
			wantOutcome(t, r, http.StatusNotModified, nil, "MISS")
		}, []string{"GET " + sliceRange(0)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			loadCache(t, dir)
			c.check(t, do(t, c.method, urlPath(obj.Key), c.headers...))
			var seen []string
			for _, r := range env.proxy.Requests() {
				seen = append(seen, r.Method+" "+r.Header.Get("Range"))
				for _, h := range []string{"If-None-Match", "If-Modified-Since", "If-Match"} {
					if v := r.Header.Get(h); v != "" {
						t.Errorf("the cache's request carried the client's %s: %q", h, v)
					}
				}
			}
			if !slices.Equal(seen, c.s3) {
				t.Errorf("S3 saw %v, want %v", seen, c.s3)
			}
			env.proxy.Reset()
			if c.method == http.MethodHead {
				// The entry has the object's metadata and no body:
				// the next GET fetches it.
				wantGet(t, obj, "MISS")
				wantS3Fetches(t, obj, 1)
			}
			waitEntry(t, dir, obj)
			wantHitWithoutS3(t, obj)
		})
	}
}

// A slow first byte from S3 is waited for, not stampeded: with S3 taking
// longer to answer than lock_timeout, every client shares the one fetch
// (nginx's proxy_cache_lock_timeout would send each waiter to S3 itself).
func TestSlowFirstByteIsWaitedForNotStampeded(t *testing.T) {
	dir := t.TempDir()
	obj := env.objects.Get(s3test.KeyCachedMP4)
	loadCache(t, dir, "lock_timeout 500ms")
	// S3 takes 1.5s to answer each request.
	env.proxy.SetFault(s3test.Fault{Delay: 1500 * time.Millisecond})

	for i, r := range getConcurrently(obj, 20) {
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("client %d: %s", i, why)
		}
	}
	wantS3Fetches(t, obj, 1)
	waitEntry(t, dir, obj)
}

// lock_timeout counts from the last byte a fetch received: when a fetch
// stops sending for that long, the requests waiting for it read the rest
// from S3 themselves, and the stalled fetch, once it resumes, still
// stores its slice.
func TestLockTimeoutCountsFromTheLastByte(t *testing.T) {
	dir := t.TempDir()
	obj := env.objects.Get(s3test.KeyOneMB)
	loadCache(t, dir, "lock_timeout 500ms")
	// The cache's fetch stalls for 3s after 100 KB; the requests that
	// give up on it are served at once.
	env.proxy.SetFault(s3test.Fault{StallAfter: 100 << 10, Stall: 3 * time.Second, Times: 1})

	start := time.Now()
	results := getConcurrently(obj, 3)
	for i, r := range results {
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("client %d: %s", i, why)
		}
		if took := r.lastByte.Sub(start); took > 2500*time.Millisecond {
			t.Errorf("client %d took %s: it waited out the stall instead of giving up after lock_timeout", i, took)
		}
	}
	// The fill's GET, and one GET of the rest for each waiter.
	counts := rangeCounts()
	if counts[sliceRange(0)] != 1 || len(env.proxy.Requests()) != 1+len(results) {
		t.Errorf("S3 saw %v, want the fill's slice once and one GET for each of the %d clients", counts, len(results))
	}
	waitEntry(t, dir, obj)
}
