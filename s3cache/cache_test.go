package s3cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// These tests drive the cache engine with a scripted origin, to hold a
// body mid-transfer or break it on cue. The integration suite runs the same
// behaviours against versitygw through a throttling proxy.

// gatedBody releases its bytes chunk by chunk: one chunk per value sent on
// gate, and fails with failWith once gate is closed early.
type gatedBody struct {
	data     []byte
	chunk    int
	gate     chan struct{}
	failWith error
	off      int
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	if b.gate != nil {
		if _, ok := <-b.gate; !ok {
			if b.failWith != nil {
				return 0, b.failWith
			}
			// gate closed without failure: release everything at once
			b.gate = nil
		}
	}
	n := b.chunk
	if b.gate == nil {
		n = len(b.data) - b.off
	}
	n = copy(p, b.data[b.off:min(b.off+n, len(b.data))])
	b.off += n
	return n, nil
}

func (b *gatedBody) Close() error { return nil }

func objectBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// servingOrigin answers every fetch as S3 would for an object holding
// data (see answerFor).
func servingOrigin(data []byte) *scriptedOrigin {
	return &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		return answerFor(data, req, nil), nil
	}}
}

func okResponse(data []byte, body io.ReadCloser) *originResponse {
	return &originResponse{status: 200, header: http.Header{
		"Content-Length": {strconv.Itoa(len(data))},
		"Content-Type":   {"video/mp4"},
		"Etag":           {testETag},
		"Last-Modified":  {testLastModified},
	}, body: body}
}

func newCachedHandler(t *testing.T, o origin, dir string, configure func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{origin: o, logger: zap.NewNop(), MaxSize: 64 << 20}
	h.originCfg.bucket = "b"
	h.mapping.bucket = "b"
	if configure != nil {
		configure(h)
	}
	p, err := h.buildHeaderPolicy()
	if err != nil {
		t.Fatal(err)
	}
	h.policy = p
	if err := h.buildFreshness(); err != nil {
		t.Fatal(err)
	}
	if err := h.openCache(dir, t, "the test's site"); err != nil {
		t.Fatal(err)
	}
	h.buildFillRules()
	t.Cleanup(func() { releaseStore(dir) })
	waitLoaded(t, h.store)
	return h
}

func waitLoaded(t *testing.T, s *store) {
	t.Helper()
	select {
	case <-s.loaded:
	case <-time.After(5 * time.Second):
		t.Fatal("store did not load")
	}
}

func get(t *testing.T, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return mustFetch(t, http.DefaultClient, url, headers...)
}

// mustFetch is fetch failing t on any error.
func mustFetch(t *testing.T, client *http.Client, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := fetch(client, url, headers...)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

// fetch GETs url through client with "Name", "value" header pairs and
// reads the whole body. The error is the request's or the read's: a
// transfer cut short shows as one.
func fetch(client *http.Client, url string, headers ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestFillFollowerGetsBytesBeforeLeaderFinishes(t *testing.T) {
	data := objectBytes(1 << 20)
	body := &gatedBody{data: data, chunk: 64 << 10, gate: make(chan struct{})}
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) { return okResponse(data, body), nil }}
	h := newCachedHandler(t, o, t.TempDir(), nil)
	srv := serve(t, h)

	const clients = 10
	type result struct {
		firstByte bool
		body      []byte
		status    string
		err       error
	}
	results := make(chan result, clients)
	firstBytes := make(chan struct{}, clients)
	for range clients {
		go func() {
			resp, err := http.Get(srv.URL + "/v/a.mp4")
			if err != nil {
				results <- result{err: err}
				return
			}
			defer resp.Body.Close()
			one := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, one); err != nil {
				results <- result{err: err}
				return
			}
			firstBytes <- struct{}{}
			rest, err := io.ReadAll(resp.Body)
			results <- result{firstByte: true, body: append(one, rest...), status: resp.Header.Get("X-Cache-Status"), err: err}
		}()
	}
	body.gate <- struct{}{} // release exactly one chunk
	for i := range clients {
		select {
		case <-firstBytes:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d clients got a byte while the fill was held after its first chunk", i, clients)
		}
	}
	close(body.gate) // release the rest
	for range clients {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !bytes.Equal(r.body, data) || r.status != "MISS" {
			t.Fatalf("got %d bytes, status %s", len(r.body), r.status)
		}
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests for %d concurrent clients, want 1", n, clients)
	}
	waitStored(t, h, "v/a.mp4")
	resp, got := get(t, srv.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(got, data) || o.calls.Load() != 1 {
		t.Fatalf("after the fill: %s, %d bytes, %d S3 requests", resp.Header.Get("X-Cache-Status"), len(got), o.calls.Load())
	}
}

