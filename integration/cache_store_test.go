package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// An entry lives at <cache_dir>/<h[63]>/<h[61:63]>/<h> with levels 1:2, h
// being the SHA-256 of "<bucket>/<key>", as nginx lays out
// proxy_cache_path; nothing else is written outside temp.
func TestEntryFileLayout(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	want := map[string]bool{}
	for _, key := range []string{s3test.KeyOriginalPNG, s3test.KeySpaceUTF8} {
		obj := env.objects.Get(key)
		fillEntry(t, dir, obj)
		want[entryPathFor(dir, obj)] = true
	}
	files := entryFiles(t, dir)
	for path := range files {
		if !want[path] {
			t.Errorf("unexpected file %s", path)
		}
	}
	if len(files) != len(want) {
		t.Errorf("files %v, want exactly %v", files, want)
	}
	if names := tempFiles(t, dir); len(names) != 0 {
		t.Errorf("temp holds %v after the fills, want nothing", names)
	}
}

// max_size bounds the entry files at every moment, by evicting the least
// recently used; an object in use stays.
func TestMaxSizeEvictsLeastRecentlyUsed(t *testing.T) {
	const maxSize = 3 << 20
	// 18 × 900 KiB: over five times max_size; three fit.
	objs := webpObjects(t, 18, 900<<10, 100)
	seeded := seedObjects(t, objs...)
	dir := t.TempDir()
	loadCache(t, dir, "max_size 3MiB")

	wantUnder := func(after string) {
		t.Helper()
		if total := entryBytes(t, dir); total > maxSize {
			t.Fatalf("after %s: entry files hold %d bytes, over max_size %d: %v", after, total, maxSize, entryFiles(t, dir))
		}
	}
	hot := seeded[objs[0].Key]
	fillEntry(t, dir, hot)
	pushed := hot.Size
	for i, o := range objs[1:] {
		obj := seeded[o.Key]
		wantMissFromS3(t, obj)
		waitEntry(t, dir, obj)
		pushed += obj.Size
		wantUnder("GET " + obj.Key)
		if i%2 == 1 {
			wantHitWithoutS3(t, hot)
			wantUnder("GET " + hot.Key)
		}
	}
	if pushed < 5*maxSize {
		t.Fatalf("pushed only %d bytes through a %d-byte cache", pushed, maxSize)
	}
	if n := len(entryFiles(t, dir)); n < 2 {
		t.Errorf("%d entries left in a cache with room for 3", n)
	}
	// The oldest, unused, went first.
	first := seeded[objs[1].Key]
	if exists(entryPathFor(dir, first)) {
		t.Errorf("%s is still cached after %d bytes went through", first.Key, pushed)
	}
	wantMissFromS3(t, first)
	waitEntry(t, dir, first)
	wantUnder("GET " + first.Key + " again")
}

// inactive evicts entries nobody asked for in that long, and only those.
func TestInactiveEntriesAreEvicted(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir, "inactive 1s")
	obj := env.objects.Get(s3test.KeyCachedMP4)
	fillEntry(t, dir, obj)
	time.Sleep(600 * time.Millisecond)
	wantHitWithoutS3(t, obj)
	lastUse := time.Now()

	path := entryPathFor(dir, obj)
	if !waitFor(5*time.Second, func() bool { return !exists(path) }) {
		t.Fatalf("entry still on disk 5s after its last use with inactive 1s")
	}
	idle := time.Since(lastUse)
	if idle < 900*time.Millisecond {
		t.Errorf("entry evicted %s after its last use, before inactive (1s) passed", idle)
	}
	t.Logf("evicted %s after its last use", idle)
	wantGet(t, obj, "MISS")
	wantS3Fetches(t, obj, 1)
}

// A reload that shortens inactive applies it to the store it keeps, on
// the new schedule (the manager runs every min(10s, inactive/4)).
func TestReloadShorteningInactiveAppliesIt(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyCachedMP4)
	fillEntry(t, dir, obj)
	loadCache(t, dir, "inactive 1s")
	reloaded := time.Now()
	if !waitFor(4*time.Second, func() bool { return !exists(entryPathFor(dir, obj)) }) {
		t.Fatalf("entry still on disk %s after a reload to inactive 1s", time.Since(reloaded).Round(time.Millisecond))
	}
	t.Logf("evicted %s after the reload", time.Since(reloaded))
}

