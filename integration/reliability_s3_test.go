package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// s3FaultsArea is the ledger area of the S3 fault matrix.
const s3FaultsArea = "S3 faults"

// faultMode is one way a request can meet an S3 fault: each is a site of
// the matrix's config, told apart by Host.
type faultMode struct{ name, host string }

var (
	// noCache is the handler without cache_dir: S3 straight to the client.
	noCache = faultMode{"no cache", "nocache.test"}
	// coldCache has a cache that does not hold the object.
	coldCache = faultMode{"cold cache", "cold.test"}
	// staleCopy has a cache holding an expired copy of the object.
	staleCopy = faultMode{"stale copy", "stale.test"}
)

// faultEndpoint is where the handler sends its S3 requests during a case.
type faultEndpoint int

const (
	// viaProxy: the recording, fault-injecting proxy in front of versitygw.
	viaProxy faultEndpoint = iota
	// direct: versitygw itself, so the handler meets a closed port itself.
	direct
	// blackhole: an address where connects hang.
	blackhole
)

// s3FaultCase is one row of the matrix: a fault, and what a client must
// get when it strikes.
type s3FaultCase struct {
	name     string
	fault    s3test.Fault // injected at the proxy
	endpoint faultEndpoint
	// gatewayDown kills versitygw before the request; killMidBody kills
	// it once the client has the first bytes of the body.
	gatewayDown, killMidBody bool

	// What a client without a stale copy gets: an empty error with
	// status (S3 failed before answering); a cut transfer (cut: the body
	// broke, so the status line was already sent); or, with neither,
	// the whole object (a fault the handler rides out).
	status int
	cut    bool
	// staleServed: with an expired copy, the client gets it (STALE).
	// Otherwise it gets status.
	staleServed bool
	// negative: the answer means "no such key", which is stored, as
	// documented, for valid 404 (1s in this config).
	negative bool
	// noHead: HEAD is not tried (a HEAD's 403 carries no error code, so
	// it cannot tell AccessDenied from a bad signature; the status
	// mapping test covers it).
	noHead bool

	// atLeast and within bound the time to the answer (to the end of the
	// transfer, for a cut one). Zero within means the default, 5s.
	atLeast, within time.Duration
	// maxS3 is the most S3 requests one client request may cost through
	// the proxy. Default 1.
	maxS3 int
	// size of the object fetched while the fault lasts. Default 512 KiB.
	size int
}

// s3FaultCases are the faults of issue 7: S3 down, refusing, slow first
// byte, slow body, reset mid-body, 5xx, 403, wrong-length body, plus a
// few neighbours. Timeouts are 1s in the matrix's config.
func s3FaultCases() []s3FaultCase {
	const cutAt = 128 << 10
	return []s3FaultCase{
		{name: "versitygw down, proxy answers 502", gatewayDown: true, status: http.StatusBadGateway, staleServed: true},
		{name: "connection refused (versitygw down)", endpoint: direct, gatewayDown: true, status: http.StatusBadGateway, staleServed: true},
		{name: "unreachable, past connect_timeout", endpoint: blackhole, status: http.StatusGatewayTimeout, staleServed: true, atLeast: 900 * time.Millisecond},
		// Go's transport sends an idempotent request again, once, when a
		// reused connection dies before any answer: S3 may see two.
		{name: "connection reset before the headers", fault: s3test.Fault{Reset: true}, status: http.StatusBadGateway, staleServed: true, maxS3: 2},
		{name: "slow first byte, past first_byte_timeout", fault: s3test.Fault{Delay: 20 * time.Second}, status: http.StatusGatewayTimeout, staleServed: true, atLeast: 900 * time.Millisecond},
		{name: "slow first byte, within first_byte_timeout", fault: s3test.Fault{Delay: 300 * time.Millisecond}},
		{name: "500 InternalError", fault: s3test.Fault{Status: 500}, status: http.StatusBadGateway, staleServed: true},
		{name: "503 SlowDown", fault: s3test.Fault{Status: 503, Code: "SlowDown"}, status: http.StatusBadGateway, staleServed: true},
		// Not in the default use_stale: a bad signature is a config
		// error, which a stale copy would only hide.
		{name: "403 SignatureDoesNotMatch", fault: s3test.Fault{Status: 403, Code: "SignatureDoesNotMatch"}, status: http.StatusBadGateway, noHead: true},
		// AccessDenied is how S3 says "no such key" to a reader that
		// may not list, and how Mastodon hides a suspended account's
		// media: the stale copy must go too.
		{name: "403 AccessDenied", fault: s3test.Fault{Status: 403, Code: "AccessDenied"}, status: http.StatusNotFound, negative: true, noHead: true},
		{name: "slow body, within read_timeout", fault: s3test.Fault{BytesPerSecond: 1 << 20}},
		{name: "body stalls past read_timeout", fault: s3test.Fault{StallAfter: cutAt, Stall: 20 * time.Second}, cut: true,
			atLeast: 900 * time.Millisecond, within: 3500 * time.Millisecond},
		{name: "body stalls within read_timeout", fault: s3test.Fault{StallAfter: cutAt, Stall: 300 * time.Millisecond}},
		{name: "connection closed mid-body", fault: s3test.Fault{CutAfter: cutAt}, cut: true},
		{name: "connection closed after the first body byte", fault: s3test.Fault{CutAfter: 1}, cut: true},
		{name: "connection reset mid-body", fault: s3test.Fault{CutAfter: cutAt, Reset: true}, cut: true},
		// Large enough that versitygw has not written it all into the
		// socket buffers when it dies.
		// Sixteen slices: the kill cuts the slices in flight (the first,
		// and the read-ahead's).
		{name: "versitygw killed mid-body", fault: s3test.Fault{BytesPerSecond: 8 << 20}, killMidBody: true, cut: true, size: 16 << 20, maxS3: 8},
		// A cold range of the last bytes, once the first GET failed
		// before the object was known, costs a HEAD and the GET of the
		// last slice: maxS3 2.
		{name: "Content-Length larger than the body", fault: s3test.Fault{LengthDelta: 64 << 10}, cut: true, maxS3: 2},
		// The declared length is the only framing: a handler that
		// trusts it alone has a short body that looks complete.
		{name: "Content-Length smaller than the body", fault: s3test.Fault{LengthDelta: -64 << 10}, cut: true, maxS3: 2},
	}
}

