package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/bench/throttle"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// bench is everything one run starts, and what it found.
type bench struct {
	cfg  config
	work string
	cat  catalogue

	gateway *s3test.Gateway
	// link shapes all three proxies: the one nginx reads S3 through, the
	// one Caddy reads S3 through (separate, so each server's S3 requests
	// are counted on their own) and the one the direct GETs go through.
	link                       *throttle.Link
	nginxS3, caddyS3, directS3 *throttle.Proxy

	nginxBin, wrkBin string
	// h2loadBin is empty when no h2 scenario runs.
	h2loadBin  string
	nginxCache *process
	nginxTLS   *process
	caddy      *process
	caddyConf  string
	caddyLog   string
	// fills is how our Caddy's fills are configured.
	fills fillSettings
	addr  struct {
		nginxHTTP, nginxTLS, caddyHTTP, caddyTLS, caddyAdmin, caddyFloor, caddyFloorTLS string
		// caddyH3 and caddyFloorH3 are set only when the h3 scenarios run.
		caddyH3, caddyFloorH3 string
	}

	// client trusts the bench's certificate and keeps connections alive;
	// it speaks HTTP/1.1, h2Client HTTP/2 and h3Client HTTP/3.
	client, h2Client, h3Client *http.Client
	// tlsConfig is their TLS configuration.
	tlsConfig *tls.Config

	// quietLeft is what remains of the run's budget for waiting until
	// other processes leave the cores alone.
	quietLeft time.Duration

	report *report
}

// server is one side of the comparison.
type server struct {
	name    string // "nginx" or "ours"
	httpURL string
	tlsURL  string
	s3      *throttle.Proxy
	proc    func() *process // the process whose memory is measured
}

func (b *bench) servers() []server {
	return []server{
		{name: "nginx", httpURL: "http://" + b.addr.nginxHTTP, tlsURL: "https://" + b.addr.nginxTLS, s3: b.nginxS3, proc: func() *process { return b.nginxCache }},
		{name: "ours", httpURL: "http://" + b.addr.caddyHTTP, tlsURL: "https://" + b.addr.caddyTLS, s3: b.caddyS3, proc: func() *process { return b.caddy }},
	}
}

// run sets everything up, runs every scenario, writes the report, and
// tears everything down. It returns an error for a harness failure or a
// correctness failure (wrong bytes, an unexpected S3 request count), never
// for a timing target missed.
func run(ctx context.Context, cfg config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	b := &bench{cfg: cfg, report: newReport(cfg), quietLeft: cfg.quietBudget}
	defer b.close()
	start := time.Now()
	if err := b.setUp(ctx); err != nil {
		return err
	}
	scenarios := []struct {
		name string
		run  func(context.Context) error
	}{
		{"warm", b.warm},
		{"hot HIT over TLS", b.tlsHits},
		{"hot HIT over plain HTTP", b.plainHits},
		{"working set", b.workingSet},
		{"stampede", b.stampedes},
		{"single cold MISS", b.singleMiss},
		// Memory before h2 and h3: Go keeps the heap their loads grew
		// (quic-go's above all) for minutes, and the peak RSS would
		// count it as the 200 clients' (332 MB in a run where memory
		// came after them, against 109 MB alone).
		{"memory", b.memory},
		{h2Scenarios, b.h2Hits},
		{h3Scenarios, b.h3Hits},
		{"restart", b.restart},
		// Issue 11's, last: they leave gigabytes in both caches.
		{"disconnect storm", b.disconnectStorm},
		{"cold HEAD and Range 0-0", b.coldHeadAndRange},
		{"cold suffix Range", b.coldSuffixRange},
		{"cold ffprobe", b.coldProbe},
		{"slow first byte", b.slowFirstByte},
	}
	for _, s := range scenarios {
		if s.name != "warm" && !cfg.selected(s.name) {
			continue
		}
		section(s.name)
		started := time.Now()
		err := s.run(ctx)
		fmt.Printf("  (%s: %s)\n", s.name, time.Since(started).Round(100*time.Millisecond))
		if err != nil {
			b.report.fail(fmt.Sprintf("%s: %v", s.name, err))
			if ctx.Err() != nil || errors.Is(err, errHarness) {
				break
			}
		}
	}
	b.report.Took = time.Since(start)
	if werr := b.report.write(os.Stdout, b.outDir()); werr != nil {
		b.report.fail(werr.Error())
	}
	if n := len(b.report.Failures); n > 0 {
		return fmt.Errorf("%d correctness check(s) failed:\n  %s", n, strings.Join(b.report.Failures, "\n  "))
	}
	return nil
}