// forceReload makes Caddy load caddyfile even if it is the running config,
// as `caddy reload --force` does. caddytest's InitServer skips a config
// that did not change, so it never exercises a real reload.
func forceReload(t *testing.T, caddyfile string) {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("reloading: %v", err)
	}
}

// The cache outlives the config: after Caddy ran without the module, the
// entries on disk are hits at once; a reload keeps the store itself,
// fills in flight included.
func TestEntriesSurviveRestartAndReload(t *testing.T) {
	dir := t.TempDir()
	config := siteConfig(cacheBlock(dir))
	objs := []s3test.Seeded{
		env.objects.Get(s3test.KeyOneMB),
		env.objects.Get(s3test.KeyOriginalPNG),
		env.objects.Get(s3test.KeyCachedMP4),
	}
	loadCache(t, dir)
	for _, obj := range objs {
		fillEntry(t, dir, obj)
	}

	// A config without the module closes the store, as a restart does.
	load(t, caddyfileFor(env.ports, "respond 404"))
	leftover := filepath.Join(dir, "temp", "fill-from-a-crash")
	must(t, os.WriteFile(leftover, []byte("half an object"), 0o600))

	t.Run("restart", func(t *testing.T) {
		loadCache(t, dir)
		wantHitWithoutS3(t, objs[0])
		if exists(leftover) {
			t.Errorf("temp file %s survived the start", leftover)
		}
		recordFault(t, processFaultsArea, "restart with a crash's temp file left", !t.Failed(), "see the test's errors")
	})

	t.Run("forced reload of the same config", func(t *testing.T) {
		forceReload(t, config)
		wantHitWithoutS3(t, objs[1])
	})

	t.Run("InitServer with the same config", func(t *testing.T) {
		load(t, config)
		wantHitWithoutS3(t, objs[2])
	})

	t.Run("fill in flight across a reload", func(t *testing.T) {
		big := bigObject(t)
		env.proxy.Reset()
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: slowLink})
		url := env.baseURL() + urlPath(big.Key)
		var first streamed
		var wg sync.WaitGroup
		hasBytes := make(chan struct{})
		wg.Go(func() { first = stream(context.Background(), http.MethodGet, url, func() { close(hasBytes) }) })
		<-hasBytes
		// Returns once the old server is gone, which may cut the first
		// client off after grace_period: Caddy's doing, not the cache's.
		forceReload(t, config)
		second := stream(context.Background(), http.MethodGet, url, nil)
		wg.Wait()
		t.Logf("the client of the old config got %d of %d bytes (read error %v)", first.n, big.Size, first.readErr)
		if ok, why := second.complete(http.StatusOK, big.Body); !ok {
			t.Errorf("client after the reload: %s", why)
		}
		if !second.firstByte.Before(first.lastByte) && first.n == big.Size {
			t.Errorf("the client after the reload did not join the fill in flight")
		}
		wantS3Fetches(t, big, 1)
		waitEntry(t, dir, big)
		wantHitWithoutS3(t, big)
		recordFault(t, processFaultsArea, "reload with a fill in flight", !t.Failed(), "see the test's errors")
	})
}

