package s3cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestLimitedOriginHoldsSlotsUntilBodiesClose checks the bound itself: a
// slot is held from the request until its body is closed (a little longer
// when the body was cut short), a request that
// finds none waits the queue timeout and fails busy, a freed slot goes to
// the next request, and a client leaving the queue is not a busy answer.
func TestLimitedOriginHoldsSlotsUntilBodiesClose(t *testing.T) {
	data := objectBytes(1024)
	var busy int
	lo := newLimitedOrigin(servingOrigin(data), 2, 50*time.Millisecond, func() { busy++ })
	ctx := context.Background()
	req := originRequest{key: "k"}

	first, err := lo.fetch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	second, err := lo.fetch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(lo.slots); got != 2 {
		t.Fatalf("in flight = %d, want 2", got)
	}

	_, err = lo.fetch(ctx, req)
	var oe *originError
	if !errors.As(err, &oe) || oe.status != http.StatusServiceUnavailable || !oe.busy || !oe.timeout {
		t.Fatalf("third fetch with both slots held: err = %v, want a busy 503", err)
	}
	if busy != 1 {
		t.Fatalf("busy count = %d, want 1", busy)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err = lo.fetch(cancelled, req); !errors.As(err, &oe) || oe.busy || oe.status != http.StatusBadGateway {
		t.Fatalf("fetch from a client that left: err = %v, want a 502 that is not busy", err)
	}

	// Reading a body does not free its slot; closing it does, once.
	if got, _ := io.ReadAll(first.body); !bytes.Equal(got, data) {
		t.Fatal("first body differs")
	}
	if got := len(lo.slots); got != 2 {
		t.Fatalf("in flight after reading (not closing) = %d, want 2", got)
	}
	first.body.Close()
	first.body.Close()
	if got := len(lo.slots); got != 1 {
		t.Fatalf("in flight after closing one body twice = %d, want 1", got)
	}
	third, err := lo.fetch(ctx, req)
	if err != nil {
		t.Fatalf("fetch after a slot freed: %v", err)
	}
	// A body cut short keeps its slot a little longer: S3 is still
	// sending until it sees the connection close.
	io.ReadAll(third.body)
	third.body.Close()
	second.body.Close()
	if got := len(lo.slots); got != 1 {
		t.Fatalf("in flight right after closing one body read to its end and one cut short = %d, want 1", got)
	}
	deadline := time.Now().Add(closedEarlyGrace + 2*time.Second)
	for len(lo.slots) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := len(lo.slots); got != 0 {
		t.Fatalf("in flight after the grace = %d, want 0", got)
	}
}

// TestLimitedOriginReleasesOnErrorsAndBodilessAnswers checks that a slot
// is never leaked by a fetch that fails or has no body (HEAD, 304).
func TestLimitedOriginReleasesOnErrorsAndBodilessAnswers(t *testing.T) {
	tests := []struct {
		name    string
		respond func(originRequest) (*originResponse, error)
	}{
		{"error", func(originRequest) (*originResponse, error) {
			return nil, &originError{status: 502, op: "GetObject", reason: "down"}
		}},
		{"bodiless", func(originRequest) (*originResponse, error) {
			return &originResponse{status: http.StatusNotModified, header: http.Header{}}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo := newLimitedOrigin(&scriptedOrigin{respond: tt.respond}, 1, time.Millisecond, nil)
			for range 3 { // with a leaked slot the second call would be busy
				_, err := lo.fetch(context.Background(), originRequest{key: "k"})
				var oe *originError
				if errors.As(err, &oe) && oe.busy {
					t.Fatal("slot leaked: a later fetch found none free")
				}
			}
		})
	}
}

// TestBusyOriginIs503WithRetryAfterOrStale runs the handler with one slot
// held by a fill in flight: a request for another cold key gets a 503 with
// Retry-After, and one for an expired key gets its stale copy.
func TestBusyOriginIs503WithRetryAfterOrStale(t *testing.T) {
	data := objectBytes(256 << 10)
	hold := &gatedBody{data: data, chunk: 1 << 10, gate: make(chan struct{})}
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		if req.key == "held" {
			return okResponse(data, hold), nil
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		h.Valid = map[string]caddy.Duration{"200": caddy.Duration(time.Millisecond)}
		h.UseStale = []string{"error", "timeout"} // not updating: the refresh must wait for a slot
	})
	h.origin = newLimitedOrigin(h.origin, 1, 100*time.Millisecond, nil)
	h.buildFillRules()
	srv := serve(t, h)

	// An entry for "stale", expired by the time it is asked again.
	if resp, body := get(t, srv.URL+"/stale"); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("filling /stale: %d", resp.StatusCode)
	}
	time.Sleep(5 * time.Millisecond)

	// A fill that holds the only slot.
	heldResp := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/held")
		if err != nil {
			heldResp <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		heldResp <- resp.StatusCode
	}()
	hold.gate <- struct{}{} // the fill has started and holds the slot

	resp, body := get(t, srv.URL+"/cold")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || len(body) != 0 {
		t.Fatalf("cold key with no slot: %d, Retry-After %q, %d body bytes; want 503, 1, 0",
			resp.StatusCode, resp.Header.Get("Retry-After"), len(body))
	}
	resp, body = get(t, srv.URL+"/stale")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != cacheStale || !bytes.Equal(body, data) {
		t.Fatalf("expired key with no slot: %d %s; want 200 STALE with the stored bytes",
			resp.StatusCode, resp.Header.Get("X-Cache-Status"))
	}

	close(hold.gate) // release the held fill: it completes
	if status := <-heldResp; status != 200 {
		t.Fatalf("held fill ended with %d", status)
	}
	resp, body = get(t, srv.URL+"/cold")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("cold key once the slot is free: %d", resp.StatusCode)
	}
}
