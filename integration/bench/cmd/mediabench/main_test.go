package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const wrkOutput = `Running 8s test @ http://127.0.0.1:40000/media_attachments/files/hot-50k.jpg
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  213.50us   9.87ms   91.20%
    Req/Sec    31.41k     1.02k   33.01k    72.50%
  Latency Distribution
     50%    0.98ms
     75%    1.07ms
     90%    1.21ms
     99%    1.80ms
  250163 requests in 8.00s, 11.71GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  31267.12
Transfer/sec:      1.46GB
`

func TestParseWrkReadsRateErrorsAndLatencies(t *testing.T) {
	r, err := parseWrk(wrkOutput, "http://x/", 32)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 250163 || r.RequestsPerSec != 31267.12 || r.Duration != 8*time.Second {
		t.Errorf("requests %d, rate %v, duration %v", r.Requests, r.RequestsPerSec, r.Duration)
	}
	if r.Non2xx != 4 || r.Errors != 3 {
		t.Errorf("non-2xx %d, socket errors %d, want 4 and 3", r.Non2xx, r.Errors)
	}
	if r.Latency["p50"] != 980*time.Microsecond || r.Latency["p99"] != 1800*time.Microsecond {
		t.Errorf("latencies %v", r.Latency)
	}
	if r.failures() == "" {
		t.Error("a run with errors reports no failure")
	}
	if _, err := parseWrk("wrk: connection refused", "http://x/", 1); err == nil {
		t.Error("unreadable output parsed without error")
	}
}

// h2loadOutput is what Debian's h2load 1.52 printed after 2 s of 32
// connections × 8 streams on a 50 KB answer (its progress lines left
// out). The 2xx count is above the requests done: it counts the answers
// whose headers had come when the run stopped.
const h2loadOutput = `TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.01s, 4710.00 req/s, 224.86MB/s
requests: 9420 total, 9676 started, 9420 done, 9420 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 9547 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 449.72MB (471563478) total, 50.30KB (51511) headers (space savings 95.54%), 449.18MB (471000000) data
                     min         max         mean         sd        +/- sd
time for request:     1.03ms    132.55ms     50.87ms     24.01ms    73.03%
time for connect:     6.99ms     34.21ms     22.21ms      8.05ms    53.13%
time to 1st byte:    43.38ms    121.98ms     89.94ms     23.90ms    59.38%
req/s           :     135.17      169.07      146.86        7.17    75.00%
`

func TestParseH2loadReadsRateStatusesBytesAndProtocol(t *testing.T) {
	r, err := parseH2load(h2loadOutput, "https://x/", 32)
	if err != nil {
		t.Fatal(err)
	}
	if r.Tool != "h2load" || r.Protocol != "h2" || r.Requests != 9420 || r.RequestsPerSec != 4710 || r.Duration != 2010*time.Millisecond {
		t.Errorf("tool %s, protocol %q, requests %d, rate %v, duration %v", r.Tool, r.Protocol, r.Requests, r.RequestsPerSec, r.Duration)
	}
	if r.Errors != 0 || r.Non2xx != 0 {
		t.Errorf("errors %d, non-2xx %d", r.Errors, r.Non2xx)
	}
	if r.Latency["mean"] != 50870*time.Microsecond {
		t.Errorf("latencies %v", r.Latency)
	}
	if f := r.failures(); f != "" {
		t.Errorf("a clean run reports: %s", f)
	}
	if _, err := parseH2load("h2load: could not connect", "https://x/", 1); err == nil {
		t.Error("unreadable output parsed without error")
	}
	bad := strings.NewReplacer("0 failed, 0 errored", "7 failed, 3 errored", "0 4xx, 0 5xx", "2 4xx, 5 5xx").Replace(h2loadOutput)
	if r, err := parseH2load(bad, "https://x/", 32); err != nil || r.Errors != 7 || r.Non2xx != 7 {
		t.Errorf("failed %d, not 2xx %d, %v: want 7 and 7", r.Errors, r.Non2xx, err)
	}
}

