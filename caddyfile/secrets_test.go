package caddyfile

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// A config error, the parser's or Validate's, ends up in Caddy's log and
// on the terminal of whoever ran `caddy reload`, so it must point at the
// option without repeating the secret written next to it.
func TestErrorsNeverRepeatASecret(t *testing.T) {
	const secret = "SEKRET-4f1c9a"
	for _, block := range []string{
		"bucket b\naccess_key AK\nsecret_key " + secret + " extra",
		"bucket b\naccess_key AK\nsecret_key " + secret + "\nsecret_key other",
		"bucket b\naccess_key AK\nsecret_key " + secret + " {\nx\n}",
		"bucket b\nanonymous\naccess_key AK\nsecret_key " + secret,
		"bucket b\nsecret_key " + secret,
		"bucket b\naccess_key " + secret,
		"bucket b\naccess_key " + secret + " " + secret,
		"bucket b\npurge_header Cache-Buster-Secret " + secret + " extra",
		"bucket b\npurge_header Cache-Buster-Secret " + secret + "\npurge_header X " + secret,
		"bucket b\npurge_header " + secret,
		"access_key AK\nsecret_key " + secret,
	} {
		input := "s3_media_cache {\n" + block + "\n}"
		t.Run(strings.ReplaceAll(block, "\n", "; "), func(t *testing.T) {
			var h s3cache.Handler
			err := Unmarshal(caddyfile.NewTestDispenser(input), &h)
			if err == nil {
				err = h.Validate() // a value the parser passed on
			}
			if err == nil {
				t.Fatalf("no error for %q", input)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error repeats the secret: %v", err)
			}
		})
	}
}
