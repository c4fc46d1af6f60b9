package integration

import (
	"bytes"
	"context"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// abuseArea is the ledger area of issue 7's abuse item: the corpora of
// this file, and those of path_test, local_test and method_test.
const abuseArea = "abuse"

// recordAbuse records the input a subtest sent, as rejected cleanly when
// every check of the subtest passed. Defer it first thing in the subtest,
// so an input whose checks stop the subtest early is still counted.
func recordAbuse(t *testing.T, ledgerCase, input string) {
	t.Helper()
	recordInput(t, abuseArea, ledgerCase, !t.Failed(), trimForMessage(input))
}

// wantRefused checks a refusal: one of statuses, no media headers and
// nothing from S3. A refusal by the handler (it sets X-Cache-Status on
// every answer) has an empty body and nosniff, as every error does; one
// by Go's HTTP server, for a request it cannot parse, has at most its
// one line of plain text ("400 Bad Request: missing required Host
// header").
func wantRefused(t *testing.T, r response, statuses ...int) {
	t.Helper()
	if !containsInt(statuses, r.status) {
		t.Errorf("status = %d, want one of %v (headers %v, body %q)", r.status, statuses, r.header, trimForMessage(string(r.body)))
	}
	if r.header.Get("X-Cache-Status") != "" {
		wantErrorHeaders(t, r)
		if len(r.body) != 0 {
			t.Errorf("refusal body = %q, want none", trimForMessage(string(r.body)))
		}
		return
	}
	wantAbsent(t, r, mediaHeaders...)
	wantNoUpstreamLeak(t, r)
	ct, _, _ := mime.ParseMediaType(r.header.Get("Content-Type"))
	if len(r.body) > 0 && (len(r.body) > 128 || ct != "text/plain" || bytes.ContainsAny(r.body, "<>{}\n")) {
		t.Errorf("refusal body = %q (%s), want none or Go's one line of plain text", trimForMessage(string(r.body)), ct)
	}
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// mismatches counts the bytes of got that differ from want, a length
// difference counting as that many mismatches.
func mismatches(got, want []byte) int {
	n := max(len(got), len(want)) - min(len(got), len(want))
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			n++
		}
	}
	return n
}

// abuseObjects seeds one random object of size bytes per name, under this
// test's keys.
func abuseObjects(t *testing.T, size int, seed uint64, names ...string) map[string]s3test.Seeded {
	t.Helper()
	objs := make([]s3test.Object, len(names))
	for i, name := range names {
		objs[i] = s3test.Object{Key: testKey(t, slug(name)+".webp"), Body: s3test.RandomBytes(size, seed+uint64(i)), ContentType: "image/webp"}
	}
	m := seedObjects(t, objs...)
	out := make(map[string]s3test.Seeded, len(names))
	for i, name := range names {
		out[name] = m[objs[i].Key]
	}
	return out
}

var nonSlug = regexp.MustCompile(`[^a-zA-Z0-9]+`)

func slug(s string) string {
	return strings.Trim(nonSlug.ReplaceAllString(s, "-"), "-")
}

// rawGet is a GET of target on the wire with extra header lines (each
// ending in \r\n), closing the connection after the answer.
func rawGet(target, extra string) string {
	return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n", target, env.caddyAddr(), extra)
}