func TestFillSurvivesLeaderDisconnect(t *testing.T) {
	data := objectBytes(256 << 10)
	body := &gatedBody{data: data, chunk: 16 << 10, gate: make(chan struct{})}
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) { return okResponse(data, body), nil }}
	h := newCachedHandler(t, o, t.TempDir(), nil)
	srv := serve(t, h)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v/a.mp4", nil)
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.ReadFull(resp.Body, make([]byte, 1))
			resp.Body.Close()
		}
	}()
	body.gate <- struct{}{}
	cancel() // the client that started the fill goes away
	<-leaderDone

	follower := make(chan []byte)
	go func() { _, b := get(t, srv.URL+"/v/a.mp4"); follower <- b }()
	close(body.gate)
	select {
	case got := <-follower:
		if !bytes.Equal(got, data) {
			t.Fatalf("follower got %d bytes, want the whole object", len(got))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follower never completed")
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1: the fill must not restart", n)
	}
}

func TestFillFailureAbortsReadersAndStoresNothing(t *testing.T) {
	data := objectBytes(512 << 10)
	dir := t.TempDir()
	o := &scriptedOrigin{}
	o.respond = func(originRequest) (*originResponse, error) {
		b := &gatedBody{data: data, chunk: 128 << 10, gate: make(chan struct{}), failWith: errors.New("connection reset by peer")}
		go func() { b.gate <- struct{}{}; close(b.gate) }()
		return okResponse(data, b), nil
	}
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)
	resp, err := http.Get(srv.URL + "/v/a.mp4")
	status := 0
	if err == nil {
		status = resp.StatusCode
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	// A cut transfer, or, if the break came before the client's first
	// byte, a clean 502.
	if err == nil && status != http.StatusBadGateway {
		t.Fatalf("a fill that broke mid-body produced a complete %d", status)
	}
	wantNoBodyStored(t, h, "v/a.mp4")
}

// slicesOnDisk reads the entry file of key as the loader would, and
// returns how many of its slices are present, and how many it has.
func slicesOnDisk(t *testing.T, h *Handler, key string) (present, total int) {
	t.Helper()
	ef, err := readEntryFile(h.store.entryPath(h.mapping.cacheKey(key)))
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0
	}
	if err != nil {
		t.Fatalf("reading the entry file of %s: %v", key, err)
	}
	return ef.table.count(), len(ef.table.present)
}

// wantNoBodyStored checks that no byte of key's body is in the cache: no
// slice present on disk, and no complete entry in the index. (An entry
// may remain with the object's metadata alone.)
func wantNoBodyStored(t *testing.T, h *Handler, key string) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // let the fill's workers finish
	if present, _ := slicesOnDisk(t, h, key); present != 0 {
		t.Fatalf("%d slices of %s on disk, want none", present, key)
	}
	if e, ok := h.store.lookup(h.mapping.cacheKey(key), time.Now()); ok && e.complete {
		t.Fatalf("%s is indexed as complete", key)
	}
}

