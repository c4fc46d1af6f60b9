package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	// Registers the s3_media_cache module and directive, as xcaddy does.
	_ "github.com/s3mediacache/caddy-s3-media-cache"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// siteConfig wraps the body of an s3_media_cache block in a whole
// Caddyfile.
func siteConfig(block string) string {
	return caddyfileFor(env.ports, "s3_media_cache {\n"+indent(block)+"\n\t}")
}

// caddyfileFor is a Caddyfile serving site on the given ports, on
// 127.0.0.1 only. grace_period keeps a reload from waiting on a
// connection a fault left hanging.
// Caddy logs at debug level to the suite's log file, which the end of the
// run scans for secrets (see suiteLogOption).
func caddyfileFor(ports caddyPorts, site string) string {
	return caddyfileSites(ports, sitePort{port: ports.http, body: "\t" + site})
}

// sitePort is one site of a Caddyfile: a loopback port and the body of its
// block.
type sitePort struct {
	port int
	body string
}

// caddyfileSites is caddyfileFor with several sites, each on its own port.
// The first site should be on ports.http, where do and get send requests.
func caddyfileSites(ports caddyPorts, sites ...sitePort) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
	admin localhost:%d
	http_port %d
	https_port %d
	default_bind 127.0.0.1
	auto_https off
	persist_config off
	grace_period 1s
