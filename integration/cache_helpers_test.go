package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Rates of the throttled link to S3 (s3test.Fault.BytesPerSecond). The
// shared big object takes about two seconds at slowLink and one at
// fastLink: long enough for clients to join a fill while it runs, short
// enough for the package's time budget.
const (
	slowLink = 10 << 20
	fastLink = 20 << 20
	// bigSize is the size of the shared big object.
	bigSize = 20 << 20
)

// cacheBlock is blockFor with the cache in dir and extra options.
func cacheBlock(dir string, extra ...string) string {
	return blockFor(append([]string{"cache_dir " + dir}, extra...)...)
}

// loadCache loads a site whose cache lives in dir, and makes one request
// that needs no S3 so the first request of the test meets the new
// config, not a listener of the old one closing.
func loadCache(t *testing.T, dir string, extra ...string) {
	t.Helper()
	load(t, siteConfig(cacheBlock(dir, extra...)))
	warmUp(t)
}

// warmUp sends a request that the handler answers without S3 (a
// directory path is a 404), and forgets it at the proxy.
func warmUp(t *testing.T) {
	t.Helper()
	do(t, http.MethodGet, "/warm-up/")
	env.proxy.Reset()
}

// testKey is a key of the private bucket that only this test uses.
func testKey(t *testing.T, name string) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '/' {
			return r
		}
		return '_'
	}, t.Name())
	return "cache-tests/" + clean + "/" + name
}

// seedObjects uploads objs to the private bucket and returns their
// manifest.
func seedObjects(t *testing.T, objs ...s3test.Object) s3test.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := s3test.Seed(ctx, env.gateway.Client(), privateBucket, "", objs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var bigOnce struct {
	sync.Once
	obj s3test.Seeded
	err error
}

// bigObject is a 20 MiB video that several tests fetch cold through a
// throttled link. It is uploaded once per run and never changed.
func bigObject(t *testing.T) s3test.Seeded {
	t.Helper()
	bigOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		key := "cache-tests/shared/media_attachments/files/112/000/000/001/original/20mb.mp4"
		m, err := s3test.Seed(ctx, env.gateway.Client(), privateBucket, "", []s3test.Object{
			{Key: key, Body: s3test.FakeMP4(bigSize, 20), ContentType: "video/mp4"},
		})
		bigOnce.obj, bigOnce.err = m[key], err
	})
	if bigOnce.err != nil {
		t.Fatal(bigOnce.err)
	}
	return bigOnce.obj
}

// entryPathFor is where the default levels 1:2 put the entry of an object
// of the private bucket: <dir>/<h[63]>/<h[61:63]>/<h>, h being the hex
// SHA-256 of "<bucket>/<key>".
func entryPathFor(dir string, obj s3test.Seeded) string {
	return entryPathForKey(dir, privateBucket+"/"+obj.S3Key)
}

func entryPathForKey(dir, cacheKey string) string {
	sum := sha256.Sum256([]byte(cacheKey))
	h := hex.EncodeToString(sum[:])
	return filepath.Join(dir, h[63:], h[61:63], h)
}

// entryFiles maps every regular file under dir, outside dir/temp, to its
// size.
func entryFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	files := map[string]int64{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil // removed while walking: an eviction
			}
			return err
		}
		if d.IsDir() && path == filepath.Join(dir, "temp") {
			return filepath.SkipDir
		}
		if d.IsDir() || path == filepath.Join(dir, "temp") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed while walking
		}
		files[path] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	return files
}

// entryBytes is the disk the entry files under dir take, as du counts it:
// an entry's missing slices are holes, which take none.
func entryBytes(t *testing.T, dir string) int64 {
	t.Helper()
	total := int64(0)
	for path := range entryFiles(t, dir) {
		if info, err := os.Stat(path); err == nil {
			total += allocated(info)
		}
	}
	return total
}

// allocated is the disk a file takes: its blocks, not its size.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// tempFiles lists dir/temp.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := os.ReadDir(filepath.Join(dir, "temp"))
	if err != nil {
		t.Fatalf("listing %s/temp: %v", dir, err)
	}
	var out []string
	for _, n := range names {
		out = append(out, n.Name())
	}
	return out
}

// waitFor polls cond until it holds or timeout passes, and reports
// whether it held.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitEntry waits for the entry file of obj to be complete and to hold
// its bytes. A slice's last bytes reach its readers a moment before the
// slice is sealed on disk, and the entry checked as a whole.
func waitEntry(t *testing.T, dir string, obj s3test.Seeded) {
	t.Helper()
	path := entryPathFor(dir, obj)
	if !waitFor(5*time.Second, func() bool { return entryHoldsBody(path, obj.Body) }) {
		e, err := readEntryOnDisk(path)
		t.Fatalf("no complete entry %s for %s within 5s: %d of %d slices present, holds the bytes %v, %v; files: %v",
			path, obj.Key, e.count(), len(e.present), err == nil && e.holds(obj.Body), err, entryFiles(t, dir))
	}
}

