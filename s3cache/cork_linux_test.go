package s3cache

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
)

// TestDirectHitsLeaveTheSocketUncorked serves hits through directBody on
// connections that rememberConn made reachable, and checks every byte
// arrives and that TCP_CORK is off again once the response is out:
// a cork left on would hold the next response's last frame for 200 ms.
func TestDirectHitsLeaveTheSocketUncorked(t *testing.T) {
	data := objectBytes(3*blockSize + 17)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	var mu sync.Mutex
	var conns []*net.TCPConn
	srv := httptest.NewUnstartedServer(handlerFor(h))
	srv.Config.ConnContext = rememberConn
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns = append(conns, c.(*net.TCPConn))
			mu.Unlock()
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)

	get(t, srv.URL+"/v/a.mp4")
	waitStored(t, h, "v/a.mp4")
	for _, rng := range []string{"", "bytes=1000-", "bytes=0-99"} {
		var headers []string
		want := data
		if rng != "" {
			headers = []string{"Range", rng}
			want = map[string][]byte{"bytes=1000-": data[1000:], "bytes=0-99": data[:100]}[rng]
		}
		resp, body := get(t, srv.URL+"/v/a.mp4", headers...)
		if resp.Header.Get("X-Cache-Status") != "HIT" || !bytes.Equal(body, want) {
			t.Fatalf("%q: %d %s, %d bytes", rng, resp.StatusCode, resp.Header.Get("X-Cache-Status"), len(body))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) == 0 {
		t.Fatal("no connection seen")
	}
	for _, c := range conns {
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var corked int
		var gerr error
		raw.Control(func(fd uintptr) {
			corked, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK)
		})
		if gerr != nil || corked != 0 {
			t.Fatalf("TCP_CORK after the response = %d (%v), want 0", corked, gerr)
		}
	}
}
