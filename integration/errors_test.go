package integration

import (
	"net/http"
	"testing"

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
// careless pass-through shows up. TestS3FaultMatrix (reliability_s3_test.go)
// has the faults that are not an S3 answer: down, hung, unreachable, cut,
// stalled and wrong-length bodies, each with and without a cache.
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
			recordFault(t, s3FaultsArea, "status mapping: "+c.name, !t.Failed(), "see the test's errors")
		})
	}
}
