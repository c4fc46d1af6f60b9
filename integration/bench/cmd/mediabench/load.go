package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/bench/h3load"
)

// load is how a throughput scenario drives a server: wrk over HTTP/1.1,
// h2load over HTTP/2, which is what browsers speak to a media host, or
// package h3load over HTTP/3.
type load struct {
	// tls sends the requests to the server's TLS address.
	tls bool
	// streams, when set, drives the server with h2load over HTTP/2 (or,
	// with h3, h3load over HTTP/3), that many requests in flight on each
	// connection (h2load -m); unset, with wrk over HTTP/1.1, one request
	// at a time on each connection.
	streams int
	h3      bool
	// path is what every request asks for, unless script or paths pick
	// the paths instead: script is wrk's Lua script, paths are what each
	// h2load connection asks for in turn.
	path   string
	script string
	paths  []string
}

// tool is the load generator's name.
func (l load) tool() string {
	switch {
	case l.h3:
		return "h3load"
	case l.streams == 0:
		return "wrk"
	}
	return "h2load"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// loadResult is one run of wrk or h2load, parsed.
type loadResult struct {
	Tool        string `json:"tool"` // wrk or h2load
	URL         string `json:"url"`
	Connections int    `json:"connections"`
	// Streams is h2load's requests in flight per connection.
	Streams int `json:"streams_per_connection,omitempty"`
	// Protocol is the one h2load says the server agreed to (ALPN).
	Protocol       string        `json:"protocol,omitempty"`
	Duration       time.Duration `json:"duration_ns"`
	Requests       int64         `json:"requests"`
	RequestsPerSec float64       `json:"requests_per_sec"`
	// Non2xx counts the answers that were not 2xx (wrk: nor 3xx). None
	// is expected: every object is cached.
	Non2xx int64 `json:"non_2xx"`
	// Errors are wrk's socket errors, or h2load's failed requests.
	Errors int64 `json:"errors"`
	// WarmUp is how long h2load ran before it started counting.
	WarmUp  time.Duration            `json:"warm_up_ns,omitempty"`
	Latency map[string]time.Duration `json:"latency_ns"`
	Output  string                   `json:"output"`
	// How busy the server's core and the load generator's core were
	// during the run, in percent: a server that is not at 100% is not
	// what limits the figure.
	ServerCoreBusy float64 `json:"server_core_busy_percent"`
	LoadCoreBusy   float64 `json:"load_core_busy_percent"`
	// BackgroundBusy is how busy the busiest core was just before, with
	// the bench idle: other processes' work.
	BackgroundBusy float64 `json:"background_busy_percent"`
	// ForeignCPU is how much CPU, in cores, processes other than the
	// bench's used during the run.
	ForeignCPU float64 `json:"foreign_cpu_cores"`
}

// failures describes what went wrong in the run, if anything: no request
// done, an answer that was not 2xx (wrk: nor 3xx), an error, or a
// protocol other than h2 where h2load asked for it. The bytes are checked
// elsewhere: nghttp2 fails a stream whose body is not its Content-Length,
// and each scenario ends with a sample fetch, over the same protocol,
// whose SHA-256 must be the object's. (h2load's own byte count is no
// help: after a warm-up it counts bytes its request count leaves out.)
func (r loadResult) failures() string {
	var wrong []string
	if r.Requests == 0 {
		wrong = append(wrong, "no request done")
	}
	if r.Non2xx > 0 || r.Errors > 0 {
		wrong = append(wrong, fmt.Sprintf("%d not 2xx, %d errors", r.Non2xx, r.Errors))
	}
	if want := map[string]string{"h2load": "h2", "h3load": "HTTP/3.0"}[r.Tool]; r.Protocol != want && want != "" {
		wrong = append(wrong, fmt.Sprintf("protocol %q, want %s", r.Protocol, want))
	}
	if len(wrong) == 0 {
		return ""
	}
	return fmt.Sprintf("%s on %s: %d requests, %s:\n%s", r.Tool, r.URL, r.Requests, strings.Join(wrong, "; "), r.Output)
}

// runLoad drives the server at base (scheme://host:port) as l says, for
// d, from the load core.
func (b *bench) runLoad(ctx context.Context, l load, base string, d time.Duration) (loadResult, error) {
	if l.streams == 0 {
		if l.paths != nil {
			return loadResult{}, errors.New("a list of paths needs h2load; wrk takes a script")
		}
		url := base + l.path
		if l.script != "" {
			url = base + "/"
		}
		return runWrk(ctx, b.wrkBin, b.cfg.loadCPU, url, b.cfg.connections, d, l.script)
	}
	if l.script != "" {
		return loadResult{}, errors.New("a wrk script cannot drive h2load; give it the paths")
	}
	if l.h3 {
		if l.paths != nil {
			return loadResult{}, errors.New("h3load asks for one path")
		}
		return b.runH3load(ctx, l, base, d)
	}
	// A warm-up even in quick mode: with 256 answers of 1 MB in flight
	// and nothing counted until the first ones end, a one-second run on a
	// busy machine may not see one end.
	opts := h2loadOptions{cpu: b.cfg.loadCPU, connections: b.cfg.connections, streams: l.streams,
		warmUp: max(b.cfg.warmup, time.Second), duration: d, url: base + l.path}
	if l.paths != nil {
		var err error
		if opts.urlsFile, err = b.writeURLList(base, l.paths); err != nil {
			return loadResult{}, err
		}
	}
	return runH2load(ctx, b.h2loadBin, opts)
}

// writeURLList writes base+path for each of paths, one a line, into the
// work directory, for h2load -i, and returns the file's path. The same
// list for the same base is written once.
func (b *bench) writeURLList(base string, paths []string) (string, error) {
	sum := sha256.New()
	sum.Write([]byte(base))
	for _, p := range paths {
		sum.Write([]byte("\n" + p))
	}
	file := filepath.Join(b.work, "h2load-urls-"+hex.EncodeToString(sum.Sum(nil))[:12]+".txt")
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	var text strings.Builder
	for _, p := range paths {
		text.WriteString(base + p + "\n")
	}
	if err := os.WriteFile(file, []byte(text.String()), 0o644); err != nil {
		return "", fmt.Errorf("writing h2load's list of URLs: %w", err)
	}
	return file, nil
}

// runH3load drives the server at base over HTTP/3 from this process,
// which runs on the load core, with the same connections, streams and
// warm-up as h2load would.
func (b *bench) runH3load(ctx context.Context, l load, base string, d time.Duration) (loadResult, error) {
	o := h3load.Options{URL: base + l.path, Connections: b.cfg.connections, Streams: l.streams,
		WarmUp: max(b.cfg.warmup, time.Second), Duration: d, TLS: b.tlsConfig}
	res, err := h3load.Run(ctx, o)
	r := loadResult{Tool: "h3load", URL: o.URL, Connections: o.Connections, Streams: o.Streams, Protocol: res.Protocol,
		WarmUp: o.WarmUp, Duration: res.Duration, Requests: res.Requests, RequestsPerSec: res.RequestsPerSec,
		Non2xx: res.Non2xx, Errors: res.Errors, Latency: map[string]time.Duration{},
		Output: fmt.Sprintf("%d answers, %d body bytes, %d not 2xx, %d errors", res.Requests, res.BodyBytes, res.Non2xx, res.Errors)}
	if err != nil {
		return r, fmt.Errorf("h3load on %s: %w", o.URL, err)
	}
	return r, nil
}
