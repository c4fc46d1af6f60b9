package s3cache

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// scriptedOrigin answers every fetch with the same response, counting
// calls. It stands in for S3 where a real server cannot be made to fail on
// cue (a body that breaks after N bytes); the integration suite covers the
// same paths against versitygw behind a fault-injecting proxy.
type scriptedOrigin struct {
	calls   atomic.Int32
	respond func(req originRequest) (*originResponse, error)
}

func (o *scriptedOrigin) fetch(_ context.Context, req originRequest) (*originResponse, error) {
	o.calls.Add(1)
	return o.respond(req)
}

// failingBody yields some bytes, then an error, like an S3 connection
// reset mid-transfer.
// Enough bytes are sent that the status line has surely been flushed.
type failingBody struct{ sent int }

func (b *failingBody) Read(p []byte) (int, error) {
	if b.sent >= 64<<10 {
		return 0, errors.New("connection reset by peer")
	}
	n := min(len(p), 64<<10-b.sent)
	b.sent += n
	return n, nil
}
func (b *failingBody) Close() error { return nil }

func newTestHandler(t *testing.T, o origin, root string) *Handler {
	t.Helper()
	h := &Handler{origin: o, logger: zap.NewNop()}
	p, err := h.buildHeaderPolicy()
	if err != nil {
		t.Fatal(err)
	}
	h.policy = p
	if root != "" {
		if err := h.openRoot(root); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Cleanup() })
	}
	return h
}

// serve runs the handler in a real HTTP server, turning returned errors
// into statuses the way Caddy does when no handle_errors is configured.
func serve(t *testing.T, h *Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handlerFor(h))
	t.Cleanup(srv.Close)
	return srv
}

// asCaddyWould gives r what Caddy's server gives every request before any
// handler runs: a replacer, and the vars table where the handler keeps the
// request's cache status.
func asCaddyWould(w http.ResponseWriter, r *http.Request) *http.Request {
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
}

// handlerFor runs h as Caddy would, with a handler error written as its
// status and an empty body.
func handlerFor(h *Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, asCaddyWould(w, r), nil); err != nil {
			var he caddyhttp.HandlerError
			if errors.As(err, &he) {
				w.WriteHeader(he.StatusCode)
				return
			}
			w.WriteHeader(500)
		}
	})
}

func TestMidBodyFailureAbortsInsteadOfShort200(t *testing.T) {
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		return &originResponse{status: 200, header: http.Header{"Content-Length": {"1048576"}}, body: &failingBody{}}, nil
	}}
	srv := serve(t, newTestHandler(t, o, ""))
	resp, err := http.Get(srv.URL + "/a/b.png")
	if err != nil {
		t.Fatalf("the status line should have been sent before the failure: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("read %d bytes without error; a broken transfer must not look complete", len(body))
	}
	if len(body) >= 1<<20 {
		t.Fatalf("got %d bytes", len(body))
	}
}

func TestOnlyGetAndHeadReachS3(t *testing.T) {
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		return &originResponse{status: 200, header: http.Header{}, body: io.NopCloser(strings.NewReader("ok"))}, nil
	}}
	srv := serve(t, newTestHandler(t, o, ""))
	for _, method := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"} {
		req, _ := http.NewRequest(method, srv.URL+"/a/b.png", strings.NewReader("body"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: %d Allow=%q, want 405 with Allow: GET, HEAD", method, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	if n := o.calls.Load(); n != 0 {
		t.Fatalf("%d S3 requests for rejected methods", n)
	}
}

func TestForwardsRangeAndValidators(t *testing.T) {
	var got originRequest
	o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
		got = req
		return &originResponse{status: 304, header: http.Header{"Etag": {`"e"`}}}, nil
	}}
	srv := serve(t, newTestHandler(t, o, ""))
	req, _ := http.NewRequest("GET", srv.URL+"/a/b.png?x=1", nil)
	req.Header.Set("Range", "bytes=0-9")
	req.Header.Set("If-None-Match", `"e"`)
	req.Header.Set("If-Modified-Since", "Wed, 25 Nov 2026 10:00:00 GMT")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 304 || resp.Header.Get("Etag") != `"e"` || resp.Header.Get("Cache-Control") == "" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	if got.key != "a/b.png" || got.rangeSpec != "bytes=0-9" || got.ifNoneMatch != `"e"` || !got.ifModifiedSince.IsZero() {
		t.Fatalf("forwarded %+v; want key without query, the range, the ETag and no If-Modified-Since beside it", got)
	}

	req.Header.Set("If-Range", `"old"`)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got.rangeSpec != "" {
		t.Fatalf("a Range with If-Range was forwarded unconditionally: %+v", got)
	}
}

