package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Media is read-only: every method but GET and HEAD is a 405 naming the
// two, before S3 or the cache is involved, whatever body comes with it.
// The requests are written byte for byte so that methods no client
// library sends, and bodies the server never reads, reach it as sent.
func TestOtherMethodsGet405WithoutTouchingS3(t *testing.T) {
	load(t, siteConfig(cacheBlock(t.TempDir())))
	path := urlPath(s3test.KeyOriginalPNG)
	methods := []string{
		http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions,
		http.MethodTrace, http.MethodConnect, "PROPFIND", "MKCOL", "PURGE", "BAN", "get", "Get", "FOO",
		strings.Repeat("X", 32), // Caddy refuses longer ones itself
	}
	bodies := []struct {
		name    string
		headers string
		body    string
	}{
		{"no body", "", ""},
		{"small body", "Content-Type: application/xml\r\nContent-Length: 46\r\n", "<Delete><Object><Key>x</Key></Object></Delete>"},
		{"chunked body", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"},
		{"large body", "Content-Length: 8388608\r\n", strings.Repeat("x", 8<<20)},
		{"large chunked body", "Transfer-Encoding: chunked\r\n", strings.Repeat(fmt.Sprintf("%x\r\n%s\r\n", 1<<20, strings.Repeat("y", 1<<20)), 8) + "0\r\n\r\n"},
		{"expect 100-continue", "Expect: 100-continue\r\nContent-Length: 1048576\r\n", strings.Repeat("z", 1<<20)},
	}
	for _, method := range methods {
		for _, b := range bodies {
			if method == http.MethodConnect && b.body != "" {
				continue // a CONNECT's "body" is the tunnel
			}
			name := fmt.Sprintf("%.12s %s", method, b.name)
			t.Run(name, func(t *testing.T) {
				defer recordAbuse(t, "methods and request bodies", name)
				env.proxy.Reset()
				target := path
				if method == http.MethodConnect {
					target = env.caddyAddr()
				}
				r := rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n%s",
					method, target, env.caddyAddr(), b.headers, b.body))
				wantEmptyError(t, r, http.StatusMethodNotAllowed)
				if got := r.header.Get("Allow"); got != "GET, HEAD" {
					t.Errorf("Allow = %q, want %q", got, "GET, HEAD")
				}
				wantS3Requests(t, 0)
			})
		}
	}
}

// A body on a GET or HEAD means nothing (RFC 9110, section 9.3.1): it is
// not read, and the object is served as usual.
func TestBodiesOnGetAndHeadAreIgnored(t *testing.T) {
	load(t, siteConfig(cacheBlock(t.TempDir())))
	obj := env.objects.Get(s3test.KeyOneMB)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, b := range []struct{ name, headers, body string }{
			{"small body", "Content-Length: 5\r\n", "hello"},
			{"chunked body", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"},
			{"large body", "Content-Length: 2097152\r\n", strings.Repeat("x", 2<<20)},
		} {
			name := method + " " + b.name
			t.Run(name, func(t *testing.T) {
				defer recordAbuse(t, "methods and request bodies", name)
				r := rawExchange(t, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n%s",
					method, urlPath(obj.Key), env.caddyAddr(), b.headers, b.body))
				if method == http.MethodHead {
					if r.status != http.StatusOK || r.length != obj.Size || len(r.body) != 0 {
						t.Errorf("HEAD: status %d, Content-Length %d, %d body bytes; want 200, %d, none", r.status, r.length, len(r.body), obj.Size)
					}
					return
				}
				if r.status != http.StatusOK || r.length != obj.Size {
					t.Fatalf("status %d, Content-Length %d; want 200 and %d", r.status, r.length, obj.Size)
				}
				// Go's server answers a request whose large body it did
				// not read and then resets the connection, which can cut
				// the answer short (a plain net/http server does the
				// same). The client sees a broken body, never wrong bytes.
				if r.readErr == nil || b.name != "large body" {
					wantBody(t, r, http.StatusOK, obj.Body)
				} else if len(r.body) >= len(obj.Body) {
					t.Errorf("body error %v after the whole object", r.readErr)
				}
				recordBytes(t, abuseArea, "methods and request bodies", int64(len(r.body)), mismatches(r.body, obj.Body[:min(len(r.body), len(obj.Body))]))
			})
		}
	}
}