func TestHitAnswersRangesConditionalsAndHead(t *testing.T) {
	data := objectBytes(100_000)
	o := servingOrigin(data)
	h := newCachedHandler(t, o, t.TempDir(), nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")

	resp, body := get(t, srv.URL+"/v/a.mp4", "Range", "bytes=100-199")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[100:200]) || resp.Header.Get("Content-Range") != "bytes 100-199/100000" || resp.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("single range: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Range"), resp.Header.Get("X-Cache-Status"))
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "Range", "bytes=-10")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[len(data)-10:]) {
		t.Fatalf("suffix range: %d", resp.StatusCode)
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "Range", "bytes=0-1,10-11")
	if resp.StatusCode != 206 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges; boundary=") ||
		!bytes.Contains(body, data[10:12]) || resp.ContentLength != int64(len(body)) {
		t.Fatalf("multi range: %d %s len %d/%d", resp.StatusCode, resp.Header.Get("Content-Type"), resp.ContentLength, len(body))
	}
	resp, _ = get(t, srv.URL+"/v/a.mp4", "Range", "bytes=200000-")
	if resp.StatusCode != 416 || resp.Header.Get("Content-Range") != "bytes */100000" || resp.Header.Get("Cache-Control") != "" {
		t.Fatalf("unsatisfiable: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "If-None-Match", `"v1"`)
	if resp.StatusCode != 304 || len(body) != 0 || resp.Header.Get("Etag") != `"v1"` || resp.Header.Get("Cache-Control") == "" {
		t.Fatalf("If-None-Match: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = get(t, srv.URL+"/v/a.mp4", "If-Modified-Since", "Wed, 25 Nov 2026 10:00:00 GMT")
	if resp.StatusCode != 304 {
		t.Fatalf("If-Modified-Since: %d", resp.StatusCode)
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "Range", "bytes=0-9", "If-Range", `"old"`)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("stale If-Range must give the whole object: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("HEAD", srv.URL+"/v/a.mp4", nil)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != 200 || hr.ContentLength != int64(len(data)) || hr.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("HEAD: %d %d %s", hr.StatusCode, hr.ContentLength, hr.Header.Get("X-Cache-Status"))
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1", n)
	}
}

func TestEvictionKeepsStoreUnderMaxSize(t *testing.T) {
	data := objectBytes(100_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	const maxSize = 1_000_000
	h := newCachedHandler(t, o, dir, func(h *Handler) { h.MaxSize = maxSize })
	srv := serve(t, h)
	for i := range 50 { // 5 MB through a 1 MB cache
		resp, body := get(t, srv.URL+"/v/"+strconv.Itoa(i)+".mp4")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("object %d: %d", i, resp.StatusCode)
		}
		waitStored(t, h, "v/"+strconv.Itoa(i)+".mp4")
		if used := dirBytes(t, dir); used > maxSize {
			t.Fatalf("after object %d the cache holds %d bytes, over max_size %d", i, used, maxSize)
		}
	}
	resp, _ := get(t, srv.URL+"/v/49.mp4")
	if resp.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("the most recent object was evicted: %s", resp.Header.Get("X-Cache-Status"))
	}
	resp, _ = get(t, srv.URL+"/v/0.mp4")
	if resp.Header.Get("X-Cache-Status") != "MISS" {
		t.Fatalf("the oldest object survived: %s", resp.Header.Get("X-Cache-Status"))
	}
}

func TestRestartServesHitsFromDisk(t *testing.T) {
	data := objectBytes(70_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	releaseStore(dir) // the process stops: the store is destroyed

	h2 := newCachedHandler(t, o, dir, nil)
	srv2 := serve(t, h2)
	resp, body := get(t, srv2.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
		t.Fatalf("after restart: %s, %d bytes", resp.Header.Get("X-Cache-Status"), len(body))
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1", n)
	}
}

func TestCorruptEntryIsNeverServed(t *testing.T) {
	data := objectBytes(70_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, nil)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	e, ok := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now())
	if !ok {
		t.Fatal("not stored")
	}
	f, err := os.OpenFile(e.path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := f.Stat()
	f.WriteAt([]byte("XXXX"), e.meta.bodyOffset()+1000) // same size, different bytes
	f.Close()
	os.Chtimes(e.path, info.ModTime(), info.ModTime()) // bit rot: the mtime does not change

	resp, body := get(t, srv.URL+"/v/a.mp4")
	if !bytes.Equal(body, data) || resp.Header.Get("X-Cache-Status") != "MISS" {
		t.Fatalf("altered entry: status %s, bytes equal %v", resp.Header.Get("X-Cache-Status"), bytes.Equal(body, data))
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d S3 requests, want 2 (the corrupt entry refetched)", n)
	}
}

func TestExpiredEntryRevalidatesOrIsReplaced(t *testing.T) {
	data := objectBytes(10_000)
	var mu sync.Mutex
	answer := 200
	var lastReq originRequest
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		lastReq = req
		if answer == 304 {
			return &originResponse{status: 304, header: http.Header{"Etag": {`"v1"`}}}, nil
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(50 * time.Millisecond)}
		h.UseStale = []string{"error"}
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	time.Sleep(80 * time.Millisecond)

	mu.Lock()
	answer = 304
	mu.Unlock()
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "REVALIDATED" || !bytes.Equal(body, data) || lastReq.ifNoneMatch != `"v1"` {
		t.Fatalf("304: %s, If-None-Match %q", resp.Header.Get("X-Cache-Status"), lastReq.ifNoneMatch)
	}
	time.Sleep(80 * time.Millisecond)
	mu.Lock()
	answer = 200
	mu.Unlock()
	resp, body = get(t, srv.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "EXPIRED" || !bytes.Equal(body, data) {
		t.Fatalf("200: %s", resp.Header.Get("X-Cache-Status"))
	}
}

func TestStaleServedWhenS3Fails(t *testing.T) {
	data := objectBytes(10_000)
	var mu sync.Mutex
	down := false
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return nil, &originError{status: 502, upstreamStatus: 503, op: "GetObject", reason: "S3 answered 503 SlowDown"}
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(50 * time.Millisecond)}
		h.UseStale = []string{"error", "http_503"}
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	time.Sleep(80 * time.Millisecond)
	mu.Lock()
	down = true
	mu.Unlock()
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != "STALE" || !bytes.Equal(body, data) {
		t.Fatalf("S3 down: %d %s", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
	}
	resp, _ = get(t, srv.URL+"/v/other.mp4")
	if resp.StatusCode != 502 || resp.Header.Get("X-Cache-Status") != "MISS" {
		t.Fatalf("no stale copy: %d %s", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
	}
}

// TestFailureIsNotToldToLaterRequests holds a fill that failed open (a
// client reads its stale copy slowly) while S3 comes back: a request
// after the failure asks S3 again, instead of inheriting the failure and
// the stale copy.
func TestFailureIsNotToldToLaterRequests(t *testing.T) {
	data := objectBytes(16 << 20) // more than the sockets buffer
	var down atomic.Bool
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		if down.Load() {
			return nil, &originError{status: 502, upstreamStatus: 500, op: "GetObject", reason: "S3 answered 500 InternalError"}
		}
		return answerFor(data, req, nil), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(50 * time.Millisecond)}
		h.UseStale = []string{"error", "http_500"}
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	time.Sleep(80 * time.Millisecond)

	down.Store(true)
	slow, err := http.Get(srv.URL + "/v/a.mp4")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if got := slow.Header.Get("X-Cache-Status"); got != cacheStale {
		t.Fatalf("S3 down: X-Cache-Status %q, want STALE", got)
	}
	down.Store(false)
	before := o.calls.Load()
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if got := resp.Header.Get("X-Cache-Status"); got == cacheStale || !bytes.Equal(body, data) {
		t.Fatalf("S3 back, a slow reader of the stale copy still on: X-Cache-Status %q, %d bytes; want the object from S3 (REVALIDATED or EXPIRED)", got, len(body))
	}
	if o.calls.Load() == before {
		t.Fatal("S3 back: the request after the failure did not ask S3")
	}
	if rest, err := io.ReadAll(slow.Body); err != nil || !bytes.Equal(rest, data) {
		t.Fatalf("the slow reader's stale copy: %d bytes, %v", len(rest), err)
	}
}

func TestUpdatingServesStaleWhileOneRefreshRuns(t *testing.T) {
	data := objectBytes(10_000)
	release := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n > 1 {
			<-release // the refresh hangs until the test lets it go
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(50 * time.Millisecond)}
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")
	time.Sleep(80 * time.Millisecond)
	for range 5 {
		resp, body := get(t, srv.URL+"/v/a.mp4")
		if resp.Header.Get("X-Cache-Status") != "UPDATING" || !bytes.Equal(body, data) {
			t.Fatalf("got %s", resp.Header.Get("X-Cache-Status"))
		}
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if resp, _ := get(t, srv.URL+"/v/a.mp4"); resp.Header.Get("X-Cache-Status") == "HIT" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d S3 requests, want 2 (one fill, one refresh)", n)
	}
}

func TestNegativeCachingAbsorbsRepeats(t *testing.T) {
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		return nil, &originError{status: 404, upstreamStatus: 404, op: "GetObject", reason: "no such key"}
	}}
	h := newCachedHandler(t, o, t.TempDir(), nil)
	srv := serve(t, h)
	for i := range 5 {
		resp, body := get(t, srv.URL+"/missing.png")
		want := "HIT"
		if i == 0 {
			want = "MISS"
		}
		if resp.StatusCode != 404 || len(body) != 0 || resp.Header.Get("X-Cache-Status") != want {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, resp.Header.Get("X-Cache-Status"))
		}
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d S3 requests, want 1", n)
	}
}

func TestOversizedObjectIsPassedThrough(t *testing.T) {
	data := objectBytes(10_000)
	dir := t.TempDir()
	o := servingOrigin(data)
	h := newCachedHandler(t, o, dir, func(h *Handler) { h.MaxObjectSize = 5_000 })
	srv := serve(t, h)
	for range 2 {
		resp, body := get(t, srv.URL+"/v/big.mp4")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("X-Cache-Status") != "MISS" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
		}
	}
	assertNoEntryFiles(t, dir)
}