func TestLocalRootNeverLeadsOutside(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "media"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "media", "a.png"), []byte("local png"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(root, "media", "link.png")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "gone"), filepath.Join(root, "media", "dangling.png")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "out")); err != nil {
		t.Fatal(err)
	}
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		return nil, &originError{status: 404, op: "GetObject", reason: "no such key"}
	}}
	srv := serve(t, newTestHandler(t, o, root))

	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
		wantCache  string
	}{
		{"/media/a.png", 200, "local png", "BYPASS"},
		{"/media/link.png", 404, "", "MISS"},
		{"/out/secret.txt", 404, "", "MISS"},
		{"/media", 404, "", "MISS"}, // a directory falls through to S3
		{"/media/none.png", 404, "", "MISS"},
		{"/media/a.png/x", 404, "", "MISS"}, // through a file: ENOTDIR
		{"/media/dangling.png", 404, "", "MISS"},
	}
	for _, tt := range tests {
		resp, err := http.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus || string(body) != tt.wantBody || resp.Header.Get("X-Cache-Status") != tt.wantCache {
			t.Errorf("%s: %d %q %s, want %d %q %s", tt.path, resp.StatusCode, body, resp.Header.Get("X-Cache-Status"), tt.wantStatus, tt.wantBody, tt.wantCache)
		}
	}
}

// TestCacheStatusReachesHeaderPlaceholderAndCounters: the one cache status
// a request gets is what X-Cache-Status says, what the access logs'
// {http.s3_media_cache.status} says, and what the store's counters count.
func TestCacheStatusReachesHeaderPlaceholderAndCounters(t *testing.T) {
	data := objectBytes(1000)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	for i, tc := range []struct {
		method, path, want string
		hits, bypassed     int64 // the store's counts after it
	}{
		{"GET", "/v/a.mp4", "MISS", 0, 0},
		{"GET", "/v/a.mp4", "HIT", 1, 0},
		{"DELETE", "/v/a.mp4", "BYPASS", 1, 1},
		{"GET", "/v/%2e%2e/a.mp4", "BYPASS", 1, 2},
	} {
		repl := caddy.NewReplacer()
		rec := httptest.NewRecorder()
		req := caddyhttp.PrepareRequest(httptest.NewRequest(tc.method, tc.path, nil), repl, rec, nil)
		_ = h.ServeHTTP(rec, req, nil)
		placeholder, _ := repl.GetString("http.s3_media_cache.status")
		if header := rec.Header().Get("X-Cache-Status"); header != tc.want || placeholder != tc.want {
			t.Fatalf("%s %s: header %q, placeholder %q; want %q", tc.method, tc.path, header, placeholder, tc.want)
		}
		waitStored(t, h, "v/a.mp4")
		st := h.store.snapshot()
		if st.Requests != int64(i+1) || st.Hits != tc.hits || st.Bypassed != tc.bypassed {
			t.Fatalf("after %d requests: %+v", i+1, st)
		}
	}
}

// TestOnlySafeClientHeadersReachS3 checks what a pass-through forwards: one
// well-formed byte range, and validator lists of a sane length; anything
// else is dropped so S3 answers with the whole object instead of a 400.
func TestOnlySafeClientHeadersReachS3(t *testing.T) {
	long := strings.Repeat(`"0123456789abcdef0123456789abcdef", `, 40)
	tests := []struct {
		name, header, value string
		wantRange, wantINM  string
	}{
		{"single range", "Range", "bytes=0-99", "bytes=0-99", ""},
		{"open range", "Range", "bytes=100-", "bytes=100-", ""},
		{"suffix range", "Range", "bytes=-500", "bytes=-500", ""},
		{"several ranges", "Range", "bytes=0-1,5-6", "", ""},
		{"other unit", "Range", "items=0-1", "", ""},
		{"no bounds", "Range", "bytes=-", "", ""},
		{"garbage", "Range", "bytes=a-b", "", ""},
		{"overflowing", "Range", "bytes=0-99999999999999999999", "", ""},
		{"one etag", "If-None-Match", `"abc"`, "", `"abc"`},
		{"huge etag list", "If-None-Match", long, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/a.png", nil)
			r.Header.Set(tt.header, tt.value)
			got := clientOriginRequest(r, "a.png")
			if got.rangeSpec != tt.wantRange || got.ifNoneMatch != tt.wantINM {
				t.Fatalf("range %q, If-None-Match %q; want %q, %q", got.rangeSpec, got.ifNoneMatch, tt.wantRange, tt.wantINM)
			}
		})
	}
}