func TestLoadFailuresNameWhatWentWrong(t *testing.T) {
	ok := loadResult{Tool: "h2load", Protocol: "h2", Requests: 10}
	for _, tc := range []struct {
		name   string
		change func(*loadResult)
		want   string // in the failure; empty for none
	}{
		{"clean h2 run", func(*loadResult) {}, ""},
		{"not h2", func(r *loadResult) { r.Protocol = "http/1.1" }, `protocol "http/1.1", want h2`},
		{"an error status", func(r *loadResult) { r.Non2xx = 1 }, "1 not 2xx"},
		{"failed requests", func(r *loadResult) { r.Errors = 2 }, "2 errors"},
		{"nothing done", func(r *loadResult) { r.Requests = 0 }, "no request done"},
		{"wrk has no protocol line", func(r *loadResult) { r.Tool, r.Protocol = "wrk", "" }, ""},
	} {
		r := ok
		tc.change(&r)
		got := r.failures()
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: failures() = %q, want %q in it", tc.name, got, tc.want)
		}
	}
}

func TestURLListForH2loadIsOneURLALineAndWrittenOnce(t *testing.T) {
	b := &bench{work: t.TempDir()}
	file, err := b.writeURLList("https://127.0.0.1:8443", []string{"/a.jpg", "/b.jpg"})
	if err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(file)
	if string(text) != "https://127.0.0.1:8443/a.jpg\nhttps://127.0.0.1:8443/b.jpg\n" {
		t.Errorf("list:\n%s", text)
	}
	again, _ := b.writeURLList("https://127.0.0.1:8443", []string{"/a.jpg", "/b.jpg"})
	other, _ := b.writeURLList("https://127.0.0.1:9443", []string{"/a.jpg", "/b.jpg"})
	if again != file || other == file {
		t.Errorf("the same list got %s and %s, another base %s", file, again, other)
	}
	if _, err := b.runLoad(t.Context(), load{paths: []string{"/a.jpg"}}, "http://127.0.0.1:1", time.Second); err == nil {
		t.Error("wrk was given a list of paths")
	}
}

func TestParseBytesUsesPowersOfTen(t *testing.T) {
	for in, want := range map[string]int64{"10MB": 10_000_000, "3MB": 3_000_000, "1.5MB": 1_500_000, "500kB": 500_000, "42": 42, "2GB": 2_000_000_000} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MB", "ten MB", "-1MB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) succeeded", bad)
		}
	}
}

func TestQuickModeShrinksTheRun(t *testing.T) {
	full, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	quick, err := parseFlags([]string{"-quick"})
	if err != nil {
		t.Fatal(err)
	}
	if quick.duration >= full.duration || quick.restartEntries >= full.restartEntries || quick.workingSet >= full.workingSet ||
		quick.stormObjects*int(quick.stormSize) >= full.stormObjects*int(full.stormSize) || quick.settleQuiet >= full.settleQuiet {
		t.Errorf("quick mode is not smaller: %+v", quick)
	}
	// A HEAD or a one-byte Range must still be able to cost more than a
	// slice, and their objects must be larger than the read-ahead (which
	// completes smaller ones), or their rows would prove nothing.
	if quick.headRangeSize <= max(2*defaultSlice, 2*defaultFillAhead) || quick.stormSize != full.stormSize {
		t.Errorf("quick mode's objects are too small to show a sliced fill (%d bytes), or the storm's are not the full run's (%d bytes)",
			quick.headRangeSize, quick.stormSize)
	}
	if _, err := parseFlags([]string{"-server-cpu", "1", "-load-cpu", "1"}); err == nil {
		t.Error("the same core for the server and the load was accepted")
	}
	only, err := parseFlags([]string{"-only", "stampede|restart"})
	if err != nil {
		t.Fatal(err)
	}
	if !only.selected("stampede") || !only.selected("restart") || only.selected("memory") {
		t.Error("-only selects the wrong scenarios")
	}
	for _, tc := range []struct {
		only                 string
		h2, h3, tls, working bool
	}{
		{only: "h2", h2: true},
		{only: "h3", h3: true},
		{only: "h2|h3", h2: true, h3: true},
		{only: "tls", tls: true},
		{only: "working set", working: true},
	} {
		cfg, err := parseFlags([]string{"-only", tc.only})
		if err != nil {
			t.Fatal(err)
		}
		got := [4]bool{cfg.selected(h2Scenarios), cfg.selected(h3Scenarios), cfg.selected("hot HIT over TLS"), cfg.selected("working set")}
		if want := [4]bool{tc.h2, tc.h3, tc.tls, tc.working}; got != want {
			t.Errorf("-only %q: h2, h3, TLS, working set selected: %v, want %v", tc.only, got, want)
		}
	}
}

