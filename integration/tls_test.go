package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// TestTLSHitsAreByteExactOverHTTP2AndHTTP11 fetches hits as browsers fetch
// a media host, over TLS, where a hit cannot use sendfile and passes
// through the process: from the memory tier (a 50 KB avatar and a 1 MB
// photo) and from
// disk, block by block with each block's checksum (a 1.5 MB original,
// larger than the tier takes), whole and as ranges, over HTTP/2 and HTTP/1.1.
// Every body must be exact, and none of it may come from S3.
func TestTLSHitsAreByteExactOverHTTP2AndHTTP11(t *testing.T) {
	const largeSize = 1_500_000
	dir := t.TempDir()
	small := s3test.Object{Key: testKey(t, "avatar.webp"), Body: s3test.RandomBytes(50_000, 141), ContentType: "image/webp"}
	photo := s3test.Object{Key: testKey(t, "photo.jpg"), Body: s3test.RandomBytes(1_000_000, 143), ContentType: "image/jpeg"}
	large := s3test.Object{Key: testKey(t, "original.jpg"), Body: s3test.RandomBytes(largeSize, 142), ContentType: "image/jpeg"}
	m := seedObjects(t, small, photo, large)
	site := newTLSSite(t, dir)

	h2 := site.client(true)
	for _, obj := range []s3test.Seeded{m[small.Key], m[photo.Key], m[large.Key]} {
		r := site.get(t, h2, urlPath(obj.Key))
		wantFromCache(t, r.response, obj, "MISS")
		waitEntry(t, dir, obj)
	}
	// The first hit reads a small body from its file, checked; the second
	// keeps it in the memory tier (bodies up to 1 MiB, on their second
	// hit), which answers the hits after it.
	for _, obj := range []s3test.Seeded{m[small.Key], m[photo.Key]} {
		for range 2 {
			wantFromCache(t, site.get(t, h2, urlPath(obj.Key)).response, obj, "HIT")
		}
	}

	tests := []struct {
		name   string
		obj    s3test.Seeded
		rng    string // Range header, if any
		start  int    // first byte of the expected body
		end    int    // one past its last byte
		memory bool   // whether the body comes from the memory tier
	}{
		{"memory tier, whole", m[small.Key], "", 0, 50_000, true},
		{"memory tier, a range", m[small.Key], "bytes=1000-40999", 1000, 41_000, true},
		{"memory tier, 1 MB", m[photo.Key], "", 0, 1_000_000, true},
		{"disk, whole", m[large.Key], "", 0, largeSize, false},
		{"disk, a range starting mid-block", m[large.Key], "bytes=70000-599999", 70_000, 600_000, false},
		{"disk, to the end", m[large.Key], "bytes=500000-", 500_000, largeSize, false},
	}
	for _, proto := range []struct {
		name string
		h2   bool
	}{{"HTTP/2.0", true}, {"HTTP/1.1", false}} {
		client := site.client(proto.h2)
		for _, tt := range tests {
			t.Run(proto.name+", "+tt.name, func(t *testing.T) {
				env.proxy.Reset()
				var headers []string
				status := http.StatusOK
				if tt.rng != "" {
					headers, status = []string{"Range: " + tt.rng}, http.StatusPartialContent
				}
				before := memoryHits(t)
				r := site.get(t, client, urlPath(tt.obj.Key), headers...)
				if r.proto != proto.name {
					t.Fatalf("answered over %s, want %s", r.proto, proto.name)
				}
				wantBody(t, r.response, status, tt.obj.Body[tt.start:tt.end])
				wantMediaHeaders(t, r.response, "HIT")
				wantS3Requests(t, 0)
				if got := memoryHits(t) - before; got != boolCount(tt.memory) {
					t.Errorf("memory_hits_total grew by %v, want %v", got, boolCount(tt.memory))
				}
			})
		}
		t.Run(proto.name+", disk, two ranges", func(t *testing.T) {
			env.proxy.Reset()
			obj := m[large.Key]
			r := site.get(t, client, urlPath(obj.Key), "Range: bytes=10-20,900000-")
			if r.status != http.StatusPartialContent {
				t.Fatalf("status %d, want 206", r.status)
			}
			wantParts(t, r.response, obj.Body[10:21], obj.Body[900_000:])
			wantS3Requests(t, 0)
		})
	}
}

// memoryHits is the memory tier's hit count on the metrics page.
func memoryHits(t *testing.T) float64 {
	t.Helper()
	_, page := adminDo(t, http.MethodGet, "/metrics", "")
	return metricValue(page, "caddy_s3_media_cache_memory_hits_total")
}

func boolCount(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// wantParts checks a multipart/byteranges body part by part.
func wantParts(t *testing.T, r response, want ...[]byte) {
	t.Helper()
	_, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", r.header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(strings.NewReader(string(r.body)), params["boundary"])
	for i, w := range want {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		got, err := io.ReadAll(p)
		if err != nil || s3test.SHA256Hex(got) != s3test.SHA256Hex(w) {
			t.Fatalf("part %d: %d bytes (%v), want the object's %d bytes", i, len(got), err, len(w))
		}
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Fatalf("after %d parts: %v, want the end", len(want), err)
	}
}

// tlsSite is a site served over TLS on the suite's https port, with a
// self-signed certificate.
type tlsSite struct {
	addr string
	pool *x509.CertPool
}

// newTLSSite loads a config whose one site speaks TLS (HTTP/1.1 and
// HTTP/2, as Caddy does by default), with its cache in dir.
func newTLSSite(t *testing.T, dir string) *tlsSite {
	t.Helper()
	certDir := t.TempDir()
	certPath, keyPath := filepath.Join(certDir, "cert.pem"), filepath.Join(certDir, "key.pem")
	pool, err := s3test.WriteCertificate(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("\ttls %s %s\n\ts3_media_cache {\n%s\n\t}", certPath, keyPath, indent(cacheBlock(dir)))
	load(t, caddyfileSites(env.ports, sitePort{port: env.ports.https, body: body}))
	return &tlsSite{addr: fmt.Sprintf("127.0.0.1:%d", env.ports.https), pool: pool}
}

// client is an HTTPS client of the site, speaking HTTP/2 if h2 is set
// (as browsers do) and HTTP/1.1 otherwise. Every response it receives is
// scanned for secrets.
func (s *tlsSite) client(h2 bool) *http.Client {
	transport := &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: s.pool, ServerName: "localhost"},
		ForceAttemptHTTP2:  h2,
		DisableCompression: true,
	}
	if !h2 {
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: scanningTransport{transport}, Timeout: 30 * time.Second}
}

// tlsResponse is a response over TLS, with the protocol it came over.
type tlsResponse struct {
	response
	proto string
}

// get GETs path from the site with "Name: value" headers and reads the
// whole body.
func (s *tlsSite) get(t *testing.T, client *http.Client, path string, headers ...string) tlsResponse {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+s.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, _ := cutHeader(h)
		req.Header.Set(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s over TLS: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s over TLS: reading the body: %v", path, err)
	}
	return tlsResponse{
		response: response{status: resp.StatusCode, header: resp.Header, body: body, length: resp.ContentLength},
		proto:    resp.Proto,
	}
}
