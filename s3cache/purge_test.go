package s3cache

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func withPurge(h *Handler) {
	h.purgeHeader = "X-Cache-Buster-Secret"
	h.purgeSecretSum = sha256.Sum256([]byte("s3cret"))
	h.purgeMethod = http.MethodGet
	h.wrongPurges = &logLimiter{}
}

// TestCacheBusterPurgesWithTheRightSecretOnly sends the request Mastodon's
// CacheBusterWorker sends (GET, the media URL, the secret header).
func TestCacheBusterPurgesWithTheRightSecretOnly(t *testing.T) {
	data := objectBytes(20_000)
	o := servingOrigin(data)
	h := newCachedHandler(t, o, t.TempDir(), withPurge)
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4")

	resp, body := get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "wrong")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, data) {
		t.Fatalf("wrong secret: %d %s; want an ordinary HIT", resp.StatusCode, resp.Header.Get("X-Cache-Status"))
	}
	resp, body = get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "s3cret")
	if resp.StatusCode != 204 || len(body) != 0 {
		t.Fatalf("purge: %d, %d bytes; want 204 without a body", resp.StatusCode, len(body))
	}
	if _, ok := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now()); ok {
		t.Fatal("entry still indexed after the purge")
	}
	if n := dirBytes(t, h.storeDir); n != 0 {
		t.Fatalf("%d bytes of entries left on disk", n)
	}
	resp, body = get(t, srv.URL+"/v/a.mp4")
	if resp.Header.Get("X-Cache-Status") != "MISS" || !bytes.Equal(body, data) || o.calls.Load() != 2 {
		t.Fatalf("after purge: %s, %d S3 requests", resp.Header.Get("X-Cache-Status"), o.calls.Load())
	}
}

func TestPurgeDuringFillKeepsItsBytesOutOfTheCache(t *testing.T) {
	data := objectBytes(256 << 10)
	body := &gatedBody{data: data, chunk: 16 << 10, gate: make(chan struct{})}
	first := true
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		if first {
			first = false
			return okResponse(data, body), nil
		}
		return okResponse(data, io.NopCloser(bytes.NewReader(data))), nil
	}}
	h := newCachedHandler(t, o, t.TempDir(), withPurge)
	srv := serve(t, h)
	done := make(chan []byte)
	go func() { _, b := get(t, srv.URL+"/v/a.mp4"); done <- b }()
	body.gate <- struct{}{}
	for !h.store.inFlight(h.mapping.cacheKey("v/a.mp4")) {
		time.Sleep(time.Millisecond)
	}
	if resp, _ := get(t, srv.URL+"/v/a.mp4", "X-Cache-Buster-Secret", "s3cret"); resp.StatusCode != 204 {
		t.Fatalf("purge: %d", resp.StatusCode)
	}
	close(body.gate)
	if got := <-done; !bytes.Equal(got, data) {
		t.Fatal("the reader of the purged fill did not get its bytes")
	}
	time.Sleep(20 * time.Millisecond)
	if _, ok := h.store.lookup(h.mapping.cacheKey("v/a.mp4"), time.Now()); ok {
		t.Fatal("a fill purged while running was stored")
	}
	if _, total := slicesOnDisk(t, h, "v/a.mp4"); total != 0 {
		t.Fatal("the purged fill's entry file is still on disk")
	}
}

