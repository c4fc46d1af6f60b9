package caddyfile

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	// The two modules whose directives TestDirectiveNeedsNoRouteBlock
	// uses, rather than modules/standard: the fuzz target's instrumented
	// build compiles every package of this test binary.
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

func TestUnmarshalEveryOption(t *testing.T) {
	input := `s3_media_cache {
		bucket     myinstance-media
		endpoint   https://s3.fr-par.scw.cloud
		region     fr-par
		path_style
		prefix     mastodon
		strip_path_prefix /system
		access_key {env.S3_ACCESS_KEY}
		secret_key {env.S3_SECRET_KEY}
		root       /home/mastodon/live/public/system
		cache_dir  /var/cache/caddy/s3-media
		max_size   10GiB
		connect_timeout 3s
		first_byte_timeout 20s
		read_timeout 1m
		cache_control "public, max-age=604800"
		expires 7d
		cors_origin https://example.social
		content_security_policy off
		nosniff off
		hide_header Last-Modified
		hide_header ETag Content-Disposition
	}`
	var got s3cache.Handler
	if err := Unmarshal(caddyfile.NewTestDispenser(input), &got); err != nil {
		t.Fatal(err)
	}
	want := s3cache.Handler{
		Bucket:                "myinstance-media",
		Endpoint:              "https://s3.fr-par.scw.cloud",
		Region:                "fr-par",
		PathStyle:             true,
		Prefix:                "mastodon",
		StripPathPrefix:       "/system",
		AccessKey:             "{env.S3_ACCESS_KEY}",
		SecretKey:             "{env.S3_SECRET_KEY}",
		Root:                  "/home/mastodon/live/public/system",
		CacheDir:              "/var/cache/caddy/s3-media",
		MaxSize:               10 << 30,
		ConnectTimeout:        caddy.Duration(3 * time.Second),
		FirstByteTimeout:      caddy.Duration(20 * time.Second),
		ReadTimeout:           caddy.Duration(time.Minute),
		CacheControl:          "public, max-age=604800",
		Expires:               "7d",
		CORSOrigin:            "https://example.social",
		ContentSecurityPolicy: "off",
		Nosniff:               new(false),
		HideHeaders:           []string{"Last-Modified", "ETag", "Content-Disposition"},
		Site:                  "Testfile:1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestUnmarshalCacheOptions(t *testing.T) {
	input := `s3_media_cache {
		bucket b
		cache_dir /var/cache/caddy/s3-media
		max_size 10g
		inactive 48h
		min_free 1GiB
		levels 1:2
		max_object_size 512MiB
		lock off
		lock_timeout 10s
		max_concurrent_fills 16
		memory_cache 64MiB
		fill_queue_timeout 2s
		etag_check off
		valid 200 304 48h
		valid 404 off
		revalidate off
		use_stale error timeout updating http_500 http_502 http_503 http_504
		ignore_headers Cache-Control Expires
		purge_header Cache-Buster-Secret {env.CACHE_BUSTER_SECRET}
		purge_method POST
	}`
	var got s3cache.Handler
	if err := Unmarshal(caddyfile.NewTestDispenser(input), &got); err != nil {
		t.Fatal(err)
	}
	want := s3cache.Handler{
		Bucket:             "b",
		CacheDir:           "/var/cache/caddy/s3-media",
		MaxSize:            10 << 30,
		Inactive:           caddy.Duration(48 * time.Hour),
		MinFree:            1 << 30,
		Levels:             "1:2",
		MaxObjectSize:      512 << 20,
		Lock:               new(false),
		LockTimeout:        caddy.Duration(10 * time.Second),
		MaxConcurrentFills: 16,
		MemoryCache:        64 << 20,
		FillQueueTimeout:   caddy.Duration(2 * time.Second),
		ETagCheck:          new(false),
		Valid:              map[string]caddy.Duration{"200": caddy.Duration(48 * time.Hour), "304": caddy.Duration(48 * time.Hour), "404": 0},
		Revalidate:         new(false),
		UseStale:           []string{"error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504"},
		IgnoreHeaders:      []string{"Cache-Control", "Expires"},
		PurgeHeader:        "Cache-Buster-Secret",
		PurgeSecret:        "{env.CACHE_BUSTER_SECRET}",
		PurgeMethod:        "POST",
		Site:               "Testfile:1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestUnmarshalAnonymous(t *testing.T) {
	var got s3cache.Handler
	if err := Unmarshal(caddyfile.NewTestDispenser("s3_media_cache {\nbucket b\nanonymous\n}"), &got); err != nil {
		t.Fatal(err)
	}
	if !got.Anonymous || got.Bucket != "b" {
		t.Fatalf("got %+v", got)
	}
}

func TestUnmarshalErrorsNameLineAndOption(t *testing.T) {
	tests := []struct {
		name, input string
		wantParts   []string
	}{
		{"unknown option", "s3_media_cache {\n\tbucket b\n\tbukket c\n}", []string{"Testfile:3", `unrecognized option "bukket"`}},
		{"bad size", "s3_media_cache {\n\tbucket b\n\tmax_size 10XB\n}", []string{"Testfile:3", "max_size", `"10XB"`}},
		{"negative size", "s3_media_cache {\n\tbucket b\n\tmax_size -1g\n}", []string{"Testfile:3", "max_size"}},
		{"size without value", "s3_media_cache {\n\tbucket b\n\tmax_size\n}", []string{"Testfile:3", "max_size takes exactly one value, got 0"}},
		{"two buckets", "s3_media_cache {\n\tbucket a b\n}", []string{"Testfile:2", "bucket takes exactly one value, got 2"}},
		{"bucket twice", "s3_media_cache {\n\tbucket a\n\tbucket b\n}", []string{"Testfile:3", "bucket is given twice"}},
		{"flag with value", "s3_media_cache {\n\tbucket a\n\tpath_style yes\n}", []string{"Testfile:3", "path_style takes no value"}},
		{"bad duration", "s3_media_cache {\n\tbucket a\n\tconnect_timeout soon\n}", []string{"Testfile:3", "connect_timeout", `"soon"`}},
		{"zero duration", "s3_media_cache {\n\tbucket a\n\tread_timeout 0s\n}", []string{"Testfile:3", "read_timeout"}},
		{"bad nosniff", "s3_media_cache {\n\tbucket a\n\tnosniff maybe\n}", []string{"Testfile:3", "nosniff", "on or off"}},
		{"empty hide_header", "s3_media_cache {\n\tbucket a\n\thide_header\n}", []string{"Testfile:3", "hide_header"}},
		{"arguments on directive", "s3_media_cache mybucket {\n\tbucket a\n}", []string{"Testfile:1", "no arguments"}},
		{"bad valid duration", "s3_media_cache {\n\tbucket a\n\tvalid 200 long\n}", []string{"Testfile:3", "valid", `"long"`}},
		{"zero fills", "s3_media_cache {\n\tbucket a\n\tmax_concurrent_fills 0\n}", []string{"Testfile:3", "max_concurrent_fills", `"0"`}},
		{"zero count", "s3_media_cache {\n\tbucket a\n\tfill_parallel 0\n}", []string{"Testfile:3", "fill_parallel", `"0"`}},
		{"bad fills", "s3_media_cache {\n\tbucket a\n\tmax_concurrent_fills many\n}", []string{"Testfile:3", "max_concurrent_fills", `"many"`}},
		{"bad memory_cache", "s3_media_cache {\n\tbucket a\n\tmemory_cache lots\n}", []string{"Testfile:3", "memory_cache", `"lots"`}},
		{"zero memory_cache", "s3_media_cache {\n\tbucket a\n\tmemory_cache 0\n}", []string{"Testfile:3", "memory_cache", "or off"}},
		{"bad lock", "s3_media_cache {\n\tbucket a\n\tlock sometimes\n}", []string{"Testfile:3", "lock", "on or off"}},
		{"purge_header without secret", "s3_media_cache {\n\tbucket a\n\tpurge_header X-Secret\n}", []string{"Testfile:3", "purge_header takes a header name and a secret"}},
		{"option with a block", "s3_media_cache {\n\tbucket a {\n\t\tx\n\t}\n}", []string{"bucket does not take a block"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h s3cache.Handler
			err := Unmarshal(caddyfile.NewTestDispenser(tt.input), &h)
			if err == nil {
				t.Fatalf("no error for %q", tt.input)
			}
			for _, part := range tt.wantParts {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not contain %q", err, part)
				}
			}
		})
	}
}

// TestValueErrorsNameTheOptionAndBlock: values that parse but cannot
// work are refused by the handler's Validate, which names the option and
// the block's line (the handler's Site).
func TestValueErrorsNameTheOptionAndBlock(t *testing.T) {
	tests := []struct {
		name, input string
		wantParts   []string
	}{
		{"missing bucket", "s3_media_cache {\n\tregion fr-par\n}", []string{"bucket is required"}},
		{"bad expires", "s3_media_cache {\n\tbucket a\n\texpires forever\n}", []string{"expires", `"forever"`}},
		{"bad levels", "s3_media_cache {\n\tbucket a\n\tlevels 1:3\n}", []string{"levels", "1:2"}},
		{"bad use_stale", "s3_media_cache {\n\tbucket a\n\tuse_stale error sometimes\n}", []string{"use_stale", `"sometimes"`}},
		{"bad valid status", "s3_media_cache {\n\tbucket a\n\tvalid 500 1m\n}", []string{"valid", `"500"`}},
		{"bad slice", "s3_media_cache {\n\tbucket a\n\tslice 100k\n}", []string{"slice", "64KiB"}},
		{"too many fills in parallel", "s3_media_cache {\n\tbucket a\n\tfill_parallel 65\n}", []string{"fill_parallel", "64"}},
		{"anonymous with keys", "s3_media_cache {\n\tbucket a\n\tanonymous\n\taccess_key k\n\tsecret_key s\n}", []string{"anonymous cannot be combined"}},
		{"access key alone", "s3_media_cache {\n\tbucket a\n\taccess_key k\n}", []string{"must be set together"}},
		{"purge secret empty", "s3_media_cache {\n\tbucket a\n\tpurge_header X-Secret {env.S3MC_TEST_UNSET}\n}", []string{"purge_header", "secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h s3cache.Handler
			if err := Unmarshal(caddyfile.NewTestDispenser(tt.input), &h); err != nil {
				t.Fatalf("the parser refused a value it should pass on: %v", err)
			}
			err := h.Validate()
			if err == nil {
				t.Fatalf("Validate accepted %q", tt.input)
			}
			for _, part := range append(tt.wantParts, "Testfile:1") {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not contain %q", err, part)
				}
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"512", 512}, {"100B", 100},
		{"10g", 10 << 30}, {"10G", 10 << 30}, {"10GiB", 10 << 30}, {"10GB", 10e9},
		{"512m", 512 << 20}, {"1.5GiB", 3 << 29}, {"64k", 64 << 10}, {"2TiB", 2 << 40},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "g", "10XB", "-1", "1e400", "ten", "10 g b"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded, want an error", bad)
		}
	}
}

// TestDirectiveNeedsNoRouteBlock checks the registered order: the
// directive can sit in a site beside file_server and header without a
// route block, and comes out before file_server.
func TestDirectiveNeedsNoRouteBlock(t *testing.T) {
	input := `media.example.social {
		header X-Served-By caddy
		file_server /static/*
		s3_media_cache /media/* {
			bucket media
		}
	}`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	js := string(out)
	ours, fs := strings.Index(js, `"s3_media_cache"`), strings.Index(js, `"file_server"`)
	if ours < 0 || fs < 0 || ours > fs {
		t.Fatalf("s3_media_cache must come before file_server:\n%s", js)
	}
	if !strings.Contains(js, `"bucket":"media"`) {
		t.Fatalf("bucket missing from JSON:\n%s", js)
	}
}

// TestOptionWordsAreTheJSONFieldNames: each Caddyfile option is the JSON
// field of the same name, so one word is documented once for both. The
// JSON has two fields the Caddyfile writes otherwise: purge_secret (the
// second value of purge_header) and site (the block's file:line).
func TestOptionWordsAreTheJSONFieldNames(t *testing.T) {
	fields := map[string]bool{}
	typ := reflect.TypeFor[s3cache.Handler]()
	for i := range typ.NumField() {
		if name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ","); name != "" {
			fields[name] = true
		}
	}
	for _, option := range parserOptions(t) {
		if !fields[option] {
			t.Errorf("the Caddyfile's %s has no JSON field of that name", option)
		}
		delete(fields, option)
	}
	delete(fields, "purge_secret")
	delete(fields, "site")
	for name := range fields {
		t.Errorf("the JSON field %s has no Caddyfile option of that name", name)
	}
}

func TestMemoryCacheOff(t *testing.T) {
	var got s3cache.Handler
	if err := Unmarshal(caddyfile.NewTestDispenser("s3_media_cache {\n\tbucket b\n\tmemory_cache off\n}"), &got); err != nil {
		t.Fatal(err)
	}
	if got.MemoryCache != -1 {
		t.Fatalf("memory_cache off: %d in JSON, want -1", got.MemoryCache)
	}
}
