package main

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/s3mediacache/caddy-s3-media-cache"
)

func TestDemoCaddyfileAdapts(t *testing.T) {
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(
		[]byte(demoCaddyfile("127.0.0.1:8080", "http://127.0.0.1:7070", "/tmp/root", "/tmp/cache")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	for _, want := range []string{`"handler":"s3_media_cache"`, `"root":"/tmp/root"`, `"cache_dir":"/tmp/cache"`, `"access_key":"{env.S3_ACCESS_KEY}"`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("adapted config lacks %s:\n%s", want, cfg)
		}
	}
}

func TestOptionsRejectNonLoopbackListen(t *testing.T) {
	cases := []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:8080", true},
		{"localhost:8080", true},
		{"[::1]:8080", true},
		{"0.0.0.0:8080", false},
		{":8080", false},
		{"192.0.2.1:8080", false},
		{"8080", false},
	}
	for _, c := range cases {
		err := options{caddyBin: "caddy", listen: c.listen}.check()
		if (err == nil) != c.ok {
			t.Errorf("listen %q: err = %v, want ok=%v", c.listen, err, c.ok)
		}
	}
	if err := (options{listen: "127.0.0.1:8080"}).check(); err == nil || !strings.Contains(err.Error(), "scripts/build") {
		t.Errorf("missing --caddy: err = %v, want a hint naming scripts/build", err)
	}
}
