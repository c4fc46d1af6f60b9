package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// diskFaultsArea is the ledger area of a full, read-only or damaged cache
// disk.
const diskFaultsArea = "disk faults"

// mountTmpfs mounts a tmpfs of size (mount's syntax: "8m") on a new
// directory, for the rest of the test: a cache on it fills up for real,
// writes failing with ENOSPC, and it can be remounted read-only. Mounting
// needs root or CAP_SYS_ADMIN, which CI has; without them the test fails,
// since a fault that was not injected was not survived either.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mounting a %s tmpfs on %s: %v: the disk fault tests need root or CAP_SYS_ADMIN (CI runs them as root)", size, dir, err)
	}
	t.Cleanup(func() {
		// Lazily: a cache still open in Caddy keeps its files until the
		// next config closes it.
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting the tmpfs on %s: %v", dir, err)
		}
	})
	return dir
}

// remount makes the tmpfs on dir read-only or writable again.
func remount(t *testing.T, dir string, readOnly bool) {
	t.Helper()
	flags := uintptr(syscall.MS_REMOUNT)
	if readOnly {
		flags |= syscall.MS_RDONLY
	}
	// A fill that has just stored its entry may still hold the file open
	// for writing for a moment, while it winds down; the kernel refuses
	// a read-only remount (EBUSY) until it lets go.
	var err error
	waitFor(5*time.Second, func() bool {
		err = syscall.Mount("tmpfs", dir, "", flags, "")
		return !errors.Is(err, syscall.EBUSY)
	})
	if err != nil {
		t.Fatalf("remounting %s (read-only %v): %v", dir, readOnly, err)
	}
}

// releaseCache loads a config without the module, so the cache of the
// test's config is closed with its files. It works in a test that has
// failed already, unlike load.
func releaseCache(t *testing.T) {
	t.Helper()
	forceReload(t, caddyfileFor(env.ports, "respond 404"))
}

// wantWarning waits a moment for a warning containing msg in what the
// in-process Caddy logged after offset, and reports whether it came.
func wantWarning(t *testing.T, offset int64, msg string) bool {
	t.Helper()
	found := waitFor(3*time.Second, func() bool {
		for _, line := range suiteLogSince(t, offset) {
			if bytes.Contains(line, []byte(`"level":"warn"`)) && bytes.Contains(line, []byte(msg)) {
				return true
			}
		}
		return false
	})
	if !found {
		t.Errorf("no warning %q in Caddy's log", msg)
	}
	return found
}

// A cache disk that fills up (a tmpfs, with max_size far above it):
// every client still gets every byte, readers of a slice that hits ENOSPC
// read it from S3, no half-written slice is stored, a warning says why,
// and once space is freed the cache stores the rest.
func TestFullCacheDiskServesEveryByteAndRecovers(t *testing.T) {
	mnt := mountTmpfs(t, "8m")
	dir := filepath.Join(mnt, "cache")
	// Another program's 5 MiB on the same disk leave the cache 3 MiB.
	filler := filepath.Join(mnt, "filler")
	must(t, os.WriteFile(filler, s3test.RandomBytes(5<<20, 1), 0o600))
	objs := webpObjects(t, 6, 900<<10, 800)
	seeded := seedObjects(t, objs...)
	offset := suiteLogSize(t)
	loadCache(t, dir, "max_size 1GiB")
	defer releaseCache(t)

	// Two fit.
	for _, o := range objs[:2] {
		fillEntry(t, dir, seeded[o.Key])
	}
	// Four more at once, each read whole by one client and from 100000
	// on by another, fill the disk mid-body. The link is slowed so
	// that the fills overlap.
	env.proxy.Reset()
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 4 << 20})
	type result struct {
		obj      s3test.Seeded
		rangeReq bool
		r        streamed
	}
	var results []*result
	var wg sync.WaitGroup
	for _, o := range objs[2:] {
		for _, rangeReq := range []bool{false, true} {
			res := &result{obj: seeded[o.Key], rangeReq: rangeReq}
			results = append(results, res)
			wg.Go(func() {
				var headers []string
				if rangeReq {
					headers = append(headers, "Range: bytes=100000-")
				}
				res.r = stream(context.Background(), http.MethodGet, env.baseURL()+urlPath(res.obj.Key), nil, headers...)
			})
		}
	}
	wg.Wait()
	env.proxy.ClearFault()
	var compared int64
	mismatches := 0
	for _, res := range results {
		status, want := http.StatusOK, res.obj.Body
		if res.rangeReq {
			status, want = http.StatusPartialContent, res.obj.Body[100000:]
		}
		if res.r.status == status && res.r.readErr == nil && res.r.err == nil {
			compared += res.r.n
			if res.r.sum != s3test.SHA256Hex(want) {
				mismatches++
			}
		}
		if ok, why := res.r.complete(status, want); !ok {
			t.Errorf("%s (range %v) with the disk full: %s", res.obj.Key, res.rangeReq, why)
		}
	}
	waitS3Quiet(t, 200*time.Millisecond)
	for _, res := range results {
		// The fill's slices, and at most each reader's own read of
		// what the disk could not take.
		if pulled := env.proxy.BodyBytes(http.MethodGet, s3Path(privateBucket, res.obj.S3Key)); pulled > 3*res.obj.Size {
			t.Errorf("%s: S3 sent %d bytes for a %d-byte object read by two clients", res.obj.Key, pulled, res.obj.Size)
		}
	}
	recordBytes(t, diskFaultsArea, "cache disk full", compared, mismatches)

	// No wrong byte was stored, and the disk did fill.
	complete := 0
	for _, o := range objs {
		e, err := readEntryOnDisk(entryPathFor(dir, seeded[o.Key]))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil || !e.holds(seeded[o.Key].Body) {
			t.Errorf("the entry of %s holds wrong bytes (%v)", o.Key, err)
		}
		if e.complete() {
			complete++
		}
	}
	t.Logf("%d of %d objects stored whole on a disk with room for about 3", complete, len(objs))
	if complete == len(objs) {
		t.Fatalf("every object was stored: the disk never filled")
	}
	wantTempEmpty(t, dir)
	wantWarning(t, offset, "cannot write to the cache")

	// Space is freed: what was not stored is stored now.
	must(t, os.Remove(filler))
	for _, o := range objs {
		obj := seeded[o.Key]
		if entryHoldsBody(entryPathFor(dir, obj), obj.Body) {
			wantHitWithoutS3(t, obj)
			continue
		}
		env.proxy.Reset()
		wantGet(t, obj, "MISS")
		waitEntry(t, dir, obj)
		wantHitWithoutS3(t, obj)
	}
	recordFault(t, diskFaultsArea, "cache disk full (tmpfs), then space freed", !t.Failed(), "see the test's errors")
}

