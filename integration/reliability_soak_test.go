package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// loadArea is the ledger area of the soak.
const loadArea = "load"

// soakSample is what the soak measures of the child Caddy once a second.
type soakSample struct {
	at         time.Duration
	diskBytes  int64 // the disk taken by every file under cache_dir, entries and temp (du)
	rssBytes   int64
	fds        int
	goroutines int
}

// The soak: a child Caddy (so its memory, descriptors and goroutines are
// its own) serves mixed traffic (hits, misses, ranges, HEAD, conditional
// requests, 404s, clients that hang up mid-body) over objects adding up
// to five times max_size, so entries are evicted all the time. Sampled
// every second: the files under cache_dir never exceed max_size, and
// goroutines, open descriptors and resident memory do not grow. 45s in
// CI, 10 minutes in the full run (S3MC_FULL=1).
func TestSoakUnderEvictionChurn(t *testing.T) {
	duration := 45 * time.Second
	if d, err := time.ParseDuration(os.Getenv("SOAK_DURATION")); err == nil {
		duration = d
	}
	if fullRun() {
		duration = 10 * time.Minute
	}
	const (
		maxSize = 8 << 20
		workers = 4
	)
	// Sizes from 64 KiB to 2 MiB, in turn, until they add up to five
	// times max_size.
	sizes := []int{64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 1536 << 10, 2 << 20}
	var objs []s3test.Object
	for total, i := 0, 0; total < 5*maxSize; i++ {
		size := sizes[i%len(sizes)]
		objs = append(objs, s3test.Object{
			Key: testKey(t, fmt.Sprintf("%03d.webp", i)), Body: s3test.RandomBytes(size, 900+uint64(i)),
			ContentType: "image/webp", CacheControl: mastodonCacheControl,
		})
		total += size
	}
	seeded := seedObjects(t, objs...)
	keys := make([]s3test.Seeded, len(objs))
	for i, o := range objs {
		keys[i] = seeded[o.Key]
	}

	work, cacheDir := t.TempDir(), t.TempDir()
	child := startCaddyChild(t, testCaddy(t), work, "soak", childOptions{
		cacheDir: cacheDir, extra: []string{"max_size 8MiB"}, admin: true,
	})
	traffic := newSoakTraffic(child, keys)

	// Warm up: every key once, so the cache is full and churning before
	// the first sample, which the last ones are compared with.
	for _, obj := range keys {
		traffic.do(context.Background(), rand.New(rand.NewPCG(1, 1)), soakGet, obj)
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 0x50a6))
			// Bounded by count as well as by time.
			for i := 0; i < 10_000_000 && ctx.Err() == nil; i++ {
				traffic.next(ctx, rng)
			}
		})
	}
	samples := everySecond(ctx, func(elapsed time.Duration) soakSample { return child.sample(t, cacheDir, elapsed) })
	wg.Wait()

	traffic.report(t)
	if len(samples) < 8 {
		t.Fatalf("only %d samples in %s", len(samples), duration)
	}
	// The size bound, at every sample.
	over := 0
	peak := int64(0)
	for _, s := range samples {
		peak = max(peak, s.diskBytes)
		if s.diskBytes > maxSize {
			over++
			t.Logf("at %s: %d bytes under cache_dir, over max_size %d", s.at.Round(time.Second), s.diskBytes, maxSize)
		}
	}
	t.Logf("%d samples; cache_dir peaked at %d bytes of %d", len(samples), peak, maxSize)
	recordFault(t, loadArea, "soak: size bound at every sample, 5× max_size churn",
		over == 0, fmt.Sprintf("%d of %d samples over max_size, peak %d bytes", over, len(samples), peak))

	// No growth: the median of the last quarter of the samples against
	// that of the first. Medians, because single samples jump with the
	// requests in flight at that instant. The tolerances allow for what
	// legitimately varies and no more:
	//   - goroutines: each request in flight costs one for its connection,
	//     a fill one more and its S3 connection two, so a few per worker;
	//     a leak of one per request would add thousands.
	//   - descriptors: each worker's connection and the fill's S3
	//     connection, plus the entry files kept open for hits (the
	//     descriptor pooled for sendfile, one per entry unless hits on it
	//     overlapped), whose number follows how many entries fit (4 to
	//     128 of these sizes, a dozen on average); a leak of one per miss
	//     would add hundreds.
	//   - resident memory: a quarter more than at the start, plus 16 MiB
	//     for the garbage collector's pacing and buffer pools; a leak of
	//     a kilobyte per request would add tens of megabytes.
	first, last := quarterMedians(samples)
	t.Logf("first quarter: %+v; last quarter: %+v", first, last)
	growth := []struct {
		what        string
		first, last int64
		limit       int64
	}{
		{"goroutines", int64(first.goroutines), int64(last.goroutines), int64(first.goroutines) + 4*workers + 10},
		{"open files", int64(first.fds), int64(last.fds), int64(first.fds) + 2*workers + 64},
		{"RSS", first.rssBytes, last.rssBytes, first.rssBytes*5/4 + 16<<20},
	}
	for _, g := range growth {
		recordFault(t, loadArea, "soak: "+g.what+" do not grow", g.last <= g.limit,
			fmt.Sprintf("%s went from %d to %d (limit %d)", g.what, g.first, g.last, g.limit))
	}
	child.scanLog(t, "log of the soak's child Caddy")
	scanForSecrets(t, "metrics page of the soak's child Caddy", child.admin(t, "/metrics"))
}

