package integration

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// hostileArea is the ledger area of the hostile day.
const hostileArea = "hostile day"

// The hostile day's bounds, which README's reliability section states.
const (
	hostileMaxSize  = 24 << 20
	hostileMaxFills = 16
	// hostileDiskSlack is what du of cache_dir may exceed max_size by:
	// cache_dir itself and its temp directory (a block each), and the
	// headers of entries being created (a block each, fills at most).
	hostileDiskSlack = (2 + hostileMaxFills) * 4096
	// hostileRSS bounds the child's resident memory: the Go runtime and
	// Caddy (about 40 MB), buffers of the requests in flight, and the
	// index with its negative answers capped at a quarter of max_entries.
	hostileRSS = 160 << 20
)

// hostileSample is what the hostile day measures once a second.
type hostileSample struct {
	at        time.Duration
	diskBytes int64 // du of cache_dir: files and directories
	rssBytes  int64
	s3Open    int // most S3 requests open at once during the second
}

// A hostile day: key scanners (existing and missing keys), clients that
// hang up at the headers, clients that read at 1 KB/s, range abusers and
// wrong-secret purgers, all at once against a child Caddy, while
// well-behaved clients fetch media beside them. Sampled every second:
// the disk under cache_dir stays within max_size (plus a few blocks), the
// child's memory within its bound, S3 never has more than
// max_concurrent_fills requests open, S3 sends no more than the clients
// read (plus a slice per client that left), no secret reaches a log, and
// the well-behaved clients get every byte right. 30s in CI, 5 minutes in
// the full run (S3MC_FULL=1).
func TestHostileDayKeepsEveryBound(t *testing.T) {
	duration := 30 * time.Second
	if fullRun() {
		duration = 5 * time.Minute
	}
	if d, err := time.ParseDuration(os.Getenv("HOSTILE_DURATION")); err == nil {
		duration = d
	}
	// Large objects for the hostile clients (over fill_ahead, 8 MiB, so
	// nothing is completed behind a client that leaves), small ones
	// besides, for everyone: 180 MB in all, over seven times max_size.
	var objs []s3test.Object
	for i := range 16 {
		objs = append(objs, s3test.Object{Key: testKey(t, fmt.Sprintf("big-%02d.mp4", i)),
			Body: s3test.RandomBytes(9<<20+i*137_000, 4000+uint64(i)), ContentType: "video/mp4", CacheControl: mastodonCacheControl})
	}
	for i := range 32 {
		objs = append(objs, s3test.Object{Key: testKey(t, fmt.Sprintf("small-%02d.webp", i)),
			Body: s3test.RandomBytes(20_000+i*31_000, 4100+uint64(i)), ContentType: "image/webp", CacheControl: mastodonCacheControl})
	}
	seeded := seedObjects(t, objs...)
	var big, small []s3test.Seeded
	for _, o := range objs {
		if strings.Contains(o.Key, "big-") {
			big = append(big, seeded[o.Key])
		} else {
			small = append(small, seeded[o.Key])
		}
	}

	work, cacheDir := t.TempDir(), t.TempDir()
	accessLog := filepath.Join(work, "access.log")
	secret := "hostile-day-" + strconv.FormatUint(rand.Uint64(), 36)
	child := startCaddyChild(t, testCaddy(t), work, "hostile", childOptions{
		cacheDir: cacheDir, admin: true,
		extra: []string{
			fmt.Sprintf("max_size %d", hostileMaxSize), fmt.Sprintf("max_concurrent_fills %d", hostileMaxFills),
			"max_entries 20000", "fill_queue_timeout 2s", "purge_header Cache-Buster-Secret " + secret,
		},
		site: []string{fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t}", accessLog)},
	})
	env.proxy.Reset()
	// A slow link to S3, so fills overlap and slots are contended.
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 16 << 20})
	defer env.proxy.ClearFault()

	day := &hostileDay{child: child, big: big, small: small, secret: secret, client: &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 64},
		Timeout:   duration + 30*time.Second,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for name, actor := range map[string]struct {
		workers int
		act     func(ctx context.Context, rng *rand.Rand)
	}{
		"scanner of missing keys":  {4, day.scanMissing},
		"scanner of existing keys": {2, day.scanExisting},
		"client that hangs up":     {4, day.hangUp},
		"client reading at 1 KB/s": {24, day.readSlowly},
		"range abuser":             {2, day.abuseRanges},
		"wrong-secret purger":      {2, day.guessSecret},
		"well-behaved client":      {4, day.behave},
	} {
		for w := range actor.workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), uint64(len(name))))
				// Bounded by count as well as by time.
				for i := 0; i < 1_000_000 && ctx.Err() == nil; i++ {
					actor.act(ctx, rng)
				}
			})
		}
	}

	start := time.Now()
	samples := everySecond(ctx, func(elapsed time.Duration) hostileSample { return day.sample(t, cacheDir, elapsed) })
	wg.Wait()
	waitS3Quiet(t, time.Second)
	samples = append(samples, day.sample(t, cacheDir, time.Since(start)))

	day.judge(t, samples)
	for _, path := range []string{accessLog, child.logPath} {
		data, err := os.ReadFile(path)
		must(t, err)
		if strings.Contains(string(data), secret) || strings.Contains(string(data), "guess-") {
			t.Errorf("%s holds the purge secret or a guess of it", path)
		}
		scanForSecrets(t, "log of the hostile day: "+filepath.Base(path), data)
	}
	recordFault(t, hostileArea, "no secret and no guess in the access log or Caddy's log", !t.Failed(), "see the test's errors")
}