// Requests that are broken, huge or odd at the HTTP level. Each is
// refused with a clean 4xx (or 501/505 for what HTTP/1.1 lets a server
// not implement), or, when it is merely odd, served the exact object.
// The object is cached first, so none of them has any business at S3.
func TestAbuseMalformedAndHugeHeaders(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, obj)
	path := urlPath(obj.Key)
	host := "Host: " + env.caddyAddr() + "\r\n"
	many := func(n, size int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "X-Filler-%d: %s\r\n", i, strings.Repeat("v", size))
		}
		return b.String()
	}
	const served = 0 // in statuses: the exact object is an acceptable answer
	cases := []struct {
		name     string
		request  string
		statuses []int
	}{
		// Caddy's default max_header_size is 16 KiB (Go allows 4 KiB
		// of slack on top): larger header blocks are a 431.
		{"header block of 1 MiB", rawGet(path, "X-Big: "+strings.Repeat("b", 1<<20)+"\r\n"), []int{431}},
		{"header block of 64 KiB", rawGet(path, "X-Big: "+strings.Repeat("b", 64<<10)+"\r\n"), []int{431}},
		{"2000 headers of 20 bytes", rawGet(path, many(2000, 20)), []int{431}},
		{"a 100 KB If-None-Match", rawGet(path, "If-None-Match: "+strings.Repeat(`"x",`, 25<<10)+`"y"`+"\r\n"), []int{431}},
		{"a 60 KB header name", rawGet(path, strings.Repeat("N", 60<<10)+": v\r\n"), []int{431}},
		{"request target of 1 MiB", rawGet("/"+strings.Repeat("a", 1<<20), ""), []int{414, 431}},
		{"request target of 64 KiB", rawGet("/"+strings.Repeat("a/", 32<<10)+"x.png", ""), []int{414, 431}},
		{"500 small headers", rawGet(path, many(500, 4)), []int{served}},
		{"a 12 KB cookie", rawGet(path, "Cookie: a="+strings.Repeat("c", 12<<10)+"\r\n"), []int{served}},
		{"a 12 KB If-None-Match", rawGet(path, "If-None-Match: "+strings.Repeat(`"x",`, 3<<10)+`"y"`+"\r\n"), []int{served}},
		{"header without a colon", rawGet(path, "Range bytes=0-1\r\n"), []int{400}},
		{"space before the colon", rawGet(path, "Range : bytes=0-1\r\n"), []int{400}},
		{"folded header line", rawGet(path, "X-Folded: a\r\n b\r\n"), []int{400, served}},
		{"NUL in a header value", rawGet(path, "Range: bytes=0-1\x00\r\n"), []int{400}},
		{"bare CR in a header value", rawGet(path, "X-A: a\rb\r\n"), []int{400}},
		{"bare LF line ending", "GET " + path + " HTTP/1.1\n" + host + "Connection: close\n\n", []int{400, served}},
		{"space in a header name", rawGet(path, "X A: b\r\n"), []int{400}},
		{"control byte in a header name", rawGet(path, "X\x01A: b\r\n"), []int{400}},
		{"non-ASCII header name", rawGet(path, "X-Ä: b\r\n"), []int{400}},
		{"negative Content-Length", rawGet(path, "Content-Length: -1\r\n"), []int{400}},
		{"Content-Length not a number", rawGet(path, "Content-Length: ten\r\n"), []int{400}},
		{"two different Content-Lengths", rawGet(path, "Content-Length: 0\r\nContent-Length: 5\r\n"), []int{400}},
		{"Content-Length overflowing int64", rawGet(path, "Content-Length: 99999999999999999999\r\n"), []int{400}},
		{"Content-Length and chunked", rawGet(path, "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n", []int{400, served}},
		{"unknown transfer coding", rawGet(path, "Transfer-Encoding: gzip, chunked\r\n"), []int{400, 501}},
		{"Transfer-Encoding on HTTP/1.0", "GET " + path + " HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400, served}},
		{"no Host", "GET " + path + " HTTP/1.1\r\nConnection: close\r\n\r\n", []int{400}},
		{"two Hosts", "GET " + path + " HTTP/1.1\r\n" + host + host + "Connection: close\r\n\r\n", []int{400}},
		{"Host with a space", "GET " + path + " HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", []int{400}},
		{"HTTP/0.9 request line", "GET " + path + "\r\n\r\n", []int{400, 505}},
		{"HTTP/2.0 over HTTP/1", "GET " + path + " HTTP/2.0\r\n" + host + "\r\n", []int{400, 505}},
		{"HTTP/9.9", "GET " + path + " HTTP/9.9\r\n" + host + "\r\n", []int{400, 505}},
		{"an extra word on the request line", "GET " + path + " HTTP/1.1 please\r\n" + host + "\r\n", []int{400, 505}},
		{"method over 32 bytes", strings.Repeat("G", 33) + " " + path + " HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", []int{400, 405, 501}},
		{"Expect other than 100-continue", rawGet(path, "Expect: 200-ok\r\n"), []int{417}},
		{"absolute-form target", "GET http://" + env.caddyAddr() + path + " HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", []int{served}},
		{"Upgrade to h2c", rawGet(path, "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"), []int{served}},
		{"Upgrade to websocket", rawGet(path, "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), []int{served}},
		{"Max-Forwards and Via loops", rawGet(path, "Max-Forwards: 0\r\nVia: 1.1 a, 1.1 b, 1.1 c\r\n"), []int{served}},
		{"X-Forwarded and Forwarded headers", rawGet(path, "X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4;host=evil.example\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n"), []int{served}},
		{"an S3 Authorization header", rawGet(path, "Authorization: AWS4-HMAC-SHA256 Credential=AKIAEVIL/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nX-Amz-Date: 20260101T000000Z\r\nX-Amz-Content-Sha256: UNSIGNED-PAYLOAD\r\n"), []int{served}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer recordAbuse(t, "malformed and huge headers", c.name)
			env.proxy.Reset()
			r := rawExchange(t, c.request)
			if containsInt(c.statuses, served) && r.status == http.StatusOK {
				wantBody(t, r, http.StatusOK, obj.Body)
				wantCacheStatus(t, r, "HIT")
				recordBytes(t, abuseArea, "malformed and huge headers", int64(len(r.body)), mismatches(r.body, obj.Body))
			} else {
				wantRefused(t, r, c.statuses...)
			}
			wantS3Requests(t, 0)
		})
	}
}

// rangeCase is a Range header and the answers it may get: which statuses
// are acceptable, and for a single 206 which range ("first-last") it must
// be. Ignoring a Range (a 200 with the whole object) is always allowed
// for a malformed or abusive one.
type rangeCase struct {
	name, header string
	statuses     []int
	single       string
}

// rangeCases are valid, malformed, huge and abusive Range values for an
// object of size bytes.
func rangeCases(size int) []rangeCase {
	last := strconv.Itoa(size - 1)
	list := func(n int, part func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = part(i)
		}
		return "bytes=" + strings.Join(parts, ",")
	}
	ok, full := http.StatusPartialContent, http.StatusOK
	unsat := http.StatusRequestedRangeNotSatisfiable
	return []rangeCase{
		{"first byte", "bytes=0-0", []int{ok}, "0-0"},
		{"last byte", "bytes=-1", []int{ok}, last + "-" + last},
		{"open-ended", "bytes=100-", []int{ok}, "100-" + last},
		{"past the end is clamped", "bytes=100-99999999", []int{ok}, "100-" + last},
		{"suffix longer than the object", "bytes=-99999999", []int{ok, full}, "0-" + last},
		{"empty suffix", "bytes=-0", []int{unsat, full}, ""},
		{"starts at the size", "bytes=" + strconv.Itoa(size) + "-", []int{unsat}, ""},
		{"starts far past the end", "bytes=999999999999999999-", []int{unsat, full}, ""},
		{"int64 max", "bytes=9223372036854775807-9223372036854775807", []int{unsat, full}, ""},
		{"overflowing first", "bytes=99999999999999999999-", []int{unsat, full}, ""},
		{"overflowing last", "bytes=0-99999999999999999999", []int{full, ok}, "0-" + last},
		{"reversed", "bytes=10-5", []int{full, unsat}, ""},
		{"negative first", "bytes=-5-10", []int{full}, ""},
		{"double minus", "bytes=--1", []int{full}, ""},
		{"plus sign", "bytes=+5-10", []int{full, ok}, "5-10"},
		{"hex", "bytes=0x10-0x20", []int{full}, ""},
		{"exponent", "bytes=1e3-2e3", []int{full}, ""},
		{"garbage unit", "items=0-5", []int{full}, ""},
		{"unit without =", "bytes 0-5", []int{full}, ""},
		{"upper-case unit", "Bytes=0-5", []int{full, ok}, "0-5"},
		{"parameters", "bytes=0-5;q=1", []int{full}, ""},
		{"no ranges", "bytes=", []int{full}, ""},
		{"only commas", "bytes=,,,", []int{full}, ""},
		{"whitespace", "bytes= 0-5 ,\t10-15", []int{ok, full}, ""},
		{"two ranges", "bytes=0-9,20-29", []int{ok, full}, ""},
		{"empty list elements", "bytes=0-5,,,,6-10", []int{ok, full}, ""},
		{"overlapping pair", "bytes=0-1000,500-1500", []int{ok, full}, ""},
		{"whole object twice", "bytes=0-,0-", []int{full, ok}, ""},
		{"16 overlapping halves", list(16, func(int) string { return "0-" + strconv.Itoa(size/2) }), []int{full, ok}, ""},
		{"1000 one-byte ranges", list(1000, func(i int) string { return fmt.Sprintf("%d-%d", i, i) }), []int{full, ok}, ""},
		{"1000 whole-object ranges", list(1000, func(int) string { return "0-" }), []int{full, ok}, ""},
		{"1000 suffixes", list(1000, func(int) string { return "-" + strconv.Itoa(size) }), []int{full, ok}, ""},
		{"12 KB of ranges", list(3000, func(int) string { return "0-0" }), []int{full, ok}, ""},
		{"100 KB of ranges: over Caddy's header limit", list(25000, func(int) string { return "0-0" }), []int{431}, ""},
	}
}

// maxRangeParts bounds the parts of a multipart/byteranges answer, and
// rangeOverhead the bytes each part adds, for the amplification check.
const (
	maxRangeParts = 16
	rangeOverhead = 256
)

// checkRangeAnswer checks a response to c against the object: every
// byte it carries is the object's at the stated offset, it is one of the
// allowed outcomes, and it is not much larger than the object whatever
// the Range asked for (the "Apache killer" amplification). It returns
// the number of body bytes compared and mismatched.
func checkRangeAnswer(t *testing.T, c rangeCase, r response, obj []byte) (compared int64, bad int) {
	t.Helper()
	if !containsInt(c.statuses, r.status) {
		t.Errorf("status = %d, want one of %v", r.status, c.statuses)
	}
	if r.readErr != nil {
		t.Errorf("body ended badly: %v", r.readErr)
	}
	if limit := len(obj) + maxRangeParts*rangeOverhead; len(r.body) > limit {
		t.Errorf("%d body bytes for a %d-byte object: amplification (limit %d)", len(r.body), len(obj), limit)
	}
	wantNoUpstreamLeak(t, r)
	switch r.status {
	case http.StatusOK:
		return int64(len(r.body)), mismatches(r.body, obj)
	case http.StatusRequestedRangeNotSatisfiable:
		if len(r.body) != 0 {
			t.Errorf("416 with a body: %q", trimForMessage(string(r.body)))
		}
		if cr := r.header.Get("Content-Range"); cr != "" && cr != fmt.Sprintf("bytes */%d", len(obj)) {
			t.Errorf("416 Content-Range = %q, want bytes */%d", cr, len(obj))
		}
		return 0, 0
	case http.StatusPartialContent:
	default:
		return 0, 0
	}
	mediaType, _, _ := mime.ParseMediaType(r.header.Get("Content-Type"))
	if mediaType != "multipart/byteranges" {
		first, lastByte := checkPart(t, r.header.Get("Content-Range"), len(obj))
		if c.single != "" && fmt.Sprintf("%d-%d", first, lastByte) != c.single {
			t.Errorf("Content-Range = %q, want bytes %s/%d", r.header.Get("Content-Range"), c.single, len(obj))
		}
		if first < 0 {
			return 0, 0
		}
		return int64(len(r.body)), mismatches(r.body, obj[first:lastByte+1])
	}
	parts := byteranges(t, r.header.Get("Content-Type"), r.body)
	if len(parts) < 2 || len(parts) > maxRangeParts {
		t.Errorf("multipart answer with %d parts, want 2 to %d", len(parts), maxRangeParts)
	}
	for _, p := range parts {
		first, lastByte := checkPart(t, p.contentRange, len(obj))
		if first < 0 {
			continue
		}
		compared += int64(len(p.body))
		bad += mismatches(p.body, obj[first:lastByte+1])
	}
	return compared, bad
}

// checkPart parses "bytes first-last/size" and checks it lies in the
// object; it returns -1, -1 when it does not.
func checkPart(t *testing.T, contentRange string, size int) (first, last int) {
	t.Helper()
	var total int
	if _, err := fmt.Sscanf(contentRange, "bytes %d-%d/%d", &first, &last, &total); err != nil || total != size || first < 0 || first > last || last >= size {
		t.Errorf("Content-Range %q does not lie in a %d-byte object", contentRange, size)
		return -1, -1
	}
	return first, last
}

// Every Range value, valid or not, gets an answer that is correct byte for
// byte and bounded in size, from a cached entry, from a fill that the
// Range itself starts, and straight from S3 without a cache. A cold
// Range must not leave a partial entry behind either.
func TestAbuseRangeValues(t *testing.T) {
	const size = 200 << 10
	cases := rangeCases(size)
	check := func(t *testing.T, c rangeCase, r response, obj s3test.Seeded) {
		t.Helper()
		compared, bad := checkRangeAnswer(t, c, r, obj.Body)
		recordBytes(t, abuseArea, "Range values", compared, bad)
	}

	t.Run("cached", func(t *testing.T) {
		obj := abuseObjects(t, size, 700, "hot")["hot"]
		dir := t.TempDir()
		loadCache(t, dir)
		fillEntry(t, dir, obj)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				defer recordAbuse(t, "Range values", "cached: "+c.header)
				env.proxy.Reset()
				check(t, c, do(t, http.MethodGet, urlPath(obj.Key), "Range: "+c.header), obj)
				wantS3Requests(t, 0)
			})
		}
	})

	t.Run("cold", func(t *testing.T) {
		names := make([]string, len(cases))
		for i, c := range cases {
			names[i] = c.name
		}
		objs := abuseObjects(t, size, 800, names...)
		dir := t.TempDir()
		loadCache(t, dir)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				defer recordAbuse(t, "Range values", "cold: "+c.header)
				obj := objs[c.name]
				r := do(t, http.MethodGet, urlPath(obj.Key), "Range: "+c.header)
				check(t, c, r, obj)
				if r.status == http.StatusRequestHeaderFieldsTooLarge {
					return // refused before the handler: nothing to store
				}
				wantStoredWhole(t, dir, obj, "Range values")
			})
		}
	})

	t.Run("no cache", func(t *testing.T) {
		obj := abuseObjects(t, size, 900, "uncached")["uncached"]
		load(t, siteConfig(blockFor()))
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				defer recordAbuse(t, "Range values", "no cache: "+c.header)
				env.proxy.Reset()
				r := do(t, http.MethodGet, urlPath(obj.Key), "Range: "+c.header)
				check(t, c, r, obj)
				if n := env.proxy.Count(); n > 1 || r.status >= 500 {
					t.Errorf("S3 requests (%d, want at most 1): %s", n, describeS3Requests())
				}
			})
		}
	})
}

