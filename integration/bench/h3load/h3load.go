// Package h3load drives an HTTP/3 server with a fixed number of QUIC
// connections, each keeping a fixed number of requests in flight, for a
// fixed time, and counts what came back: the HTTP/3 counterpart of
// h2load, whose Debian build has no QUIC. It uses quic-go's http3 client,
// the QUIC implementation Caddy itself serves HTTP/3 with.
//
// A Go client costs about as much CPU per request as the Go server it
// drives, so a figure means something only when the server's core, not
// the client's, was the busy one: the caller has to check.
package h3load

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// Options is one run.
type Options struct {
	// URL is what every request asks for: https://host:port/path, on
	// loopback.
	URL string
	// Connections is how many QUIC connections are opened, each from
	// its own UDP socket; Streams how many requests each keeps in flight.
	Connections, Streams int
	// WarmUp is how long the run goes before it starts counting, so that
	// the count starts with every connection busy; Duration how long it
	// counts.
	WarmUp, Duration time.Duration
	// TLS is the client's TLS configuration (the bench's root).
	TLS *tls.Config
}

// Result is what a run counted, after its warm-up.
type Result struct {
	// Requests are the answers received whole within the counted time,
	// whatever their status; Non2xx those whose status was not 2xx.
	Requests int64 `json:"requests"`
	Non2xx   int64 `json:"non_2xx"`
	// Errors are requests that failed: no answer, or a body cut short.
	Errors         int64         `json:"errors"`
	BodyBytes      int64         `json:"body_bytes"`
	Duration       time.Duration `json:"duration_ns"`
	RequestsPerSec float64       `json:"requests_per_sec"`
	// Protocol is the one the answers came over: "HTTP/3.0".
	Protocol string `json:"protocol"`
}

// Run opens the connections, checks that each answers a first request
// over HTTP/3, then drives them for o.WarmUp and o.Duration. It stops
// by itself after that, or when ctx ends.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Connections < 1 || o.Streams < 1 || o.Duration <= 0 {
		return Result{}, errors.New("h3load: connections, streams and duration must be positive")
	}
	transports := make([]*http3.Transport, o.Connections)
	for i := range transports {
		transports[i] = &http3.Transport{TLSClientConfig: o.TLS.Clone(), DisableCompression: true}
	}
	defer func() {
		for _, t := range transports {
			_ = t.Close()
		}
	}()
	var res Result
	for _, t := range transports {
		status, proto, _, err := fetch(ctx, t, o.URL)
		if err != nil {
			return res, fmt.Errorf("h3load: first request to %s: %w", o.URL, err)
		}
		if status < 200 || status > 299 {
			return res, fmt.Errorf("h3load: first request to %s: status %d", o.URL, status)
		}
		res.Protocol = proto
	}

	runCtx, cancel := context.WithTimeout(ctx, o.WarmUp+o.Duration)
	defer cancel()
	start := time.Now()
	countFrom, countUntil := start.Add(o.WarmUp), start.Add(o.WarmUp+o.Duration)
	var requests, non2xx, errs, body atomic.Int64
	var wg sync.WaitGroup
	for _, t := range transports {
		for range o.Streams {
			wg.Go(func() {
				for runCtx.Err() == nil {
					status, _, n, err := fetch(runCtx, t, o.URL)
					now := time.Now()
					if now.Before(countFrom) || now.After(countUntil) {
						continue
					}
					switch {
					case runCtx.Err() != nil:
						// Cut off by the end of the run, not the server.
					case err != nil:
						errs.Add(1)
					default:
						requests.Add(1)
						body.Add(n)
						if status < 200 || status > 299 {
							non2xx.Add(1)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Requests, res.Non2xx, res.Errors, res.BodyBytes = requests.Load(), non2xx.Load(), errs.Load(), body.Load()
	res.Duration = o.Duration
	res.RequestsPerSec = float64(res.Requests) / o.Duration.Seconds()
	return res, nil
}

// fetch makes one request and reads the body whole, which must be as
// long as its Content-Length says.
func fetch(ctx context.Context, t *http3.Transport, url string) (status int, proto string, bodyBytes int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", 0, err
	}
	resp, err := t.RoundTrip(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("%d body bytes of %d", n, resp.ContentLength)
	}
	return resp.StatusCode, resp.Proto, n, err
}
