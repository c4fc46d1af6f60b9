package integration

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// restartGatewayAtCleanup makes sure versitygw runs again after a test
// that stops it, even if the test fails half-way.
func restartGatewayAtCleanup(t *testing.T) {
	t.Cleanup(func() {
		if err := env.gateway.Start(context.Background()); err != nil {
			t.Errorf("restarting versitygw: %v", err)
		}
	})
}

// stopGateway stops versitygw until the end of the test.
func stopGateway(t *testing.T) {
	t.Helper()
	restartGatewayAtCleanup(t)
	must(t, env.gateway.Stop())
}

// An expired entry is served, marked STALE, when S3 fails in any of the
// ways use_stale names.
func TestStaleEntryIsServedWhenS3Fails(t *testing.T) {
	obj := seedMedia(t, "stale.png", oneSecond, 10)
	dir := t.TempDir()
	options := []string{staleWithoutUpdating, "first_byte_timeout 1s"}
	loadCache(t, dir, options...)
	fillEntry(t, dir, obj)
	expire()

	cases := []struct {
		name  string
		fault s3test.Fault
	}{
		{"503", s3test.Fault{Status: 503, Code: "SlowDown"}},
		{"500", s3test.Fault{Status: 500}},
		{"first byte timeout", s3test.Fault{Delay: 5 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			env.proxy.SetFault(c.fault)
			wantGet(t, obj, "STALE")
			wantS3Gets(t, obj, 1)
		})
	}

	t.Run("versitygw down", func(t *testing.T) {
		stopGateway(t)
		// Through the proxy, S3 looks like a 502; straight at the
		// gateway, like a refused connection.
		env.proxy.Reset()
		wantGet(t, obj, "STALE")
		wantS3Gets(t, obj, 1)
		load(t, siteConfig(blockAt(env.gateway.Endpoint(), append([]string{"cache_dir " + dir}, options...)...)))
		warmUp(t)
		wantGet(t, obj, "STALE")
		must(t, env.gateway.Start(context.Background()))
	})

	t.Run("use_stale off", func(t *testing.T) {
		loadCache(t, dir, "use_stale off")
		env.proxy.SetFault(s3test.Fault{Status: 503, Code: "SlowDown"})
		wantEmptyError(t, get(t, urlPath(obj.Key)), http.StatusBadGateway)
		wantS3Gets(t, obj, 1)
	})

	t.Run("S3 back", func(t *testing.T) {
		loadCache(t, dir, options...)
		wantGet(t, obj, "REVALIDATED")
		wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
	})
}

// With the default use_stale (updating), an expired entry is served at
// once, marked UPDATING, while one background request refreshes it.
func TestUpdatingServesStaleAtOnceAndRefreshesOnce(t *testing.T) {
	obj := seedMedia(t, "updating.png", oneSecond, 11)
	dir := t.TempDir()
	loadCache(t, dir)
	fillEntry(t, dir, obj)
	expire()

	env.proxy.Reset()
	// S3 is slow to answer the refresh: clients must not wait for it.
	const slow = time.Second
	env.proxy.SetFault(s3test.Fault{Delay: slow})
	refreshStarted := time.Now()
	for i := range 5 {
		start := time.Now()
		r := get(t, urlPath(obj.Key))
		if elapsed := time.Since(start); elapsed > slow/2 {
			t.Errorf("request %d took %s, waiting for the refresh", i, elapsed)
		}
		wantFromCache(t, r, obj, "UPDATING")
	}
	if time.Since(refreshStarted) > slow {
		t.Fatalf("the UPDATING requests took longer than the refresh; cannot tell them apart")
	}
	// Once the refresh lands, HIT; polled, as it lands in the background.
	var last string
	if !waitFor(3*time.Second, func() bool {
		last = get(t, urlPath(obj.Key)).header.Get("X-Cache-Status")
		return last == "HIT"
	}) {
		t.Fatalf("X-Cache-Status = %s 3s after the refresh started, want HIT once it lands", last)
	}
	wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
}

// Without a stale copy, an S3 failure is a clean 502: nothing of S3's
// answer reaches the client, and nothing is stored.
func TestS3FailureWithoutStaleCopyIsAClean502(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			env.proxy.Reset()
			env.proxy.SetFault(s3test.Fault{Status: 503, Code: "SlowDown", Header: http.Header{"Set-Cookie": {"s3session=leak"}}})
			r := do(t, method, urlPath(obj.Key))
			wantEmptyError(t, r, http.StatusBadGateway)
			wantCacheStatus(t, r, "MISS")
			wantS3Gets(t, obj, 1)
		})
	}
	t.Run("versitygw down", func(t *testing.T) {
		stopGateway(t)
		env.proxy.Reset()
		wantEmptyError(t, do(t, http.MethodGet, urlPath(obj.Key)), http.StatusBadGateway)
	})
	wantNoEntry(t, dir)
	wantTempEmpty(t, dir)
}