// soakOp is one kind of request of the mix.
type soakOp int

const (
	soakGet         soakOp = iota // a whole object, a hit or a miss
	soakRange                     // a range of one
	soakHead                      // its headers
	soakConditional               // If-None-Match its ETag: 304
	soakMissing                   // a key that is not in the bucket: 404
	soakAbort                     // a client that hangs up mid-body
)

// soakMix is how often each request kind comes, out of 20.
var soakMix = []soakOp{
	soakGet, soakGet, soakGet, soakGet, soakGet, soakGet, soakGet, soakGet, soakGet,
	soakRange, soakRange, soakRange,
	soakHead, soakHead,
	soakConditional, soakConditional,
	soakMissing, soakMissing,
	soakAbort, soakAbort,
}

// soakTraffic sends the soak's requests and keeps count of how they went.
type soakTraffic struct {
	child  *caddyChild
	keys   []s3test.Seeded
	client *http.Client

	mu         sync.Mutex // guards the fields below
	requests   int
	aborts     int
	compared   int64
	mismatches int
	failures   []string
	failed     int
}

func newSoakTraffic(child *caddyChild, keys []s3test.Seeded) *soakTraffic {
	return &soakTraffic{
		child: child,
		keys:  keys,
		client: &http.Client{
			Transport: &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 8},
			Timeout:   60 * time.Second,
		},
	}
}

// next sends one request of the mix. A quarter of the keys get most of
// the traffic, as the recent posts of an instance do.
func (s *soakTraffic) next(ctx context.Context, rng *rand.Rand) {
	var obj s3test.Seeded
	if rng.IntN(10) < 7 {
		obj = s.keys[rng.IntN(len(s.keys)/4)]
	} else {
		obj = s.keys[rng.IntN(len(s.keys))]
	}
	s.do(ctx, rng, soakMix[rng.IntN(len(soakMix))], obj)
}

// do sends one request of kind op for obj and checks the answer.
func (s *soakTraffic) do(ctx context.Context, rng *rand.Rand, op soakOp, obj s3test.Seeded) {
	method, path, want, wantStatus := http.MethodGet, urlPath(obj.Key), obj.Body, http.StatusOK
	req, err := http.NewRequestWithContext(ctx, method, s.child.baseURL+path, nil)
	if err != nil {
		s.fail("building a request: %v", err)
		return
	}
	switch op {
	case soakRange:
		from := rng.IntN(len(obj.Body))
		to := from + rng.IntN(len(obj.Body)-from)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
		want, wantStatus = obj.Body[from:to+1], http.StatusPartialContent
	case soakHead:
		req.Method, want = http.MethodHead, nil
	case soakConditional:
		req.Header.Set("If-None-Match", obj.ETag)
		want, wantStatus = nil, http.StatusNotModified
	case soakMissing:
		req.URL.Path = "/soak/missing/" + strconv.Itoa(rng.IntN(1000)) + ".png"
		want, wantStatus = nil, http.StatusNotFound
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			s.fail("%s %s: %v", req.Method, req.URL.Path, err)
		}
		return
	}
	defer resp.Body.Close()
	if op == soakAbort {
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		s.count(func() { s.aborts++ })
		return // Close with the body unread: the client hangs up.
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	switch {
	case err != nil && ctx.Err() != nil:
		return // the soak ended mid-body
	case err != nil:
		s.fail("%s %s: status %d, body broke after %d bytes: %v", req.Method, req.URL.Path, resp.StatusCode, n, err)
	case resp.StatusCode != wantStatus:
		s.fail("%s %s (%s): status %d, want %d", req.Method, req.URL.Path, req.Header.Get("Range"), resp.StatusCode, wantStatus)
	case op == soakHead && resp.ContentLength != obj.Size:
		s.fail("HEAD %s: Content-Length %d, want %d", req.URL.Path, resp.ContentLength, obj.Size)
	case want != nil:
		mismatch := hex.EncodeToString(h.Sum(nil)) != s3test.SHA256Hex(want)
		s.count(func() {
			s.compared += n
			if mismatch {
				s.mismatches++
			}
		})
		if mismatch {
			s.fail("%s %s (%s): %d bytes that are not the object's", req.Method, req.URL.Path, req.Header.Get("Range"), n)
		}
	}
	s.count(func() { s.requests++ })
}

