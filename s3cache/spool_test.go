package s3cache

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// passThroughHandler is a handler without a cache whose S3 holds data
// and allows one request at a time (max_concurrent_fills 1).
func passThroughHandler(t *testing.T, o origin, configure func(*Handler)) *Handler {
	t.Helper()
	h := newTestHandler(t, o, "")
	h.MaxConcurrentFills = 1
	if configure != nil {
		configure(h)
	}
	h.origin = newLimitedOrigin(h.origin, 1, 200*time.Millisecond, nil)
	if err := h.buildFreshness(); err != nil {
		t.Fatal(err)
	}
	h.buildFillRules()
	return h
}

// TestPassThroughHoldsS3AtItsOwnPace reads a 3 MiB pass-through at a
// crawl while a second client asks for another object: S3 allows one
// request at a time, and the crawling client holds it only while S3 sends
// each chunk, so the second client is served at once. Both get every
// byte, and S3 is asked for each byte once.
func TestPassThroughHoldsS3AtItsOwnPace(t *testing.T) {
	data := objectBytes(3<<20 + 123)
	var mu sync.Mutex
	var ranges []string
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		mu.Lock()
		ranges = append(ranges, req.rangeSpec)
		mu.Unlock()
		return answerFor(data, req, nil), nil
	}}
	h := passThroughHandler(t, o, nil)
	srv := serve(t, h)

	slow, err := http.Get(srv.URL + "/v/slow.mp4")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if slow.StatusCode != 200 || slow.ContentLength != int64(len(data)) {
		t.Fatalf("slow client: %d, Content-Length %d", slow.StatusCode, slow.ContentLength)
	}
	got := make([]byte, 10)
	if _, err := io.ReadFull(slow.Body, got); err != nil {
		t.Fatal(err)
	}
	// The crawler has read 10 bytes; S3's slot must be free again.
	time.Sleep(50 * time.Millisecond)
	resp, body := get(t, srv.URL+"/v/other.mp4")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("second client while the first crawls: %d, %d bytes; want 200 with the object (the slot held by a slow reader?)", resp.StatusCode, len(body))
	}
	rest, err := io.ReadAll(slow.Body)
	if err != nil || !bytes.Equal(append(got, rest...), data) {
		t.Fatalf("slow client: %v, %d bytes, equal %v", err, len(got)+len(rest), bytes.Equal(append(got, rest...), data))
	}
	mu.Lock()
	defer mu.Unlock()
	chunks := []string{"bytes=0-1048575", "bytes=1048576-2097151", "bytes=2097152-3145727", "bytes=3145728-3145850"}
	counts := map[string]int{}
	for _, r := range ranges {
		counts[r]++
	}
	for _, r := range chunks {
		if counts[r] != 2 || len(ranges) != 2*len(chunks) {
			t.Fatalf("S3 saw %v; want each chunk of each of the two objects once: %v", counts, chunks)
		}
	}
}

// TestPassThroughPinsItsVersion changes the object between chunks: the
// next chunk's If-Match fails, and the client's transfer is cut, never
// completed with bytes of two versions.
func TestPassThroughPinsItsVersion(t *testing.T) {
	data := objectBytes(2<<20 + 5)
	calls := 0
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		calls++
		if calls > 1 {
			req.ifMatch = strings.Replace(req.ifMatch, "v1", "v2", 1) // the version S3 has now
		}
		return answerFor(data, req, nil), nil
	}}
	h := passThroughHandler(t, o, nil)
	srv := serve(t, h)
	_, body, err := fetch(http.DefaultClient, srv.URL+"/v/a.mp4")
	if err == nil {
		t.Fatalf("a body whose object changed between chunks came whole (%d bytes)", len(body))
	}
	if !bytes.Equal(body, data[:len(body)]) {
		t.Fatal("the bytes delivered before the cut are not the first version's")
	}
}

