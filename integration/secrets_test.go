package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// secretsArea is the ledger area of the secret scans.
const secretsArea = "secrets"

// secretMarkers are strings that must never appear in what a client, a
// log reader or a metrics scraper sees: the bucket names, the S3 endpoint
// (gateway and proxy), both keys, and the marks of S3's XML errors.
// extra adds test-specific secrets such as a purge secret.
func secretMarkers(extra ...string) []string {
	return append([]string{
		privateBucket, publicBucket, env.gateway.Addr, env.proxy.URL(),
		strings.TrimPrefix(env.proxy.URL(), "http://"),
		env.gateway.AccessKey, env.gateway.SecretKey, "<Error>", "<?xml", "S3TESTREQUESTID",
	}, extra...)
}

// suiteMarkers are the markers of the whole-suite scans: every secret
// any test hands the handler, the cache buster's included.
func suiteMarkers() []string { return secretMarkers(purgeSecret) }

// findSecrets returns the markers that occur in data.
func findSecrets(data []byte, markers []string) []string {
	var found []string
	for _, m := range markers {
		if m != "" && bytes.Contains(data, []byte(m)) {
			found = append(found, m)
		}
	}
	return found
}

// scanForSecrets records one scan of data (a response, a log, a metrics
// page) under the "secrets" area, as a bad input that was "rejected" when
// no marker is found in it, and fails t naming every marker found.
func scanForSecrets(t testing.TB, what string, data []byte, extra ...string) {
	t.Helper()
	found := findSecrets(data, secretMarkers(extra...))
	recordInput(t, secretsArea, what, len(found) == 0, "contains "+strings.Join(found, ", "))
}

// The cases of the suite-wide scans in the ledger.
const (
	scanResponses = "every client response"
	scanAdmin     = "every admin API response"
	scanMetrics   = "metrics page after every test"
	scanLog       = "every Caddy log line (debug)"
)

// scanBodyBytes bounds how much of each response body is scanned. An S3
// error body, a listing or an echoed credential would be all of a small
// body or the start of a large one; the rest of a 30 MB video is media.
const scanBodyBytes = 64 << 10

// scannedResponse is one response seen by the suite's clients, scanned as
// it ended and waiting for a test to record it.
type scannedResponse struct {
	what  string
	found []string
}

// responseScans collects the scans of the responses the suite's clients
// receive. The clients (client(), rawRequest, adminDo) scan every response
// when it ends, from whatever goroutine read it; the test that loaded the
// config records them in the ledger when it ends (load registers that),
// so a leak fails the test that caused it.
var responseScans struct {
	mu      sync.Mutex
	pending map[string][]scannedResponse // by ledger case
}

// scanResponse scans a response's status line, headers and the start of
// its body, and queues the result under ledgerCase.
func scanResponse(ledgerCase, what string, status int, header http.Header, bodyStart []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d %s\n", status, http.StatusText(status))
	_ = header.Write(&b)
	b.Write(bodyStart)
	found := findSecrets(b.Bytes(), suiteMarkers())
	responseScans.mu.Lock()
	defer responseScans.mu.Unlock()
	if responseScans.pending == nil {
		responseScans.pending = map[string][]scannedResponse{}
	}
	responseScans.pending[ledgerCase] = append(responseScans.pending[ledgerCase], scannedResponse{what, found})
}

// recordResponseScans moves the queued scans into the ledger, failing t
// for each response that carried a marker.
func recordResponseScans(t testing.TB) {
	t.Helper()
	responseScans.mu.Lock()
	pending := responseScans.pending
	responseScans.pending = nil
	responseScans.mu.Unlock()
	for ledgerCase, scans := range pending {
		for _, s := range scans {
			recordInput(t, secretsArea, ledgerCase, len(s.found) == 0, s.what+" contains "+strings.Join(s.found, ", "))
		}
	}
}

// scanningTransport scans every response that passes through it once its
// body ends, so the suite's shared client checks all the traffic of all
// the tests without each test asking.
type scanningTransport struct{ base http.RoundTripper }

func (s scanningTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	what := req.Method + " " + trimForMessage(req.URL.RequestURI())
	resp.Body = &scannedBody{ReadCloser: resp.Body, what: what, status: resp.StatusCode, header: resp.Header}
	return resp, nil
}

// scannedBody keeps the first scanBodyBytes of a body and scans the
// response when the body ends or is closed, whichever comes first.
type scannedBody struct {
	io.ReadCloser
	what   string
	status int
	header http.Header
	start  []byte
	once   sync.Once
}

func (b *scannedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if room := scanBodyBytes - len(b.start); room > 0 && n > 0 {
		b.start = append(b.start, p[:min(n, room)]...)
	}
	if err != nil {
		b.scan()
	}
	return n, err
}

func (b *scannedBody) Close() error {
	b.scan()
	return b.ReadCloser.Close()
}

