// Package throttle makes a loopback S3 server look like a remote one. A
// Proxy is a TCP proxy on 127.0.0.1 that delays every byte by half a round
// trip in each direction, charges a new connection one more round trip for
// its handshake, caps each connection's bandwidth, and can make the server
// slow to start each answer; it also reads the HTTP messages going through
// it, so a benchmark can count the S3 requests a cache made, the bytes of
// S3's response bodies it was sent (what S3 bills as egress), and how many
// requests and connections it had open at once.
//
// It works on bytes, not on HTTP messages: what nginx and Caddy send reaches
// S3 unchanged, keep-alive and all, and a server that opens a connection per
// request (nginx's default towards an upstream) pays for it as it would on
// a real link.
package throttle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Link is the shape of the emulated network: one Link can serve several
// proxies, and changing it takes effect at once, on connections already
// open too (a benchmark slows the link between two scenarios while the
// servers keep their connections to S3).
type Link struct {
	rtt       atomic.Int64 // nanoseconds
	rate      atomic.Int64 // bytes per second per connection, 0 for no cap
	firstByte atomic.Int64 // nanoseconds
}

// NewLink returns a link with round-trip time rtt and a per-connection cap
// of bytesPerSecond (0: no cap).
func NewLink(rtt time.Duration, bytesPerSecond int64) *Link {
	l := &Link{}
	l.Set(rtt, bytesPerSecond)
	return l
}

// Set changes the round-trip time and the per-connection bandwidth cap.
func (l *Link) Set(rtt time.Duration, bytesPerSecond int64) {
	l.rtt.Store(int64(max(rtt, 0)))
	l.rate.Store(max(bytesPerSecond, 0))
}

// RTT is the round-trip time the link adds.
func (l *Link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

// BytesPerSecond is the per-connection cap, 0 when there is none.
func (l *Link) BytesPerSecond() int64 { return l.rate.Load() }

// SetFirstByteDelay makes the server that long slower to start each
// answer: the first byte of every response is held back by d on top of
// the link's latency, the rest follows it at the link's rate. An S3 busy
// enough to take seconds before its response headers looks like this,
// and it is what a cache's lock timeout is measured against. 0 removes
// the delay.
func (l *Link) SetFirstByteDelay(d time.Duration) { l.firstByte.Store(int64(max(d, 0))) }

// FirstByteDelay is the delay added before each response, 0 when none.
func (l *Link) FirstByteDelay() time.Duration { return time.Duration(l.firstByte.Load()) }

// Request is one HTTP request that went through a proxy.
type Request struct {
	Method string
	// Path is the request target's path, as sent ("/bucket/key").
	Path string
	// Range is the request's Range header, if any.
	Range string
	// At is when the request's head had been passed on to the server.
	At time.Time
	// BodyBytes are the bytes of its response's body passed on so far.
	BodyBytes int64
}

const (
	// chunkSize is how much one read takes off a socket: a unit of delay
	// and pacing.
	chunkSize = 32 << 10
	// queueChunks bounds the bytes in flight in one direction of one
	// connection (512 KiB), which must hold a round trip's worth at the
	// capped rate: 10 MB/s × 15 ms is 150 KB.
	queueChunks = 16
	// dialTimeout bounds the connection to the real server.
	dialTimeout = 5 * time.Second
	// paceSlice is the most a paced write sends at once, in time at the
	// capped rate, so a slow link delivers evenly instead of in bursts.
	paceSlice = 10 * time.Millisecond
)

// Stats is what a proxy counted since its last Reset.
type Stats struct {
	// Requests and Connections are the HTTP requests and the connections
	// that went through.
	Requests, Connections int
	// BodyBytes are the bytes of response bodies the proxy passed from
	// the server to the client: for a cache in front of S3, the egress
	// it cost. Headers are not counted, nor the body a HEAD's
	// Content-Length announces; a chunked body counts its data only.
	BodyBytes int64
	// PeakConnections and PeakRequests are the most connections open,
	// and the most requests sent and not yet answered in full, at any
	// one time: a request counts from when its first bytes go to the
	// server to the end of its response's body, or of its connection.
	PeakConnections, PeakRequests int
	// OpenConnections and OpenRequests are those open now.
	OpenConnections, OpenRequests int
}

// Proxy is a running throttling proxy.
type Proxy struct {
	link   *Link
	target string
	ln     net.Listener
	wg     sync.WaitGroup
	// moved counts every byte written, either way, for WaitIdle.
	moved atomic.Int64

	mu       sync.Mutex // guards the fields below, and the requests' BodyBytes
	requests []*Request
	stats    Stats
	open     map[net.Conn]struct{}
	closed   bool
}

// Listen starts a proxy to target (host:port) on a free 127.0.0.1 port.
func Listen(target string, link *Link) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the throttling proxy to %s: %w", target, err)
	}
	p := &Proxy{link: link, target: target, ln: ln, open: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy as an http:// endpoint.
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// Requests returns the requests seen since the last Reset, oldest first.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Request, len(p.requests))
	for i, r := range p.requests {
		out[i] = *r
	}
	return out
}