// A read-only cache_dir (as a filesystem remounted read-only after an
// error leaves it): entries still on disk are hits, everything else
// comes from S3 uncached with a warning, a restart on it works, and once
// it is writable again the cache stores again.
func TestReadOnlyCacheDirServesFromS3(t *testing.T) {
	mnt := mountTmpfs(t, "16m")
	dir := filepath.Join(mnt, "cache")
	cached := env.objects.Get(s3test.KeyOriginalPNG)
	fresh := env.objects.Get(s3test.KeyOneMB)
	loadCache(t, dir)
	defer releaseCache(t)
	fillEntry(t, dir, cached)

	t.Run("read-only while running", func(t *testing.T) {
		offset := suiteLogSize(t)
		remount(t, mnt, true)
		wantHitWithoutS3(t, cached)
		for range 2 {
			wantMissFromS3(t, fresh)
		}
		if exists(entryPathFor(dir, fresh)) {
			t.Errorf("an entry was stored on a read-only disk")
		}
		wantWarning(t, offset, "cannot write to the cache")
		recordFault(t, diskFaultsArea, "cache_dir read-only while running", !t.Failed(), "see the test's errors")
	})

	t.Run("restart on a read-only cache_dir", func(t *testing.T) {
		releaseCache(t)
		loadCache(t, dir)
		wantHitWithoutS3(t, cached)
		wantMissFromS3(t, fresh)
		recordFault(t, diskFaultsArea, "restart on a read-only cache_dir", !t.Failed(), "see the test's errors")
	})

	// A crash leaves temp files, which the next start removes; if the
	// disk went read-only meanwhile it cannot, and the site must still
	// come up, serving from S3.
	t.Run("restart on a read-only cache_dir with a crash's temp files", func(t *testing.T) {
		releaseCache(t)
		remount(t, mnt, false)
		must(t, os.WriteFile(filepath.Join(dir, "temp", "fill-left-by-a-crash"), []byte("half an object"), 0o600))
		remount(t, mnt, true)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(withSuiteLog(siteConfig(cacheBlock(dir)))), nil)
		must(t, err)
		err = caddy.Load(cfg, true)
		recordFault(t, diskFaultsArea, "restart on a read-only cache_dir with temp files left", err == nil,
			fmt.Sprintf("the config does not load, so the site is down: %v", err))
		if err != nil {
			return
		}
		warmUp(t)
		wantHitWithoutS3(t, cached)
		wantMissFromS3(t, fresh)
	})

	t.Run("writable again", func(t *testing.T) {
		releaseCache(t)
		remount(t, mnt, false)
		loadCache(t, dir)
		fillEntry(t, dir, fresh)
		wantHitWithoutS3(t, fresh)
		wantHitWithoutS3(t, cached)
		recordFault(t, diskFaultsArea, "cache_dir writable again", !t.Failed(), "see the test's errors")
	})
}