func assertNoEntryFiles(t *testing.T, dir string) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // let the last reader release the temp file
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("unexpected file in the cache: %s", path)
		}
		return nil
	})
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && isEntryName(d.Name()) {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// TestDamagedEntryIsNeverServed damages a later block of an entry file
// in three ways and checks that its bytes never reach a client:
//
//   - altered in place (mtime put back, but the change time moves): found
//     before the status line, on any connection, and answered from S3;
//   - bit rot no metadata shows, on a TLS connection (read through
//     checkedBody): a range in a good block is still a HIT, the whole
//     object is cut short at the bad block, and the entry is removed;
//   - the same rot on a sendfile connection: the file is trusted only
//     for reverifyInterval after its last full check, and the check that
//     follows finds it before the status line.
func TestDamagedEntryIsNeverServed(t *testing.T) {
	data := objectBytes(3 * blockSize)
	tests := []struct {
		name string
		tls  bool
		// invisible makes the store see the damaged file as the one
		// it checked, as a disk's bit rot would leave it; checkedAgo
		// is how long ago that check was.
		invisible  bool
		checkedAgo time.Duration
		wantCut    bool // the whole object is cut short (else a clean MISS)
		// hitFirst serves one HIT before the damage, which leaves an
		// open descriptor of the file pooled for the next one.
		hitFirst bool
	}{
		{name: "altered in place", tls: false},
		{name: "altered in place after a sendfile hit", tls: false, hitFirst: true},
		{name: "altered in place after a TLS hit", tls: true, hitFirst: true},
		{name: "altered in place, TLS", tls: true},
		{name: "bit rot, TLS", tls: true, invisible: true, wantCut: true},
		{name: "bit rot, sendfile, at the next check", tls: false, invisible: true, checkedAgo: reverifyInterval},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
			srv := httptest.NewUnstartedServer(handlerFor(h))
			if tt.tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			getObject := func(headers ...string) (*http.Response, []byte, error) {
				return fetch(srv.Client(), srv.URL+"/v/a.mp4", headers...)
			}

			if _, _, err := getObject(); err != nil {
				t.Fatal(err)
			}
			waitStored(t, h, "v/a.mp4")
			if tt.hitFirst {
				if resp, body, err := getObject(); err != nil || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
					t.Fatalf("the hit before the damage: %v", err)
				}
			}
			ckey := h.mapping.cacheKey("v/a.mp4")
			e, _ := h.store.lookup(ckey, time.Now())
			damageBlock(t, e.path, e.meta.bodyOffset()+2*blockSize+5)
			if tt.invisible {
				info, err := os.Stat(e.path)
				if err != nil {
					t.Fatal(err)
				}
				h.store.markKnown(&e, identityOf(info))
				h.store.mu.Lock()
				h.store.entries[ckey].verifiedAt = time.Now().Add(-tt.checkedAgo)
				h.store.mu.Unlock()
			}

			if tt.wantCut {
				resp, body, err := getObject("Range", "bytes=0-99")
				if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, data[:100]) || resp.Header.Get("X-Cache-Status") != "HIT" {
					t.Fatalf("range in a good block: %v", err)
				}
				if _, got, err := getObject(); err == nil {
					t.Fatalf("a corrupt entry was served as a complete response (%d bytes, equal %v)", len(got), bytes.Equal(got, data))
				}
				if _, ok := h.store.lookup(ckey, time.Now()); ok {
					t.Fatal("the corrupt entry is still indexed")
				}
			}
			resp, body, err := getObject()
			if err != nil || resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) {
				t.Fatalf("after the damage: err %v, want a MISS with the right bytes", err)
			}
			resp, body, err = getObject()
			if err != nil || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("once fetched again: err %v, want a HIT with the right bytes", err)
			}
		})
	}
}