// TestPurgeSecretLeavesNoTrace checks that the cache buster's header is
// gone from the request once the handler has run, as Caddy's access log
// would read it, for right and wrong secrets alike; and that a flood of
// wrong guesses is one warning, not one per guess.
func TestPurgeSecretLeavesNoTrace(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := newCachedHandler(t, servingOrigin(objectBytes(1000)), t.TempDir(), withPurge)
	h.logger = zap.New(core)
	for i, secret := range []string{"s3cret", "wrong", "wrong", "s3cret"} {
		for range 25 {
			r := httptest.NewRequest(http.MethodGet, "/v/a.mp4", nil)
			r.Header.Set("X-Cache-Buster-Secret", secret)
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, nil); err != nil {
				t.Fatal(err)
			}
			if v, ok := r.Header["X-Cache-Buster-Secret"]; ok {
				t.Fatalf("request %d: the header is still on the request after the handler: %q", i, v)
			}
			if want := map[bool]int{true: 204, false: 200}[secret == "s3cret"]; w.Code != want {
				t.Fatalf("request %d with secret %q: %d, want %d", i, secret, w.Code, want)
			}
		}
	}
	if n := logs.FilterMessageSnippet("wrong secret").Len(); n != 1 {
		t.Fatalf("%d warnings for 50 wrong guesses in a row, want 1", n)
	}
	for _, entry := range logs.All() {
		for _, f := range entry.Context {
			if strings.Contains(f.String, "s3cret") || strings.Contains(f.String, "wrong") && f.Key != "msg" {
				t.Fatalf("a log field holds a secret: %s=%q", f.Key, f.String)
			}
		}
	}
}

// TestCountersSayWhatTheyName sends media requests of every kind and
// purges that find something and nothing, and checks that the admin API's
// figures agree with the metrics: requests is the sum of requests_total,
// purges counts entries removed, purge_requests the purges asked for.
func TestCountersSayWhatTheyName(t *testing.T) {
	data := objectBytes(20_000)
	o := servingOrigin(data)
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "local.png"), []byte("local"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) {
		withPurge(h)
		m, err := newMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		h.metrics = m
		if err := h.openRoot(root); err != nil {
			t.Fatal(err)
		}
	})
	srv := serve(t, h)
	storeObject(t, h, srv.URL, "v/a.mp4") // MISS
	storeObject(t, h, srv.URL, "v/b.mp4") // MISS
	for _, c := range []struct {
		path, want string
		headers    []string
	}{
		{path: "/v/a.mp4", want: "HIT"},
		{path: "/local.png", want: "BYPASS"},
		// A wrong secret makes an ordinary request.
		{path: "/v/a.mp4", want: "HIT", headers: []string{"X-Cache-Buster-Secret", "wrong"}},
	} {
		resp, _ := get(t, srv.URL+c.path, c.headers...)
		if resp.Header.Get("X-Cache-Status") != c.want {
			t.Fatalf("%s: X-Cache-Status %q, want %s", c.path, resp.Header.Get("X-Cache-Status"), c.want)
		}
	}
	for _, path := range []string{"/v/a.mp4", "/v/never-cached.mp4"} {
		if resp, _ := get(t, srv.URL+path, "X-Cache-Buster-Secret", "s3cret"); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("purge of %s: %d, want 204", path, resp.StatusCode)
		}
	}
	// An admin purge of a prefix that holds one entry (b).
	if n, err := h.store.purgeURLPrefix("/v/"); err != nil || n != 1 {
		t.Fatalf("admin purge of /v/: %d removed, %v; want 1", n, err)
	}
	h.store.purgeRequests.Add(1) // as handlePurge counts it, per store

	st := h.store.snapshot()
	var sum float64
	for _, status := range cacheStatuses {
		sum += counterValue(t, h.metrics.requests.WithLabelValues(status))
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"stats.requests", float64(st.Requests), 5}, // 2 MISS, 2 HIT, 1 BYPASS
		{"sum of requests_total", sum, float64(st.Requests)},
		{"stats.bypassed", float64(st.Bypassed), 1},
		{`requests_total{cache_status="BYPASS"}`, counterValue(t, h.metrics.requests.WithLabelValues(cacheBypass)), float64(st.Bypassed)},
		{"stats.hits", float64(st.Hits), 2},
		{"stats.hit_ratio", st.HitRatio, 0.5},
		{"stats.purges (entries removed)", float64(st.Purges), 2},
		{"stats.purge_requests", float64(st.PurgeRequests), 3},
		{`purge_requests_total{result="removed"}`, counterValue(t, h.metrics.purges.WithLabelValues("removed")), 1},
		{`purge_requests_total{result="not_cached"}`, counterValue(t, h.metrics.purges.WithLabelValues("not_cached")), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// counterValue reads a Prometheus counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
