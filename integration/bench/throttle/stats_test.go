package throttle

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitCounted waits until the proxy has counted everything it passed on:
// its message readers run beside the relay.
func waitCounted(t *testing.T, p *Proxy) {
	t.Helper()
	if !p.WaitIdle(context.Background(), 50*time.Millisecond, 5*time.Second) {
		t.Fatalf("the proxy did not go idle: %+v", p.Stats())
	}
}

func TestBodyBytesCountWhatResponseBodiesCarried(t *testing.T) {
	type request struct {
		method, path string
		header       http.Header
	}
	for _, tc := range []struct {
		name     string
		rate     int64
		requests []request
		want     []int64 // body bytes of each response
	}{
		{name: "one GET", requests: []request{{method: "GET", path: "/size/1000"}}, want: []int64{1000}},
		{name: "a HEAD announces a body it does not carry", requests: []request{{method: "HEAD", path: "/size/5000"}}, want: []int64{0}},
		{
			name: "kept-alive GETs around a HEAD",
			requests: []request{
				{method: "GET", path: "/size/1"}, {method: "HEAD", path: "/size/100000"},
				{method: "GET", path: "/size/100000"}, {method: "GET", path: "/size/0"},
			},
			want: []int64{1, 0, 100_000, 0},
		},
		{name: "a chunked body counts its data only", requests: []request{{method: "GET", path: "/chunked/70000"}}, want: []int64{70_000}},
		{name: "a suffix range", requests: []request{{method: "GET", path: "/size/1000000", header: http.Header{"Range": {"bytes=-500"}}}}, want: []int64{500}},
		{name: "a first-byte range, then the object", requests: []request{
			{method: "GET", path: "/size/300000", header: http.Header{"Range": {"bytes=0-0"}}},
			{method: "GET", path: "/size/300000"},
		}, want: []int64{1, 300_000}},
		{name: "304 Not Modified", requests: []request{{method: "GET", path: "/size/10", header: http.Header{"If-None-Match": {`"x"`}}}}, want: []int64{0}},
		{name: "a capped link", rate: 4_000_000, requests: []request{{method: "GET", path: "/size/1000000"}, {method: "GET", path: "/size/1234567"}}, want: []int64{1_000_000, 1_234_567}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, origin(t), NewLink(0, tc.rate))
			client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableCompression: true}}
			defer client.CloseIdleConnections()
			var read int64
			for _, r := range tc.requests {
				req, _ := http.NewRequest(r.method, p.URL()+r.path, nil)
				for k, v := range r.header {
					req.Header[k] = v
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				read += n
			}
			waitCounted(t, p)
			var want int64
			for i, r := range p.Requests() {
				if i < len(tc.want) && r.BodyBytes != tc.want[i] {
					t.Errorf("request %d (%s %s): %d body bytes counted, want %d", i, r.Method, r.Path, r.BodyBytes, tc.want[i])
				}
				if r.Range != tc.requests[i].header.Get("Range") {
					t.Errorf("request %d: Range %q recorded, want %q", i, r.Range, tc.requests[i].header.Get("Range"))
				}
			}
			for _, n := range tc.want {
				want += n
			}
			s := p.Stats()
			if s.BodyBytes != want || read != want {
				t.Errorf("body bytes counted %d, read by the client %d, want %d", s.BodyBytes, read, want)
			}
			if s.Requests != len(tc.requests) || s.Connections != 1 || s.OpenRequests != 0 {
				t.Errorf("stats %+v, want %d requests on 1 connection, none open", s, len(tc.requests))
			}
			p.Reset()
			if s := p.Stats(); s.BodyBytes != 0 || s.Requests != 0 {
				t.Errorf("after Reset: %+v", s)
			}
		})
	}
}

func TestPeaksAreWhatWasOpenAtOnce(t *testing.T) {
	for _, clients := range []int{1, 5, 40} {
		t.Run(strconv.Itoa(clients), func(t *testing.T) {
			var arrived atomic.Int32
			all := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Every request is held until all have arrived, so all are
				// open at once.
				if arrived.Add(1) == int32(clients) {
					close(all)
				}
				select {
				case <-all:
				case <-time.After(5 * time.Second):
				}
				_, _ = w.Write([]byte("done"))
			}))
			defer srv.Close()
			p := listen(t, srv, NewLink(0, 0))
			client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					if n, _ := get(t, client, p.URL()+"/"); n != 4 {
						t.Errorf("got %d bytes, want 4", n)
					}
				})
			}
			wg.Wait()
			waitCounted(t, p)
			// The client closes each connection after its response;
			// the proxy sees it a moment later.
			deadline := time.Now().Add(2 * time.Second)
			for p.Stats().OpenConnections > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			want := Stats{Requests: clients, Connections: clients, BodyBytes: 4 * int64(clients), PeakConnections: clients, PeakRequests: clients}
			if s := p.Stats(); s != want {
				t.Errorf("stats %+v, want %+v", s, want)
			}
			p.Reset()
			if s := p.Stats(); s != (Stats{}) {
				t.Errorf("after Reset with nothing open: %+v, want zeros", s)
			}
		})
	}
}