// wantNoBodyStored checks that no entry file under dir holds a byte of a
// body: there may be entries with an object's metadata alone (an entry is
// indexed once S3 has described the object), but no slice of a fetch that
// failed.
func wantNoBodyStored(t *testing.T, dir string) {
	t.Helper()
	time.Sleep(50 * time.Millisecond) // let the fills' workers finish
	for path := range entryFiles(t, dir) {
		if e, err := readEntryOnDisk(path); err != nil || e.count() != 0 {
			t.Errorf("entry %s holds %d slices (%v), want none", path, e.count(), err)
		}
	}
}

// wantNoEntry fails if anything but the temp directory is under dir.
func wantNoEntry(t *testing.T, dir string) {
	t.Helper()
	if files := entryFiles(t, dir); len(files) != 0 {
		t.Errorf("entry files %v, want none", files)
	}
}

// wantTempEmpty waits a moment for dir/temp to empty (a failed fill
// removes its temp file once its last reader is gone).
func wantTempEmpty(t *testing.T, dir string) {
	t.Helper()
	if !waitFor(3*time.Second, func() bool { return len(tempFiles(t, dir)) == 0 }) {
		t.Errorf("%s/temp still holds %v after 3s", dir, tempFiles(t, dir))
	}
}

func wantCacheStatus(t *testing.T, r response, want string) {
	t.Helper()
	if got := r.header.Values("X-Cache-Status"); len(got) != 1 || got[0] != want {
		t.Errorf("X-Cache-Status = %q, want %q", got, want)
	}
}

// wantFromCache checks a 200 with obj's exact bytes, the media headers
// and this X-Cache-Status.
func wantFromCache(t *testing.T, r response, obj s3test.Seeded, cacheStatus string) {
	t.Helper()
	wantBody(t, r, http.StatusOK, obj.Body)
	wantMediaHeaders(t, r, cacheStatus)
	if got := r.header.Get("ETag"); got != obj.ETag {
		t.Errorf("ETag = %q, want S3's %q", got, obj.ETag)
	}
	if got := r.header.Get("Content-Type"); got != obj.ContentType {
		t.Errorf("Content-Type = %q, want %q", got, obj.ContentType)
	}
}

// wantGet GETs obj and checks it as wantFromCache does.
func wantGet(t *testing.T, obj s3test.Seeded, cacheStatus string) {
	t.Helper()
	wantFromCache(t, get(t, urlPath(obj.Key)), obj, cacheStatus)
}

// fillEntry GETs a cold obj, a MISS, and waits for its entry.
func fillEntry(t *testing.T, dir string, obj s3test.Seeded) {
	t.Helper()
	wantGet(t, obj, "MISS")
	waitEntry(t, dir, obj)
}

// wantMissFromS3 checks that a GET of obj is a MISS that fetches each of
// its bytes from S3 exactly once.
func wantMissFromS3(t *testing.T, obj s3test.Seeded) {
	t.Helper()
	env.proxy.Reset()
	wantGet(t, obj, "MISS")
	wantS3Fetches(t, obj, 1)
}

// wantHitWithoutS3 checks that a GET of obj is a HIT that S3 never hears
// of.
func wantHitWithoutS3(t *testing.T, obj s3test.Seeded) {
	t.Helper()
	env.proxy.Reset()
	wantGet(t, obj, "HIT")
	wantS3Requests(t, 0)
}

// webpObjects are n images of size bytes each under this test's keys.
func webpObjects(t *testing.T, n, size int, seed uint64) []s3test.Object {
	objs := make([]s3test.Object, n)
	for i := range objs {
		objs[i] = s3test.Object{
			Key:         testKey(t, fmt.Sprintf("%02d.webp", i)),
			Body:        s3test.RandomBytes(size, seed+uint64(i)),
			ContentType: "image/webp",
		}
	}
	return objs
}