// TestSendfileHitsReuseDescriptors checks the pool of descriptors for
// sendfile hits: sequential hits share one descriptor, ranges and HEADs
// included, and a purge or a replacement of the entry closes it.
func TestSendfileHitsReuseDescriptors(t *testing.T) {
	data := objectBytes(2*blockSize + 77)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	srv := httptest.NewServer(handlerFor(h))
	t.Cleanup(srv.Close)
	url := srv.URL + "/v/a.mp4"
	storeObject(t, h, srv.URL, "v/a.mp4")
	ckey := h.mapping.cacheKey("v/a.mp4")
	spares := func() (perEntry, open int) {
		h.store.mu.Lock()
		defer h.store.mu.Unlock()
		if e, ok := h.store.entries[ckey]; ok {
			perEntry = len(e.spares)
		}
		return perEntry, h.store.open
	}

	for i, rng := range []string{"", "bytes=0-99", "bytes=100-", "", "bytes=-10"} {
		resp, body, err := fetch(srv.Client(), url, "Range", rng)
		want, wantStatus := data, http.StatusOK
		switch rng {
		case "bytes=0-99":
			want, wantStatus = data[:100], http.StatusPartialContent
		case "bytes=100-":
			want, wantStatus = data[100:], http.StatusPartialContent
		case "bytes=-10":
			want, wantStatus = data[len(data)-10:], http.StatusPartialContent
		}
		if err != nil || resp.StatusCode != wantStatus || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, want) {
			t.Fatalf("hit %d (Range %q): err %v, status %d, %d bytes; want %d with the right %d bytes",
				i, rng, err, resp.StatusCode, len(body), wantStatus, len(want))
		}
		// The handler gives the descriptor back after the client has its
		// last byte: wait a moment for it.
		var perEntry, open int
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if perEntry, open = spares(); perEntry == 1 && open == 1 {
				break
			}
		}
		if perEntry != 1 || open != 1 {
			t.Fatalf("after hit %d: %d pooled descriptors for the entry, %d open in the store; want 1 and 1", i, perEntry, open)
		}
	}

	if !h.store.purge(ckey) {
		t.Fatal("purge found no entry")
	}
	if _, open := spares(); open != 0 {
		t.Fatalf("after the purge: %d descriptors still open", open)
	}

	// A new entry for the key does not inherit the old one's descriptors.
	storeObject(t, h, srv.URL, "v/a.mp4")
	mustFetch(t, srv.Client(), url)
	old, _ := h.store.lookup(ckey, time.Now())
	storeAgain := func() {
		h.store.mu.Lock()
		defer h.store.mu.Unlock()
		cur := h.store.entries[ckey]
		h.store.insertLocked(ckey, cur.path, cur.meta, true, cur.diskBytes, cur.id, time.Now())
	}
	storeAgain()
	if _, open := spares(); open != 0 {
		t.Fatalf("after the entry was replaced: %d descriptors still open", open)
	}
	if f := h.store.takeSpare(&old); f != nil {
		t.Fatal("the replaced entry's snapshot still hands out descriptors")
	}
}