// Without a cache, a request's Range and validators go to S3 with it.
// Whatever the client puts there (a multi-range S3 does not support, a
// header longer than S3 accepts) must give the client a correct answer,
// never a 502 that blames S3 for the client's request.
func TestAbuseLongClientHeadersForwardedToS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOneMB)
	tags := func(n int, last string) string {
		return strings.Repeat(`"00000000000000000000000000000000",`, n) + last
	}
	cases := []struct {
		name   string
		header string
		status int
	}{
		{"If-None-Match of 12 KB, none matching", "If-None-Match: " + tags(350, `"x"`), http.StatusOK},
		{"If-None-Match of 12 KB ending with the ETag", "If-None-Match: " + tags(350, obj.ETag), http.StatusNotModified},
		{"If-Match of 12 KB ending with the ETag", "If-Match: " + tags(350, obj.ETag), http.StatusOK},
		{"Range of 12 KB", "Range: bytes=" + strings.Repeat("0-0,", 3000) + "0-0", http.StatusOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer recordAbuse(t, "malformed and huge headers", "no cache: "+c.name)
			env.proxy.Reset()
			r := do(t, http.MethodGet, urlPath(obj.Key), c.header)
			if r.status != c.status {
				t.Fatalf("status = %d, want %d; S3 saw %s", r.status, c.status, describeS3Requests())
			}
			if c.status == http.StatusOK {
				wantBody(t, r, http.StatusOK, obj.Body)
				recordBytes(t, abuseArea, "malformed and huge headers", int64(len(r.body)), mismatches(r.body, obj.Body))
			}
		})
	}
}

