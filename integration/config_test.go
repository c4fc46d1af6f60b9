package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// loadError adapts a Caddyfile and, if that works, asks the running Caddy
// to load it. It returns the error a user would see, or "" if the config
// was accepted.
func loadError(t *testing.T, caddyfile string) string {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, _, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return err.Error()
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(fmt.Sprintf("http://localhost:%d/load", env.ports.admin), "application/json", strings.NewReader(string(cfg)))
	if err != nil {
		t.Fatalf("posting config to the admin API: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return string(body)
}

func TestBadCaddyfileIsRejectedNamingTheOption(t *testing.T) {
	// Start Caddy with a good config, so load errors come from a running
	// server like an operator's `caddy reload`.
	load(t, siteConfig(blockFor()))
	base := func(lines ...string) string {
		return siteConfig(strings.Join(lines, "\n"))
	}
	creds := []string{"access_key a", "secret_key b"}
	const block = "s3_media_cache {"
	cases := []struct {
		name      string
		caddyfile string
		want      []string // all must appear in the error
		// atLine, when set, is the text of the offending line, whose
		// "Caddyfile:<line>" the error must name: the option's own line
		// for the parser's errors, the block's for a value Validate
		// refuses.
		atLine string
	}{
		{"missing bucket", base(append([]string{"endpoint http://127.0.0.1:1", "path_style"}, creds...)...), []string{"bucket"}, block},
		{"unknown option", base(append([]string{"bucket b", "frobnicate yes"}, creds...)...), []string{"frobnicate"}, "frobnicate yes"},
		{"bad max_size", base(append([]string{"bucket b", "max_size 10XB"}, creds...)...), []string{"max_size", "10XB"}, "max_size 10XB"},
		{"max_size without a value", base(append([]string{"bucket b", "max_size"}, creds...)...), []string{"max_size"}, "max_size"},
		{"bad duration", base(append([]string{"bucket b", "first_byte_timeout soon"}, creds...)...), []string{"first_byte_timeout", "soon"}, "first_byte_timeout soon"},
		{"bad expires", base(append([]string{"bucket b", "expires forever"}, creds...)...), []string{"expires", "forever"}, block},
		{"bad nosniff", base(append([]string{"bucket b", "nosniff maybe"}, creds...)...), []string{"nosniff", "maybe"}, "nosniff maybe"},
		{"anonymous with access_key", base("bucket b", "anonymous", "access_key a", "secret_key b"), []string{"anonymous", "access_key"}, block},
		{"access_key without secret_key", base("bucket b", "access_key a"), []string{"secret_key"}, block},
		{"secret_key without access_key", base("bucket b", "secret_key b"), []string{"access_key"}, block},
		{"bucket without a name", base(append([]string{"bucket"}, creds...)...), []string{"bucket"}, "bucket"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := loadError(t, c.caddyfile)
			if got == "" {
				t.Fatalf("config was accepted:\n%s", c.caddyfile)
			}
			want := c.want
			if c.atLine != "" {
				want = append(want, fmt.Sprintf("Caddyfile:%d", lineOf(t, c.caddyfile, c.atLine)))
			}
			for _, want := range want {
				if !strings.Contains(got, want) {
					t.Errorf("error does not mention %q:\n%s", want, got)
				}
			}
			for _, secret := range []string{"secret_key b"} {
				if strings.Contains(got, secret) {
					t.Errorf("error echoes a credential: %s", got)
				}
			}
			t.Logf("%s: %s", c.name, got)
		})
	}
	// The good config still serves after all those rejected reloads.
	r := do(t, http.MethodGet, "/media_attachments/missing.png")
	if r.status != http.StatusNotFound {
		t.Errorf("after rejected reloads: status %d, want the old config's 404", r.status)
	}
}

func TestGoodCaddyfileAdaptsToTheHandler(t *testing.T) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(siteConfig(blockFor(
		"region eu-west-3", "prefix mastodon", "strip_path_prefix /system",
		"connect_timeout 2s", "first_byte_timeout 3s", "read_timeout 4s",
		"max_size 5GiB", "cache_control off", "hide_header Content-Disposition"))), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	for _, want := range []string{`"handler":"s3_media_cache"`, `"bucket":"` + privateBucket + `"`, `"region":"eu-west-3"`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, cfg)
		}
	}
}

// lineOf is the 1-based number of the line whose trimmed text is text.
func lineOf(t *testing.T, caddyfile, text string) int {
	t.Helper()
	for i, line := range strings.Split(caddyfile, "\n") {
		if strings.TrimSpace(line) == text {
			return i + 1
		}
	}
	t.Fatalf("no line %q in\n%s", text, caddyfile)
	return 0
}