func (b *scannedBody) scan() {
	b.once.Do(func() {
		scanResponse(scanResponses, b.what, b.status, b.header, b.start)
		b.start = nil
	})
}

func trimForMessage(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// suiteLogPath is the file the in-process Caddy logs to, at debug level,
// for the whole run: caddyfileFor (and load, for Caddyfiles built
// elsewhere) point the default logger at it, and the end of the run scans
// every line. Empty until TestMain sets it.
var suiteLogPath string

// suiteLogOption is the global option that sends Caddy's logs there.
func suiteLogOption() string {
	if suiteLogPath == "" {
		return ""
	}
	return fmt.Sprintf("\tlog {\n\t\toutput file %s {\n\t\t\troll_disabled\n\t\t}\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", suiteLogPath)
}

// withSuiteLog adds suiteLogOption to a Caddyfile whose global options
// block lacks it, so every config the suite loads logs to the same file.
func withSuiteLog(caddyfile string) string {
	if suiteLogPath == "" || strings.Contains(caddyfile, suiteLogPath) {
		return caddyfile
	}
	if rest, ok := strings.CutPrefix(caddyfile, "{\n"); ok {
		return "{\n" + suiteLogOption() + rest
	}
	return "{\n" + suiteLogOption() + "}\n\n" + caddyfile
}

// suiteLogSize is the log's current length, to read what one test adds.
func suiteLogSize(t testing.TB) int64 {
	t.Helper()
	info, err := os.Stat(suiteLogPath)
	if err != nil {
		t.Fatalf("the suite's Caddy log: %v", err)
	}
	return info.Size()
}

// suiteLogSince returns the log lines written after offset.
func suiteLogSince(t testing.TB, offset int64) [][]byte {
	t.Helper()
	f, err := os.Open(suiteLogPath)
	if err != nil {
		t.Fatalf("the suite's Caddy log: %v", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	lines, err := readLines(f)
	if err != nil {
		t.Fatalf("reading the suite's Caddy log: %v", err)
	}
	return lines
}

func readLines(r io.Reader) ([][]byte, error) {
	var lines [][]byte
	sc := bufio.NewScanner(r)
	// A debug line carries the request's headers, which the abuse tests
	// make as large as Caddy accepts.
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		lines = append(lines, bytes.Clone(sc.Bytes()))
	}
	return lines, sc.Err()
}

// scrapeMetrics scans the admin endpoint's /metrics page as it is now:
// the series of the config just loaded, since every load starts a new
// registry.
func scrapeMetrics(t testing.TB) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(adminURL("/metrics"))
	if err != nil {
		t.Errorf("scraping /metrics: %v", err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("scraping /metrics: status %d, %v", resp.StatusCode, err)
		return
	}
	found := findSecrets(body, suiteMarkers())
	recordInput(t, secretsArea, scanMetrics, len(found) == 0, "/metrics contains "+strings.Join(found, ", "))
}

// endOfRun stands in for a test at the end of the run, where none is
// left to fail: recordInput's failures are printed (the first few) and
// counted, and TestMain turns them into a failed run.
type endOfRun struct {
	testing.TB // nil: only the methods below are called
	failures   int
}

func (e *endOfRun) Helper() {}

func (e *endOfRun) Errorf(format string, args ...any) {
	if e.failures++; e.failures <= 10 {
		fmt.Fprintf(os.Stderr, "FAIL (end of run): "+format+"\n", args...)
	}
}

func (e *endOfRun) Error(args ...any) { e.Errorf("%s", fmt.Sprint(args...)) }

// scanSuiteOutputs runs the end-of-run scans: the responses no test
// recorded yet, the metrics page, and every line of Caddy's log. It
// returns false if any carried a marker.
func scanSuiteOutputs() bool {
	tb := &endOfRun{}
	recordResponseScans(tb)
	scrapeMetrics(tb)
	if suiteLogPath != "" {
		f, err := os.Open(suiteLogPath)
		if err != nil {
			tb.Errorf("opening the suite's Caddy log: %v", err)
			return false
		}
		lines, err := readLines(f)
		f.Close()
		if err != nil {
			tb.Errorf("reading the suite's Caddy log: %v", err)
		}
		if len(lines) == 0 {
			tb.Errorf("the suite's Caddy log %s is empty: the log option is not in effect", suiteLogPath)
		}
		markers := suiteMarkers()
		for i, line := range lines {
			found := findSecrets(line, markers)
			recordInput(tb, secretsArea, scanLog, len(found) == 0,
				fmt.Sprintf("line %d contains %s: %s", i+1, strings.Join(found, ", "), trimForMessage(string(line))))
		}
	}
	if tb.failures > 10 {
		fmt.Fprintf(os.Stderr, "FAIL (end of run): %d more secret findings\n", tb.failures-10)
	}
	return tb.failures == 0
}

// newSuiteLog makes the directory of the suite's Caddy log. The caller
// removes it, unless a scan found something, so the log can be read.
func newSuiteLog() (dir string, err error) {
	dir, err = os.MkdirTemp("", "s3mc-integration-log-")
	if err != nil {
		return "", fmt.Errorf("creating the directory of Caddy's log: %w", err)
	}
	suiteLogPath = filepath.Join(dir, "caddy.log")
	return dir, nil
}

// logLinesWith returns the lines that contain any of markers.
func logLinesWith(lines [][]byte, markers []string) []string {
	var out []string
	for _, l := range lines {
		if found := findSecrets(l, markers); len(found) > 0 {
			out = append(out, strings.Join(found, ", ")+": "+trimForMessage(string(l)))
		}
	}
	sort.Strings(out)
	return out
}

// The errors a misconfigured or failing S3 causes are where a careless
// handler would log S3's XML, the endpoint or a key. Each is provoked
// here and the log lines it produced (debug level included) and the
// response are scanned.
func TestS3FailuresLeaveNoSecretInLogsOrResponses(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	// A secret key that S3 refuses; it must not be logged either.
	wrongSecret := "wrong-" + env.gateway.SecretKey[6:]
	cases := []struct {
		name  string
		block string
		fault s3test.Fault
	}{
		{"S3 500 with XML", blockFor(), s3test.Fault{Status: http.StatusInternalServerError}},
		{"S3 403 SignatureDoesNotMatch", blockFor(), s3test.Fault{Status: http.StatusForbidden, Code: "SignatureDoesNotMatch"}},
		{"S3 301 PermanentRedirect", blockFor(), s3test.Fault{Status: http.StatusMovedPermanently, Code: "PermanentRedirect"}},
		{"S3 503 SlowDown", blockFor(), s3test.Fault{Status: http.StatusServiceUnavailable, Code: "SlowDown"}},
		{"body cut", blockFor(), s3test.Fault{CutAfter: 10}},
		{"first byte timeout", blockFor("first_byte_timeout 200ms"), s3test.Fault{Delay: 2 * time.Second}},
		{"wrong secret key", strings.Replace(blockFor(), env.gateway.SecretKey, wrongSecret, 1), s3test.Fault{}},
		{"nothing listening", blockAt("http://127.0.0.1:1"), s3test.Fault{}},
		{"cache, S3 500", cacheBlock(t.TempDir()), s3test.Fault{Status: http.StatusInternalServerError}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			load(t, siteConfig(c.block))
			from := suiteLogSize(t)
			env.proxy.SetFault(c.fault)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				// stream, not do: a cut body aborts the response, which
				// is the right answer here, not a test failure.
				s := stream(context.Background(), method, env.baseURL()+urlPath(obj.Key), nil)
				if s.err == nil && s.status < 400 && s.readErr == nil && c.fault.CutAfter == 0 {
					t.Errorf("%s: status %d, want an error", method, s.status)
				}
			}
			env.proxy.ClearFault()
			lines := suiteLogSince(t, from)
			if len(lines) == 0 {
				t.Fatal("no log line for a failed request: the debug log is not in effect")
			}
			// The key is the client's own request path: it may be logged.
			leaks := logLinesWith(lines, append(suiteMarkers(), wrongSecret))
			for _, l := range leaks {
				t.Errorf("log line leaks %s", l)
			}
			recordInput(t, secretsArea, "S3 failures, their log lines", len(leaks) == 0, fmt.Sprintf("%d lines leak", len(leaks)))
		})
	}
}