// wantStoredWhole checks that whatever the cache kept for obj is the
// object itself: if slices of it are stored, the entry completes (objects
// of these sizes are fetched whole once started) with obj's exact bytes,
// and with S3 failing a plain GET is a HIT with those bytes and obj's
// headers. If no byte of it is stored, a plain GET still gets the exact
// object from S3.
func wantStoredWhole(t *testing.T, dir string, obj s3test.Seeded, ledgerCase string) {
	t.Helper()
	path := entryPathFor(dir, obj)
	// Let the slices in flight land: what is on disk then is all there is.
	waitS3Quiet(t, 200*time.Millisecond)
	e, err := readEntryOnDisk(path)
	if err != nil || e.count() == 0 {
		// No byte of the body stored (a HEAD, an unsatisfiable range): the
		// next GET fetches it, and what it gets is the object.
		env.proxy.Reset()
		r := get(t, urlPath(obj.Key))
		wantFromCache(t, r, obj, "MISS")
		recordBytes(t, abuseArea, ledgerCase, int64(len(r.body)), mismatches(r.body, obj.Body))
		return
	}
	if !waitFor(5*time.Second, func() bool { return entryHoldsBody(path, obj.Body) }) {
		t.Errorf("the entry (%d of %d slices) does not hold the object's %d bytes: a partial or altered body was stored", e.count(), len(e.present), obj.Size)
		recordBytes(t, abuseArea, ledgerCase, obj.Size, int(obj.Size))
	} else {
		recordBytes(t, abuseArea, ledgerCase, obj.Size, 0)
	}
	env.proxy.Reset()
	env.proxy.SetFault(s3test.Fault{Status: http.StatusInternalServerError})
	defer env.proxy.ClearFault()
	r := get(t, urlPath(obj.Key))
	wantFromCache(t, r, obj, "HIT")
	wantS3Requests(t, 0)
	recordBytes(t, abuseArea, ledgerCase, int64(len(r.body)), mismatches(r.body, obj.Body))
}

