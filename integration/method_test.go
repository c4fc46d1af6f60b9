package integration

import (
	"net/http"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

func TestOtherMethodsGet405WithoutTouchingS3(t *testing.T) {
	load(t, siteConfig(blockFor()))
	path := urlPath(s3test.KeyOriginalPNG)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "PROPFIND"} {
		t.Run(method, func(t *testing.T) {
			env.proxy.Reset()
			r := do(t, method, path)
			wantEmptyError(t, r, http.StatusMethodNotAllowed)
			if got := r.header.Get("Allow"); got != "GET, HEAD" {
				t.Errorf("Allow = %q, want %q", got, "GET, HEAD")
			}
			wantS3Requests(t, 0)
		})
	}
}