// selected says whether -only lets the scenario named name run.
func (cfg config) selected(name string) bool {
	return cfg.only == nil || cfg.only.MatchString(name)
}

// errHarness marks a failure after which no later scenario can run.
var errHarness = errors.New("harness failure")

func section(name string) { fmt.Printf("\n==== %s ====\n", name) }

func (b *bench) outDir() string {
	if b.cfg.outDir != "" {
		return b.cfg.outDir
	}
	if b.cfg.quick {
		return filepath.Join("build", "bench-quick")
	}
	return filepath.Join("integration", "bench", "results")
}

func (b *bench) setUp(ctx context.Context) error {
	var err error
	if err := checkCaddyHasModule(ctx, b.cfg.caddyBin); err != nil {
		return err
	}
	if b.nginxBin, err = findBinary("nginx", "install it with: apt-get install nginx-light (scripts/bench does)"); err != nil {
		return err
	}
	if b.wrkBin, err = findBinary("wrk", "install it with: apt-get install wrk (scripts/bench does)"); err != nil {
		return err
	}
	if b.cfg.selected(h2Scenarios) {
		if b.h2loadBin, err = findBinary("h2load", "install it with: apt-get install nghttp2-client (scripts/bench does)"); err != nil {
			return err
		}
	}
	if _, err := findBinary("taskset", "it is in util-linux"); err != nil {
		return err
	}
	b.work = b.cfg.workDir
	if b.work == "" {
		if b.work, err = os.MkdirTemp("", "mediabench-"); err != nil {
			return fmt.Errorf("creating the work directory: %w", err)
		}
	} else if err := os.MkdirAll(b.work, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", b.work, err)
	}
	fmt.Println("work directory:", b.work)
	b.report.describeMachine(ctx, b.cfg.caddyBin, b.nginxBin, b.wrkBin, b.h2loadBin)

	section("S3: versitygw, seeded")
	if err := b.startS3(ctx); err != nil {
		return err
	}

	section("servers")
	if err := b.startServers(ctx); err != nil {
		return err
	}
	// From here on, the load core is for the load: this process (the
	// throttling proxies, the stampede tool) and versitygw.
	return pinSelfAndHelpers(b.cfg.loadCPU)
}

func (b *bench) startS3(ctx context.Context) error {
	var err error
	b.gateway, err = s3test.StartGateway(ctx, s3test.GatewayOptions{Dir: filepath.Join(b.work, "s3")})
	if err != nil {
		return err
	}
	client := b.gateway.Client()
	if err := s3test.CreateBucket(ctx, client, bucket); err != nil {
		return err
	}
	if err := s3test.MakePublicRead(ctx, client, bucket); err != nil {
		return err
	}
	b.cat = newCatalogue(b.cfg)
	started := time.Now()
	fixed := b.cat.fixed()
	if _, err := seed(ctx, client, fixed, 0); err != nil {
		return err
	}
	fmt.Printf("seeded %d objects, %d of them the working set, in %s\n",
		len(fixed), len(b.cat.workingSet), time.Since(started).Round(time.Millisecond))

	// The restart scenario needs this many more entries in Caddy's
	// cache; they are seeded now, while both cores are free, within the
	// budget.
	want := max(b.cfg.restartEntries-(len(fixed)-1), 0)
	if !b.cfg.selected("restart") {
		want = 0
	}
	started = time.Now()
	fillers := newFillers(want)
	n, err := seed(ctx, client, fillers, b.cfg.seedBudget)
	if err != nil {
		return err
	}
	b.cat.fillers = fillers[:n]
	fmt.Printf("seeded %d of %d filler objects for the restart scenario in %s (budget %s)\n",
		n, want, time.Since(started).Round(time.Millisecond), b.cfg.seedBudget)

	if b.cfg.selected("cold ffprobe") {
		if b.cat.videos, err = prepareVideos(ctx, b.cfg.videoSeconds, b.cfg.probeCopies); err != nil {
			return err
		}
	}
	started = time.Now()
	sliced := b.cat.sliced()
	if _, err := seed(ctx, client, sliced, 0); err != nil {
		return err
	}
	var slicedBytes int64
	for _, o := range sliced {
		slicedBytes += o.size
	}
	fmt.Printf("seeded %d objects (%.2f GB) for the scenarios of issue 11 in %s\n",
		len(sliced), float64(slicedBytes)/1e9, time.Since(started).Round(time.Millisecond))

	b.link = throttle.NewLink(b.cfg.rtt, b.cfg.rate)
	for _, p := range []**throttle.Proxy{&b.nginxS3, &b.caddyS3, &b.directS3} {
		if *p, err = throttle.Listen(b.gateway.Addr, b.link); err != nil {
			return err
		}
	}
	fmt.Printf("link to S3: %s round trip, %s per connection\n", b.cfg.rtt, rateString(b.cfg.rate))
	return nil
}