// TestS3FaultMatrix injects every fault of s3FaultCases into requests
// without a cache, with a cold cache and with a stale copy, and checks
// what the clients get, what S3 was asked, what the cache holds
// afterwards, and that all works again once the fault clears.
func TestS3FaultMatrix(t *testing.T) {
	cases := s3FaultCases()
	// Two objects per case: seed[2i] is never cached before the fault
	// strikes (no cache, cold cache), seed[2i+1] has an expired copy.
	var seed []s3test.Object
	for i, c := range cases {
		size := c.size
		if size == 0 {
			size = 512 << 10
		}
		seed = append(seed,
			s3test.Object{Key: testKey(t, fmt.Sprintf("%02d-cold.webp", i)), Body: s3test.RandomBytes(size, 7000+uint64(i)),
				ContentType: "image/webp", CacheControl: mastodonCacheControl},
			s3test.Object{Key: testKey(t, fmt.Sprintf("%02d-stale.webp", i)), Body: s3test.RandomBytes(200<<10, 7100+uint64(i)),
				ContentType: "image/webp", CacheControl: oneSecond})
	}
	seeded := seedObjects(t, seed...)
	objectFor := func(i int, mode faultMode) s3test.Seeded {
		if mode == staleCopy {
			return seeded[seed[2*i+1].Key]
		}
		return seeded[seed[2*i].Key]
	}

	hole, err := s3test.NewBlackhole()
	must(t, err)
	defer hole.Close()
	m := &faultMatrix{coldDir: t.TempDir(), staleDir: t.TempDir(), hole: hole}
	m.use(t, viaProxy)
	for i, c := range cases {
		if c.staleMatters() {
			obj := objectFor(i, staleCopy)
			r := m.ask(staleCopy, http.MethodGet, obj, nil)
			if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
				t.Fatalf("filling the stale copy of %s: %s", obj.Key, why)
			}
			waitEntry(t, m.staleDir, obj)
		}
	}
	expire()

	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mode := range []faultMode{noCache, coldCache, staleCopy} {
				if mode == staleCopy && !c.staleMatters() {
					continue
				}
				t.Run(mode.name, func(t *testing.T) { m.run(t, c, mode, objectFor(i, mode)) })
			}
		})
	}
}

// staleMatters reports whether c is tried against a stale copy: only
// faults before S3's answer are, since after it a revalidation is a
// bodiless 304 that a broken body cannot touch.
func (c s3FaultCase) staleMatters() bool { return c.status != 0 }