// Mastodon's cache buster sends the secret in a request header. Caddy
// logs a request's headers (at debug level) when a handler returns an
// error, so a purge request that fails for any reason must not become an
// error carrying the secret into the log.
func TestPurgeSecretNeverReachesTheLog(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	loadCacheBuster(t, obj)
	cases := []struct {
		name, method, target string
	}{
		{"purge", http.MethodGet, urlPath(obj.Key)},
		{"purge of a missing object", http.MethodGet, "/media_attachments/none.png"},
		{"purge with another method", http.MethodPost, urlPath(obj.Key)},
		{"purge of a malformed path", http.MethodGet, "/media_attachments/%2e%2e/x.png"},
		{"purge of a directory", http.MethodGet, "/media_attachments/"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			from := suiteLogSize(t)
			r := rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nCache-Buster-Secret: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
				c.method, c.target, env.caddyAddr(), purgeSecret))
			if r.status >= 500 {
				t.Errorf("status %d", r.status)
			}
			leaks := logLinesWith(suiteLogSince(t, from), []string{purgeSecret})
			for _, l := range leaks {
				t.Errorf("log line carries the purge secret: %s", l)
			}
			recordInput(t, secretsArea, "purge requests, their log lines", len(leaks) == 0,
				fmt.Sprintf("%s %s (status %d): %d lines carry the purge secret", c.method, c.target, r.status, len(leaks)))
		})
	}
}