// hostileDay is the traffic of the hostile day and what it tallied.
type hostileDay struct {
	child      *caddyChild
	big, small []s3test.Seeded
	secret     string
	client     *http.Client

	delivered atomic.Int64 // body bytes that reached any client
	abandoned atomic.Int64 // requests whose client left before the end
	requests  atomic.Int64
	errors    atomic.Int64 // 5xx answers to hostile clients (refused, not wrong)

	mu         sync.Mutex // guards the fields below
	latencies  []time.Duration
	compared   int64
	mismatches []string
	unexpected []string
}

func (d *hostileDay) url(key string) string { return d.child.baseURL + urlPath(key) }

// get sends a GET with headers and reads at most limit bytes of the body
// (all of it when limit < 0), then leaves. It returns the status, the
// bytes read and whether the whole body came.
func (d *hostileDay) get(ctx context.Context, url string, limit int64, headers ...string) (int, []byte, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, false
	}
	for _, h := range headers {
		name, value, _ := cutHeader(h)
		req.Header.Set(name, value)
	}
	d.requests.Add(1)
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, false
	}
	defer resp.Body.Close()
	var body []byte
	if limit < 0 {
		body, err = io.ReadAll(resp.Body)
	} else {
		body, err = io.ReadAll(io.LimitReader(resp.Body, limit))
	}
	d.delivered.Add(int64(len(body)))
	whole := err == nil && (limit < 0 || int64(len(body)) < limit)
	if !whole {
		d.abandoned.Add(1)
	}
	if resp.StatusCode >= 500 {
		d.errors.Add(1)
	}
	return resp.StatusCode, body, whole
}

func (d *hostileDay) note(list *[]string, format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(*list) < 20 {
		*list = append(*list, fmt.Sprintf(format, args...))
	}
}

// scanMissing asks for keys that do not exist, all distinct.
func (d *hostileDay) scanMissing(ctx context.Context, rng *rand.Rand) {
	key := fmt.Sprintf("cache-tests/hostile/missing/%016x.png", rng.Uint64())
	if status, _, _ := d.get(ctx, d.url(key), -1); status != http.StatusNotFound && ctx.Err() == nil {
		d.note(&d.unexpected, "missing key: status %d", status)
	}
}

// scanExisting walks existing keys, reading each whole.
func (d *hostileDay) scanExisting(ctx context.Context, rng *rand.Rand) {
	objs := append(d.small[:len(d.small):len(d.small)], d.big...)
	obj := objs[rng.IntN(len(objs))]
	d.check(ctx, obj, "scanner")
}

// hangUp asks for a big object and leaves at the first bytes.
func (d *hostileDay) hangUp(ctx context.Context, rng *rand.Rand) {
	obj := d.big[rng.IntN(len(d.big))]
	d.get(ctx, d.url(obj.Key), 1)
}