// faultMatrix is the state the cases share: the two cache directories and
// the endpoint the loaded config points at.
type faultMatrix struct {
	coldDir, staleDir string
	loaded            bool
	endpoint          faultEndpoint
	hole              *s3test.Blackhole
}

// use loads the matrix's config with S3 at endpoint, unless it is loaded
// already.
func (m *faultMatrix) use(t *testing.T, endpoint faultEndpoint) {
	t.Helper()
	if m.loaded && m.endpoint == endpoint {
		return
	}
	url := env.proxy.URL()
	switch endpoint {
	case direct:
		url = env.gateway.Endpoint()
	case blackhole:
		url = m.hole.Endpoint()
	}
	timeouts := []string{"connect_timeout 1s", "first_byte_timeout 1s", "read_timeout 1s"}
	site := func(mode faultMode, extra ...string) string {
		block := blockAt(url, append(timeouts, extra...)...)
		return fmt.Sprintf("\nhttp://%s:%d {\n\ts3_media_cache {\n%s\n\t}\n}\n", mode.host, env.ports.http, indent(block))
	}
	load(t, caddyfileFor(env.ports, "s3_media_cache {\n"+indent(blockAt(url, timeouts...))+"\n\t}")+
		site(coldCache, "cache_dir "+m.coldDir, "valid 404 1s")+
		// valid 304 1h: a copy revalidated once S3 is back stays fresh,
		// so the next request is a HIT however slow the machine.
		site(staleCopy, "cache_dir "+m.staleDir, "valid 404 1s", "valid 304 1h", staleWithoutUpdating))
	warmUp(t)
	m.loaded, m.endpoint = true, endpoint
}

// ask sends method for obj to mode's site and reads the answer as it
// comes; onFirst is called at the first body byte.
func (m *faultMatrix) ask(mode faultMode, method string, obj s3test.Seeded, onFirst func(), headers ...string) streamed {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return stream(ctx, method, env.baseURL()+urlPath(obj.Key), onFirst, append(headers, "Host: "+mode.host)...)
}

// faultRequest is one client request of a cell.
type faultRequest struct{ method, rangeHeader string }

func (r faultRequest) String() string { return strings.TrimSpace(r.method + " " + r.rangeHeader) }

// requests are what a cell sends while the fault lasts: a GET; a HEAD
// when S3 fails before answering (a HEAD of a cold key starts a whole
// fill, which must then fail too); and, for a body that breaks in a cold
// cache, a range of the last bytes, which never arrive.
func (c s3FaultCase) requests(mode faultMode) []faultRequest {
	reqs := []faultRequest{{method: http.MethodGet}}
	if c.status != 0 && mode != staleCopy && !c.noHead {
		reqs = append(reqs, faultRequest{method: http.MethodHead})
	}
	if c.cut && mode == coldCache && !c.killMidBody {
		reqs = append(reqs, faultRequest{http.MethodGet, "bytes=-1000"})
	}
	return reqs
}