// The first request for a cold object decides what the cache stores.
// Whatever that request carries (a Range, HEAD, Accept-Encoding, a query
// string that S3 would obey, validators, no-cache directives, forwarding
// headers), what is stored, and served to everyone after, is the whole
// object with its own headers.
func TestAbuseCannotPoisonTheCache(t *testing.T) {
	const size = 200 << 10
	cases := []struct {
		name    string
		method  string
		query   string
		headers []string
		status  int
		// part is the slice of the object the first answer carries,
		// for a single-range 206.
		part [2]int
	}{
		{"Range", http.MethodGet, "", []string{"Range: bytes=0-99"}, 206, [2]int{0, 100}},
		{"suffix Range", http.MethodGet, "", []string{"Range: bytes=-10"}, 206, [2]int{size - 10, size}},
		{"multipart Range", http.MethodGet, "", []string{"Range: bytes=100-199,300-399"}, 206, [2]int{}},
		{"unsatisfiable Range", http.MethodGet, "", []string{"Range: bytes=99999999-"}, 416, [2]int{}},
		{"Range with a stale If-Range", http.MethodGet, "", []string{"Range: bytes=0-99", `If-Range: "stale"`}, 200, [2]int{}},
		{"Range and no-cache", http.MethodGet, "", []string{"Range: bytes=5-9", "Cache-Control: no-cache"}, 206, [2]int{5, 10}},
		{"HEAD", http.MethodHead, "", nil, 200, [2]int{}},
		{"HEAD with Range", http.MethodHead, "", []string{"Range: bytes=0-0"}, 200, [2]int{}},
		{"Accept-Encoding gzip", http.MethodGet, "", []string{"Accept-Encoding: gzip"}, 200, [2]int{}},
		{"Accept-Encoding all", http.MethodGet, "", []string{"Accept-Encoding: gzip, deflate, br, zstd"}, 200, [2]int{}},
		{"S3 response overrides in the query", http.MethodGet, "?response-content-type=text/html&response-content-disposition=attachment%3B%20filename%3Dx.html&response-cache-control=no-store", nil, 200, [2]int{}},
		{"S3 part and version in the query", http.MethodGet, "?partNumber=1&versionId=null", nil, 200, [2]int{}},
		{"S3 listing in the query", http.MethodGet, "?list-type=2&x-id=ListObjectsV2", nil, 200, [2]int{}},
		{"If-None-Match *", http.MethodGet, "", []string{"If-None-Match: *"}, 304, [2]int{}},
		{"If-Modified-Since in the future", http.MethodGet, "", []string{"If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT"}, 304, [2]int{}},
		{"If-Match wrong", http.MethodGet, "", []string{`If-Match: "wrong"`}, 412, [2]int{}},
		{"If-Unmodified-Since long ago", http.MethodGet, "", []string{"If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT"}, 412, [2]int{}},
		{"Cache-Control no-cache", http.MethodGet, "", []string{"Cache-Control: no-cache"}, 200, [2]int{}},
		{"Cache-Control no-store max-age=0", http.MethodGet, "", []string{"Cache-Control: no-store, max-age=0"}, 200, [2]int{}},
		{"Pragma no-cache", http.MethodGet, "", []string{"Pragma: no-cache"}, 200, [2]int{}},
		{"forwarding headers", http.MethodGet, "", []string{"X-Forwarded-Host: evil.example", "Forwarded: host=evil.example", "X-Original-URL: /other.png"}, 200, [2]int{}},
		{"the client's own S3 signature", http.MethodGet, "", []string{"Authorization: AWS4-HMAC-SHA256 Credential=AKIAEVIL/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00", "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD"}, 200, [2]int{}},
	}
	names := make([]string, len(cases))
	for i, c := range cases {
		names[i] = c.name
	}
	objs := abuseObjects(t, size, 1000, names...)
	dir := t.TempDir()
	loadCache(t, dir)
	clientWords := []string{"response-", "partNumber", "versionId", "list-type", "ListObjects", "AKIAEVIL", "evil.example", "gzip"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer recordAbuse(t, "cache poisoning attempts", c.name)
			obj := objs[c.name]
			env.proxy.Reset()
			r := do(t, c.method, urlPath(obj.Key)+c.query, c.headers...)
			if r.status != c.status {
				t.Errorf("first answer: status %d, want %d", r.status, c.status)
			}
			switch {
			case c.part != [2]int{}:
				wantBody(t, r, http.StatusPartialContent, obj.Body[c.part[0]:c.part[1]])
			case c.status == http.StatusOK && c.method == http.MethodGet:
				wantBody(t, r, http.StatusOK, obj.Body)
			case c.status == http.StatusOK:
				if r.length != obj.Size || len(r.body) != 0 {
					t.Errorf("HEAD: Content-Length %d and %d body bytes, want %d and none", r.length, len(r.body), obj.Size)
				}
			}
			if c.status < 300 && c.name != "multipart Range" {
				if got := r.header.Get("Content-Type"); got != obj.ContentType {
					t.Errorf("Content-Type = %q, want %q", got, obj.ContentType)
				}
			}
			for _, req := range env.proxy.Requests() {
				sent := req.RawQuery + " " + req.Header.Get("Accept-Encoding") + " " + req.Header.Get("X-Forwarded-Host") + " " + req.Header.Get("Forwarded")
				for _, w := range clientWords {
					if strings.Contains(sent, w) {
						t.Errorf("the S3 request carries the client's %q: %s?%s", w, req.Path, req.RawQuery)
					}
				}
			}
			wantStoredWhole(t, dir, obj, "cache poisoning attempts")
		})
	}
}

