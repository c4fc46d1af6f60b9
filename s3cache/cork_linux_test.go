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

// TestHitsLeaveTheSocketUncorked serves hits on connections that
// rememberConn made reachable, plain (directBody) and TLS (checkedBody), and
// checks every byte arrives and that TCP_CORK is off again once the
// response is out: a cork left on would hold the next response's last
// frame for 200 ms.
func TestHitsLeaveTheSocketUncorked(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "TLS"}[tls], func(t *testing.T) {
			testHitsLeaveTheSocketUncorked(t, tls)
		})
	}
}

func testHitsLeaveTheSocketUncorked(t *testing.T, tls bool) {
	data := objectBytes(3*blockSize + 17)
	h := newCachedHandler(t, servingOrigin(data), t.TempDir(), nil)
	var mu sync.Mutex
	var conns []*net.TCPConn
	srv := httptest.NewUnstartedServer(handlerFor(h))
	srv.Config.ConnContext = rememberConn
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
				c = tc.NetConn()
			}
			mu.Lock()
			conns = append(conns, c.(*net.TCPConn))
			mu.Unlock()
		}
	}
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	get := func(t *testing.T, url string, headers ...string) (*http.Response, []byte) {
		t.Helper()
		return mustFetch(t, srv.Client(), url, headers...)
	}

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