// Count is the number of requests with this method and path since the last
// Reset; an empty method or path matches any.
func (p *Proxy) Count(method, path string) int {
	n := 0
	for _, r := range p.Requests() {
		if (method == "" || r.Method == method) && (path == "" || r.Path == path) {
			n++
		}
	}
	return n
}

// Connections is the number of connections accepted since the last Reset.
func (p *Proxy) Connections() int { return p.Stats().Connections }

// Stats returns the counts since the last Reset.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Requests = len(p.requests)
	return s
}

// Reset forgets the requests, connections and bytes counted so far. The
// peaks start again from what is open now.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = nil
	p.stats = Stats{
		OpenConnections: p.stats.OpenConnections, PeakConnections: p.stats.OpenConnections,
		OpenRequests: p.stats.OpenRequests, PeakRequests: p.stats.OpenRequests,
	}
}

// WaitIdle waits until no byte has crossed the proxy, either way, for
// quiet, with no request waiting for the rest of its answer; or until
// limit has passed, or ctx is done. It reports whether the proxy went
// idle. A cache may go on fetching after its client has left: its
// traffic is only all counted once it has stopped.
func (p *Proxy) WaitIdle(ctx context.Context, quiet, limit time.Duration) bool {
	poll := min(quiet/10, 50*time.Millisecond)
	deadline := time.Now().Add(limit)
	last, since := p.moved.Load(), time.Now()
	for {
		if p.Stats().OpenRequests > 0 {
			since = time.Now()
		}
		if time.Since(since) >= quiet {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(poll):
		}
		if n := p.moved.Load(); n != last {
			last, since = n, time.Now()
		}
	}
}

// Close stops accepting, cuts every open connection and waits for the
// proxy's goroutines to end (at most five seconds).
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		return errors.New("throttling proxy: connections still open 5s after Close")
	}
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(c, time.Now())
	}
}

// track registers c so Close can cut it; false once the proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.open[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.open, c)
}

// record counts a request whose head has been passed on.
func (p *Proxy) record(req *http.Request) *Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &Request{Method: req.Method, Path: req.URL.Path, Range: req.Header.Get("Range"), At: time.Now()}
	p.requests = append(p.requests, r)
	return r
}

// opened counts a request whose first bytes are going to the server. It
// is called by the relay, not by the request reader, which runs beside it
// and may parse a request after the server has answered another.
func (p *Proxy) opened() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.OpenRequests++
	p.stats.PeakRequests = max(p.stats.PeakRequests, p.stats.OpenRequests)
}

// answered closes n requests: their responses ended, or their connection.
func (p *Proxy) answered(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.OpenRequests -= n
}

// countBody adds n bytes of the body of the response to r.
func (p *Proxy) countBody(r *Request, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.BodyBytes += n
	r.BodyBytes += n
}

// connected counts a connection from the client, open until done.
func (p *Proxy) connected() (done func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Connections++
	p.stats.OpenConnections++
	p.stats.PeakConnections = max(p.stats.PeakConnections, p.stats.OpenConnections)
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.stats.OpenConnections--
	}
}