// Two sites naming one cache_dir share its entries; a site on another
// bucket does not take them for its own.
func TestSitesWithOneCacheDirShareEntries(t *testing.T) {
	dir := t.TempDir()
	siteFor := func(host, block string) string {
		return fmt.Sprintf("\nhttp://%s:%d {\n\ts3_media_cache {\n%s\n\t}\n}\n", host, env.ports.http, indent(block))
	}
	publicBlock := strings.Join([]string{
		"bucket " + publicBucket, "endpoint " + env.proxy.URL(), "path_style", "anonymous", "cache_dir " + dir,
	}, "\n")
	load(t, siteConfig(cacheBlock(dir))+siteFor("b.example", cacheBlock(dir))+siteFor("public.example", publicBlock))
	warmUp(t)

	obj := env.objects.Get(s3test.KeyOriginalPNG)
	url := env.baseURL() + urlPath(obj.Key)
	fillEntry(t, dir, obj)

	env.proxy.Reset()
	r := stream(context.Background(), http.MethodGet, url, nil, "Host: b.example")
	if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
		t.Fatalf("site b: %s", why)
	}
	if got := r.header.Get("X-Cache-Status"); got != "HIT" {
		t.Errorf("site b: X-Cache-Status = %q, want HIT from site a's entry", got)
	}
	wantS3Requests(t, 0)

	env.proxy.Reset()
	pub := env.public.Get(s3test.KeyOriginalPNG)
	r = stream(context.Background(), http.MethodGet, url, nil, "Host: public.example")
	if ok, why := r.complete(http.StatusOK, pub.Body); !ok {
		t.Fatalf("public site: %s", why)
	}
	if got := r.header.Get("X-Cache-Status"); got != "MISS" {
		t.Errorf("public site: X-Cache-Status = %q, want MISS: its bucket is another one", got)
	}
	if n := env.proxy.CountFor(http.MethodGet, s3Path(publicBucket, pub.S3Key)); n != 1 {
		t.Errorf("S3 GETs of the public bucket's object = %d, want 1: %v", n, env.proxy.Counts())
	}
	if !waitFor(5*time.Second, func() bool { return exists(entryPathForKey(dir, publicBucket+"/"+pub.S3Key)) }) {
		t.Errorf("no entry for the public bucket's object: %v", entryFiles(t, dir))
	}
}

// Fills in flight count against max_size too: while many run at once, the
// disk the entry files take (their slices being written included) stays
// under it, and every client still gets its bytes (stored or not).
func TestMaxSizeHoldsDuringConcurrentFills(t *testing.T) {
	const maxSize = 3 << 20
	objs := webpObjects(t, 8, 900<<10, 200)
	seeded := seedObjects(t, objs...)
	dir := t.TempDir()
	loadCache(t, dir, "max_size 3MiB")
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 1 << 20})

	results := make([]streamed, len(objs))
	var wg sync.WaitGroup
	for i, o := range objs {
		wg.Go(func() {
			results[i] = stream(context.Background(), http.MethodGet, env.baseURL()+urlPath(o.Key), nil)
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	peak := int64(0)
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-time.After(20 * time.Millisecond):
		}
		total := entryBytes(t, dir)
		for _, name := range tempFiles(t, dir) {
			if info, err := os.Stat(filepath.Join(dir, "temp", name)); err == nil {
				total += allocated(info)
			}
		}
		peak = max(peak, total)
	}
	t.Logf("peak disk of entry and temp files: %d bytes", peak)
	if peak > maxSize {
		t.Errorf("entry and temp files reached %d bytes on disk, over max_size %d", peak, maxSize)
	}
	var compared int64
	mismatches := 0
	for i, o := range objs {
		r := results[i]
		if r.err == nil && r.readErr == nil && r.status == http.StatusOK {
			compared += r.n
			if r.sum != seeded[o.Key].SHA256 {
				mismatches++
			}
		}
		if ok, why := r.complete(http.StatusOK, seeded[o.Key].Body); !ok {
			t.Errorf("%s: %s", o.Key, why)
		}
	}
	recordBytes(t, loadArea, "concurrent fills over max_size", compared, mismatches)
	if total := entryBytes(t, dir); total > maxSize {
		t.Errorf("entry files hold %d bytes, over max_size %d", total, maxSize)
	}
}

// A reload with a smaller max_size applies it to the entries already
// there, at once.
func TestReloadWithSmallerMaxSizeEvictsAtOnce(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir, "max_size 10MiB")
	var objs []s3test.Seeded
	for _, key := range []string{s3test.KeyOneMB, s3test.KeyCachedMP4, s3test.KeyOriginalPNG, s3test.KeyAvatarJPEG} {
		obj := env.objects.Get(key)
		fillEntry(t, dir, obj)
		objs = append(objs, obj)
	}
	before := entryBytes(t, dir)
	const smaller = 512 << 10
	load(t, siteConfig(cacheBlock(dir, "max_size 512KiB")))
	if total := entryBytes(t, dir); total > smaller {
		t.Errorf("entry files hold %d bytes (%d before) after a reload to max_size %d", total, before, smaller)
	}
	// The small ones, used last, are still there.
	env.proxy.Reset()
	last := objs[len(objs)-1]
	wantGet(t, last, "HIT")
	wantS3Requests(t, 0)
}

