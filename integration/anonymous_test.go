package integration

import (
	"net/http"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// versitygw honours a public-read bucket policy, so anonymous is tested
// for real against publicBucket.
func TestAnonymousReadsAPublicBucket(t *testing.T) {
	load(t, siteConfig(`
		bucket `+publicBucket+`
		endpoint `+env.proxy.URL()+`
		path_style
		anonymous`))
	for _, key := range []string{s3test.KeyOriginalPNG, s3test.KeySmallPNG} {
		obj := env.public.Get(key)
		t.Run(key, func(t *testing.T) {
			env.proxy.Reset()
			r := get(t, urlPath(key))
			wantBody(t, r, http.StatusOK, obj.Body)
			wantMediaHeaders(t, r, "MISS")
			head := do(t, http.MethodHead, urlPath(key))
			if head.status != http.StatusOK || head.length != obj.Size {
				t.Errorf("HEAD: status %d, Content-Length %d; want 200, %d", head.status, head.length, obj.Size)
			}
			for _, req := range env.proxy.Requests() {
				if got := req.Header.Get("Authorization"); got != "" {
					t.Errorf("anonymous request was signed: Authorization %q", got)
				}
			}
		})
	}
	t.Run("missing key", func(t *testing.T) {
		wantEmptyError(t, do(t, http.MethodGet, "/media_attachments/none.png"), http.StatusNotFound)
	})
}

// Unsigned requests to a private bucket get S3's 403 AccessDenied, which
// the client sees as a plain 404.
func TestAnonymousAgainstAPrivateBucketIsAClean404(t *testing.T) {
	load(t, siteConfig(`
		bucket `+privateBucket+`
		endpoint `+env.proxy.URL()+`
		path_style
		anonymous`))
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			env.proxy.Reset()
			r := do(t, method, urlPath(s3test.KeyOriginalPNG))
			wantEmptyError(t, r, http.StatusNotFound)
			wantS3Requests(t, 1)
		})
	}
}
