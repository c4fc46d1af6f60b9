package main

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

//go:embed templates
var templateFiles embed.FS

var templates = template.Must(template.ParseFS(templateFiles, "templates/*.tmpl"))

// nginxConfig fills templates/nginx-cache.conf.tmpl and nginx-tls.conf.tmpl.
type nginxConfig struct {
	User      string // the worker user; empty when not running as root
	Dir       string // pid, error log, temp paths
	MimeTypes string // Debian's mime.types, if present
	Listen    string // host:port

	// The caching nginx.
	Root      string
	CacheDir  string
	S3Backend string // http://proxy/bucket
	S3Host    string

	// The TLS nginx.
	Upstream  string
	Cert, Key string
}

// caddyConfig fills templates/Caddyfile.tmpl.
type caddyConfig struct {
	Admin     string
	HTTP, TLS string // host:port
	Bucket    string
	Endpoint  string
	Root      string
	CacheDir  string
	Cert, Key string
	// Floor and FloorTLS (host:port) are sites of their own, over plain
	// HTTP and TLS, so that the measured media sites' routes stay as a
	// user writes them, answering every request with FloorBody: as many
	// bytes as the 50 KB object, sent by Caddy's own respond handler, the
	// floor any handler in Caddy starts from. On the TLS one,
	// FloorLargePath answers FloorLargeBody instead: as many bytes as the
	// 1 MB object; and FloorFilePath is the file of that size in
	// FloorFileRoot, sent by Caddy's file_server.
	Floor, FloorTLS string
	FloorFileRoot   string
	// H3 and FloorH3 (127.0.0.1:port), when set, are the media site and
	// the respond site again, speaking HTTP/3 too: on sites of their own,
	// so that no other answer carries the Alt-Svc header Caddy adds
	// where it serves h3, which the recipe's nginx does not send.
	H3, FloorH3    string
	FloorBody      string
	FloorLargeBody string
	// Options are extra lines of the s3_media_cache block (-caddy-option).
	Options []string
}

// floorLargePath is where the TLS respond site sends FloorLargeBody.
const floorLargePath = "/large"

// FloorLargePath is floorLargePath, for the template.
func (caddyConfig) FloorLargePath() string { return floorLargePath }

// floorFilePath is where the TLS reference site's file_server sends a
// file as large as the 1 MB object, under caddyConfig.FloorFileRoot.
const floorFilePath = "/large.bin"

// FloorFilePath is floorFilePath, for the template.
func (caddyConfig) FloorFilePath() string { return floorFilePath }

