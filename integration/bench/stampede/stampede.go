// Package stampede releases many HTTP clients at the same instant on a
// few URLs, the way a post with a video reaches every follower's timeline
// at once, and records what each client saw: time to first byte, time to
// last byte, status, X-Cache-Status, and whether the body's SHA-256 is
// the expected one.
//
// Every client dials its own connection first; only when all of them are
// connected are the requests sent, together, so the measurement starts at
// one known instant and does not include connection set-up.
package stampede

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Target is one URL and the body it must return.
type Target struct {
	URL    string
	SHA256 string // hex
	Size   int64
}

// Options configure Run.
type Options struct {
	// Targets are assigned to clients in turn: client i asks for
	// Targets[i % len(Targets)].
	Targets []Target
	// Clients is how many clients are released at once.
	Clients int
	// Timeout bounds the whole run, dialling included; a client not done
	// by then is cut and counted as failed.
	Timeout time.Duration
	// HangUp makes every client close its connection as soon as it has
	// the response headers, as a viewer scrolling past a video does:
	// what it keeps is the status and whatever body bytes came with the
	// headers. Bodies are not checked.
	HangUp bool
}

// Client is what one client saw. Times are from the common release.
type Client struct {
	Target      int           `json:"target"`
	Status      int           `json:"status"`
	CacheStatus string        `json:"cache_status,omitempty"`
	Bytes       int64         `json:"bytes"`
	TTFB        time.Duration `json:"ttfb_ns"`
	TTLB        time.Duration `json:"ttlb_ns"`
	BodyOK      bool          `json:"body_ok"`
	// HungUp is set when the client left after the headers (HangUp);
	// Bytes are then the body bytes that had arrived with them.
	HungUp bool   `json:"hung_up,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Result is a whole run.
type Result struct {
	Clients []Client `json:"clients"`
	// Wall is from the release to the last client's last byte.
	Wall time.Duration `json:"wall_ns"`
}

// Failed lists the clients that did not get a 200 with the right bytes
// (or, those that hung up, a 200's headers), one line each, for an error
// message.
func (r Result) Failed() []string {
	return r.describe(func(c Client) bool {
		return c.Status != http.StatusOK || !(c.BodyOK || c.HungUp) || c.Error != ""
	})
}

// WrongBodies lists the clients that got a 200 with the wrong bytes: a
// complete-looking answer that is not the object, or one cut short. A
// client that got another status, or none, is not in it.
func (r Result) WrongBodies() []string {
	return r.describe(func(c Client) bool {
		return c.Status == http.StatusOK && !c.HungUp && !c.BodyOK
	})
}

func (r Result) describe(match func(Client) bool) []string {
	var out []string
	for i, c := range r.Clients {
		if match(c) {
			out = append(out, fmt.Sprintf("client %d (target %d): status %d, %d bytes, body ok %t, %s",
				i, c.Target, c.Status, c.Bytes, c.BodyOK, c.Error))
		}
	}
	return out
}

// Statuses counts the clients by the status they got; 0 for those that
// got no response.
func (r Result) Statuses() map[int]int {
	out := map[int]int{}
	for _, c := range r.Clients {
		out[c.Status]++
	}
	return out
}

// BodyBytes is the body bytes all clients received.
func (r Result) BodyBytes() int64 {
	var n int64
	for _, c := range r.Clients {
		n += c.Bytes
	}
	return n
}

// TTFBs returns every client's time to first byte, sorted.
func (r Result) TTFBs() []time.Duration {
	return sorted(r.Clients, func(c Client) time.Duration { return c.TTFB })
}

// TTLBs returns every client's time to last byte, sorted.
func (r Result) TTLBs() []time.Duration {
	return sorted(r.Clients, func(c Client) time.Duration { return c.TTLB })
}

func sorted(cs []Client, f func(Client) time.Duration) []time.Duration {
	out := make([]time.Duration, len(cs))
	for i, c := range cs {
		out[i] = f(c)
	}
	slices.Sort(out)
	return out
}

// Percentile returns the p-th percentile (0–100) of sorted durations, by
// the nearest-rank method; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// Run dials opts.Clients connections, releases their requests together
// and waits for every response to end.
func Run(ctx context.Context, opts Options) (Result, error) {
	if opts.Clients <= 0 || len(opts.Targets) == 0 {
		return Result{}, errors.New("stampede: need at least one client and one target")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()

	requests := make([][]byte, len(opts.Targets))
	addrs := make([]string, len(opts.Targets))
	for i, t := range opts.Targets {
		u, err := url.Parse(t.URL)
		if err != nil || u.Scheme != "http" {
			return Result{}, fmt.Errorf("stampede: target %q must be an http:// URL", t.URL)
		}
		addrs[i] = u.Host
		requests[i] = fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mediabench-stampede\r\nConnection: close\r\n\r\n",
			u.RequestURI(), u.Host)
	}

	res := Result{Clients: make([]Client, opts.Clients)}
	release := make(chan struct{})
	var dialled, done sync.WaitGroup
	var start time.Time
	dialled.Add(opts.Clients)
	done.Add(opts.Clients)
	for i := range opts.Clients {
		target := i % len(opts.Targets)
		go func() {
			defer done.Done()
			c := &res.Clients[i]
			c.Target = target
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", addrs[target])
			dialled.Done()
			if err != nil {
				c.Error = "dial: " + err.Error()
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(deadline.Add(time.Second)) // a backstop: ctx closes it first
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			defer stop()
			<-release
			fetch(c, conn, requests[target], opts.Targets[target], start, opts.HangUp)
		}()
	}
	dialled.Wait()
	start = time.Now()
	close(release)
	done.Wait()
	for _, c := range res.Clients {
		res.Wall = max(res.Wall, c.TTLB)
	}
	return res, ctx.Err()
}

// fetch sends one request on conn and reads the response into c, or only
// its headers when hangUp is set.
func fetch(c *Client, conn net.Conn, request []byte, want Target, start time.Time, hangUp bool) {
	if _, err := conn.Write(request); err != nil {
		c.Error = "write: " + err.Error()
		return
	}
	fr := &firstByteReader{r: conn}
	br := bufio.NewReaderSize(fr, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if !fr.first.IsZero() {
		c.TTFB = fr.first.Sub(start)
	}
	if err != nil {
		c.Error = "response: " + err.Error()
		c.TTLB = time.Since(start)
		return
	}
	defer resp.Body.Close()
	c.Status = resp.StatusCode
	c.CacheStatus = resp.Header.Get("X-Cache-Status")
	if hangUp {
		// Closed now, before the deferred Close of the body, which would
		// otherwise read the body to its end.
		conn.Close()
		c.HungUp = true
		c.Bytes = int64(br.Buffered())
		if resp.ContentLength >= 0 {
			c.Bytes = min(c.Bytes, resp.ContentLength)
		}
		c.TTLB = time.Since(start)
		return
	}
	h := sha256.New()
	c.Bytes, err = io.Copy(h, resp.Body)
	c.TTLB = time.Since(start)
	if err != nil {
		c.Error = "body: " + err.Error()
		return
	}
	c.BodyOK = c.Bytes == want.Size && hex.EncodeToString(h.Sum(nil)) == want.SHA256
}

// firstByteReader notes when the first byte of the response arrived.
type firstByteReader struct {
	r     io.Reader
	first time.Time
}

func (f *firstByteReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.first.IsZero() {
		f.first = time.Now()
	}
	return n, err
}