// readSlowly reads a big object at about 1 KB/s, for up to 20 seconds,
// then leaves.
func (d *hostileDay) readSlowly(ctx context.Context, rng *rand.Rand) {
	obj := d.big[rng.IntN(len(d.big))]
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url(obj.Key), nil)
	if err != nil {
		return
	}
	d.requests.Add(1)
	resp, err := d.client.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	buf := make([]byte, 256)
	var got []byte
	for ctx.Err() == nil {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		d.delivered.Add(int64(n))
		if err != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	d.abandoned.Add(1)
	if resp.StatusCode == http.StatusOK && !slices.Equal(got, obj.Body[:len(got)]) {
		d.note(&d.mismatches, "slow reader of %s: wrong bytes", obj.Key)
	}
}

// abuseRanges sends the Range values an attacker would.
func (d *hostileDay) abuseRanges(ctx context.Context, rng *rand.Rand) {
	obj := d.big[rng.IntN(len(d.big))]
	size := obj.Size
	ranges := []string{
		"bytes=0-0", "bytes=-1", fmt.Sprintf("bytes=%d-", rng.Int64N(size)),
		fmt.Sprintf("bytes=%d-%d", rng.Int64N(size), size+1_000_000), "bytes=0-1,1-2,2-3,3-4,4-5",
		"bytes=" + strings.Repeat("0-,", 40) + "0-", "bytes=99999999999-", "bytes=-0", "items=0-10",
		fmt.Sprintf("bytes=%d-%d,%d-%d", 0, size/2, size/4, size-1),
	}
	rh := ranges[rng.IntN(len(ranges))]
	status, body, whole := d.get(ctx, d.url(obj.Key), 2<<20, "Range: "+rh)
	if status == http.StatusPartialContent && whole && strings.Count(rh, ",") == 0 {
		// One range: its bytes must be the object's.
		var first, last int64
		if _, err := fmt.Sscanf(rh, "bytes=%d-%d", &first, &last); err == nil && first < size {
			if !slices.Equal(body, obj.Body[first:min(last+1, size)]) {
				d.note(&d.mismatches, "range %s of %s: wrong bytes", rh, obj.Key)
			}
		}
	}
}

// guessSecret sends purges with wrong secrets.
func (d *hostileDay) guessSecret(ctx context.Context, rng *rand.Rand) {
	obj := d.small[rng.IntN(len(d.small))]
	guess := fmt.Sprintf("guess-%016x", rng.Uint64())
	if status, _, _ := d.get(ctx, d.url(obj.Key), -1, "Cache-Buster-Secret: "+guess); status == http.StatusNoContent {
		d.note(&d.unexpected, "a wrong secret purged %s", obj.Key)
	}
}

// behave fetches media as a browser would, whole, and times it.
func (d *hostileDay) behave(ctx context.Context, rng *rand.Rand) {
	objs := d.small
	if rng.IntN(4) == 0 {
		objs = d.big
	}
	start := time.Now()
	if d.check(ctx, objs[rng.IntN(len(objs))], "well-behaved client") {
		d.mu.Lock()
		d.latencies = append(d.latencies, time.Since(start))
		d.mu.Unlock()
	}
}

// check GETs obj whole and compares its bytes; it reports whether it got
// them. An answer cut by the end of the day does not count.
func (d *hostileDay) check(ctx context.Context, obj s3test.Seeded, who string) bool {
	status, body, whole := d.get(ctx, d.url(obj.Key), -1)
	if ctx.Err() != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case status == http.StatusOK && whole && slices.Equal(body, obj.Body):
		d.compared += int64(len(body))
		return true
	case status == http.StatusOK:
		d.mismatches = append(d.mismatches, fmt.Sprintf("%s, %s: %d of %d bytes, whole %v", who, obj.Key, len(body), obj.Size, whole))
	case who == "well-behaved client":
		d.unexpected = append(d.unexpected, fmt.Sprintf("%s, %s: status %d", who, obj.Key, status))
	}
	return false
}

// sample measures the child now: du of cache_dir at one instant, its
// resident memory, and the most S3 requests open at once since the last
// sample.
func (d *hostileDay) sample(t *testing.T, cacheDir string, at time.Duration) hostileSample {
	t.Helper()
	s := hostileSample{at: at, s3Open: env.proxy.Peak()}
	env.proxy.ResetPeak()
	d.child.frozen(t, func() { s.diskBytes = duBytes(t, cacheDir) })
	if rss, ok := procStatusField(d.child.cmd.Process.Pid, "VmRSS"); ok {
		s.rssBytes = rss * 1024
	}
	return s
}

