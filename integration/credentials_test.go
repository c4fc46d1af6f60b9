package integration

import (
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Keys written as {env.*} placeholders are resolved when the handler
// starts, and never end up in the JSON config that the admin API serves.
func TestCredentialsFromEnvPlaceholders(t *testing.T) {
	t.Setenv("S3MC_TEST_ACCESS_KEY", env.gateway.AccessKey)
	t.Setenv("S3MC_TEST_SECRET_KEY", env.gateway.SecretKey)
	caddyfile := siteConfig(`
		bucket ` + privateBucket + `
		endpoint ` + env.proxy.URL() + `
		path_style
		access_key {env.S3MC_TEST_ACCESS_KEY}
		secret_key {env.S3MC_TEST_SECRET_KEY}`)

	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), env.gateway.SecretKey) {
		t.Errorf("the adapted config contains the secret itself:\n%s", cfg)
	}

	load(t, caddyfile)
	obj := env.objects.Get(s3test.KeyAvatarJPEG)
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)
}

// With neither keys nor anonymous, the AWS default credential chain is
// used; here it finds the standard environment variables.
func TestDefaultCredentialChain(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", env.gateway.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.gateway.SecretKey)
	load(t, siteConfig(`
		bucket `+privateBucket+`
		endpoint `+env.proxy.URL()+`
		path_style`))
	obj := env.objects.Get(s3test.KeyAvatarJPEG)
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)
	for _, req := range env.proxy.Requests() {
		if !strings.Contains(req.Header.Get("Authorization"), "Credential="+env.gateway.AccessKey+"/") {
			t.Errorf("request not signed with the environment's key: %q", req.Header.Get("Authorization"))
		}
	}
}