// TestDestructedStoreKeepsNothingOpen checks that the store of a config
// gone for good closes its pooled descriptors and does not pool those of
// requests still draining.
func TestDestructedStoreKeepsNothingOpen(t *testing.T) {
	data := objectBytes(1000)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	srv := httptest.NewServer(handlerFor(h))
	t.Cleanup(srv.Close)
	storeObject(t, h, srv.URL, "v/a.mp4")
	if resp, _ := get(t, srv.URL+"/v/a.mp4"); resp.Header.Get("X-Cache-Status") != "HIT" {
		t.Fatalf("want a HIT, got %q", resp.Header.Get("X-Cache-Status"))
	}
	e, _ := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now())
	draining, err := os.Open(e.path)
	if err != nil {
		t.Fatal(err)
	}

	if err := h.store.Destruct(); err != nil {
		t.Fatal(err)
	}
	h.store.putSpare(&e, draining)
	h.store.mu.Lock()
	open := h.store.open
	h.store.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d descriptors open after Destruct, want 0", open)
	}
	if _, err := draining.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("a draining request's descriptor was kept: Stat says %v", err)
	}
}

// TestEntryRemovedByHandIsFetchedAgain checks that an entry file deleted
// from the cache directory by hand (rm -rf to clear the cache) is not
// served on from the descriptor a previous hit left open: the next request
// drops the entry, fetches the object again and stores a new file, and the
// old file's descriptors are closed.
func TestEntryRemovedByHandIsFetchedAgain(t *testing.T) {
	data := objectBytes(blockSize + 300)
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "sendfile", true: "TLS"}[tls], func(t *testing.T) {
			o := servingOrigin(data)
			h := newCachedHandler(t, o, t.TempDir(), nil)
			srv := httptest.NewUnstartedServer(handlerFor(h))
			if tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			url := srv.URL + "/v/a.mp4"
			mustFetch(t, srv.Client(), url)
			waitStored(t, h, "v/a.mp4")
			if resp, body := mustFetch(t, srv.Client(), url); resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("the hit before the removal: %s, %d bytes", resp.Header.Get("X-Cache-Status"), len(body))
			}
			ckey := h.mapping.cacheKey("v/a.mp4")
			e, _ := h.store.lookup(ckey, time.Now())
			if err := os.Remove(e.path); err != nil {
				t.Fatal(err)
			}

			resp, body := mustFetch(t, srv.Client(), url)
			if resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) {
				t.Fatalf("after the removal: %s, %d bytes; want a MISS with the right bytes", resp.Header.Get("X-Cache-Status"), len(body))
			}
			if got := o.calls.Load(); got != 2 {
				t.Fatalf("S3 fetches = %d, want 2", got)
			}
			waitStored(t, h, "v/a.mp4")
			if _, err := os.Stat(e.path); err != nil {
				t.Fatalf("the object was not stored again: %v", err)
			}
			h.store.mu.Lock()
			open := h.store.open
			h.store.mu.Unlock()
			if open != 0 {
				t.Fatalf("%d descriptors open after the new entry's fill, want 0 (the old file's closed, the new one not yet used)", open)
			}
			if resp, body := mustFetch(t, srv.Client(), url); resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
				t.Fatalf("once stored again: %s, %d bytes; want a HIT", resp.Header.Get("X-Cache-Status"), len(body))
			}
		})
	}
}

