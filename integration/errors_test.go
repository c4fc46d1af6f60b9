package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

func TestMissingKeyIsAnEmpty404(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, key := range []string{"media_attachments/files/000/000/000/000/original/missing.png", "no such dir/été.png"} {
			t.Run(method+" "+key, func(t *testing.T) {
				env.proxy.Reset()
				r := do(t, method, urlPath(key))
				wantEmptyError(t, r, http.StatusNotFound)
				if got := r.header.Get("X-Cache-Status"); got != "MISS" {
					t.Errorf("X-Cache-Status = %q, want MISS", got)
				}
				// No retries on a definite answer.
				wantS3Requests(t, 1)
			})
		}
	}
}

func TestBadCredentialsAreCleanErrors(t *testing.T) {
	cases := []struct {
		name              string
		access, secretKey string
		status            int
	}{
		{"wrong secret key", env.gateway.AccessKey, "not-the-secret", http.StatusBadGateway},
		// AWS answers an unknown key with 403 InvalidAccessKeyId (see
		// TestS3ErrorStatusMapping), but versitygw answers 404
		// XAdminUserNotFound, and the spec maps an S3 404 to 404.
		{"unknown access key", "AKIDONTEXIST", env.gateway.SecretKey, http.StatusNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			load(t, siteConfig(`
				bucket `+privateBucket+`
				endpoint `+env.proxy.URL()+`
				path_style
				access_key `+c.access+`
				secret_key `+c.secretKey))
			r := do(t, http.MethodGet, urlPath(s3test.KeyOriginalPNG))
			wantEmptyError(t, r, c.status)
			wantNoSecretIn(t, "body", string(r.body))
			for _, v := range r.header {
				for _, s := range v {
					wantNoSecretIn(t, "header", s)
					if containsFold(s, c.secretKey) || containsFold(s, c.access) {
						t.Errorf("header carries a credential: %q", s)
					}
				}
			}
			if env.proxy.Count() < 1 {
				t.Error("S3 was never asked")
			}
		})
	}
}

// The S3 status mapping, with S3 answers injected by the proxy. Each error
// body names the bucket and carries x-amz-* headers and a cookie, so a
// careless pass-through shows up.
func TestS3ErrorStatusMapping(t *testing.T) {
	load(t, siteConfig(blockFor()))
	cases := []struct {
		name   string
		fault  s3test.Fault
		method string
		want   int
	}{
		{"500 is 502", s3test.Fault{Status: 500}, http.MethodGet, http.StatusBadGateway},
		{"503 SlowDown is 502", s3test.Fault{Status: 503, Code: "SlowDown"}, http.MethodGet, http.StatusBadGateway},
		{"403 AccessDenied is 404", s3test.Fault{Status: 403, Code: "AccessDenied"}, http.MethodGet, http.StatusNotFound},
		{"403 SignatureDoesNotMatch is 502", s3test.Fault{Status: 403, Code: "SignatureDoesNotMatch"}, http.MethodGet, http.StatusBadGateway},
		{"403 InvalidAccessKeyId is 502", s3test.Fault{Status: 403, Code: "InvalidAccessKeyId"}, http.MethodGet, http.StatusBadGateway},
		{"404 NoSuchKey is 404", s3test.Fault{Status: 404, Code: "NoSuchKey"}, http.MethodGet, http.StatusNotFound},
		{"HEAD 500 is 502", s3test.Fault{Status: 500}, http.MethodHead, http.StatusBadGateway},
		{"HEAD 404 is 404", s3test.Fault{Status: 404, Code: "NoSuchKey"}, http.MethodHead, http.StatusNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			f := c.fault
			f.Header = http.Header{"Set-Cookie": {"s3session=leak"}, "Access-Control-Allow-Origin": {"https://evil.example"}}
			env.proxy.SetFault(f)
			r := do(t, c.method, urlPath(s3test.KeyOriginalPNG))
			wantEmptyError(t, r, c.want)
			if env.proxy.Count() < 1 {
				t.Error("S3 was never asked")
			}
			t.Logf("S3 requests for one client request: %d", env.proxy.Count())
		})
	}
}