%s}
`, ports.admin, ports.http, ports.https, suiteLogOption())
	for _, s := range sites {
		fmt.Fprintf(&b, "\n:%d {\n%s\n}\n", s.port, s.body)
	}
	return b.String()
}

func indent(block string) string {
	lines := strings.Split(strings.TrimSpace(block), "\n")
	for i, l := range lines {
		lines[i] = "\t\t" + strings.TrimSpace(l)
	}
	return strings.Join(lines, "\n")
}

// blockFor is the usual block: the private bucket through the recording
// proxy with the root credentials, plus extra option lines.
func blockFor(extra ...string) string {
	return blockAt(env.proxy.URL(), extra...)
}

// blockAt is blockFor with another endpoint.
func blockAt(endpoint string, extra ...string) string {
	lines := []string{
		"bucket " + privateBucket,
		"endpoint " + endpoint,
		"path_style",
		"access_key " + env.gateway.AccessKey,
		"secret_key " + env.gateway.SecretKey,
	}
	return strings.Join(append(lines, extra...), "\n")
}

// load makes Caddy run the Caddyfile, failing the test now if it does not
// load, and forgets what the proxy saw so far.
//
// When the test ends, the responses its clients received are recorded in
// the ledger's secret scans and the metrics page of its config is
// scanned too (each config load starts new metrics, so the end of the
// run alone would see only the last test's).
func load(t *testing.T, caddyfile string) {
	t.Helper()
	t.Cleanup(func() {
		recordResponseScans(t)
		scrapeMetrics(t)
	})
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: env.ports.admin})
	tester.InitServer(withSuiteLog(caddyfile), "caddyfile")
	if t.Failed() {
		t.Fatalf("Caddyfile did not load:\n%s", caddyfile)
	}
	env.proxy.Reset()
}

// response is what a client saw: status, headers, the body read until
// the end, and the error that stopped reading it (nil on a clean end).
type response struct {
	status  int
	header  http.Header
	body    []byte
	readErr error
	// length is the Content-Length the client parsed, -1 when absent.
	length int64
}

// client talks to Caddy directly: no compression negotiation (headers
// must be exactly what the server sent), no redirects, and a timeout long
// enough for 30 MB on a slow CI machine. Every response it receives is
// scanned for secrets.
func client() *http.Client {
	return &http.Client{
		Transport: scanningTransport{&http.Transport{DisableCompression: true, DisableKeepAlives: true, Proxy: nil}},
		Timeout:   60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// do sends method to path (which may carry a query) with "Name: value"
// headers and reads the whole body.
func do(t *testing.T, method, path string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, env.baseURL()+path, nil)
	if err != nil {
		t.Fatalf("building %s %s: %v", method, path, err)
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			t.Fatalf("header %q is not Name: value", h)
		}
		req.Header.Set(name, strings.TrimSpace(value))
	}
	resp, err := send(t, func() (*http.Response, error) { return client().Do(req) })
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, readErr: readErr, length: resp.ContentLength}
}

// send runs roundTrip, again if needed (three times at most), when the
// connection was dropped before any response while S3 saw nothing.
//
// That is how a Caddy config reload can treat a connection arriving while
// the old server shuts down: the old server's last pending Accept takes
// it and closes it unanswered. Under CPU contention (another test binary
// on the same machine) that happens to the first request after a load.
// Such a request never reached the handler, so sending it again is safe,
// and a handler that drops connections itself still fails every try.
func send(t *testing.T, roundTrip func() (*http.Response, error)) (*http.Response, error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		before := env.proxy.Count()
		resp, err := roundTrip()
		if err == nil || attempt == 3 || !droppedUnanswered(err) || env.proxy.Count() != before {
			return resp, err
		}
		t.Logf("connection dropped unanswered, as a config reload may do (%v); sending again", err)
	}
}

func droppedUnanswered(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// get is do(GET) that also fails the test on a body that did not end
// cleanly.
func get(t *testing.T, path string, headers ...string) response {
	t.Helper()
	r := do(t, http.MethodGet, path, headers...)
	if r.readErr != nil {
		t.Fatalf("GET %s: status %d, headers %v: reading body: %v", path, r.status, r.header, r.readErr)
	}
	return r
}

// rawRequest writes a request line byte for byte, bypassing every client
// library's URL checks, so malformed targets reach the server as sent.
func rawRequest(t *testing.T, method, target string) response {
	t.Helper()
	return rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", method, target, env.caddyAddr()))
}

// rawExchange writes request, a whole HTTP/1.1 request as bytes on the
// wire, on a new connection and reads the one response. The request
// should end the connection (Connection: close) or be one the server
// refuses. The response is scanned for secrets like any other.
func rawExchange(t *testing.T, request string) response {
	t.Helper()
	method, _, _ := strings.Cut(request, " ")
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	resp, err := send(t, func() (*http.Response, error) {
		if conn != nil {
			conn.Close()
		}
		var err error
		if conn, err = net.DialTimeout("tcp", env.caddyAddr(), 5*time.Second); err != nil {
			return nil, err
		}
		_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
		// Written in the background: a server may answer (and close)
		// before it has read a large request, as it should for one it
		// refuses.
		go func(c net.Conn) { _, _ = io.WriteString(c, request) }(conn)
		return http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	})
	if err != nil {
		t.Fatalf("%q: reading response: %v", trimForMessage(request), err)
	}
	body, readErr := io.ReadAll(resp.Body)
	scanResponse(scanResponses, "raw "+trimForMessage(firstLine(request)), resp.StatusCode, resp.Header, body[:min(len(body), scanBodyBytes)])
	return response{status: resp.StatusCode, header: resp.Header, body: body, readErr: readErr, length: resp.ContentLength}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// urlPath is the request path for an object key, escaped the way a
// browser would send it.
func urlPath(key string) string {
	return (&url.URL{Path: "/" + key}).EscapedPath()
}

// s3Path is the path the proxy records for an object: path-style, so the
// bucket comes first.
func s3Path(bucket, s3Key string) string {
	return "/" + bucket + "/" + s3Key
}

// wantBody checks status, exact bytes and the length header against a
// seeded object.
func wantBody(t *testing.T, r response, status int, want []byte) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (headers %v)", r.status, status, r.header)
	}
	if got, exp := s3test.SHA256Hex(r.body), s3test.SHA256Hex(want); got != exp {
		t.Fatalf("body: %d bytes sha256 %s, want %d bytes sha256 %s", len(r.body), got, len(want), exp)
	}
	if r.length != int64(len(want)) {
		t.Errorf("Content-Length = %d, want %d", r.length, len(want))
	}
}

// wantS3Requests checks how many requests reached S3 since the last reset.
func wantS3Requests(t *testing.T, want int) {
	t.Helper()
	if got := env.proxy.Count(); got != want {
		t.Errorf("S3 requests = %d, want %d: %v", got, want, env.proxy.Counts())
	}
}

// mediaHeaders are the headers the policy adds to 2xx and 3xx responses.
var mediaHeaders = []string{"Cache-Control", "Expires", "Access-Control-Allow-Origin", "Content-Security-Policy"}

// wantMediaHeaders checks the default policy on a 2xx/3xx response.
func wantMediaHeaders(t *testing.T, r response, cacheStatus string) {
	t.Helper()
	want := map[string]string{
		"Cache-Control":               "public, max-age=31536000",
		"Access-Control-Allow-Origin": "*",
		"X-Content-Type-Options":      "nosniff",
		"Content-Security-Policy":     "default-src 'none'; form-action 'none'",
		"X-Cache-Status":              cacheStatus,
	}
	for name, value := range want {
		if got := r.header.Values(name); len(got) != 1 || got[0] != value {
			t.Errorf("%s = %q, want exactly %q", name, got, value)
		}
	}
	wantExpiresIn(t, r, 365*24*time.Hour)
	wantNoUpstreamLeak(t, r)
}

// wantExpiresIn checks that Expires is now + d, give or take a minute.
func wantExpiresIn(t *testing.T, r response, d time.Duration) {
	t.Helper()
	expires, err := http.ParseTime(r.header.Get("Expires"))
	if err != nil {
		t.Errorf("Expires = %q: %v", r.header.Get("Expires"), err)
		return
	}
	if off := expires.Sub(time.Now().Add(d)); off < -time.Minute || off > time.Minute {
		t.Errorf("Expires = %s, want about %s", expires, time.Now().Add(d).UTC().Format(http.TimeFormat))
	}
}

// wantErrorHeaders checks a 4xx/5xx: nosniff and nothing that would let
// a browser or CDN keep the error, nor anything from S3.
func wantErrorHeaders(t *testing.T, r response) {
	t.Helper()
	if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
	}
	wantAbsent(t, r, mediaHeaders...)
	wantNoUpstreamLeak(t, r)
	if ct := r.header.Get("Content-Type"); containsFold(ct, "xml") {
		t.Errorf("error response has S3's Content-Type %q", ct)
	}
	// A Content-Length that the body does not match leaves the client
	// with a truncated response and a dead connection.
	if r.readErr != nil {
		t.Errorf("error response body ended badly (Content-Length %d, %d bytes read): %v", r.length, len(r.body), r.readErr)
	}
}

// wantAbsent fails for each named header the response carries.
func wantAbsent(t *testing.T, r response, names ...string) {
	t.Helper()
	for _, name := range names {
		if v, ok := r.header[http.CanonicalHeaderKey(name)]; ok {
			t.Errorf("header %s = %q, want it absent", name, v)
		}
	}
}

// wantNoUpstreamLeak fails on any S3-only header, cookie, or mention of
// the bucket, the endpoint or a credential, in headers or body.
func wantNoUpstreamLeak(t *testing.T, r response) {
	t.Helper()
	for name, values := range r.header {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "x-amz") || lower == "set-cookie" ||
			(strings.HasPrefix(lower, "access-control-") && lower != "access-control-allow-origin") {
			t.Errorf("upstream header leaked: %s: %q", name, values)
		}
		for _, v := range values {
			wantNoSecretIn(t, "header "+name, v)
		}
	}
	if len(r.body) < 64<<10 {
		wantNoSecretIn(t, "body", string(r.body))
	}
}

func wantNoSecretIn(t *testing.T, where, s string) {
	t.Helper()
	for _, secret := range secretMarkers() {
		if strings.Contains(s, secret) {
			t.Errorf("%s contains %q: %q", where, secret, s)
		}
	}
}

// wantEmptyError checks an error response: status, empty body, clean
// headers.
func wantEmptyError(t *testing.T, r response, status int) {
	t.Helper()
	if r.status != status {
		t.Errorf("status = %d, want %d", r.status, status)
	}
	if len(r.body) != 0 {
		t.Errorf("error body = %q, want empty", r.body)
	}
	wantErrorHeaders(t, r)
}

// allObjectKeys lists the seeded keys in a stable order.
func allObjectKeys() []string {
	keys := make([]string, 0, len(env.objects))
	for k := range env.objects {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// wantOutcome checks the response to a conditional or range request: the
// exact body and the media headers on a 2xx, an empty 304 with the media
// headers, or an empty error with the error headers.
func wantOutcome(t *testing.T, r response, status int, body []byte, cacheStatus string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d", r.status, status)
	}
	switch {
	case status < 300:
		wantBody(t, r, status, body)
		wantMediaHeaders(t, r, cacheStatus)
	case status == http.StatusNotModified:
		if len(r.body) != 0 || r.readErr != nil {
			t.Errorf("304 with %d body bytes (read error %v), want none", len(r.body), r.readErr)
		}
		wantMediaHeaders(t, r, cacheStatus)
	default:
		wantEmptyError(t, r, status)
	}
}