// wantS3Fetches checks that, since the last reset, S3 saw only GETs of
// obj's slices (ranged GETs of one slice each, as the cache fetches them)
// and that each slice was fetched exactly times times: each byte of the
// object came from S3 times times, no more. A cold object of one slice is
// one GET.
func wantS3Fetches(t *testing.T, obj s3test.Seeded, times int) {
	t.Helper()
	if !waitFor(2*time.Second, func() bool { return s3AnswersOver() }) {
		t.Errorf("S3 answers still in progress after 2s: %s", describeS3Requests())
	}
	fetched := map[string]int{}
	var bodyBytes int64
	for _, r := range env.proxy.Requests() {
		if r.Method != http.MethodGet || r.Path != s3Path(privateBucket, obj.S3Key) {
			t.Errorf("S3 saw %s %s; want only slice GETs of %s: %s", r.Method, r.Path, obj.Key, describeS3Requests())
			continue
		}
		fetched[r.Header.Get("Range")]++
		bodyBytes += r.BodyBytes
	}
	slices := int((obj.Size + defaultSlice - 1) / defaultSlice)
	if times == 0 || obj.Size == 0 {
		slices = min(slices, 1)
	}
	want := map[string]int{}
	for k := range slices {
		want[sliceRange(int64(k))] = times
	}
	if times == 0 {
		want = map[string]int{}
	}
	if !maps.Equal(fetched, want) || bodyBytes != int64(times)*obj.Size {
		t.Errorf("S3 sent %d body bytes in ranged GETs %v; want each of the %d slices of %s (%d bytes) %d times: %s",
			bodyBytes, fetched, slices, obj.Key, obj.Size, times, describeS3Requests())
	}
}

// wantOneS3Get checks that, since the last reset, S3 saw exactly one
// request, a GET of obj (a slice, or the whole object passed through), and
// sent at most the object's bytes: for an answer that is not stored, or a
// failure.
func wantOneS3Get(t *testing.T, obj s3test.Seeded) {
	t.Helper()
	waitFor(2*time.Second, s3AnswersOver)
	reqs := env.proxy.Requests()
	if len(reqs) != 1 || reqs[0].Method != http.MethodGet || reqs[0].Path != s3Path(privateBucket, obj.S3Key) || reqs[0].BodyBytes > max(obj.Size, 4096) {
		t.Errorf("S3 saw %s; want one GET of %s, of at most its %d bytes", describeS3Requests(), obj.Key, obj.Size)
	}
}

// wantS3Chunks checks that, since the last reset, S3 saw only the GETs of
// a pass-through of bytes [from, to] of obj: a chunk at a time, in order
// and each once (see s3cache/spool.go). The first chunk's Range ends a
// chunk after from, or at to when the client's range ended there
// (openEnded false); the others ask for exactly what is left.
func wantS3Chunks(t *testing.T, obj s3test.Seeded, from, to int64, openEnded bool) {
	t.Helper()
	waitFor(2*time.Second, s3AnswersOver)
	var want []string
	for off := from; off <= to; off += defaultSlice {
		end := min(off+defaultSlice-1, to)
		if off == from && openEnded {
			end = off + defaultSlice - 1
		}
		want = append(want, fmt.Sprintf("bytes=%d-%d", off, end))
	}
	var got []string
	var pulled int64
	for _, r := range env.proxy.Requests() {
		if r.Method != http.MethodGet || r.Path != s3Path(privateBucket, obj.S3Key) {
			t.Errorf("S3 saw %s %s; want only GETs of %s", r.Method, r.Path, obj.Key)
		}
		got = append(got, r.Header.Get("Range"))
		pulled += r.BodyBytes
	}
	if !slices.Equal(got, want) || pulled != to-from+1 {
		t.Errorf("S3 saw ranges %v and sent %d bytes; want %v, %d bytes", got, pulled, want, to-from+1)
	}
}

// sliceRange is the Range header of the cache's GET of slice k.
func sliceRange(k int64) string {
	return fmt.Sprintf("bytes=%d-%d", k*defaultSlice, (k+1)*defaultSlice-1)
}

// s3AnswersOver reports whether every answer of the proxy since the last
// reset is over (its status and bytes recorded).
func s3AnswersOver() bool {
	for _, r := range env.proxy.Requests() {
		if r.Status == 0 {
			return false
		}
	}
	return true
}

// s3Bytes is the body bytes S3 sent for obj since the last reset, once
// its answers are over.
func s3Bytes(t *testing.T, obj s3test.Seeded) int64 {
	t.Helper()
	waitFor(5*time.Second, s3AnswersOver)
	return env.proxy.BodyBytes("", s3Path(privateBucket, obj.S3Key))
}

// describeS3Requests lists what S3 saw and answered, for failure messages.
func describeS3Requests() string {
	var lines []string
	for _, r := range env.proxy.Requests() {
		line := r.Method + " " + r.Path
		if r.Status != 0 {
			line += " → " + itoa(int64(r.Status)) + ", " + itoa(r.BodyBytes) + " body bytes sent"
		}
		lines = append(lines, line)
	}
	return "[" + strings.Join(lines, "; ") + "]"
}

// streamed is one client's view of a response read as it arrives: when
// the headers and the first and last bytes came, and the body's hash.
type streamed struct {
	started   time.Time
	err       error // no response at all
	status    int
	header    http.Header
	length    int64
	body      []byte // kept for Range requests only
	sum       string // SHA-256 of the body
	n         int64
	readErr   error
	headersAt time.Time
	firstByte time.Time // zero when no byte came
	lastByte  time.Time
}