// Keys that differ in case, Unicode normalisation or a trailing byte are
// different S3 objects, so they never share a cache entry: a request for a
// look-alike of a cached key goes to S3 and gets that key's own answer.
func TestAbuseLookalikeKeysNeverShareAnEntry(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	utf := env.objects.Get(s3test.KeySpaceUTF8) // "été" in NFC
	png := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, utf)
	fillEntry(t, dir, png)
	nfd := strings.Replace(utf.Key, "\u00e9t\u00e9", "e\u0301te\u0301", 1)
	for _, key := range []string{
		nfd,
		strings.ToUpper(png.Key[:1]) + png.Key[1:],
		strings.Replace(png.Key, ".png", ".PNG", 1),
		png.Key + " ",
		png.Key + ".",
		png.Key + ";",
		png.Key + "~",
		strings.Replace(png.Key, "/original/", "/original /", 1),
	} {
		t.Run(key, func(t *testing.T) {
			defer recordAbuse(t, "cache poisoning attempts", "look-alike key "+key)
			env.proxy.Reset()
			r := do(t, http.MethodGet, urlPath(key))
			wantEmptyError(t, r, http.StatusNotFound)
			reqs := env.proxy.Requests()
			if len(reqs) != 1 || reqs[0].Path != s3Path(privateBucket, key) {
				t.Errorf("S3 requests = %v, want one GET of %q", env.proxy.Counts(), key)
			}
		})
	}
	wantHitWithoutS3(t, utf)
	wantHitWithoutS3(t, png)
}