func render(name string, data any, path string) error {
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name, data); err != nil {
		return fmt.Errorf("rendering %s: %w", name, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// nginxBase fills the fields both nginx configs share. Run as root, the
// workers run as root too, so they can write the cache and temp
// directories the bench made; otherwise nginx ignores "user" anyway.
func nginxBase(dir, listen string) (nginxConfig, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nginxConfig{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	c := nginxConfig{Dir: dir, Listen: listen}
	if os.Geteuid() == 0 {
		if u, err := user.Current(); err == nil {
			c.User = u.Username
		}
	}
	if _, err := os.Stat("/etc/nginx/mime.types"); err == nil {
		c.MimeTypes = "/etc/nginx/mime.types"
	}
	return c, nil
}

// startNginx checks the config with nginx -t (which names the faulty line),
// then starts nginx pinned to cpu and waits until it listens.
func startNginx(ctx context.Context, name, bin, template string, c nginxConfig, cpu int) (*process, error) {
	conf := filepath.Join(c.Dir, "nginx.conf")
	if err := render(template, c, conf); err != nil {
		return nil, err
	}
	// -p points the prefix at the bench's directory, and -e keeps nginx
	// from opening Debian's /var/log/nginx/error.log before reading the
	// config.
	args := []string{"-p", c.Dir, "-e", filepath.Join(c.Dir, "error.log"), "-c", conf}
	if out, err := exec.CommandContext(ctx, bin, append(args, "-t", "-q")...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nginx -t rejected %s: %w\n%s", conf, err, out)
	}
	p, err := startPinned(name, cpu, filepath.Join(c.Dir, "stderr.log"), syscall.SIGQUIT, bin, args...)
	if err != nil {
		return nil, err
	}
	if err := p.waitListening(ctx, c.Listen); err != nil {
		_ = p.stop()
		return nil, err
	}
	return p, nil
}

// startCaddy starts Caddy pinned to cpu with the Caddyfile at conf, and
// waits until it listens on httpAddr. The log is appended to, so a
// restarted Caddy's lines follow the first one's.
func startCaddy(ctx context.Context, bin, conf, logPath, httpAddr string, cpu int) (*process, error) {
	p, err := launchCaddy(bin, conf, logPath, cpu)
	if err != nil {
		return nil, err
	}
	if err := p.waitListening(ctx, httpAddr); err != nil {
		_ = p.stop()
		return nil, err
	}
	return p, nil
}

// launchCaddy starts Caddy without waiting for it.
func launchCaddy(bin, conf, logPath string, cpu int) (*process, error) {
	return startPinned("caddy", cpu, logPath, syscall.SIGINT, bin, "run", "--config", conf, "--adapter", "caddyfile")
}

// checkCaddyHasModule fails early, with the fix, when the binary is a
// stock Caddy.
func checkCaddyHasModule(ctx context.Context, bin string) error {
	out, err := exec.CommandContext(ctx, bin, "list-modules").Output()
	if err != nil {
		return fmt.Errorf("running %s list-modules: %w (build it with scripts/build)", bin, err)
	}
	if !strings.Contains(string(out), "http.handlers.s3_media_cache") {
		return fmt.Errorf("%s does not include http.handlers.s3_media_cache; build it with scripts/build", bin)
	}
	return nil
}

// The defaults of s3_media_cache's options that the bounds on S3 bytes
// depend on, as package s3cache sets them (a test holds them to it).
const (
	defaultSlice              = 1 << 20
	defaultFillAhead          = 8 << 20
	defaultFillParallel       = 8
	defaultMaxConcurrentFills = 64
)

// fillSettings are what our Caddy's fills were configured with, defaults
// filled in: the bounds on S3 bytes follow them.
type fillSettings struct {
	// Options are the -caddy-option lines.
	Options    []string `json:"options,omitempty"`
	SliceBytes int64    `json:"slice_bytes"`
	AheadBytes int64    `json:"fill_ahead_bytes"`
	Parallel   int      `json:"fill_parallel"`
	// MaxFills is max_concurrent_fills, -1 for no bound.
	MaxFills int `json:"max_concurrent_fills"`
}

func (f fillSettings) String() string {
	limit := strconv.Itoa(f.MaxFills)
	if f.MaxFills < 0 {
		limit = "off"
	}
	return fmt.Sprintf("slice %s, fill_ahead %s, fill_parallel %d, max_concurrent_fills %s",
		binarySize(f.SliceBytes), binarySize(f.AheadBytes), f.Parallel, limit)
}

// binarySize writes n in KiB or MiB, as the Caddyfile's sizes are.
func binarySize(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%g KiB", float64(n)/(1<<10))
}

// readFillSettings asks Caddy how it reads the Caddyfile at conf (caddy
// adapt), and returns the fill settings of its s3_media_cache handlers,
// which must all agree. A mistyped -caddy-option fails here, with Caddy's
// own message.
func readFillSettings(ctx context.Context, bin, conf string, options []string) (fillSettings, error) {
	out, err := exec.CommandContext(ctx, bin, "adapt", "--config", conf, "--adapter", "caddyfile").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return fillSettings{}, fmt.Errorf("caddy adapt %s (check the -caddy-option lines %q): %w", conf, options, err)
	}
	var config any
	if err := json.Unmarshal(out, &config); err != nil {
		return fillSettings{}, fmt.Errorf("reading caddy adapt's JSON: %w", err)
	}
	var found []fillSettings
	walkJSON(config, func(m map[string]any) {
		if m["handler"] != "s3_media_cache" {
			return
		}
		number := func(key string, def int64) int64 {
			if v, ok := m[key].(float64); ok && v != 0 {
				return int64(v)
			}
			return def
		}
		found = append(found, fillSettings{
			Options:    options,
			SliceBytes: number("slice", defaultSlice),
			AheadBytes: number("fill_ahead", defaultFillAhead),
			Parallel:   int(number("fill_parallel", defaultFillParallel)),
			MaxFills:   int(number("max_concurrent_fills", defaultMaxConcurrentFills)),
		})
	})
	if len(found) == 0 {
		return fillSettings{}, fmt.Errorf("caddy adapt %s: no s3_media_cache handler in its JSON", conf)
	}
	for _, f := range found[1:] {
		if !slices.Equal(f.Options, found[0].Options) || f.SliceBytes != found[0].SliceBytes || f.AheadBytes != found[0].AheadBytes ||
			f.Parallel != found[0].Parallel || f.MaxFills != found[0].MaxFills {
			return fillSettings{}, fmt.Errorf("caddy adapt %s: the s3_media_cache handlers disagree: %v and %v", conf, found[0], f)
		}
	}
	return found[0], nil
}

// walkJSON calls f for every object in v, a decoded JSON document.
func walkJSON(v any, f func(map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		f(v)
		for _, child := range v {
			walkJSON(child, f)
		}
	case []any:
		for _, child := range v {
			walkJSON(child, f)
		}
	}
}

// freeAddr is a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) { return s3test.FreeLoopbackAddr() }