// ttfb is the time from the request to its first body byte (to its
// headers for a response without a body).
func (s streamed) ttfb() time.Duration {
	if s.firstByte.IsZero() {
		return s.headersAt.Sub(s.started)
	}
	return s.firstByte.Sub(s.started)
}

// stream sends a request to url and reads the body as it arrives. onFirst,
// if set, is called once the first body byte is in (or the headers, for
// a body-less answer, or the error). It never calls t.Fatal, so clients
// may run in goroutines.
func stream(ctx context.Context, method, url string, onFirst func(), headers ...string) streamed {
	s := streamed{started: time.Now()}
	signalled := false
	signal := func() {
		if onFirst != nil && !signalled {
			signalled = true
			onFirst()
		}
	}
	defer signal()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		s.err = err
		return s
	}
	for _, h := range headers {
		name, value, _ := cutHeader(h)
		if http.CanonicalHeaderKey(name) == "Host" {
			req.Host = value
			continue
		}
		req.Header.Set(name, value)
	}
	resp, err := client().Do(req)
	if err != nil {
		s.err = err
		return s
	}
	defer resp.Body.Close()
	s.headersAt = time.Now()
	s.status, s.header, s.length = resp.StatusCode, resp.Header, resp.ContentLength
	keep := req.Header.Get("Range") != ""
	sum := sha256.New()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if s.firstByte.IsZero() {
				s.firstByte = time.Now()
				signal()
			}
			sum.Write(buf[:n])
			if keep {
				s.body = append(s.body, buf[:n]...)
			}
			s.n += int64(n)
			s.lastByte = time.Now()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			s.readErr = err
			break
		}
	}
	s.sum = hex.EncodeToString(sum.Sum(nil))
	return s
}

// response is s in the shape the shared header checks take.
func (s streamed) response() response {
	return response{status: s.status, header: s.header, body: s.body, readErr: s.readErr, length: s.length}
}

// complete reports whether s is a whole response of want bytes with this
// status, and says what is wrong if not.
func (s streamed) complete(status int, want []byte) (bool, string) {
	switch {
	case s.err != nil:
		return false, "request failed: " + s.err.Error()
	case s.status != status:
		return false, "status " + itoa(int64(s.status)) + ", want " + itoa(int64(status))
	case s.readErr != nil:
		return false, "body broke after " + itoa(s.n) + " bytes: " + s.readErr.Error()
	case s.length != int64(len(want)):
		return false, "Content-Length " + itoa(s.length) + ", want " + itoa(int64(len(want)))
	case s.sum != s3test.SHA256Hex(want) || s.n != int64(len(want)):
		return false, itoa(s.n) + " bytes with the wrong sha256"
	}
	return true, ""
}

// aborted reports whether s is an honest failure: no response, an error
// status, or a body that broke before its Content-Length. A complete 200
// (right or wrong bytes) is not.
func (s streamed) aborted() bool {
	switch {
	case s.err != nil:
		return true
	case s.status >= 500:
		return true
	case s.status == http.StatusOK || s.status == http.StatusPartialContent:
		return s.readErr != nil && s.n < s.length
	}
	return false
}

// part is one part of a multipart/byteranges body.
type part struct {
	contentRange string
	contentType  string
	body         []byte
}

// byteranges splits a multipart/byteranges body.
func byteranges(t *testing.T, contentType string, body []byte) []part {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil || mediaType != "multipart/byteranges" || params["boundary"] == "" {
		t.Fatalf("Content-Type = %q, want multipart/byteranges with a boundary", contentType)
	}
	mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
	var parts []part
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatalf("reading multipart body: %v", err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("reading part %d: %v", len(parts), err)
		}
		parts = append(parts, part{contentRange: p.Header.Get("Content-Range"), contentType: p.Header.Get("Content-Type"), body: b})
	}
}

// median of durations, which it sorts.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// readFileOrNil is the content of path, nil if it cannot be read.
func readFileOrNil(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

// fileSize is the size of path, -1 if it does not exist.
func fileSize(path string) int64 {
	info, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return info.Size()
}

// cacheTwoObjects loads a cache in a new directory and stores two objects
// in it, a small PNG and a 1 MB one, for the stats and purge tests.
func cacheTwoObjects(t *testing.T) (dir string, png, mb s3test.Seeded) {
	t.Helper()
	dir = t.TempDir()
	loadCache(t, dir)
	png = env.objects.Get(s3test.KeyOriginalPNG)
	mb = env.objects.Get(s3test.KeyOneMB)
	fillEntry(t, dir, png)
	fillEntry(t, dir, mb)
	return dir, png, mb
}
