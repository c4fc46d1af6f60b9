package s3test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// maxFaultWait bounds every pause a fault introduces, so a forgotten hang
// cannot outlive a test run.
const maxFaultWait = 2 * time.Minute

// Request is one request the proxy received.
type Request struct {
	Method string
	// Path is the decoded path, bucket included: "/bucket/key".
	Path string
	// EscapedPath is the path as sent on the wire.
	EscapedPath string
	RawQuery    string
	Header      http.Header
	// Status and BodyBytes are what the proxy answered: the status it
	// sent and how many body bytes it wrote. Both are zero until the
	// answer is over.
	Status    int
	BodyBytes int64
}

// Fault changes how the proxy answers matching requests. The zero Fault
// forwards untouched.
type Fault struct {
	// PathContains limits the fault to requests whose decoded path contains
	// it. Empty matches every request.
	PathContains string
	// Status, when non-zero, answers with this status and an S3-style XML
	// error body (naming the bucket and carrying x-amz-* and Set-Cookie
	// headers, so leak checks have something to find) without contacting S3.
	Status int
	// Code is the S3 error code in that body. Default: InternalError.
	Code string
	// Delay waits this long before doing anything else, so no response
	// header is sent meanwhile. It ends early when the client gives up or
	// the proxy closes, and is capped at two minutes. Use it to simulate a
	// hung S3.
	Delay time.Duration
	// CutAfter, when positive, forwards S3's response but closes the
	// connection after this many body bytes, as a crashed S3 node would.
	// With Reset, the connection is reset instead.
	CutAfter int64
	// Reset ends the connection with a TCP reset (RST) rather than a
	// close: at once, before any response, when CutAfter is zero; after
	// CutAfter body bytes otherwise. That is what a client sees of a host
	// that crashed or a middlebox that dropped the connection. Other
	// body faults (stall, rate) do not apply to a reset response.
	Reset bool
	// LengthDelta, when non-zero, sends S3's status, headers and whole
	// body, but a Content-Length off by this many bytes, and then closes
	// the connection. Positive, the body ends before the length declared,
	// so the client sees the connection close early. Negative, the
	// declared length ends before the body does: a client that trusts it
	// reads a shortened body that looks complete, and the rest arrives as
	// garbage on a connection that then closes. Only 2xx answers with a
	// body are changed (not HEAD, 304 or errors). Other body faults do
	// not apply.
	LengthDelta int64
	// StallAfter and Stall pause the body for Stall after StallAfter bytes,
	// then continue: an S3 that goes quiet mid-body.
	StallAfter int64
	Stall      time.Duration
	// Header is added to S3's (or the fault's) response headers, e.g. a
	// Set-Cookie or an S3 Access-Control-Allow-Origin.
	Header http.Header
	// BytesPerSecond, when positive, caps the rate at which each
	// response body is passed on, per request (so per connection): a
	// slow link to S3, which stretches a fill over seconds.
	BytesPerSecond int64
	// Times, when positive, limits the fault to the first Times requests
	// it matches; later ones are forwarded untouched.
	Times int
}

// Proxy is a recording reverse proxy on 127.0.0.1 in front of an S3
// endpoint. Tests point the handler's endpoint at it to count S3 requests
// and to inject faults.
type Proxy struct {
	server  *http.Server
	url     string
	reverse *httputil.ReverseProxy
	// target and transport are what the reverse proxy forwards to and
	// with; serveRaw uses them too.
	target    *url.URL
	transport *http.Transport
	// closing is closed by Close so hung faults end at once.
	closing   chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex // guards the fields below
	requests []Request
	// resets counts Resets, so an answer finishing after one is not
	// recorded on a request of the next round.
	resets int
	fault  Fault
	// faulted counts the requests the current fault has struck.
	faulted int
	// inFlight is the number of requests being answered now, and peak
	// the most since the last Reset.
	inFlight, peak int
}

