package integration

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// kill -9 half-way through a cold fill leaves a partial entry whose
// sealed slices are right; the restarted Caddy completes it from them,
// fetching only the slices that were missing, so S3 sends the object
// about once over both runs (issue 11: at most 1.1 times).
func TestKill9MidFillCompletesFromTheSlicesPresent(t *testing.T) {
	work := t.TempDir()
	bin := testCaddy(t)
	cacheDir := t.TempDir()
	const size = 20<<20 + 3333
	obj := seedVideo(t, "video.mp4", size, 1900)
	key := obj.Key
	path := s3Path(privateBucket, obj.S3Key)

	first := startCaddyChild(t, bin, work, "first", childOptions{cacheDir: cacheDir})
	env.proxy.Reset()
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 4 << 20})
	read, readErr := readUntilKilled(t, first.baseURL+urlPath(key), obj, size/2, first.kill)
	if read >= size || readErr == nil {
		t.Fatalf("the client read %d of %d bytes and the body ended with %v: the kill did not cut the fill", read, size, readErr)
	}
	if !waitFor(5*time.Second, s3AnswersOver) {
		t.Fatalf("S3 answers to the killed Caddy still open after 5s: %s", describeS3Requests())
	}
	firstRun := env.proxy.BodyBytes("", path)
	firstRanges := rangeCounts()

	e, err := readEntryOnDisk(entryPathFor(cacheDir, obj))
	if err != nil {
		t.Fatalf("no partial entry after the kill: %v", err)
	}
	if !e.holds(obj.Body) {
		t.Fatalf("a slice sealed before the kill holds wrong bytes")
	}
	var present []int64
	for k, ok := range e.present {
		if ok {
			present = append(present, int64(k))
		}
	}
	if len(present) == 0 || e.complete() {
		t.Fatalf("%d of %d slices present after the kill, want some but not all", len(present), len(e.present))
	}
	t.Logf("killed after the client read %d bytes; S3 had sent %d; %d of %d slices sealed on disk: %v",
		read, firstRun, len(present), len(e.present), present)

	env.proxy.Reset()
	second := startCaddyChild(t, bin, work, "second", childOptions{cacheDir: cacheDir})
	r := second.get(context.Background(), urlPath(key))
	mismatches := 0
	if r.err == nil && r.readErr == nil && r.status == http.StatusOK && r.sum != obj.SHA256 {
		mismatches = 1
	}
	recordBytes(t, processFaultsArea, "kill -9 mid-fill of one object: served after the restart", r.n, mismatches)
	if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
		t.Errorf("GET after the restart: %s", why)
	}
	waitEntry(t, cacheDir, obj)
	waitS3Quiet(t, 500*time.Millisecond)
	secondRun := env.proxy.BodyBytes("", path)
	secondRanges := rangeCounts()
	for _, k := range present {
		if n := secondRanges[sliceRange(k)]; n != 0 {
			t.Errorf("slice %d, sealed before the kill, fetched %d times after the restart", k, n)
		}
	}
	for rng, n := range secondRanges {
		if n != 1 {
			t.Errorf("after the restart %q was fetched %d times, want once", rng, n)
		}
	}
	// The slices cut by the kill resume after their whole blocks: what
	// is fetched is exactly what was not on disk.
	if want := size - e.storedBytes(); secondRun != want {
		t.Errorf("S3 sent %d bytes after the restart, want %d: the object less the %d slices present and the %d bytes of the others written",
			secondRun, want, len(present), e.storedBytes()-int64(len(present))*defaultSlice)
	}
	total := firstRun + secondRun
	if limit := int64(size + size/10); total > limit {
		t.Errorf("S3 sent %d bytes over both runs (%.3f× the object), want at most 1.1× (%d); before the kill: %v",
			total, float64(total)/size, limit, firstRanges)
	}
	t.Logf("S3 sent %d + %d = %d bytes over both runs: %.3f× the %d-byte object", firstRun, secondRun, total, float64(total)/size, size)

	first.scanLog(t, "log of a child Caddy killed with -9 mid-fill")
	second.scanLog(t, "log of a child Caddy that completed a partial entry")
	recordFault(t, processFaultsArea, "kill -9 mid-fill of one object, then restart", !t.Failed(), "see the test's errors")
	if t.Failed() {
		t.Logf("log of the restarted caddy:\n%s", s3test.LogTail(second.logPath, 30))
	}
}

// readUntilKilled GETs url and, once at least half bytes of the body are
// in, calls kill and reads on until the body ends, within 30s. It returns
// how many bytes came and the error that ended them (nil for a whole
// body), after checking they are the first bytes of obj.
func readUntilKilled(t *testing.T, url string, obj s3test.Seeded, half int64, kill func()) (int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	must(t, err)
	resp, err := client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	body := make([]byte, 0, obj.Size)
	buf := make([]byte, 32<<10)
	killed := false
	for {
		n, err := resp.Body.Read(buf)
		body = append(body, buf[:n]...)
		if !killed && int64(len(body)) >= half {
			killed = true
			kill()
		}
		if err != nil {
			if !bytes.Equal(body, obj.Body[:min(len(body), len(obj.Body))]) {
				t.Errorf("the %d bytes read before the body ended are not the object's first bytes", len(body))
			}
			if err == io.EOF {
				err = nil
			}
			return int64(len(body)), err
		}
	}
}