// run is one cell of the matrix: c's fault, in mode, on obj.
func (m *faultMatrix) run(t *testing.T, c s3FaultCase, mode faultMode, obj s3test.Seeded) {
	m.use(t, c.endpoint)
	env.proxy.Reset()
	restartGatewayAtCleanup(t)
	t.Cleanup(env.proxy.ClearFault)
	v := &faultVerdict{t: t, label: c.name + " / " + mode.name}
	dir := mode.dir(m)
	path := entryPathFor(dir, obj)
	var staleFile []byte
	if mode == staleCopy {
		if staleFile = readFileOrNil(path); !entryHoldsBody(path, obj.Body) {
			t.Fatalf("no stale copy of %s to start from", obj.Key)
		}
	}

	// The fault.
	env.proxy.SetFault(c.fault)
	if c.gatewayDown {
		must(t, env.gateway.Kill())
	}
	for _, req := range c.requests(mode) {
		var onFirst func()
		if c.killMidBody {
			onFirst = func() { must(t, env.gateway.Kill()) }
		}
		var headers []string
		if req.rangeHeader != "" {
			headers = append(headers, "Range: "+req.rangeHeader)
		}
		before := env.proxy.CountFor("", s3Path(privateBucket, obj.S3Key))
		start := time.Now()
		r := m.ask(mode, req.method, obj, onFirst, headers...)
		v.timing(req.String(), time.Since(start), c.atLeast, c.within)
		v.judge(req.String(), r, c.expectation(mode, req, obj))
		if c.endpoint == viaProxy {
			n := env.proxy.CountFor("", s3Path(privateBucket, obj.S3Key)) - before
			if n < 1 || n > max(c.maxS3, 1) {
				v.problem("%s cost %d S3 requests, want 1 (at most %d): %v", req, n, max(c.maxS3, 1), env.proxy.Counts())
			}
		}
		if c.killMidBody {
			must(t, env.gateway.Start(context.Background()))
		}
	}

	// The fault clears.
	env.proxy.ClearFault()
	must(t, env.gateway.Start(context.Background()))
	if c.endpoint == blackhole {
		m.use(t, viaProxy) // the network path to S3 is back
	}

	// Nothing bad was stored.
	if !waitFor(3*time.Second, func() bool { return len(tempFiles(t, dir)) == 0 }) {
		v.problem("temp files left behind: %v", tempFiles(t, dir))
	}
	switch {
	case mode == coldCache && c.status == 0 && !c.cut:
		// A fault ridden out: the object is stored, whole.
		if !waitFor(3*time.Second, func() bool { return entryHoldsBody(path, obj.Body) }) {
			v.problem("no whole entry after a complete transfer")
		}
	case mode == coldCache && c.negative:
		if size := fileSize(path); size >= obj.Size {
			v.problem("an entry of %d bytes where only a negative one (no body) may be", size)
		}
	case mode == coldCache:
		// The object's metadata may be stored, and slices that came
		// whole before the fault; never a byte of a slice it broke.
		if e, err := readEntryOnDisk(path); err == nil && !e.holds(obj.Body) {
			v.problem("an entry with wrong bytes was stored for a failed fetch: %s", path)
		} else if err == nil && obj.Size <= defaultSlice && e.count() != 0 {
			v.problem("the one slice of a failed fetch was stored: %s", path)
		}
	case mode == staleCopy && !c.negative:
		if got := readFileOrNil(path); !bytes.Equal(got, staleFile) {
			v.problem("the stale copy changed on disk (%d bytes, was %d)", len(got), len(staleFile))
		}
	}

	// Everything works again.
	v.recover(m, c, mode, obj)
	recordFault(t, s3FaultsArea, v.label, len(v.problems) == 0, strings.Join(v.problems, "; "))
}

// expectation is what a client must get from c in mode.
func (c s3FaultCase) expectation(mode faultMode, req faultRequest, obj s3test.Seeded) clientWant {
	switch {
	case mode == staleCopy && c.staleServed:
		return clientWant{body: obj.Body, cacheStatus: []string{"STALE"}}
	case c.status != 0:
		return clientWant{status: c.status}
	case c.cut:
		return clientWant{cut: true, body: suffixOf(obj.Body, req.rangeHeader)}
	}
	return clientWant{body: suffixOf(obj.Body, req.rangeHeader), cacheStatus: []string{"MISS"}}
}

// suffixOf is the part of body a "bytes=-n" range asks for.
func suffixOf(body []byte, rangeHeader string) []byte {
	var n int
	if _, err := fmt.Sscanf(rangeHeader, "bytes=-%d", &n); err == nil {
		return body[len(body)-n:]
	}
	return body
}

// clientWant is an acceptable answer: an empty error with status; a cut
// transfer (a 5xx before it started is honest too); or the whole of body,
// with one of cacheStatus.
type clientWant struct {
	status      int
	cut         bool
	body        []byte
	cacheStatus []string
}

// faultVerdict collects what went wrong in one cell, for its ledger row.
type faultVerdict struct {
	t        *testing.T
	label    string
	problems []string
}

func (v *faultVerdict) problem(format string, args ...any) {
	v.t.Helper()
	msg := fmt.Sprintf(format, args...)
	v.t.Log(msg)
	v.problems = append(v.problems, msg)
}