// NewProxy starts a proxy to target (e.g. a Gateway's Endpoint) on a free
// loopback port.
func NewProxy(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("parsing proxy target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the S3 proxy: %w", err)
	}
	p := &Proxy{url: "http://" + ln.Addr().String(), closing: make(chan struct{}), target: u}
	p.transport = &http.Transport{
		// No Proxy: an HTTP_PROXY in the environment must not take
		// test traffic off loopback.
		Proxy:              nil,
		DisableCompression: true,
		DialContext:        (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	p.reverse = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// The request is signed for the Host the client dialled (this
			// proxy); versitygw must see the same Host to verify it.
			pr.Out.Host = pr.In.Host
		},
		Transport: p.transport,
		// Stream bytes as S3 sends them, so cut and stalled bodies reach
		// the client at the moment they happen.
		FlushInterval:  -1,
		ModifyResponse: p.modifyResponse,
	}
	p.server = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.server.Serve(ln) }()
	return p, nil
}

// URL is the proxy's base URL, to use as the handler's endpoint.
func (p *Proxy) URL() string { return p.url }

// SetFault makes every matching request from now on misbehave as f says.
func (p *Proxy) SetFault(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
	p.faulted = 0
}

// ClearFault goes back to plain forwarding.
func (p *Proxy) ClearFault() { p.SetFault(Fault{}) }

// Reset forgets the recorded requests and clears any fault.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = nil
	p.resets++
	p.fault = Fault{}
	p.faulted = 0
	p.peak = p.inFlight
}

// ResetPeak starts counting Peak afresh from the requests open now.
func (p *Proxy) ResetPeak() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.peak = p.inFlight
}

// Peak is the most requests the proxy was answering at once since the
// last Reset: what S3 would see of a client's concurrency.
func (p *Proxy) Peak() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

// InFlight is the number of requests the proxy is answering now.
func (p *Proxy) InFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight
}

// BodyBytes is the total of body bytes the proxy sent in answers to
// requests with this method and decoded path since the last Reset (an
// empty method matches any). Answers still in progress count what they
// sent so far only once they are over.
func (p *Proxy) BodyBytes(method, path string) int64 {
	var n int64
	for _, r := range p.Requests() {
		if (method == "" || r.Method == method) && r.Path == path {
			n += r.BodyBytes
		}
	}
	return n
}

// Requests returns a copy of the requests received since the last Reset.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.requests...)
}

// Count is the number of requests received since the last Reset.
func (p *Proxy) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.requests)
}

// CountFor counts requests with this method and decoded path
// ("/bucket/key"). An empty method matches any.
func (p *Proxy) CountFor(method, path string) int {
	n := 0
	for _, r := range p.Requests() {
		if (method == "" || r.Method == method) && r.Path == path {
			n++
		}
	}
	return n
}

// Counts returns the number of requests per "METHOD /decoded/path", handy
// in failure messages.
func (p *Proxy) Counts() map[string]int {
	counts := make(map[string]int)
	for _, r := range p.Requests() {
		counts[r.Method+" "+r.Path]++
	}
	return counts
}

// Close stops the proxy, ending any request held by a fault.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() { close(p.closing) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.server.Shutdown(ctx); err != nil {
		return p.server.Close()
	}
	return nil
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	index, round := len(p.requests), p.resets
	p.requests = append(p.requests, Request{
		Method:      r.Method,
		Path:        r.URL.Path,
		EscapedPath: r.URL.EscapedPath(),
		RawQuery:    r.URL.RawQuery,
		Header:      r.Header.Clone(),
	})
	fault := p.fault
	if fault.PathContains != "" && !strings.Contains(r.URL.Path, fault.PathContains) {
		fault = Fault{}
	} else if fault.Times > 0 {
		if p.faulted >= fault.Times {
			fault = Fault{}
		}
		p.faulted++
	}
	p.inFlight++
	p.peak = max(p.peak, p.inFlight)
	p.mu.Unlock()
	rec := &answerRecorder{ResponseWriter: w}
	w = rec
	// Deferred: a cut body aborts the handler with a panic, and the
	// answer is still worth recording.
	defer func() {
		p.mu.Lock()
		p.inFlight--
		if p.resets == round && index < len(p.requests) {
			p.requests[index].Status = rec.status
			p.requests[index].BodyBytes = rec.bytes
		}
		p.mu.Unlock()
	}()

	if fault.Delay > 0 && !p.wait(r.Context(), fault.Delay) {
		return
	}
	if fault.Status != 0 {
		p.writeS3Error(w, r, fault)
		return
	}
	if fault.Reset || fault.LengthDelta != 0 {
		p.serveRaw(rec, r, fault)
		return
	}
	p.reverse.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), faultKey{}, fault)))
}