// The rendered nginx configs must be accepted by nginx itself, when it is
// installed; the Caddyfile by caddy adapt, when ./caddy has been built.
func TestTemplatesRenderValidConfigs(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := s3test.WriteCertificate(certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	cache, err := nginxBase(filepath.Join(dir, "cache"), "127.0.0.1:18080")
	if err != nil {
		t.Fatal(err)
	}
	cache.Root, cache.CacheDir = dir, filepath.Join(dir, "nginx-cache")
	cache.S3Backend, cache.S3Host = "http://127.0.0.1:18081/"+bucket, "127.0.0.1:18081"
	front, err := nginxBase(filepath.Join(dir, "tls"), "127.0.0.1:18443")
	if err != nil {
		t.Fatal(err)
	}
	front.Upstream, front.Cert, front.Key = cache.Listen, certPath, keyPath

	for name, c := range map[string]nginxConfig{"nginx-cache.conf.tmpl": cache, "nginx-tls.conf.tmpl": front} {
		conf := filepath.Join(c.Dir, "nginx.conf")
		if err := render(name, c, conf); err != nil {
			t.Fatal(err)
		}
		text, _ := os.ReadFile(conf)
		for _, line := range []string{"proxy_cache_lock on;", "proxy_cache_path", "keepalive"} {
			if name == "nginx-cache.conf.tmpl" && !strings.Contains(string(text), line) {
				t.Errorf("%s: no %q", name, line)
			}
		}
		// The recipe's TLS nginx speaks h2 to browsers; the h2 rows
		// compare with it (h2load checks what it agreed on, too).
		if name == "nginx-tls.conf.tmpl" && !strings.Contains(string(text), "listen "+c.Listen+" ssl http2;") {
			t.Errorf("%s: the TLS front does not listen with http2:\n%s", name, text)
		}
		bin, err := findBinary("nginx", "")
		if err != nil {
			continue
		}
		out, err := exec.Command(bin, "-p", c.Dir, "-e", filepath.Join(c.Dir, "error.log"), "-c", conf, "-t", "-q").CombinedOutput()
		if err != nil {
			t.Errorf("nginx -t rejects %s: %v\n%s\n%s", name, err, out, text)
		}
	}

	caddyfile := filepath.Join(dir, "Caddyfile")
	err = render("Caddyfile.tmpl", caddyConfig{
		Admin: "127.0.0.1:12019", HTTP: "127.0.0.1:18082", TLS: "127.0.0.1:18444", Bucket: bucket,
		Endpoint: "http://127.0.0.1:18081", Root: dir, CacheDir: filepath.Join(dir, "caddy-cache"), Cert: certPath, Key: keyPath,
		Options: []string{"slice 512KiB", "fill_parallel 8"},
	}, caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(caddyfile)
	if !strings.Contains(string(text), "\t\tinactive 48h\n\t\tslice 512KiB\n\t\tfill_parallel 8\n\t}") {
		t.Errorf("the options are not lines of the s3_media_cache block:\n%s", text)
	}
	if strings.Contains(string(text), "h3") {
		t.Errorf("HTTP/3 is on without the h3 scenarios:\n%s", text)
	}
	h3file := filepath.Join(dir, "Caddyfile-h3")
	err = render("Caddyfile.tmpl", caddyConfig{
		Admin: "127.0.0.1:12019", HTTP: "127.0.0.1:18082", TLS: "127.0.0.1:18444", Bucket: bucket,
		Endpoint: "http://127.0.0.1:18081", Root: dir, CacheDir: filepath.Join(dir, "caddy-cache"), Cert: certPath, Key: keyPath,
		H3: "127.0.0.1:18445", FloorH3: "127.0.0.1:18446", FloorBody: "xx",
	}, h3file)
	if err != nil {
		t.Fatal(err)
	}
	caddy, _ := filepath.Abs("../../../../caddy")
	if _, err := os.Stat(caddy); err == nil {
		if out, err := exec.Command(caddy, "adapt", "--validate", "--adapter", "caddyfile", "--config", caddyfile).CombinedOutput(); err != nil {
			t.Errorf("caddy adapt --validate rejects the Caddyfile: %v\n%s", err, out)
		}
		// HTTP/3 on the two h3 sites alone, bound to loopback.
		out, err := exec.Command(caddy, "adapt", "--validate", "--adapter", "caddyfile", "--config", h3file).Output()
		if err != nil {
			t.Fatalf("caddy adapt --validate rejects the Caddyfile with h3 sites: %v", err)
		}
		var config struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Listen    []string `json:"listen"`
						Protocols []string `json:"protocols"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &config); err != nil {
			t.Fatal(err)
		}
		h3 := map[string]bool{}
		for _, srv := range config.Apps.HTTP.Servers {
			if slices.Contains(srv.Protocols, "h3") {
				h3[strings.Join(srv.Listen, ",")] = true
			}
		}
		if want := map[string]bool{"127.0.0.1:18445": true, "127.0.0.1:18446": true}; !maps.Equal(h3, want) {
			t.Errorf("servers speaking h3: %v, want %v", h3, want)
		}
		fills, err := readFillSettings(t.Context(), caddy, caddyfile, nil)
		if err != nil || fills.SliceBytes != 512<<10 || fills.Parallel != 8 || fills.AheadBytes != defaultFillAhead {
			t.Errorf("caddy adapt read the options as %+v, %v", fills, err)
		}
	}
}

func TestChartIsWellFormedSVG(t *testing.T) {
	r := newReport(config{})
	r.quick = false
	r.add(row{Scenario: "hit", Unit: "req/s", Nginx: f64(30000), Ours: 27000, Label: "HIT <50 KB> & more"}, ratioAtLeast(0.9))
	r.add(row{Scenario: "stampede TTFB", Unit: "ms", Nginx: f64(3000), Ours: 70, LowerIsBetter: true}, ratioAtMost(0.1))
	r.add(row{Scenario: "restart", Unit: "ms", Ours: 100, LowerIsBetter: true}, lessThan(1000, "< 1 s"))
	svg := chartSVG(r)
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v\n%s", err, svg)
		}
	}
	if n := strings.Count(svg, "<rect "); n != 3 { // the background and two bars
		t.Errorf("%d rects, want the background and 2 bars (rows without nginx are not charted)", n)
	}
	if !strings.Contains(svg, "42.86×") { // 3000 ms / 70 ms
		t.Error("the TTFB bar does not show nginx/ours")
	}
}

func TestReportFailsOnlyOnCorrectnessTargets(t *testing.T) {
	r := newReport(config{quick: true})
	r.add(row{Scenario: "slow", Unit: "req/s", Nginx: f64(100), Ours: 10}, ratioAtLeast(0.9))
	if len(r.Failures) != 0 || r.Rows[0].Met != nil {
		t.Errorf("a timing target was checked in quick mode: %+v", r.Rows[0])
	}
	r.add(row{Scenario: "peak", Unit: "requests", Nginx: f64(100), Ours: 65}, countedAtMost(64, "≤ 64"))
	if len(r.Failures) != 0 || r.Rows[1].Met == nil || *r.Rows[1].Met {
		t.Errorf("a missed counted target was not reported as missed, or failed the run: %+v, %v", r.Rows[1], r.Failures)
	}
	r.Rows = r.Rows[:1]
	r.add(row{Scenario: "egress", Unit: "× size", Nginx: f64(100), Ours: 1.5}, mustBeAtMost(1.02, "≤ 1.02×"))
	if len(r.Failures) != 1 {
		t.Errorf("ours pulling more than its bound from S3 did not fail the run: %v", r.Failures)
	}
	if md := r.markdown(); !strings.Contains(md, "| egress, × size | 100.000 | 1.500 | 0.01× | ≤ 1.02× | MISSED |") {
		t.Errorf("markdown:\n%s", md)
	}
	r.add(row{Scenario: "warm-up", Unit: "× size", Nginx: f64(1.5), Ours: 1}, exactly(1, "each object's bytes once"))
	if len(r.Failures) != 1 || !*r.Rows[2].Met {
		t.Errorf("a bound on ours failed for nginx's figure: %v", r.Failures)
	}
}

func TestCaddyOptionIsRepeatableAndOneLine(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy-option", "slice 512KiB", "-caddy-option", " fill_parallel 8 "})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"slice 512KiB", "fill_parallel 8"}; !slices.Equal(cfg.caddyOptions, want) {
		t.Errorf("caddy options %q, want %q", cfg.caddyOptions, want)
	}
	for _, bad := range []string{"", "slice 1MiB\nroot /", "slice 1MiB }", "log {"} {
		if _, err := parseFlags([]string{"-caddy-option", bad}); err == nil {
			t.Errorf("-caddy-option %q accepted", bad)
		}
	}
}

// The bounds on S3 bytes follow s3_media_cache's defaults when no option
// sets them: the bench's copies must be the module's.
func TestFillDefaultsAreTheModules(t *testing.T) {
	// Wherever in the package they live (handler.go, config.go, ...).
	fset := token.NewFileSet()
	var files []*ast.File
	sources, _ := filepath.Glob("../../../../s3cache/*.go")
	for _, path := range sources {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, file)
	}
	want := map[string]int64{"defaultSlice": defaultSlice, "defaultFillAhead": defaultFillAhead,
		"defaultFillParallel": defaultFillParallel, "defaultMaxFills": defaultMaxConcurrentFills}
	found := 0
	for _, file := range files {
		ast.Inspect(file, func(n ast.Node) bool {
			spec, ok := n.(*ast.ValueSpec)
			if !ok || len(spec.Names) != 1 || len(spec.Values) != 1 {
				return true
			}
			name := spec.Names[0].Name
			w, ok := want[name]
			if !ok {
				return true
			}
			found++
			tv, err := types.Eval(fset, nil, token.NoPos, types.ExprString(spec.Values[0]))
			if err != nil {
				t.Errorf("s3cache: %s: %v", name, err)
				return true
			}
			if v, exact := constant.Int64Val(tv.Value); !exact || v != w {
				t.Errorf("s3cache: %s = %s; the bench assumes %d", name, types.ExprString(spec.Values[0]), w)
			}
			return true
		})
	}
	if found != len(want) {
		t.Errorf("found %d of the defaults %v in s3cache", found, slices.Sorted(maps.Keys(want)))
	}
}

// fakeCaddyAdapt is a caddy whose adapt prints the JSON of two sites
// sharing one s3_media_cache block with slice 512KiB.
const fakeCaddyAdapt = `#!/bin/sh
cat <<'EOF'
{"apps":{"http":{"servers":{"srv0":{"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[
{"handler":"s3_media_cache","bucket":"b","slice":524288}]}]}]}]},
"srv1":{"routes":[{"handle":[{"handler":"s3_media_cache","bucket":"b","slice":524288}]}]}}}}}
EOF
`

func TestFillSettingsFillInTheDefaults(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "caddy")
	if err := os.WriteFile(bin, []byte(fakeCaddyAdapt), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := readFillSettings(t.Context(), bin, "Caddyfile", []string{"slice 512KiB"})
	if err != nil {
		t.Fatal(err)
	}
	if got.SliceBytes != 512<<10 || got.AheadBytes != defaultFillAhead || got.Parallel != defaultFillParallel ||
		got.MaxFills != defaultMaxConcurrentFills || !slices.Equal(got.Options, []string{"slice 512KiB"}) {
		t.Errorf("fill settings %+v: want slice 512KiB and the other defaults", got)
	}
	if s := got.String(); s != "slice 512 KiB, fill_ahead 8 MiB, fill_parallel 8, max_concurrent_fills 64" {
		t.Errorf("described as %q", s)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'Error: unrecognized subdirective sliec' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := readFillSettings(t.Context(), bin, "Caddyfile", []string{"sliec 1MiB"}); err == nil || !strings.Contains(err.Error(), "sliec") {
		t.Errorf("a Caddyfile caddy rejects gave %v, want Caddy's message", err)
	}
}

func TestOnlySeedsTheSelectedScenariosOfIssue11(t *testing.T) {
	for _, tc := range []struct {
		only                                    string
		storm, heads, ranges, suffix, firstByte bool
	}{
		{only: "storm", storm: true},
		{only: "HEAD", heads: true, ranges: true},
		{only: "suffix|first byte", suffix: true, firstByte: true},
		{only: "stampede"},
	} {
		cfg, err := parseFlags([]string{"-quick", "-only", tc.only})
		if err != nil {
			t.Fatal(err)
		}
		c := newCatalogue(cfg)
		got := [...]bool{len(c.storm) == cfg.stormObjects, len(c.heads) == 3, len(c.ranges) == 2, c.suffix.key != "", c.firstByte.key != ""}
		if want := [...]bool{tc.storm, tc.heads, tc.ranges, tc.suffix, tc.firstByte}; got != want {
			t.Errorf("-only %q: storm, heads, ranges, suffix, first byte made: %v, want %v", tc.only, got, want)
		}
		// They are cached after the restart scenario, which counts on
		// fixed() being what was cached before it.
		fixed := map[string]bool{}
		for _, o := range c.fixed() {
			fixed[o.key] = true
		}
		for _, o := range c.sliced() {
			if fixed[o.key] {
				t.Errorf("-only %q: %s is in both fixed() and sliced()", tc.only, o.key)
			}
		}
	}
}

func TestReadTimedNotesTheByteAskedFor(t *testing.T) {
	for _, tc := range []struct {
		offset int64
		reads  int // reads of 10 bytes before the byte at offset arrives
	}{{0, 1}, {9, 1}, {10, 2}, {95, 10}} {
		r := &tenBytesAtATime{data: bytes.Repeat([]byte("x"), 100)}
		var at int
		got, err := readTimed(r, tc.offset, func() { at = r.reads })
		if err != nil || len(got) != 100 {
			t.Fatalf("offset %d: %d bytes, %v", tc.offset, len(got), err)
		}
		if at != tc.reads {
			t.Errorf("offset %d: noted after read %d, want %d", tc.offset, at, tc.reads)
		}
	}
}

// tenBytesAtATime returns its data ten bytes a read.
type tenBytesAtATime struct {
	data  []byte
	reads int
}

func (r *tenBytesAtATime) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.reads++
	n := copy(p[:min(len(p), 10)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestStatusString(t *testing.T) {
	if got := statusString(map[int]int{503: 35, 200: 65, 0: 1}); got != "none ×1, 200 ×65, 503 ×35" {
		t.Errorf("statusString = %q", got)
	}
}

func TestForeignCPUCountsOnlyOtherProcesses(t *testing.T) {
	self := os.Getpid()
	before := map[int]procTimes{
		self:    {ppid: 1, ticks: 1000},
		4000001: {ppid: self, ticks: 0},    // a server the bench started
		4000002: {ppid: 1, ticks: 100},     // someone else's build
		4000003: {ppid: 2, ticks: 0},       // a kernel thread
		4000004: {ppid: 4000001, ticks: 0}, // nginx's worker
	}
	after := map[int]procTimes{
		self:    {ppid: 1, ticks: 1500},
		4000001: {ppid: self, ticks: 400},
		4000002: {ppid: 1, ticks: 150},
		4000003: {ppid: 2, ticks: 90},
		4000004: {ppid: 4000001, ticks: 300},
		4000005: {ppid: 1, ticks: 25}, // started during the run
	}
	if got := foreignCPU(before, after, time.Second); got != 0.75 {
		t.Errorf("foreignCPU = %v cores, want 0.75 (50 + 25 ticks in one second)", got)
	}
}

func TestRerenderDrawsTheSameTableFromResultsJSON(t *testing.T) {
	dir := t.TempDir()
	r := newReport(config{})
	r.add(row{Scenario: "hit", Unit: "req/s", Nginx: f64(30000), Ours: 27000, Label: "HIT"}, ratioAtLeast(0.9))
	r.add(row{Scenario: "big", Unit: "req/s", Nginx: f64(80), Ours: 90, LoadBound: true}, ratioAtLeast(1))
	if err := r.writeFiles(io.Discard, dir); err != nil {
		t.Fatal(err)
	}
	table, _ := os.ReadFile(filepath.Join(dir, "table.md"))
	chart, _ := os.ReadFile(filepath.Join(dir, "chart.svg"))
	if !strings.Contains(string(table), "| load-bound |") {
		t.Errorf("a load-bound row is given a verdict:\n%s", table)
	}
	os.Remove(filepath.Join(dir, "table.md"))
	os.Remove(filepath.Join(dir, "chart.svg"))
	if err := rerender(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
	table2, _ := os.ReadFile(filepath.Join(dir, "table.md"))
	chart2, _ := os.ReadFile(filepath.Join(dir, "chart.svg"))
	if string(table2) != string(table) || string(chart2) != string(chart) {
		t.Errorf("rerendered files differ:\n%s\n%s", table, table2)
	}
}
