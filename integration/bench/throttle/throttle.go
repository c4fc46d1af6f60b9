// Package throttle makes a loopback S3 server look like a remote one. A
// Proxy is a TCP proxy on 127.0.0.1 that delays every byte by half a round
// trip in each direction, charges a new connection one more round trip for
// its handshake, and caps each connection's bandwidth; it also reads the
// HTTP requests going through it, so a benchmark can count the S3 GETs a
// cache made.
//
// It works on bytes, not on HTTP messages: what nginx and Caddy send reaches
// S3 unchanged, keep-alive and all, and a server that opens a connection per
// request (nginx's default towards an upstream) pays for it as it would on
// a real link.
package throttle

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link is the shape of the emulated network: one Link can serve several
// proxies, and changing it takes effect at once, on connections already
// open too (a benchmark slows the link between two scenarios while the
// servers keep their connections to S3).
type Link struct {
	rtt  atomic.Int64 // nanoseconds
	rate atomic.Int64 // bytes per second per connection, 0 for no cap
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

// Request is one HTTP request that went through a proxy.
type Request struct {
	Method string
	// Path is the request target's path, as sent ("/bucket/key").
	Path string
	// At is when the request's head had been passed on to the server.
	At time.Time
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

// Proxy is a running throttling proxy.
type Proxy struct {
	link   *Link
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu          sync.Mutex // guards the fields below
	requests    []Request
	connections int
	open        map[net.Conn]struct{}
	closed      bool
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
	return append([]Request(nil), p.requests...)
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
func (p *Proxy) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.connections
}

// Reset forgets the requests and connections counted so far.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = nil
	p.connections = 0
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

func (p *Proxy) record(method, path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = append(p.requests, Request{Method: method, Path: path, At: time.Now()})
}

// serve relays one connection. Like TCP, the client may send at once, but
// its first bytes arrive a handshake's round trip later than they would
// on a connection already open.
func (p *Proxy) serve(client net.Conn, accepted time.Time) {
	defer p.wg.Done()
	defer p.untrack(client)
	defer client.Close()
	p.mu.Lock()
	p.connections++
	p.mu.Unlock()

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
	requests := newRequestReader(p.record)
	defer requests.close()

	var both sync.WaitGroup
	both.Add(1)
	go func() {
		defer both.Done()
		p.relay(server, client, func(read time.Time) time.Time {
			return later(read, handshake).Add(p.link.RTT() / 2)
		}, requests)
	}()
	p.relay(client, server, func(read time.Time) time.Time {
		return read.Add(p.link.RTT() / 2)
	}, nil)
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
}

// relay copies src to dst through a delay line: a chunk read at t is
// written at due(t), then paced at the link's rate. Every byte is also
// given to tee, when set. At src's end, dst's write side is closed, so
// each direction ends on its own, as TCP's half-close does; an error on
// either side cuts both.
func (p *Proxy) relay(dst, src net.Conn, due func(time.Time) time.Time, tee io.Writer) {
	queue := make(chan chunk, queueChunks)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, chunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{b: buf[:n], read: time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()

	var pace pacer
	for c := range queue {
		if wait := time.Until(due(c.read)); wait > 0 {
			time.Sleep(wait)
		}
		if tee != nil {
			_, _ = tee.Write(c.b)
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
// spending saved-up credit in a burst.
type pacer struct {
	next time.Time // when the next byte may be sent
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
		if _, err := dst.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
