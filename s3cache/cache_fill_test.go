package s3cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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
