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

// With use_stale off, an S3 failure is the client's error even though an
// expired copy is at hand; the copy is kept, and revalidated once S3 is
// back. TestS3FaultMatrix (reliability_s3_test.go) has the faults that
// use_stale covers, each against a stale copy.
func TestUseStaleOffAnswersWithTheError(t *testing.T) {
	obj := seedMedia(t, "stale.png", oneSecond, 10)
	dir := t.TempDir()
	loadCache(t, dir, "use_stale off")
	fillEntry(t, dir, obj)
	expire()

	env.proxy.Reset()
	env.proxy.SetFault(s3test.Fault{Status: 503, Code: "SlowDown"})
	wantEmptyError(t, get(t, urlPath(obj.Key)), http.StatusBadGateway)
	wantOneS3Get(t, obj)
	if !entryHoldsBody(entryPathFor(dir, obj), obj.Body) {
		t.Errorf("the expired copy is gone after a failed revalidation")
	}
	recordFault(t, s3FaultsArea, "503 SlowDown / stale copy, use_stale off", !t.Failed(), "see the test's errors")

	env.proxy.Reset()
	wantGet(t, obj, "REVALIDATED")
	wantConditionalGet(t, obj, obj.ETag, http.StatusNotModified)
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
	recordFault(t, s3FaultsArea, "slow first byte / stale copy, use_stale updating", !t.Failed(), "see the test's errors")
}