// damageBlock flips one byte of a file in place and puts its mtime back.
func damageBlock(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xAA}, off); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// TestSliceTheCacheCannotTakeComesFromS3 gives the cache room for the
// first slice of an object and not the second: the client still gets
// every byte, the rest read from S3 directly with one ranged GET of the
// same version, and only the slice that fitted is stored.
func TestSliceTheCacheCannotTakeComesFromS3(t *testing.T) {
	data := objectBytes(2<<20 + 100) // three slices
	o := &scriptedOrigin{}
	var resumes []originRequest
	var mu sync.Mutex
	o.respond = func(req originRequest) (*originResponse, error) {
		if o.calls.Load() > 1 {
			mu.Lock()
			resumes = append(resumes, req)
			mu.Unlock()
		}
		return answerFor(data, req, nil), nil
	}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.MaxSize = 1<<20 + 6*bodyAlign // the header, the small last slice, the level directories
	})
	srv := serve(t, h)
	resp, body := get(t, srv.URL+"/v/a.mp4")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("got %d, %d bytes (equal %v); want the whole object", resp.StatusCode, len(body), bytes.Equal(body, data))
	}
	// The second slice, read directly, and the third (a few bytes that
	// fit), fetched for the cache.
	var ranges []string
	mu.Lock()
	defer mu.Unlock()
	for _, req := range resumes {
		if req.ifMatch != testETag {
			t.Errorf("%s without If-Match on the ETag", req.rangeSpec)
		}
		ranges = append(ranges, req.rangeSpec)
	}
	slices.Sort(ranges)
	if want := []string{"bytes=1048576-2097151", "bytes=2097152-3145727"}; !slices.Equal(ranges, want) {
		t.Fatalf("S3 requests after the first slice: %v; want %v", ranges, want)
	}
	time.Sleep(20 * time.Millisecond)
	if present, total := slicesOnDisk(t, h, "v/a.mp4"); present != 2 || total != 3 {
		t.Fatalf("%d of %d slices on disk, want the two that fitted", present, total)
	}
	if st := h.store.snapshot(); st.Bytes > h.MaxSize || st.ReservedBytes != 0 {
		t.Fatalf("store at %d bytes (%d reserved), max_size %d", st.Bytes, st.ReservedBytes, h.MaxSize)
	}
}

// TestSliceResumesAfterTheBlocksWritten breaks S3's answer for a slice
// midway: the next fetch of that slice asks only for the bytes after the
// whole blocks already written, in the same process and after a restart,
// and the object comes out byte-exact.
func TestSliceResumesAfterTheBlocksWritten(t *testing.T) {
	data := objectBytes(3<<20 + 1000) // four slices
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "same process", true: "after a restart"}[restart], func(t *testing.T) {
			var mu sync.Mutex
			var ranges []string
			broke := false
			o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
				mu.Lock()
				defer mu.Unlock()
				ranges = append(ranges, req.rangeSpec)
				// The first GET of slice 1 breaks after three and a half
				// blocks.
				if req.rangeSpec == "bytes=1048576-2097151" && !broke {
					broke = true
					return answerFor(data, req, func(b io.ReadCloser) io.ReadCloser {
						return &failingAfter{r: b, left: 3*blockSize + blockSize/2}
					}), nil
				}
				return answerFor(data, req, nil), nil
			}}
			dir := t.TempDir()
			h := newCachedHandler(t, o, dir, nil)
			srv := serve(t, h)
			if _, _, err := fetch(http.DefaultClient, srv.URL+"/v/a.mp4"); err == nil {
				t.Fatal("the transfer was not cut where S3's answer broke")
			}
			waitIdle(t, h, "v/a.mp4")
			if restart {
				releaseStore(dir)
				h = newCachedHandler(t, o, dir, nil)
				srv = serve(t, h)
			}
			mu.Lock()
			ranges = nil
			mu.Unlock()
			resp, body := get(t, srv.URL+"/v/a.mp4")
			if resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("after the break: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, data))
			}
			waitStored(t, h, "v/a.mp4")
			mu.Lock()
			defer mu.Unlock()
			if !slices.Contains(ranges, "bytes=1245184-2097151") || slices.Contains(ranges, "bytes=1048576-2097151") {
				t.Fatalf("S3 requests after the break: %v; want slice 1 asked from its fourth block on (bytes=1245184-2097151), not whole", ranges)
			}
		})
	}
}

