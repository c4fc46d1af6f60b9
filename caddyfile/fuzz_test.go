package caddyfile

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// errLine finds the "Testfile:<line>" every directive error must carry.
var errLine = regexp.MustCompile(`Testfile:(\d+)`)

// FuzzCaddyfile feeds arbitrary text to the s3_media_cache directive's
// parser, as Caddy would after tokenizing a Caddyfile. The parser must not
// panic; an error must name a line of the input; a config it accepts must
// survive the trip through JSON that Caddy makes (caddy adapt, then
// load), and the handler must then provision and validate it, or refuse
// it with an error, without panicking.
//
// Provisioning is sandboxed: root and cache_dir are moved under the
// fuzzer's temporary directory, and inputs naming a {file.*} placeholder,
// which Provision would read, are skipped.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"s3_media_cache {\n\tbucket b\n}",
		"s3_media_cache {\n\tbucket b\n\tanonymous\n\tendpoint http://127.0.0.1:9000\n\tpath_style\n}",
		"s3_media_cache {\n\tbucket b\n\taccess_key {env.K}\n\tsecret_key {env.S}\n\tregion fr-par\n\tprefix mastodon\n\tstrip_path_prefix /system\n}",
		"s3_media_cache {\n\tbucket b\n\tcache_dir /var/cache/s3\n\tmax_size 10GiB\n\tinactive 48h\n\tmin_free 1g\n\tlevels 1:2:2\n\tmax_object_size 1.5GiB\n}",
		"s3_media_cache {\n\tbucket b\n\tcache_dir /c\n\tlock off\n\tlock_timeout 10s\n\tvalid 200 304 48h\n\tvalid 404 off\n\trevalidate off\n\tuse_stale error timeout http_500\n\tignore_headers Cache-Control Expires\n}",
		"s3_media_cache {\n\tbucket b\n\tcache_dir /c\n\tmax_concurrent_fills 64\n\tfill_queue_timeout 5s\n}",
		"s3_media_cache {\n\tbucket b\n\tconnect_timeout 3s\n\tfirst_byte_timeout 20s\n\tread_timeout 1m\n}",
		"s3_media_cache {\n\tbucket b\n\tcache_control \"public, max-age=604800\"\n\texpires 7d\n\tcors_origin off\n\tcontent_security_policy off\n\tnosniff off\n\thide_header ETag Last-Modified\n}",
		"s3_media_cache {\n\tbucket b\n\troot /home/mastodon/live/public/system\n\tpurge_header Cache-Buster-Secret {env.SECRET}\n\tpurge_method POST\n}",
		"s3_media_cache {\n\tbucket b\n\tbucket c\n}",
		"s3_media_cache {\n\tbucket b {\n\t\tx\n\t}\n}",
		"s3_media_cache arg {\n}",
		"s3_media_cache {\n\tbucket `b`\n\tendpoint <<EOF\n\thttp://x\n\tEOF\n}",
		"s3_media_cache {\n\tmax_size -1\n\texpires 0s\n\tvalid 500 1m\n\tlevels 3\n}",
		"s3_media_cache",
	} {
		f.Add(seed)
	}
	sandbox := f.TempDir()
	root := filepath.Join(sandbox, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Testfile")
		if err != nil || len(tokens) == 0 {
			return // the lexer's business; Caddy never calls a directive without its name
		}
		var h s3cache.Handler
		if err := Unmarshal(caddyfile.NewDispenser(tokens), &h); err != nil {
			wantErrorAtLine(t, err, tokens)
			return
		}

		js, err := json.Marshal(&h)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		var loaded s3cache.Handler
		if err := json.Unmarshal(js, &loaded); err != nil {
			t.Fatalf("the JSON of an accepted config does not load: %v\n%s", err, js)
		}
		if !reflect.DeepEqual(h, loaded) {
			t.Fatalf("JSON round trip changed the config:\nparsed %+v\nloaded %+v", h, loaded)
		}

		if strings.Contains(string(js), "{file.") {
			return
		}
		if loaded.Root != "" {
			loaded.Root = root
		}
		if loaded.CacheDir != "" {
			loaded.CacheDir = filepath.Join(sandbox, "cache")
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		if err := loaded.Provision(ctx); err != nil {
			return
		}
		defer loaded.Cleanup()
		_ = loaded.Validate()
	})
}

// wantErrorAtLine fails unless err names a line of the tokens' input, as
// "Testfile:<n>", so that an operator is pointed at the option.
func wantErrorAtLine(t *testing.T, err error, tokens []caddyfile.Token) {
	t.Helper()
	m := errLine.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error names no line: %v", err)
	}
	line, convErr := strconv.Atoi(m[1])
	first, last := tokens[0].Line, tokens[len(tokens)-1].Line
	if convErr != nil || line < first || line > last {
		t.Fatalf("error names line %s, outside the input's lines %d to %d: %v", m[1], first, last, err)
	}
}