// A scan of distinct cold keys (a crawler, or someone busting the cache
// on purpose) must not become as many concurrent S3 requests:
// max_concurrent_fills bounds them, the rest wait for a slot or get a
// clean 503, and the negative cache answers the scan's repeats.
func TestAbuseCacheBustingScanIsBounded(t *testing.T) {
	// heldS3 makes every S3 request take at least hold, so requests pile
	// up at the handler, and samples what S3 has received until stop is
	// closed. With at most limit requests in flight, each lasting at
	// least hold, S3 can have received no more than limit × (1 + the
	// holds elapsed) at any moment; more is a breach of the bound.
	heldS3 := func(limit int, hold time.Duration, stop <-chan struct{}) (done <-chan int) {
		env.proxy.Reset()
		env.proxy.SetFault(s3test.Fault{Delay: hold})
		start := time.Now()
		out := make(chan int, 1)
		go func() {
			peakOver := 0
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					out <- peakOver
					return
				case <-tick.C:
				}
				// Count first, then read the clock: the bound only
				// grows with time, so this order never overstates a
				// breach.
				received := env.proxy.Count()
				bound := limit * (1 + int(time.Since(start)/hold))
				peakOver = max(peakOver, received-bound)
			}
		}()
		return out
	}
	burst := func(paths []string) []streamed {
		out := make([]streamed, len(paths))
		var wg sync.WaitGroup
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i, p := range paths {
			wg.Go(func() { out[i] = stream(ctx, http.MethodGet, env.baseURL()+p, nil) })
		}
		wg.Wait()
		return out
	}
	// scan loads a cache with this S3 slot limit and queue timeout, holds
	// every S3 request for hold, sends one GET for each of keys distinct
	// missing keys at once, and checks that S3 never had more than limit
	// of them in flight. It returns the paths and what each client got.
	scan := func(t *testing.T, limit, keys int, queueTimeout, hold time.Duration) ([]string, []streamed) {
		t.Helper()
		loadCache(t, t.TempDir(), fmt.Sprintf("max_concurrent_fills %d", limit), "fill_queue_timeout "+queueTimeout.String())
		paths := make([]string, keys)
		for i := range paths {
			paths[i] = urlPath(testKey(t, fmt.Sprintf("scan/%03d.png", i)))
		}
		stop := make(chan struct{})
		over := heldS3(limit, hold, stop)
		results := burst(paths)
		close(stop)
		if n := <-over; n > 0 {
			t.Errorf("S3 received up to %d requests more than %d in flight allow", n, limit)
		}
		return paths, results
	}

	t.Run("a slot frees in time: every key is answered, S3 never over the bound", func(t *testing.T) {
		const keys = 24
		paths, results := scan(t, 4, keys, 10*time.Second, 300*time.Millisecond)
		for i, s := range results {
			ok := s.err == nil && s.status == http.StatusNotFound && s.n == 0 && s.readErr == nil
			wantCacheStatus(t, s.response(), "MISS")
			recordInput(t, abuseArea, "cache-busting scan", ok, fmt.Sprintf("%s: status %d, %d bytes, %v", paths[i], s.status, s.n, s.err))
		}
		if n := env.proxy.Count(); n != keys {
			t.Errorf("S3 requests = %d, want one per key (%d): %s", n, keys, describeS3Requests())
		}

		// The scan again, twice: all 404s from the negative cache.
		env.proxy.Reset()
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			for _, p := range paths {
				r := do(t, method, p)
				wantEmptyError(t, r, http.StatusNotFound)
				wantCacheStatus(t, r, "HIT")
				recordInput(t, abuseArea, "cache-busting scan, repeated", r.status == http.StatusNotFound && len(r.body) == 0, method+" "+p)
			}
		}
		wantS3Requests(t, 0)
	})

	t.Run("no slot frees in time: a clean 503 with Retry-After", func(t *testing.T) {
		const limit, keys = 2, 12
		paths, results := scan(t, limit, keys, 300*time.Millisecond, 1500*time.Millisecond)
		counts := map[int]int{}
		for i, s := range results {
			counts[s.status]++
			r := s.response()
			ok := s.err == nil && s.n == 0 && s.readErr == nil
			switch s.status {
			case http.StatusNotFound:
			case http.StatusServiceUnavailable:
				if got := r.header.Get("Retry-After"); got == "" {
					t.Errorf("%s: 503 without Retry-After", paths[i])
					ok = false
				}
				wantErrorHeaders(t, r)
			default:
				ok = false
			}
			recordInput(t, abuseArea, "cache-busting scan", ok, fmt.Sprintf("%s: status %d, %d bytes, %v", paths[i], s.status, s.n, s.err))
		}
		if counts[http.StatusNotFound] != limit || counts[http.StatusServiceUnavailable] != keys-limit {
			t.Errorf("answers %v, want %d × 404 and %d × 503", counts, limit, keys-limit)
		}
		if n := env.proxy.Count(); n != limit {
			t.Errorf("S3 requests = %d, want %d (the others never left the queue): %s", n, limit, describeS3Requests())
		}
		_, metrics := adminDo(t, http.MethodGet, "/metrics", "")
		if v := metricValue(metrics, "caddy_s3_media_cache_s3_slots_exhausted_total"); v < keys-limit {
			t.Errorf("caddy_s3_media_cache_s3_slots_exhausted_total = %v, want at least %d", v, keys-limit)
		}
	})

	t.Run("a query string does not bust the cache", func(t *testing.T) {
		const clients = 24
		obj := abuseObjects(t, 300<<10, 1100, "busted")["busted"]
		dir := t.TempDir()
		loadCache(t, dir, "max_concurrent_fills 4")
		paths := make([]string, clients)
		for i := range paths {
			paths[i] = urlPath(obj.Key) + "?cb=" + url.QueryEscape(strconv.Itoa(i)) + "&_=" + strconv.Itoa(i*7919)
		}
		env.proxy.Reset()
		env.proxy.SetFault(s3test.Fault{BytesPerSecond: fastLink})
		for i, s := range burst(paths) {
			ok, why := s.complete(http.StatusOK, obj.Body)
			recordInput(t, abuseArea, "cache-busting scan", ok, paths[i]+": "+why)
			if ok {
				recordBytes(t, abuseArea, "cache-busting scan", s.n, 0)
			}
		}
		wantS3Fetches(t, obj, 1)
	})
}

// metricValue sums the samples of a Prometheus series in a /metrics page.
func metricValue(page, name string) float64 {
	total := 0.0
	for line := range strings.SplitSeq(page, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			total += v
		}
	}
	return total
}
