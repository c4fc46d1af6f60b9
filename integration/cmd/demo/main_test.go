package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/s3mediacache/caddy-s3-media-cache"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// adaptedDemo is the part of the demo's adapted JSON config the tests
// check: where Caddy listens, and the handler's options.
type adaptedDemo struct {
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		HTTP struct {
			Servers map[string]struct {
				Listen []string `json:"listen"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

func TestDemoCaddyfileBindsOnlyTheGivenLoopbackAddresses(t *testing.T) {
	cases := []struct {
		listen, admin string
		wantListen    string
	}{
		{"127.0.0.1:8080", "127.0.0.1:2019", "127.0.0.1:8080"},
		{"[::1]:8443", "[::1]:2020", "[::1]:8443"},
		{"localhost:9000", "localhost:2019", "localhost:9000"},
	}
	for _, c := range cases {
		t.Run(c.listen, func(t *testing.T) {
			site := siteConfig{listen: c.listen, admin: c.admin, endpoint: "http://127.0.0.1:7070",
				root: "/tmp/root", cacheDir: "/tmp/cache", nonce: "0123abcd"}
			text := []byte(demoCaddyfile(site))
			if formatted := caddyfile.Format(text); !bytes.Equal(formatted, text) {
				t.Errorf("the Caddyfile the demo shows is not as caddy fmt writes it:\n%s", formatted)
			}
			cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(text, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			var got adaptedDemo
			if err := json.Unmarshal(cfg, &got); err != nil {
				t.Fatal(err)
			}
			if got.Admin.Listen != c.admin {
				t.Errorf("admin listens on %q, want %q", got.Admin.Listen, c.admin)
			}
			if len(got.Apps.HTTP.Servers) != 1 {
				t.Fatalf("want one server, got %d:\n%s", len(got.Apps.HTTP.Servers), cfg)
			}
			for name, srv := range got.Apps.HTTP.Servers {
				if len(srv.Listen) != 1 || srv.Listen[0] != c.wantListen {
					t.Errorf("server %s listens on %q, want only %q (a site address alone binds every interface)", name, srv.Listen, c.wantListen)
				}
			}
			for _, want := range []string{`"handler":"s3_media_cache"`, `"root":"/tmp/root"`, `"cache_dir":"/tmp/cache"`,
				`"access_key":"{env.S3_ACCESS_KEY}"`, `"{env.CACHE_BUSTER_SECRET}"`, `"body":"0123abcd"`} {
				if !strings.Contains(string(cfg), want) {
					t.Errorf("adapted config lacks %s:\n%s", want, cfg)
				}
			}
		})
	}
}

func TestOptionsRejectNonLoopbackOrClashingAddresses(t *testing.T) {
	cases := []struct {
		listen, admin string
		ok            bool
	}{
		{"127.0.0.1:8080", "127.0.0.1:2019", true},
		{"localhost:8080", "localhost:2019", true},
		{"[::1]:8080", "127.0.0.1:2019", true},
		{"0.0.0.0:8080", "127.0.0.1:2019", false},
		{":8080", "127.0.0.1:2019", false},
		{"192.0.2.1:8080", "127.0.0.1:2019", false},
		{"8080", "127.0.0.1:2019", false},
		{"127.0.0.1:0", "127.0.0.1:2019", false},
		{"127.0.0.1:8080", "0.0.0.0:2019", false},
		{"127.0.0.1:8080", ":2019", false},
		{"127.0.0.1:8080", "127.0.0.1:8080", false},
	}
	for _, c := range cases {
		err := options{caddyBin: "caddy", listen: c.listen, admin: c.admin}.check()
		if (err == nil) != c.ok {
			t.Errorf("--listen %q --admin %q: err = %v, want ok=%v", c.listen, c.admin, err, c.ok)
		}
	}
	if err := (options{listen: "127.0.0.1:8080", admin: "127.0.0.1:2019"}).check(); err == nil || !strings.Contains(err.Error(), "scripts/build") {
		t.Errorf("missing --caddy: err = %v, want a hint naming scripts/build", err)
	}
}

func TestCheckPortsFreeNamesTheTakenPortAndItsFlag(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := s3test.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name          string
		listen, admin string
		wantFlag      string
	}{
		{"site port taken", taken.Addr().String(), free, "--listen 127.0.0.1:PORT"},
		{"admin port taken", free, taken.Addr().String(), "--admin 127.0.0.1:PORT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := options{caddyBin: "caddy", listen: c.listen, admin: c.admin}.checkPortsFree()
			if err == nil {
				t.Fatalf("no error with %s taken", taken.Addr())
			}
			for _, want := range []string{taken.Addr().String() + " is already in use", c.wantFlag} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
	otherFree, err := s3test.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	if err := (options{listen: free, admin: otherFree}).checkPortsFree(); err != nil {
		t.Errorf("free ports %s and %s reported taken: %v", free, otherFree, err)
	}
}

// A server already on the port must not pass for the demo's Caddy, even
// one that answers every request with 200.
func TestReadinessRejectsAnotherServerOnThePorts(t *testing.T) {
	stranger := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `[{"cache_dir":"/somewhere/else"}]`)
	}), ReadHeaderTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = stranger.Serve(ln) }()
	defer stranger.Close()

	site := siteConfig{listen: ln.Addr().String(), admin: ln.Addr().String(), cacheDir: "/tmp/s3mc-demo-1/cache", nonce: "feedbeef"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	if err := checkSiteIsOurs(ctx, client, site); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("site check: err = %v, want one naming another server", err)
	}
	if err := checkAdminIsOurs(ctx, client, site); err == nil || !strings.Contains(err.Error(), "another Caddy") {
		t.Errorf("admin check: err = %v, want one naming another Caddy", err)
	}
}

func TestTryListCommandsNameTheAdminEndpointUnlessDefault(t *testing.T) {
	manifest := s3test.Manifest{s3test.KeyOriginalPNG: {Key: s3test.KeyOriginalPNG, ETag: `"0123"`}}
	cases := []struct {
		admin       string
		wantAddress bool
	}{
		{"127.0.0.1:2019", false},
		{"localhost:2019", false},
		{"127.0.0.1:2020", true},
	}
	for _, c := range cases {
		sections := tryList(tryListParams{listen: "127.0.0.1:8080", admin: c.admin, caddyBin: "./caddy",
			cacheBusterHeaderFile: "/tmp/x/cache-buster.header", manifest: manifest})
		var cli int
		for _, s := range sections {
			for _, tr := range s.tries {
				if !strings.HasPrefix(tr.cmd, "./caddy s3-media-cache ") {
					continue
				}
				cli++
				if got := strings.Contains(tr.cmd, "--address "+c.admin); got != c.wantAddress {
					t.Errorf("admin %s: %q names --address: %v, want %v", c.admin, tr.cmd, got, c.wantAddress)
				}
			}
		}
		if cli < 4 {
			t.Errorf("admin %s: %d caddy s3-media-cache commands, want stats, stats --json, purge --path, purge --prefix", c.admin, cli)
		}
	}
}

func TestShellQuoteKeepsPlainWordsAndQuotesTheRest(t *testing.T) {
	cases := []struct{ in, want string }{
		{"http://127.0.0.1:8080/a/b%20c.png", "http://127.0.0.1:8080/a/b%20c.png"},
		{"./caddy", "./caddy"},
		{`{"path": "/a"}`, `'{"path": "/a"}'`},
		{"it's", `'it'\''s'`},
		{"", "''"},
	}
	for _, c := range cases {
		if got := shellQuote(c.in); got != c.want {
			t.Errorf("shellQuote(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}
