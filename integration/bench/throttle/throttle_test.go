package throttle

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// origin serves n bytes of 'x' at /size/<n>, with an ETag and Range
// requests answered as S3 does (http.ServeContent), and at /chunked/<n>
// without a Content-Length, in ten flushed pieces.
func origin(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, size, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		n, _ := strconv.Atoi(size)
		body := bytes.Repeat([]byte{'x'}, n)
		if kind == "chunked" {
			for i := range 10 {
				_, _ = w.Write(body[i*n/10 : (i+1)*n/10])
				w.(http.Flusher).Flush()
			}
			return
		}
		w.Header().Set("ETag", `"x"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func listen(t *testing.T, srv *httptest.Server, link *Link) *Proxy {
	t.Helper()
	p, err := Listen(srv.Listener.Addr().String(), link)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func get(t *testing.T, client *http.Client, url string) (int64, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return n, time.Since(start)
}

func TestNewConnectionPaysTwoRoundTripsAndReusedOnePays(t *testing.T) {
	srv := origin(t)
	// Delays are never shorter than the link's; the upper bounds leave
	// room for a loaded CI machine.
	const rtt = 100 * time.Millisecond
	p := listen(t, srv, NewLink(rtt, 0))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()

	_, first := get(t, client, p.URL()+"/size/10")
	_, second := get(t, client, p.URL()+"/size/10")
	if first < 2*rtt || first > 2*rtt+150*time.Millisecond {
		t.Errorf("first request on a new connection took %s, want about 2 RTT (%s)", first, 2*rtt)
	}
	if second < rtt || second > 2*rtt-20*time.Millisecond {
		t.Errorf("second request on the kept-alive connection took %s, want about 1 RTT (%s)", second, rtt)
	}
	if got := p.Connections(); got != 1 {
		t.Errorf("connections = %d, want 1 (keep-alive)", got)
	}
}

func TestBandwidthIsCappedPerConnection(t *testing.T) {
	srv := origin(t)
	const rate = 2_000_000
	p := listen(t, srv, NewLink(0, rate))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()

	n, took := get(t, client, p.URL()+"/size/1000000")
	if n != 1_000_000 {
		t.Fatalf("got %d bytes, want 1000000", n)
	}
	want := 500 * time.Millisecond
	if took < want-50*time.Millisecond || took > 3*want {
		t.Errorf("1 MB at 2 MB/s took %s, want about %s", took, want)
	}
}

func TestLinkChangesApplyToOpenConnections(t *testing.T) {
	srv := origin(t)
	link := NewLink(0, 0)
	p := listen(t, srv, link)
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()

	if _, took := get(t, client, p.URL()+"/size/500000"); took > 350*time.Millisecond {
		t.Errorf("uncapped 500 KB took %s", took)
	}
	link.Set(0, 1_000_000)
	if _, took := get(t, client, p.URL()+"/size/500000"); took < 400*time.Millisecond {
		t.Errorf("500 KB at 1 MB/s on the same connection took %s, want about 500ms", took)
	}
}

func TestRequestsAreCountedOnKeptAliveConnections(t *testing.T) {
	srv := origin(t)
	p := listen(t, srv, NewLink(0, 0))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()

	for range 3 {
		get(t, client, p.URL()+"/size/1")
	}
	get(t, client, p.URL()+"/size/2")
	req, _ := http.NewRequest(http.MethodHead, p.URL()+"/size/2", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// The parser runs beside the relay; give it a moment to report.
	deadline := time.Now().Add(2 * time.Second)
	for p.Count("", "") < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.Count(http.MethodGet, "/size/1"); got != 3 {
		t.Errorf("GET /size/1 counted %d times, want 3", got)
	}
	if got := p.Count(http.MethodGet, ""); got != 4 {
		t.Errorf("GETs counted: %d, want 4", got)
	}
	if got := p.Count(http.MethodHead, "/size/2"); got != 1 {
		t.Errorf("HEAD /size/2 counted %d times, want 1", got)
	}
	p.Reset()
	if got := p.Count("", ""); got != 0 {
		t.Errorf("after Reset: %d requests, want 0", got)
	}
}

func TestCloseCutsOpenConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		// A server that accepts and never answers.
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p, err := Listen(ln.Addr().String(), NewLink(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	time.Sleep(20 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read from a cut connection succeeded")
	}
}
