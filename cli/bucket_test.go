package cli

import (
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// TestEndpointRulesAgreeWithTheHandler: sync and verify accept exactly the
// endpoints a site accepts, so a bucket migrated with one --endpoint is
// served with the same endpoint.
func TestEndpointRulesAgreeWithTheHandler(t *testing.T) {
	for endpoint, want := range map[string]bool{
		"https://s3.fr-par.scw.cloud":     true,
		"https://s3.fr-par.scw.cloud/":    true,
		"http://127.0.0.1:9000":           true,
		"https://s3.example.com/mybucket": false,
		"https://key:secret@s3.example":   false,
		"https://s3.example?x-id=1":       false,
		"https://s3.example#frag":         false,
		"ftp://s3.example":                false,
		"s3.example.com":                  false,
		"https://":                        false,
		"http:s3.example":                 false,
	} {
		flags := BucketFlags{Source: "/srv", Bucket: "b", Endpoint: endpoint}
		cliErr := flags.normalize()
		h := s3cache.Handler{Bucket: "b", Endpoint: endpoint}
		handlerErr := h.Validate()
		if (cliErr == nil) != want || (handlerErr == nil) != want {
			t.Errorf("endpoint %q: sync says %v, the handler %v; want accepted=%v", endpoint, cliErr, handlerErr, want)
		}
	}
}