// serve relays one connection. Like TCP, the client may send at once, but
// its first bytes arrive a handshake's round trip later than they would
// on a connection already open.
func (p *Proxy) serve(client net.Conn, accepted time.Time) {
	defer p.wg.Done()
	defer p.untrack(client)
	defer client.Close()
	defer p.connected()()

	server, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		return
	}
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)
	defer server.Close()

	handshake := accepted.Add(p.link.RTT())
	ex := newExchanges()
	requests := newRequestReader(ex, p.record)
	responses := newResponseReader(ex, p.countBody, func() { p.answered(1) })
	defer func() {
		// The request reader ends first: that tells the response
		// reader, which may be waiting for a request, that none is
		// coming. Then what was never answered is closed.
		requests.close()
		responses.close()
		p.answered(ex.unanswered())
	}()

	// awaiting is set as a request's bytes go to the server, and
	// cleared by the first byte of its answer: HTTP/1.1 without
	// pipelining, as nginx and Go send it, starts each response only
	// after its request, and sends the next request only after the
	// whole of the previous response. It is set before the write, so
	// that however the goroutines are scheduled, no answer can be read
	// before it.
	var awaiting atomic.Bool
	var both sync.WaitGroup
	both.Add(1)
	go func() {
		defer both.Done()
		p.relay(server, client, direction{
			due: func(read time.Time) time.Time {
				return later(read, handshake).Add(p.link.RTT() / 2)
			},
			tee: requests,
			sending: func() {
				if !awaiting.Swap(true) {
					// The first bytes of a request.
					ex.start()
					p.opened()
				}
			},
		})
	}()
	p.relay(client, server, direction{
		due: func(read time.Time) time.Time {
			return read.Add(p.link.RTT() / 2)
		},
		tee:            responses,
		startsResponse: func() bool { return awaiting.Swap(false) },
	})
	both.Wait()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

type chunk struct {
	b    []byte
	read time.Time
	// startsResponse marks the first bytes of a response, which wait for
	// the link's first-byte delay.
	startsResponse bool
}

// direction is one way of a connection through the proxy.
type direction struct {
	// due is when a chunk read at a given time may be written.
	due func(read time.Time) time.Time
	// tee, when set, is given every byte once it has been written to
	// the other side: it sees what was passed on, not what was read.
	tee io.Writer
	// startsResponse, when set, is asked as each chunk is read whether
	// it is the first of a response.
	startsResponse func() bool
	// sending, when set, is called before each chunk is written.
	sending func()
}

// relay copies src to dst through a delay line: a chunk read at t is
// written at d.due(t) (later by the link's first-byte delay when it
// starts a response), then paced at the link's rate. At src's end, dst's
// write side is closed, so each direction ends on its own, as TCP's
// half-close does; an error on either side cuts both.
func (p *Proxy) relay(dst, src net.Conn, d direction) {
	queue := make(chan chunk, queueChunks)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, chunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				c := chunk{b: buf[:n], read: time.Now()}
				c.startsResponse = d.startsResponse != nil && d.startsResponse()
				queue <- c
			}
			if err != nil {
				return
			}
		}
	}()

	pace := pacer{tee: d.tee, moved: &p.moved}
	for c := range queue {
		due := d.due(c.read)
		if c.startsResponse {
			due = due.Add(p.link.FirstByteDelay())
		}
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		if d.sending != nil {
			d.sending()
		}
		if err := pace.write(dst, c.b, p.link); err != nil {
			// The reader may be blocked on a full queue: cut src so it
			// returns, and drain what it had queued.
			src.Close()
			dst.Close()
			for range queue {
			}
			return
		}
	}
	if tcp, ok := dst.(*net.TCPConn); ok {
		_ = tcp.CloseWrite()
	}
}

// pacer spaces writes so that a connection's throughput stays under the
// link's cap. A connection that was idle starts afresh instead of
// spending saved-up credit in a burst. What it has written goes on to
// tee, when set, and is added to moved.
type pacer struct {
	next  time.Time // when the next byte may be sent
	tee   io.Writer
	moved *atomic.Int64
}

func (pc *pacer) write(dst io.Writer, b []byte, link *Link) error {
	for len(b) > 0 {
		n := len(b)
		if rate := link.BytesPerSecond(); rate > 0 {
			n = min(n, int(max(rate*int64(paceSlice)/int64(time.Second), 1)))
			now := time.Now()
			if pc.next.Before(now.Add(-paceSlice)) {
				pc.next = now
			}
			if wait := pc.next.Sub(now); wait > 0 {
				time.Sleep(wait)
			}
			pc.next = pc.next.Add(time.Duration(int64(n) * int64(time.Second) / rate))
		}
		written, err := dst.Write(b[:n])
		if written > 0 {
			pc.moved.Add(int64(written))
			if pc.tee != nil {
				_, _ = pc.tee.Write(b[:written])
			}
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