// wait pauses for d (capped), returning false if the client went away or
// the proxy is closing.
func (p *Proxy) wait(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(min(d, maxFaultWait))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	case <-p.closing:
		return false
	}
}

// writeS3Error answers like a failing S3 would, leaking everything a
// careless handler could pass on to the client.
func (p *Proxy) writeS3Error(w http.ResponseWriter, r *http.Request, f Fault) {
	bucket, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	code := f.Code
	if code == "" {
		code = "InternalError"
	}
	for k, vs := range f.Header {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("X-Amz-Request-Id", "S3TESTREQUESTID")
	w.Header().Set("X-Amz-Id-2", "s3test-host-id")
	w.WriteHeader(f.Status)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>s3test injected %d</Message><BucketName>%s</BucketName><Resource>%s</Resource><RequestId>S3TESTREQUESTID</RequestId></Error>`,
		code, f.Status, bucket, r.URL.Path)
}

type faultKey struct{}

func (p *Proxy) modifyResponse(resp *http.Response) error {
	f, _ := resp.Request.Context().Value(faultKey{}).(Fault)
	for k, vs := range f.Header {
		resp.Header[k] = append(resp.Header[k], vs...)
	}
	if f.CutAfter > 0 || (f.StallAfter > 0 && f.Stall > 0) || f.BytesPerSecond > 0 {
		resp.Body = &faultyBody{
			body:       resp.Body,
			cutAfter:   f.CutAfter,
			stallAfter: f.StallAfter,
			stall:      f.Stall,
			rate:       f.BytesPerSecond,
			ctx:        resp.Request.Context(),
			proxy:      p,
		}
	}
	return nil
}

// errCut is what a cut body returns; ReverseProxy reacts to a body read
// error by aborting the client connection, which is the point.
var errCut = errors.New("s3test: body cut by fault injection")

type faultyBody struct {
	body       io.ReadCloser
	cutAfter   int64
	stallAfter int64
	stall      time.Duration
	rate       int64 // bytes per second, 0 for no cap
	ctx        context.Context
	proxy      *Proxy
	read       int64
	stalled    bool
	started    time.Time // first Read, for the rate cap
}

func (b *faultyBody) Read(buf []byte) (int, error) {
	if b.cutAfter > 0 {
		left := b.cutAfter - b.read
		if left <= 0 {
			return 0, errCut
		}
		if int64(len(buf)) > left {
			buf = buf[:left]
		}
	}
	if b.stallAfter > 0 && !b.stalled {
		left := b.stallAfter - b.read
		if left <= 0 {
			b.stalled = true
			if !b.proxy.wait(b.ctx, b.stall) {
				return 0, errCut
			}
		} else if int64(len(buf)) > left {
			buf = buf[:left]
		}
	}
	if b.rate > 0 {
		var ok bool
		if buf, ok = b.throttle(buf); !ok {
			return 0, errCut
		}
	}
	n, err := b.body.Read(buf)
	b.read += int64(n)
	return n, err
}

// throttle waits until the bytes passed on so far are within the rate cap,
// and shortens buf to about 20 ms worth of bytes so the pace is even
// rather than a burst per second. It reports false if the wait was cut
// short by the client leaving or the proxy closing.
func (b *faultyBody) throttle(buf []byte) ([]byte, bool) {
	if b.started.IsZero() {
		b.started = time.Now()
	}
	if chunk := max(b.rate/50, 1); int64(len(buf)) > chunk {
		buf = buf[:chunk]
	}
	due := b.started.Add(time.Duration(float64(b.read) / float64(b.rate) * float64(time.Second)))
	if wait := time.Until(due); wait > 0 && !b.proxy.wait(b.ctx, wait) {
		return buf, false
	}
	return buf, true
}

func (b *faultyBody) Close() error { return b.body.Close() }

// answerRecorder notes the status and the body bytes of the proxy's answer.
type answerRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (a *answerRecorder) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
	a.ResponseWriter.WriteHeader(status)
}

func (a *answerRecorder) Write(b []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	n, err := a.ResponseWriter.Write(b)
	a.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's Flush, which
// the reverse proxy calls after every chunk of a streamed body.
func (a *answerRecorder) Unwrap() http.ResponseWriter { return a.ResponseWriter }
