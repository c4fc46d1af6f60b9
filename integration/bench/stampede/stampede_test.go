package stampede

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestClientsAreReleasedTogetherAndBodiesVerified(t *testing.T) {
	const clients = 20
	good := []byte(strings.Repeat("media", 1000))
	var arrived atomic.Int32
	all := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hold every request until all have arrived: only a stampede
		// whose requests are all in flight at once gets past this.
		if arrived.Add(1) == clients {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			http.Error(w, "not released together", http.StatusTeapot)
			return
		}
		w.Header().Set("X-Cache-Status", "HIT")
		body := good
		if r.URL.Path == "/bad" {
			body = append([]byte("X"), good[1:]...)
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	sum := sha256.Sum256(good)
	want := hex.EncodeToString(sum[:])
	res, err := Run(context.Background(), Options{
		Targets: []Target{
			{URL: srv.URL + "/good", SHA256: want, Size: int64(len(good))},
			{URL: srv.URL + "/bad", SHA256: want, Size: int64(len(good))},
		},
		Clients: clients,
		Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	failed := res.Failed()
	if len(failed) != clients/2 {
		t.Fatalf("%d failures, want %d (the /bad half): %v", len(failed), clients/2, failed)
	}
	for i, c := range res.Clients {
		if c.Status != http.StatusOK || c.CacheStatus != "HIT" {
			t.Errorf("client %d: status %d, cache %q", i, c.Status, c.CacheStatus)
		}
		if c.BodyOK != (c.Target == 0) {
			t.Errorf("client %d (target %d): body ok = %t", i, c.Target, c.BodyOK)
		}
		if c.TTFB <= 0 || c.TTLB < c.TTFB || c.TTLB > res.Wall {
			t.Errorf("client %d: ttfb %s, ttlb %s, wall %s", i, c.TTFB, c.TTLB, res.Wall)
		}
	}
}

func TestTimeoutCutsSlowClients(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer srv.Close()
	start := time.Now()
	res, err := Run(context.Background(), Options{
		Targets: []Target{{URL: srv.URL + "/hang", Size: 1}},
		Clients: 3,
		Timeout: 300 * time.Millisecond,
	})
	if err == nil {
		t.Error("a run past its timeout returned no error")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("run took %s, want it cut at its 300ms timeout", took)
	}
	if got := len(res.Failed()); got != 3 {
		t.Errorf("%d failed clients, want 3", got)
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {100, 10}, {0, 1}} {
		if got := Percentile(d, tc.p); got != tc.want {
			t.Errorf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("Percentile of nothing is not 0")
	}
}

func TestHangUpLeavesAfterTheHeaders(t *testing.T) {
	const size = 50 << 20
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		if r.URL.Path == "/gone" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		buf := make([]byte, 32<<10)
		for sent.Load() < 4*size {
			n, err := w.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	res, err := Run(context.Background(), Options{
		Targets: []Target{{URL: srv.URL + "/big", Size: size}, {URL: srv.URL + "/gone"}},
		Clients: 4,
		Timeout: 10 * time.Second,
		HangUp:  true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Statuses(); got[200] != 2 || got[503] != 2 {
		t.Errorf("statuses %v, want two 200s and two 503s", got)
	}
	if got := len(res.Failed()); got != 2 {
		t.Errorf("%d failed clients, want the 2 that got a 503: %v", got, res.Failed())
	}
	if got := res.WrongBodies(); len(got) != 0 {
		t.Errorf("clients that hung up counted as wrong bodies: %v", got)
	}
	for i, c := range res.Clients {
		if !c.HungUp || c.Bytes > 64<<10 {
			t.Errorf("client %d: hung up %t after %d body bytes", i, c.HungUp, c.Bytes)
		}
	}
	if res.BodyBytes() > 2*64<<10 {
		t.Errorf("%d body bytes received in all", res.BodyBytes())
	}
}

func TestWrongBodiesAreThe200sWithTheWrongBytes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/busy":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case "/short":
			w.Header().Set("Content-Length", "10")
			_, _ = w.Write([]byte("12345"))
		default:
			_, _ = w.Write([]byte("media"))
		}
	}))
	defer srv.Close()
	sum := sha256.Sum256([]byte("media"))
	good := hex.EncodeToString(sum[:])
	res, err := Run(context.Background(), Options{
		Targets: []Target{
			{URL: srv.URL + "/ok", SHA256: good, Size: 5},
			{URL: srv.URL + "/busy", SHA256: good, Size: 5},
			{URL: srv.URL + "/short", SHA256: good, Size: 5},
		},
		Clients: 3,
		Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.WrongBodies(); len(got) != 1 || !strings.Contains(got[0], "target 2") {
		t.Errorf("wrong bodies %v, want only the cut-short 200 of /short", got)
	}
	if got := res.Statuses(); got[200] != 2 || got[503] != 1 {
		t.Errorf("statuses %v", got)
	}
	if got := res.BodyBytes(); got != 5+5+5 {
		t.Errorf("body bytes %d, want 15 (5 + the 503's \"busy\\n\" + 5 of /short)", got)
	}
}
