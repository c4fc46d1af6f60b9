package s3cache

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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
	srv := storeExpired(t, o, "error")

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
	srv := storeExpired(t, o, "error", "http_503")
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
	srv := storeExpired(t, o, "error", "http_500")

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
	srv := storeExpired(t, o)
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