// Sites of one config naming the same cache_dir share one cache, so they
// must agree on its limits: a config where they differ is refused with an
// error naming the directory, both sites and the option, and the running
// config goes on serving.
func TestSitesSharingACacheDirMustDeclareTheSameLimits(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, obj)

	other := fmt.Sprintf("\nhttp://b.example:%d {\n\ts3_media_cache {\n%s\n\t}\n}\n", env.ports.http, indent(cacheBlock(dir, "max_size 5MiB")))
	msg := loadError(t, siteConfig(cacheBlock(dir))+other)
	if msg == "" {
		t.Fatal("a config whose sites give one cache_dir two max_sizes was accepted")
	}
	for _, want := range []string{dir, "max_size"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not name %q: %s", want, msg)
		}
	}
	if sites := regexp.MustCompile(`the site at Caddyfile:\d+`).FindAllString(msg, -1); len(sites) != 2 || sites[0] == sites[1] {
		t.Errorf("the error does not name both sites by their line: %s", msg)
	}
	wantNoSecretIn(t, "the load error", msg)
	recordInput(t, abuseArea, "two sites, one cache_dir, two max_sizes", msg != "", msg)

	// The old config still serves its entries.
	wantHitWithoutS3(t, obj)

	// Declared the same in both: accepted.
	if msg := loadError(t, siteConfig(cacheBlock(dir, "max_size 5MiB"))+other); msg != "" {
		t.Fatalf("sites declaring the same limits were refused: %s", msg)
	}
}

// A scan of distinct missing keys takes no disk: S3's 404s are kept in
// memory only (at most a quarter of max_entries of them), so the cache
// directory holds no file for them, whatever the scan's length.
func TestMissingKeyScanTakesNoDisk(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir, "max_size 1MiB", "max_entries 400")
	before := duBytes(t, dir)
	const keys, workers = 2000, 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for w := range workers {
		wg.Go(func() {
			for i := w; i < keys; i += workers {
				r := do(t, http.MethodGet, urlPath(testKey(t, fmt.Sprintf("scan/missing-%05d.png", i))))
				mu.Lock()
				statuses[r.status]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if statuses[http.StatusNotFound] != keys {
		t.Errorf("answers = %v, want %d 404s", statuses, keys)
	}
	if n := env.proxy.Count(); n != keys {
		t.Errorf("S3 requests = %d, want one per key (%d)", n, keys)
	}
	if files := entryFiles(t, dir); len(files) != 0 {
		t.Errorf("%d files in cache_dir after a scan of missing keys, want none: %v", len(files), files)
	}
	after := duBytes(t, dir)
	t.Logf("du of cache_dir: %d bytes before a scan of %d missing keys, %d after", before, keys, after)
	if after > before {
		t.Errorf("du of cache_dir grew from %d to %d bytes", before, after)
	}

	// The newest quarter of max_entries are answered from memory: a
	// hundred more keys, one after the other, then the same again.
	last := make([]string, 100)
	for i := range last {
		last[i] = urlPath(testKey(t, fmt.Sprintf("scan/last-%03d.png", i)))
		wantEmptyError(t, do(t, http.MethodGet, last[i]), http.StatusNotFound)
	}
	env.proxy.Reset()
	for _, p := range last {
		r := do(t, http.MethodGet, p)
		wantEmptyError(t, r, http.StatusNotFound)
		wantCacheStatus(t, r, "HIT")
	}
	wantS3Requests(t, 0)
	recordFault(t, abuseArea, "a scan of missing keys takes no disk", !t.Failed(), fmt.Sprintf("du %d bytes before, %d after", before, after))
}