func (b *bench) startServers(ctx context.Context) error {
	certPath, keyPath := filepath.Join(b.work, "cert.pem"), filepath.Join(b.work, "key.pem")
	pool, err := s3test.WriteCertificate(certPath, keyPath)
	if err != nil {
		return err
	}
	b.client = newClient(pool)
	b.h2Client = newClient(pool)
	b.h2Client.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	b.tlsConfig = b.client.Transport.(*http.Transport).TLSClientConfig
	b.h3Client = &http.Client{Timeout: 2 * time.Minute, Transport: &http3.Transport{TLSClientConfig: b.tlsConfig.Clone(), DisableCompression: true}}
	root := filepath.Join(b.work, "root") // the recipe's root: empty, tried first
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	addrs := []*string{&b.addr.nginxHTTP, &b.addr.nginxTLS, &b.addr.caddyHTTP, &b.addr.caddyTLS, &b.addr.caddyAdmin, &b.addr.caddyFloor, &b.addr.caddyFloorTLS}
	if b.cfg.selected(h3Scenarios) {
		addrs = append(addrs, &b.addr.caddyH3, &b.addr.caddyFloorH3)
	}
	for _, a := range addrs {
		if *a, err = freeAddr(); err != nil {
			return err
		}
	}

	cacheConf, err := nginxBase(filepath.Join(b.work, "nginx-cache"), b.addr.nginxHTTP)
	if err != nil {
		return err
	}
	cacheConf.Root = root
	cacheConf.CacheDir = filepath.Join(cacheConf.Dir, "cache")
	cacheConf.S3Backend = b.nginxS3.URL() + "/" + bucket
	cacheConf.S3Host = b.nginxS3.Addr()
	if b.nginxCache, err = startNginx(ctx, "nginx (cache)", b.nginxBin, "nginx-cache.conf.tmpl", cacheConf, b.cfg.serverCPU); err != nil {
		return err
	}
	tlsConf, err := nginxBase(filepath.Join(b.work, "nginx-tls"), b.addr.nginxTLS)
	if err != nil {
		return err
	}
	tlsConf.Upstream = b.addr.nginxHTTP
	tlsConf.Cert, tlsConf.Key = certPath, keyPath
	if b.nginxTLS, err = startNginx(ctx, "nginx (TLS)", b.nginxBin, "nginx-tls.conf.tmpl", tlsConf, b.cfg.serverCPU); err != nil {
		return err
	}
	fmt.Printf("nginx: cache on http://%s, TLS in front on https://%s (configs in %s)\n", b.addr.nginxHTTP, b.addr.nginxTLS, b.work)

	floorFiles := filepath.Join(b.work, "floor-files")
	if err := os.MkdirAll(floorFiles, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", floorFiles, err)
	}
	largeFile := filepath.Join(floorFiles, floorFilePath)
	if err := os.WriteFile(largeFile, s3test.RandomBytes(int(b.cat.hot1m.size), 1414), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", largeFile, err)
	}
	b.caddyConf = filepath.Join(b.work, "Caddyfile")
	b.caddyLog = filepath.Join(b.work, "caddy.log")
	err = render("Caddyfile.tmpl", caddyConfig{
		Admin: b.addr.caddyAdmin, HTTP: b.addr.caddyHTTP, TLS: b.addr.caddyTLS,
		Bucket: bucket, Endpoint: b.caddyS3.URL(), Root: root,
		CacheDir: filepath.Join(b.work, "caddy-cache"), Cert: certPath, Key: keyPath,
		Floor: b.addr.caddyFloor, FloorTLS: b.addr.caddyFloorTLS, FloorBody: strings.Repeat("x", int(b.cat.hot50k.size)),
		FloorLargeBody: strings.Repeat("x", int(b.cat.hot1m.size)), FloorFileRoot: floorFiles,
		H3: b.addr.caddyH3, FloorH3: b.addr.caddyFloorH3,
		Options: b.cfg.caddyOptions,
	}, b.caddyConf)
	if err != nil {
		return err
	}
	if b.fills, err = readFillSettings(ctx, b.cfg.caddyBin, b.caddyConf, b.cfg.caddyOptions); err != nil {
		return err
	}
	b.report.Settings.Ours = b.fills
	if b.caddy, err = startCaddy(ctx, b.cfg.caddyBin, b.caddyConf, b.caddyLog, b.addr.caddyHTTP, b.cfg.serverCPU); err != nil {
		return err
	}
	fmt.Printf("caddy: http://%s and https://%s, admin (pprof) on %s; %s\n", b.addr.caddyHTTP, b.addr.caddyTLS, b.addr.caddyAdmin, b.fills)
	return nil
}