// TestPassThroughChecksTheWholeBodyAgainstItsETag serves a body whose
// last chunk differs from what the ETag (an MD5) says: the last byte is
// never delivered, so the client sees a cut transfer.
func TestPassThroughChecksTheWholeBodyAgainstItsETag(t *testing.T) {
	data := objectBytes(2<<20 + 5)
	sent := bytes.Clone(data)
	sent[len(sent)-3] ^= 1
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		resp := answerFor(sent, req, nil)
		resp.header.Set("Etag", `"`+md5Hex(data)+`"`)
		return resp, nil
	}}
	h := passThroughHandler(t, etagCheckingOrigin{origin: o}, nil)
	srv := serve(t, h)
	_, body, err := fetch(http.DefaultClient, srv.URL+"/v/a.mp4")
	if err == nil || len(body) >= len(data) {
		t.Fatalf("a body that fails its ETag check was delivered whole: %d bytes, %v", len(body), err)
	}
}

// TestPassThroughWithoutBudgetStillServes spends the chunks' memory budget:
// the chunks are then read from S3 as the client reads them, and every
// byte still arrives.
func TestPassThroughWithoutBudgetStillServes(t *testing.T) {
	data := objectBytes(2<<20 + 5)
	h := passThroughHandler(t, servingOrigin(data), nil)
	h.spoolBudget = newSpoolBudget(0)
	srv := serve(t, h)
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "Range", "bytes=1000000-1100000")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[1000000:1100001]) || resp.Header.Get("Content-Range") != "bytes 1000000-1100000/2097157" {
		t.Fatalf("range: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(body))
	}
}

// TestPassThroughReadAheadIsEarned reads pass-throughs of 12 MiB with
// four slots free: a client that reads everything has the chunks after
// the first asked for ahead of time, while the one before arrives (so it
// sees no pause between chunks), each chunk once; clients that leave have
// cost S3 at most 1.1 times what they read plus one chunk.
func TestPassThroughReadAheadIsEarned(t *testing.T) {
	const chunk = 1 << 20
	data := objectBytes(12<<20 + 77)
	var mu sync.Mutex
	var asked []originRequest
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		mu.Lock()
		asked = append(asked, req)
		mu.Unlock()
		return answerFor(data, req, nil), nil
	}}
	h := passThroughHandler(t, o, nil)
	h.origin = newLimitedOrigin(o, 4, 200*time.Millisecond, nil)
	h.spoolBudget = newSpoolBudget(8 * chunk)
	srv := serve(t, h)
	take := func() []originRequest {
		mu.Lock()
		defer mu.Unlock()
		out := asked
		asked = nil
		return out
	}

	resp, body := get(t, srv.URL+"/v/whole.mp4")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("whole read: %d, %d bytes", resp.StatusCode, len(body))
	}
	seen, ahead := map[string]int{}, 0
	for _, req := range take() {
		seen[req.rangeSpec]++
		if req.noQueue {
			ahead++
		}
	}
	if len(seen) != 13 {
		t.Errorf("S3 was asked for %d distinct ranges, want the 13 chunks: %v", len(seen), seen)
	}
	for r, n := range seen {
		if n != 1 {
			t.Errorf("%s asked for %d times, want once", r, n)
		}
	}
	if ahead < 6 {
		t.Errorf("%d chunks were read ahead, want most of the 12 after the first", ahead)
	}

	// Clients that leave, read through the body itself (over HTTP, the
	// socket buffers would read for them).
	for _, read := range []int64{100 << 10, 900 << 10, 5 << 20, 11 << 20} {
		var pulled atomic.Int64
		b := &spooledBody{
			fetch: func(off, n int64, _ bool) (io.ReadCloser, error) {
				pulled.Add(n)
				return io.NopCloser(bytes.NewReader(data[off : off+n])), nil
			},
			chunk: chunk, budget: newSpoolBudget(8 * chunk), end: int64(len(data)),
		}
		got := make([]byte, read)
		for off := 0; off < len(got); off += 4096 { // a client reading 4 KiB at a time
			if _, err := io.ReadFull(b, got[off:min(off+4096, len(got))]); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
		time.Sleep(20 * time.Millisecond) // a read-ahead in flight lands
		if !bytes.Equal(got, data[:read]) {
			t.Fatalf("a client reading %d bytes got other bytes", read)
		}
		if bound := read*11/10 + chunk; pulled.Load() > bound {
			t.Errorf("a client that read %d bytes and left cost %d bytes of S3, over %d", read, pulled.Load(), bound)
		}
		if b.budget.free != 8*chunk {
			t.Errorf("after Close, %d bytes of the budget are still taken", 8*chunk-b.budget.free)
		}
	}
}
