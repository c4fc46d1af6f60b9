package s3cache

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// limitedOrigin bounds how many S3 requests one handler has in flight:
// fills, pass-throughs, revalidations and resumes alike. A request holds
// its slot until its body is closed, so a slow 20 MB fill counts for as
// long as it streams.
//
// Without a bound, a scan of distinct cold keys (a crawler, or someone
// busting the cache on purpose) becomes as many concurrent S3 GETs: a cost
// and rate-limit problem on a paid bucket, and file descriptors and
// goroutines here. Varnish answers the same problem with a backend's
// max_connections; nginx has only a per-server connection cap. A request
// that finds every slot busy waits up to queueTimeout for one, then fails
// with a 503 (Retry-After) or, when the cache has a stale copy, gets that.
type limitedOrigin struct {
	origin
	slots        chan struct{}
	queueTimeout time.Duration
	onBusy       func() // counts refusals; may be nil
}

func newLimitedOrigin(o origin, limit int, queueTimeout time.Duration, onBusy func()) *limitedOrigin {
	return &limitedOrigin{origin: o, slots: make(chan struct{}, limit), queueTimeout: queueTimeout, onBusy: onBusy}
}

func (o *limitedOrigin) fetch(ctx context.Context, req originRequest) (*originResponse, error) {
	if err := o.acquire(ctx, req); err != nil {
		return nil, err
	}
	resp, err := o.origin.fetch(ctx, req)
	if err != nil || resp.body == nil {
		o.release()
		return resp, err
	}
	resp.body = &slotBody{ReadCloser: resp.body, release: o.release}
	return resp, nil
}

// closedEarlyGrace is how long the slot of a request whose body was closed
// before its end stays taken: S3 goes on sending until it notices the
// connection closed, about a round trip later, and until then the request
// is still open at the wire.
const closedEarlyGrace = 250 * time.Millisecond

func (o *limitedOrigin) acquire(ctx context.Context, req originRequest) error {
	select {
	case o.slots <- struct{}{}:
		return nil
	default:
	}
	if req.noQueue {
		return &originError{status: http.StatusServiceUnavailable, busy: true, op: req.op(), reason: "every S3 slot is taken"}
	}
	timer := time.NewTimer(o.queueTimeout)
	defer timer.Stop()
	select {
	case o.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &originError{status: http.StatusBadGateway, op: req.op(), reason: "request canceled while waiting for an S3 slot"}
	case <-timer.C:
		if o.onBusy != nil {
			o.onBusy()
		}
		return &originError{status: http.StatusServiceUnavailable, timeout: true, busy: true, op: req.op(),
			reason: "every S3 slot (max_concurrent_fills) stayed busy for " + o.queueTimeout.String()}
	}
}

func (o *limitedOrigin) release() { <-o.slots }

// slotBody gives the slot back when the body is closed, once: at once for
// a body read to its end, after closedEarlyGrace for one cut short.
type slotBody struct {
	io.ReadCloser
	once    sync.Once
	release func()
	// ended is set by Read, and read by Close, which may come from
	// another goroutine while a Read is blocked (closing the body is how
	// a spooled chunk's reader is stopped).
	ended atomic.Bool
}

func (b *slotBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.ended.Store(true)
	}
	return n, err
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		if b.ended.Load() {
			b.release()
		} else {
			time.AfterFunc(closedEarlyGrace, b.release)
		}
	})
	return err
}