// failingAfter yields left bytes of r, then a connection reset.
type failingAfter struct {
	r    io.ReadCloser
	left int
}

func (b *failingAfter) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	n, err := b.r.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, err
}

func (b *failingAfter) Close() error { return b.r.Close() }

// waitIdle waits until no fill of key is running.
func waitIdle(t *testing.T, h *Handler, key string) {
	t.Helper()
	for range 1000 {
		if !h.store.inFlight(h.mapping.cacheKey(key)) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("the fill of %s did not end", key)
}

// TestConcurrentReadersGetExactBytesWhileS3Fails runs many clients
// reading random ranges, whole objects and HEADs of a few objects at
// once, through fills whose S3 answers sometimes break midway, stall or
// fail, with purges thrown in. Every answer is either exact or an honest
// failure (an error status, or a cut transfer); and once S3 behaves, every
// object is served whole, from disk.
func TestConcurrentReadersGetExactBytesWhileS3Fails(t *testing.T) {
	objects := map[string][]byte{}
	for i, size := range []int{100, 700_000, 3<<20 + 17, 5<<20 + 333} {
		objects["v/"+strconv.Itoa(i)+".mp4"] = objectBytes(size + i)
	}
	var calls atomic.Int64
	var healthy atomic.Bool
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		n := calls.Add(1)
		data := objects[req.key]
		if !healthy.Load() {
			switch n % 7 {
			case 3:
				return nil, &originError{status: http.StatusBadGateway, op: req.op(), reason: "injected"}
			case 5:
				return answerFor(data, req, func(b io.ReadCloser) io.ReadCloser {
					return &failingAfter{r: b, left: int(n%5) * 40_000}
				}), nil
			}
		}
		return answerFor(data, req, nil), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) { h.FillParallel = 3 })
	srv := serve(t, h)
	client := &http.Client{Timeout: 20 * time.Second}

	var wg sync.WaitGroup
	var bad atomic.Int64
	for w := range 24 {
		wg.Go(func() {
			for i := range 30 {
				key := "v/" + strconv.Itoa((w+i)%4) + ".mp4"
				data := objects[key]
				var headers []string
				want, wantStatus := data, http.StatusOK
				switch (w*7 + i) % 5 {
				case 0, 1:
					from := (w*131 + i*977) % len(data)
					to := min(len(data)-1, from+(w*7919+i*104729)%(2<<20))
					headers = []string{"Range", "bytes=" + strconv.Itoa(from) + "-" + strconv.Itoa(to)}
					want, wantStatus = data[from:to+1], http.StatusPartialContent
				case 2:
					n := 1 + (w*31+i)%len(data)
					headers = []string{"Range", "bytes=-" + strconv.Itoa(n)}
					want, wantStatus = data[len(data)-n:], http.StatusPartialContent
				case 3:
					if i%10 == 3 {
						h.store.purge(h.mapping.cacheKey(key))
						continue
					}
				}
				resp, body, err := fetch(client, srv.URL+"/"+key, headers...)
				switch {
				case err != nil:
					// A cut transfer: honest.
				case resp.StatusCode >= 500:
					// An error status: honest.
				case resp.StatusCode != wantStatus || !bytes.Equal(body, want):
					bad.Add(1)
					t.Errorf("%s %v: status %d, %d bytes, want %d with %d exact bytes", key, headers, resp.StatusCode, len(body), wantStatus, len(want))
				}
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d answers with wrong bytes", bad.Load())
	}

	healthy.Store(true)
	for key, data := range objects {
		if resp, body := get(t, srv.URL+"/"+key); resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("%s once S3 behaves: %d, %d bytes", key, resp.StatusCode, len(body))
		}
		waitStored(t, h, key)
		if resp, body := get(t, srv.URL+"/"+key); resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
			t.Fatalf("%s stored: %s, %d bytes", key, resp.Header.Get("X-Cache-Status"), len(body))
		}
	}
	st := h.store.snapshot()
	if st.ReservedBytes != 0 || st.FillsInFlight != 0 {
		t.Fatalf("after the load: %d bytes still reserved, %d fills in flight", st.ReservedBytes, st.FillsInFlight)
	}
}