// duBytes is what du says of dir: the blocks of every file and directory
// under it, dir included.
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += allocated(info)
		return nil
	})
	if err != nil {
		t.Fatalf("measuring %s: %v", dir, err)
	}
	return total
}

// judge checks the samples and the tallies against the bounds, and
// records the figures in the ledger.
func (d *hostileDay) judge(t *testing.T, samples []hostileSample) {
	t.Helper()
	var peakDisk, peakRSS int64
	peakS3 := 0
	for _, s := range samples {
		peakDisk, peakRSS, peakS3 = max(peakDisk, s.diskBytes), max(peakRSS, s.rssBytes), max(peakS3, s.s3Open)
	}
	var pulled int64
	for _, obj := range append(slices.Clone(d.big), d.small...) {
		pulled += env.proxy.BodyBytes(http.MethodGet, s3Path(privateBucket, obj.S3Key))
	}
	delivered, abandoned := d.delivered.Load(), d.abandoned.Load()
	allowed := delivered*11/10 + abandoned*defaultSlice

	d.mu.Lock()
	defer d.mu.Unlock()
	slices.Sort(d.latencies)
	p99 := time.Duration(0)
	if n := len(d.latencies); n > 0 {
		p99 = d.latencies[min(n-1, n*99/100)]
	}
	t.Logf("hostile day: %d requests, %d samples; du peak %d of max_size %d; RSS peak %.1f MB; S3 open at once, peak %d of %d; S3 sent %d bytes for %d delivered and %d requests abandoned (bound %d); well-behaved: %d fetches, p99 %s; %d errors answered to hostile clients",
		d.requests.Load(), len(samples), peakDisk, hostileMaxSize, float64(peakRSS)/(1<<20), peakS3, hostileMaxFills,
		pulled, delivered, abandoned, allowed, len(d.latencies), p99.Round(time.Millisecond), d.errors.Load())

	checks := []struct {
		name   string
		ok     bool
		detail string
	}{
		{"du of cache_dir within max_size at every sample", peakDisk <= hostileMaxSize+hostileDiskSlack,
			fmt.Sprintf("peak %d bytes, bound %d", peakDisk, hostileMaxSize+hostileDiskSlack)},
		{"resident memory within its bound", peakRSS <= hostileRSS, fmt.Sprintf("peak %d bytes, bound %d", peakRSS, hostileRSS)},
		{"S3 requests open at once within max_concurrent_fills", peakS3 <= hostileMaxFills, fmt.Sprintf("peak %d, bound %d", peakS3, hostileMaxFills)},
		{"S3 bytes within what clients read", pulled <= allowed, fmt.Sprintf("%d bytes from S3, bound %d", pulled, allowed)},
		{"well-behaved clients: every byte right", len(d.mismatches) == 0, strings.Join(d.mismatches, "; ")},
		{"every answer as expected", len(d.unexpected) == 0, strings.Join(d.unexpected, "; ")},
		{"well-behaved clients served", len(d.latencies) > 0, "none completed"},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: %s", c.name, c.detail)
		}
		recordFault(t, hostileArea, c.name, c.ok, c.detail)
	}
	recordBytes(t, hostileArea, "well-behaved clients and scanners, compared", d.compared, len(d.mismatches))
	recordFigure(t, hostileArea, "du of cache_dir, peak / max_size", fmt.Sprintf("%.2f MB / %.2f MB", float64(peakDisk)/1e6, float64(hostileMaxSize)/1e6))
	recordFigure(t, hostileArea, "resident memory, peak", fmt.Sprintf("%.1f MB (bound %.0f MB)", float64(peakRSS)/(1<<20), float64(hostileRSS)/(1<<20)))
	recordFigure(t, hostileArea, "S3 requests open at once, peak", fmt.Sprintf("%d (max_concurrent_fills %d)", peakS3, hostileMaxFills))
	recordFigure(t, hostileArea, "S3 bytes / bytes delivered", fmt.Sprintf("%.3f (%d abandoned requests)", float64(pulled)/float64(max(delivered, 1)), abandoned))
	recordFigure(t, hostileArea, "well-behaved clients, p99 time to the last byte", p99.Round(time.Millisecond).String())
}