func TestS3DownIs502AndRecovers(t *testing.T) {
	// Straight at versitygw, so the handler itself meets the refused
	// connection.
	load(t, siteConfig(blockAt(env.gateway.Endpoint())))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)

	if err := env.gateway.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.gateway.Start(context.Background()); err != nil {
			t.Errorf("restarting versitygw: %v", err)
		}
	})
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		start := time.Now()
		r := do(t, method, urlPath(obj.Key))
		wantEmptyError(t, r, http.StatusBadGateway)
		if elapsed := time.Since(start); elapsed > 10*time.Second {
			t.Errorf("%s took %s to report a refused connection", method, elapsed)
		}
	}

	// Through the proxy too: it answers 502 itself when S3 is down.
	load(t, siteConfig(blockFor()))
	wantEmptyError(t, do(t, http.MethodGet, urlPath(obj.Key)), http.StatusBadGateway)

	if err := env.gateway.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)
}

func TestHungS3IsA504AfterFirstByteTimeout(t *testing.T) {
	load(t, siteConfig(blockFor("first_byte_timeout 1s")))
	env.proxy.SetFault(s3test.Fault{Delay: 30 * time.Second})
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			start := time.Now()
			r := do(t, method, urlPath(s3test.KeyOriginalPNG))
			elapsed := time.Since(start)
			wantEmptyError(t, r, http.StatusGatewayTimeout)
			if elapsed < 900*time.Millisecond || elapsed > 5*time.Second {
				t.Errorf("answered after %s, want about 1s", elapsed)
			}
		})
	}
}

func TestUnreachableS3IsA504AfterConnectTimeout(t *testing.T) {
	hole, err := s3test.NewBlackhole()
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	load(t, siteConfig(blockAt(hole.Endpoint(), "connect_timeout 1s")))
	start := time.Now()
	r := do(t, http.MethodGet, urlPath(s3test.KeyOriginalPNG))
	elapsed := time.Since(start)
	wantEmptyError(t, r, http.StatusGatewayTimeout)
	if elapsed < 900*time.Millisecond || elapsed > 5*time.Second {
		t.Errorf("answered after %s, want about 1s", elapsed)
	}
}

// A body that breaks mid-way must reach the client as a broken response,
// never as a complete-looking 200 with the wrong bytes.
func TestBodyCutMidwayAbortsTheClient(t *testing.T) {
	load(t, siteConfig(blockFor()))
	for _, c := range []struct {
		key      string
		cutAfter int64
	}{
		{s3test.KeyOneMB, 256 << 10},
		{s3test.KeyThirtyMB, 3 << 20},
		{s3test.KeyCachedMP4, 1},
	} {
		t.Run(c.key, func(t *testing.T) {
			env.proxy.SetFault(s3test.Fault{CutAfter: c.cutAfter})
			wantBrokenResponse(t, env.objects.Get(c.key))
		})
	}
}

func TestBodyStallPastReadTimeoutAbortsTheClient(t *testing.T) {
	load(t, siteConfig(blockFor("read_timeout 1s")))
	obj := env.objects.Get(s3test.KeyOneMB)

	env.proxy.SetFault(s3test.Fault{StallAfter: 256 << 10, Stall: 4 * time.Second})
	start := time.Now()
	wantBrokenResponse(t, obj)
	if elapsed := time.Since(start); elapsed > 3500*time.Millisecond {
		t.Errorf("client held for %s, want the handler to give up after about 1s", elapsed)
	}

	// A pause shorter than read_timeout is fine.
	env.proxy.SetFault(s3test.Fault{StallAfter: 256 << 10, Stall: 300 * time.Millisecond})
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)
}

// wantBrokenResponse requests obj and fails if the client sees it end
// cleanly: either no 200 at all, or a 200 whose body read errors.
func wantBrokenResponse(t *testing.T, obj s3test.Seeded) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, env.baseURL()+urlPath(obj.Key), nil)
	if err != nil {
		t.Fatal(err)
	}
	before := env.proxy.Count()
	resp, err := send(t, func() (*http.Response, error) { return client().Do(req) })
	if err != nil {
		// Aborted before the headers: the client knows it failed. But
		// only after S3 was asked, or the fault was never exercised.
		if env.proxy.Count() == before {
			t.Errorf("request failed before reaching S3: %v", err)
		}
		return
	}
	defer resp.Body.Close()
	n, readErr := io.Copy(io.Discard, resp.Body)
	switch {
	case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent:
		// An error status is honest too, as long as it is one.
		if resp.StatusCode < 500 {
			t.Errorf("status = %d, want a 5xx or an aborted body", resp.StatusCode)
		}
	case readErr == nil:
		t.Errorf("200 ended cleanly after %d of %d bytes (Content-Length %d): a short read disguised as success", n, obj.Size, resp.ContentLength)
	case !errors.Is(readErr, io.ErrUnexpectedEOF):
		t.Logf("body aborted after %d bytes with %v", n, readErr)
	}
}