// judge checks one answer, and counts the body bytes it compared.
func (v *faultVerdict) judge(label string, r streamed, want clientWant) {
	v.t.Helper()
	status := http.StatusOK
	if r.header.Get("Content-Range") != "" {
		status = http.StatusPartialContent
	}
	whole := r.err == nil && r.readErr == nil && (r.status == http.StatusOK || r.status == http.StatusPartialContent) && r.n == r.length
	if whole && r.n > 0 {
		mismatch := 0
		if r.n != int64(len(want.body)) || r.sum != s3test.SHA256Hex(want.body) {
			mismatch = 1
		}
		recordBytes(v.t, s3FaultsArea, v.label, r.n, mismatch)
	}
	switch {
	case want.status != 0:
		if why := cleanError(r, want.status); why != "" {
			v.problem("%s: %s", label, why)
		}
	case want.cut:
		if !r.aborted() {
			v.problem("%s: status %d, %d bytes of %d (Content-Length %d), read error %v: want a cut transfer, never a short or wrong %d",
				label, r.status, r.n, len(want.body), r.length, r.readErr, status)
		}
	default:
		if ok, why := r.complete(status, want.body); !ok {
			v.problem("%s: %s", label, why)
		}
		if cs := r.header.Get("X-Cache-Status"); len(want.cacheStatus) > 0 && !slices.Contains(want.cacheStatus, cs) {
			v.problem("%s: X-Cache-Status %q, want one of %q", label, cs, want.cacheStatus)
		}
	}
}

// timing checks how long an answer took against the case's bounds.
func (v *faultVerdict) timing(label string, elapsed, atLeast, within time.Duration) {
	v.t.Helper()
	if within == 0 {
		within = 5 * time.Second
	}
	if elapsed < atLeast || elapsed > within {
		v.problem("%s: answered after %s, want between %s and %s", label, elapsed.Round(time.Millisecond), atLeast, within)
	}
}

// recover checks that, the fault gone, mode serves obj whole again and
// stores it: a HIT without S3 on the next request, for a cache.
func (v *faultVerdict) recover(m *faultMatrix, c s3FaultCase, mode faultMode, obj s3test.Seeded) {
	v.t.Helper()
	want := clientWant{body: obj.Body, cacheStatus: []string{"MISS"}}
	var r streamed
	switch {
	case c.negative && mode != noCache:
		// The "no such key" is kept for valid 404 (1s); once it has
		// expired, the object is fetched again: a MISS when the expired
		// negative was dropped already (they are kept in memory only,
		// and dropped once expired), else, with the cold cache site's
		// default use_stale updating, in the background while the
		// expired 404 is served once more, then a HIT.
		want.cacheStatus = []string{"MISS", "EXPIRED", "HIT"}
		if !waitFor(5*time.Second, func() bool {
			r = m.ask(mode, http.MethodGet, obj, nil)
			return r.status != http.StatusNotFound
		}) {
			v.problem("recovery: still 404 5s after the fault cleared")
			return
		}
	case mode == staleCopy:
		want.cacheStatus = []string{"REVALIDATED"}
		r = m.ask(mode, http.MethodGet, obj, nil)
	case mode == coldCache && c.status == 0 && !c.cut:
		want.cacheStatus = []string{"HIT"} // stored during the fault
		fallthrough
	default:
		r = m.ask(mode, http.MethodGet, obj, nil)
	}
	v.judge("recovery GET", r, want)
	if mode == noCache {
		return
	}
	if !waitFor(5*time.Second, func() bool { return entryHoldsBody(entryPathFor(mode.dir(m), obj), obj.Body) }) {
		v.problem("recovery: no whole entry stored")
	}
	before := env.proxy.Count()
	v.judge("recovery GET again", m.ask(mode, http.MethodGet, obj, nil), clientWant{body: obj.Body, cacheStatus: []string{"HIT"}})
	if c.endpoint == viaProxy && env.proxy.Count() != before {
		v.problem("recovery: the HIT cost %d S3 requests", env.proxy.Count()-before)
	}
}

func (mode faultMode) dir(m *faultMatrix) string {
	if mode == staleCopy {
		return m.staleDir
	}
	return m.coldDir
}

// cleanError says what is wrong with an error answer, "" if nothing: the
// status, an empty body that ends cleanly, and nothing of S3's.
func cleanError(r streamed, status int) string {
	switch {
	case r.err != nil:
		return fmt.Sprintf("no answer (%v), want an empty %d", r.err, status)
	case r.status != status:
		return fmt.Sprintf("status %d, want %d", r.status, status)
	case r.n != 0 || r.readErr != nil:
		return fmt.Sprintf("a %d with %d body bytes (read error %v), want it empty", status, r.n, r.readErr)
	case containsFold(r.header.Get("Content-Type"), "xml"):
		return "S3's XML Content-Type on the error"
	}
	for name := range r.header {
		if lower := strings.ToLower(name); strings.HasPrefix(lower, "x-amz") || lower == "set-cookie" {
			return "S3's header " + name + " on the error"
		}
	}
	return ""
}