func newClient(pool *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			Proxy:               nil, // never leave loopback, whatever HTTP_PROXY says
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			TLSClientConfig:     &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
			MaxIdleConnsPerHost: 64,
			DisableCompression:  true,
		},
	}
}

// close stops what setUp started, in reverse order.
func (b *bench) close() {
	for _, p := range []*process{b.caddy, b.nginxTLS, b.nginxCache} {
		if p != nil {
			if err := p.stop(); err != nil {
				fmt.Fprintln(os.Stderr, "warning:", err)
			}
		}
	}
	for _, p := range []*throttle.Proxy{b.nginxS3, b.caddyS3, b.directS3} {
		if p != nil {
			_ = p.Close()
		}
	}
	if b.h3Client != nil {
		_ = b.h3Client.Transport.(*http3.Transport).Close()
	}
	if b.gateway != nil {
		_ = b.gateway.Close()
	}
	if b.work != "" && b.cfg.workDir == "" && !b.cfg.keep {
		_ = os.RemoveAll(b.work)
	}
}

// fetchResult is one verified GET.
type fetchResult struct {
	status      int
	cacheStatus string
	proto       string // HTTP/1.1 or HTTP/2.0
	ttfb, ttlb  time.Duration
	err         error
}

// fetch GETs url over HTTP/1.1 and checks the status is 200 and the body
// is o's.
func (b *bench) fetch(ctx context.Context, url string, o object) fetchResult {
	return b.fetchWith(ctx, b.client, url, o)
}

// fetchWith is fetch through client.
func (b *bench) fetchWith(ctx context.Context, client *http.Client, url string, o object) fetchResult {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fetchResult{err: err}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fetchResult{err: err}
	}
	defer resp.Body.Close()
	r := fetchResult{status: resp.StatusCode, cacheStatus: resp.Header.Get("X-Cache-Status"), proto: resp.Proto, ttfb: time.Since(start)}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	r.ttlb = time.Since(start)
	switch {
	case err != nil:
		r.err = fmt.Errorf("GET %s: reading the body: %w", url, err)
	case resp.StatusCode != http.StatusOK:
		r.err = fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	case n != o.size || hex.EncodeToString(h.Sum(nil)) != o.sha256:
		r.err = fmt.Errorf("GET %s: %d bytes with the wrong SHA-256 (want %d bytes, %s)", url, n, o.size, o.sha256)
	}
	return r
}

// fetchAll GETs every object from base, several at once, within a time
// budget, and returns how many were fetched (a prefix of objs when
// stopped by the budget) and the first error.
func (b *bench) fetchAll(ctx context.Context, base string, objs []object, budget time.Duration) (int, error) {
	return forEachPrefix(ctx, len(objs), budget, func(ctx context.Context, i int) error {
		return b.fetch(ctx, base+objs[i].path(), objs[i]).err
	})
}

// quiet waits for the machine to be quiet before a measurement, within
// what is left of the run's budget for that, and records a warning when
// it stays busy: the bench cannot stop another session's build or tests
// from sharing its cores, but it can say so. Quick mode measures no
// timings and does not wait.
func (b *bench) quiet(what string) float64 {
	if b.cfg.quick {
		return 0
	}
	start := time.Now()
	busy := waitQuiet(min(b.quietLeft, 10*time.Second))
	b.quietLeft = max(b.quietLeft-time.Since(start), 0)
	if busy > quietThreshold {
		b.report.warn(fmt.Sprintf("%s: a core was %.0f%% busy with other work just before the measurement; its timings are suspect", what, busy))
	}
	return busy
}

// withLink runs f with the link set to rtt and rate, and puts the
// configured link back afterwards.
func (b *bench) withLink(rtt time.Duration, rate int64, f func() error) error {
	b.link.Set(rtt, rate)
	defer b.link.Set(b.cfg.rtt, b.cfg.rate)
	return f()
}

// withFirstByteDelay runs f with S3 that much slower to start each
// answer, and puts the link back to no delay afterwards.
func (b *bench) withFirstByteDelay(d time.Duration, f func() error) error {
	b.link.SetFirstByteDelay(d)
	defer b.link.SetFirstByteDelay(0)
	return f()
}

func rateString(bytesPerSecond int64) string {
	if bytesPerSecond == 0 {
		return "no cap"
	}
	return fmt.Sprintf("%g MB/s", float64(bytesPerSecond)/1e6)
}