func (s *soakTraffic) count(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *soakTraffic) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed++
	if len(s.failures) < 5 {
		s.failures = append(s.failures, fmt.Sprintf(format, args...))
	}
}

// report records the traffic in the ledger: the bytes compared with the
// bucket, the clients that hung up (faults the server must shrug off),
// and whether every other request was answered right.
func (s *soakTraffic) report(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("soak: %d requests answered, %d clients hung up, %d failures", s.requests, s.aborts, s.failed)
	recordBytes(t, loadArea, "soak: mixed traffic", s.compared, s.mismatches)
	healthy := s.failed == 0
	detail := fmt.Sprintf("%d requests failed, the first: %s", s.failed, strings.Join(s.failures, "; "))
	if !healthy {
		recordFault(t, loadArea, "soak: clients hanging up mid-body", false, detail)
		return
	}
	for range s.aborts {
		recordFault(t, loadArea, "soak: clients hanging up mid-body", true, "")
	}
	recordFault(t, loadArea, "soak: every request answered right", true, "")
}

// sample measures the child now: its files under cacheDir as they are at
// one instant, its resident memory, descriptors and goroutines.
func (c *caddyChild) sample(t *testing.T, cacheDir string, at time.Duration) soakSample {
	t.Helper()
	pid := c.cmd.Process.Pid
	s := soakSample{at: at}
	c.frozen(t, func() { s.diskBytes = dirBytes(t, cacheDir) })
	if rss, ok := procStatusField(pid, "VmRSS"); ok {
		s.rssBytes = rss * 1024
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(fds)
	}
	s.goroutines = goroutineCount(c.admin(t, "/debug/pprof/goroutine?debug=1"))
	return s
}

// dirBytes adds up the sizes of the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
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

// frozen runs f while every thread of the child is stopped (SIGSTOP),
// then lets it go on: what f sees of the child's files is one instant of
// them. A walk of a directory being written is no snapshot: it would
// count an entry evicted after it was counted and the fill that took its
// place, or a file twice as it is renamed. A stop of a few milliseconds
// a second costs the clients nothing they notice.
func (c *caddyChild) frozen(t *testing.T, f func()) {
	t.Helper()
	pid := c.cmd.Process.Pid
	must(t, syscall.Kill(pid, syscall.SIGSTOP))
	defer func() { must(t, syscall.Kill(pid, syscall.SIGCONT)) }()
	if !waitFor(5*time.Second, func() bool { return allThreadsStopped(pid) }) {
		t.Fatalf("caddy (pid %d) did not stop within 5s of SIGSTOP", pid)
	}
	f()
}

// allThreadsStopped reports whether every thread of pid is in state T
// (stopped by a signal), from /proc/<pid>/task/<tid>/stat.
func allThreadsStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses
		// and may hold spaces.
		_, rest, _ := strings.Cut(string(stat), ") ")
		if state, _, _ := strings.Cut(rest, " "); state != "T" && state != "t" {
			return false
		}
	}
	return true
}

// procStatusField reads a "Name: value kB" line of /proc/<pid>/status.
func procStatusField(pid int, name string) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return 0, false
			}
			n, err := strconv.ParseInt(fields[0], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// goroutineCount reads the total from the first line of a goroutine
// profile in text form: "goroutine profile: total 42".
func goroutineCount(profile []byte) int {
	line, _, _ := strings.Cut(string(profile), "\n")
	n, _ := strconv.Atoi(strings.TrimPrefix(line, "goroutine profile: total "))
	return n
}

// quarterMedians returns the median of each measure over the first and
// the last quarter of the samples.
func quarterMedians(samples []soakSample) (first, last soakSample) {
	q := max(len(samples)/4, 1)
	return medianSample(samples[:q]), medianSample(samples[len(samples)-q:])
}

func medianSample(samples []soakSample) soakSample {
	pick := func(f func(soakSample) int64) int64 {
		vs := make([]int64, len(samples))
		for i, s := range samples {
			vs[i] = f(s)
		}
		slices.Sort(vs)
		return vs[len(vs)/2]
	}
	return soakSample{
		diskBytes:  pick(func(s soakSample) int64 { return s.diskBytes }),
		rssBytes:   pick(func(s soakSample) int64 { return s.rssBytes }),
		fds:        int(pick(func(s soakSample) int64 { return int64(s.fds) })),
		goroutines: int(pick(func(s soakSample) int64 { return int64(s.goroutines) })),
	}
}

// everySecond calls sample once a second, with the time since it began,
// until ctx is done, and returns what it gave.
func everySecond[T any](ctx context.Context, sample func(elapsed time.Duration) T) []T {
	var samples []T
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return samples
		case <-tick.C:
			samples = append(samples, sample(time.Since(start)))
		}
	}
}