func TestResetKeepsWhatIsStillOpen(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = w.Write([]byte("12345"))
		w.(http.Flusher).Flush()
		<-release
		_, _ = w.Write([]byte("67890"))
	}))
	defer srv.Close()
	p := listen(t, srv, NewLink(0, 0))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(p.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().BodyBytes < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.Reset()
	if s := p.Stats(); s != (Stats{OpenConnections: 1, PeakConnections: 1, OpenRequests: 1, PeakRequests: 1}) {
		t.Errorf("after Reset mid-response: %+v, want the open request and connection kept", s)
	}
	if p.WaitIdle(context.Background(), 20*time.Millisecond, 200*time.Millisecond) {
		t.Error("WaitIdle reported idle while a response was unfinished")
	}
	close(release)
	if n, err := io.Copy(io.Discard, resp.Body); n != 5 || err != nil {
		t.Fatalf("rest of the body: %d bytes, %v", n, err)
	}
	waitCounted(t, p)
	if s := p.Stats(); s.BodyBytes != 5 || s.Requests != 0 || s.OpenRequests != 0 {
		t.Errorf("after the response ended: %+v, want the 5 bytes sent since the Reset and nothing open", s)
	}
}

// A client that hangs up mid-body is charged what the proxy passed on to
// it, which is more than it read by what was in flight when it left: not
// an exact count, but bounded by the link's pacing.
func TestClientThatHangsUpIsChargedWhatWasPassedOn(t *testing.T) {
	const rate = 1_000_000
	p := listen(t, origin(t), NewLink(0, rate))
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("GET /size/5000000 HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var read int64
	buf := make([]byte, 64<<10)
	for stop := time.Now().Add(500 * time.Millisecond); time.Now().Before(stop); {
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _ := conn.Read(buf)
		read += int64(n)
	}
	conn.Close()
	waitCounted(t, p)
	s := p.Stats()
	// read includes the response head (under 200 bytes); one pacing
	// slice (10 ms, 10 KB at 1 MB/s) may be written after the client
	// left, and a little more on a loaded machine.
	if s.BodyBytes < read-200 || s.BodyBytes > read+100_000 {
		t.Errorf("charged %d body bytes; the client read %d bytes in all", s.BodyBytes, read)
	}
	if s.OpenRequests != 0 {
		t.Errorf("%d requests still open after the connection was cut", s.OpenRequests)
	}
}

func TestFirstByteDelayHoldsEveryResponse(t *testing.T) {
	for _, delay := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			link := NewLink(0, 0)
			link.SetFirstByteDelay(delay)
			p := listen(t, origin(t), link)
			client := &http.Client{Transport: &http.Transport{Proxy: nil}}
			defer client.CloseIdleConnections()
			for _, path := range []string{"/size/10", "/size/200000", "/chunked/1000"} {
				n, took := get(t, client, p.URL()+path)
				if took < delay || took > delay+250*time.Millisecond {
					t.Errorf("GET %s (%d bytes) took %s, want about %s", path, n, took, delay)
				}
			}
			if got := p.Connections(); got != 1 {
				t.Errorf("connections = %d, want 1: the delay must hold each response, not the connection", got)
			}
			link.SetFirstByteDelay(0)
			if _, took := get(t, client, p.URL()+"/size/10"); took > 200*time.Millisecond {
				t.Errorf("after the delay was removed, a GET took %s", took)
			}
		})
	}
}

func TestWaitIdleWaitsForTheEndOfTraffic(t *testing.T) {
	p := listen(t, origin(t), NewLink(0, 1_000_000))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	done := make(chan struct{})
	go func() {
		defer close(done)
		get(t, client, p.URL()+"/size/600000") // about 600 ms
	}()
	time.Sleep(50 * time.Millisecond)
	if p.WaitIdle(context.Background(), 100*time.Millisecond, 200*time.Millisecond) {
		t.Error("WaitIdle reported idle in the middle of a transfer")
	}
	start := time.Now()
	if !p.WaitIdle(context.Background(), 100*time.Millisecond, 5*time.Second) {
		t.Fatal("WaitIdle did not see the transfer end")
	}
	<-done
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("WaitIdle returned after %s, before the transfer could have ended", took)
	}
	if s := p.Stats(); s.BodyBytes != 600_000 {
		t.Errorf("body bytes %d, want 600000", s.BodyBytes)
	}
}
