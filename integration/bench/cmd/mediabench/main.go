// Command mediabench runs caddy-s3-media-cache and Mastodon's nginx recipe
// side by side on the same S3, the same cores and the same link, and
// prints one table: scenario, nginx, ours, ratio, target.
//
// It starts versitygw seeded with media-sized objects, a throttling proxy
// in front of it that makes it look remote (latency and a per-connection
// bandwidth cap, and a count of the S3 requests each server makes), the
// recipe's caching nginx with a second nginx terminating TLS in front of
// it, and one Caddy with this module serving plain HTTP and TLS. Each
// server runs on one core (taskset), the load generators (wrk over
// HTTP/1.1, h2load over HTTP/2, and the stampede tool of package
// stampede) on the other.
//
// The h2 scenarios (issue 14) drive the hot hits over HTTP/2, as browsers
// fetch a media host, with one and with eight requests in flight on each
// connection, through the TLS nginx (which speaks h2) and Caddy's TLS
// site, beside Caddy's own respond over h2. The h3 scenarios drive our
// hit and Caddy's respond over HTTP/3 (package h3load, from this
// process), without nginx: Debian's nginx 1.22 has no HTTP/3.
//
// The scenarios of issue 11 (sliced fills) count the bytes of S3's
// response bodies each server was sent, at its throttling proxy: a storm
// of clients that leave after the headers, cold HEADs and small Ranges, a
// cold suffix Range and ffprobe on a cold MP4 whose index is at its end,
// and a stampede on an S3 slow to its first byte.
//
// scripts/bench is the documented way to run it: it installs nginx, wrk,
// h2load and ffmpeg, builds ./caddy, and runs this program. With -quick it runs
// every scenario briefly and checks only what must hold on any machine:
// the bytes every client received, and what our Caddy pulled from S3 where
// the sliced engine makes it deterministic (each byte of an object at most
// once per fill, a HEAD or a one-byte Range at most one slice, a departed
// client at most what issue 11 allows). It exits 1 when one of those fails
// (or the harness itself does), whatever the timings. nginx's figures are
// reported, never checked.
//
// -caddy-option adds lines to our Caddy's s3_media_cache block (slice,
// fill_parallel, ...), for tuning runs; the bounds on S3 bytes follow the
// slice size and read-ahead Caddy was configured with.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the whole run's settings, from the flags.
type config struct {
	caddyBin string
	outDir   string
	workDir  string
	keep     bool
	quick    bool
	timeout  time.Duration
	// quietBudget bounds the time the run spends waiting for other
	// processes to leave the cores alone, and measuring again.
	quietBudget time.Duration

	rtt      time.Duration
	rate     int64 // bytes per second per connection to S3
	slowRate int64

	duration    time.Duration // of each wrk or h2load measurement
	warmup      time.Duration // the load run before them, not measured
	rounds      int           // measurements per server and scenario
	connections int

	serverCPU, loadCPU int

	bigSize         int64
	smallSize       int64
	stampedeClients int
	memoryClients   int
	memoryObjects   int
	workingSet      int
	restartEntries  int
	seedBudget      time.Duration
	fillBudget      time.Duration

	// The scenarios of issue 11 (sliced fills).
	stormObjects   int   // the disconnect storm's clients, each on its own object
	stormSize      int64 // of each of the storm's objects
	headRangeSize  int64 // of the objects that get a HEAD or a Range: bytes=0-0
	suffixSize     int64 // of the object that gets a Range: bytes=-500
	suffixRate     int64 // the link's cap meanwhile
	videoSeconds   int   // length of the videos ffprobe reads
	probeCopies    int   // cold copies of each video ffprobe reads, for a median
	firstByteSize  int64 // of the slow-first-byte stampede's object
	firstByteDelay time.Duration
	// settleQuiet and settleLimit bound the wait for a server's S3
	// traffic to stop before it is counted: fills may outlive their
	// clients.
	settleQuiet, settleLimit time.Duration

	// caddyOptions are extra lines for our Caddy's s3_media_cache block.
	caddyOptions []string

	profile        bool
	profileSeconds int

	// only, when set, limits the run to the scenarios it matches.
	only *regexp.Regexp
	// rerender, when set, is a results.json to draw again instead of
	// running anything.
	rerender string
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "mediabench:", err)
		os.Exit(2)
	}
	if cfg.rerender != "" {
		if err := rerender(cfg.rerender); err != nil {
			fmt.Fprintln(os.Stderr, "mediabench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "\nmediabench: FAILED:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("mediabench", flag.ContinueOnError)
	fs.StringVar(&cfg.caddyBin, "caddy", "./caddy", "Caddy binary built with this module (scripts/build)")
	fs.StringVar(&cfg.outDir, "out", "", "directory for results.json, table.md and chart.svg (default: integration/bench/results, or build/bench-quick with -quick)")
	fs.StringVar(&cfg.workDir, "work", "", "directory for S3 data, caches, configs and logs (default: a new temporary directory)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory afterwards")
	fs.BoolVar(&cfg.quick, "quick", false, "CI mode: every scenario, briefly; checks S3 request counts and bytes, not timings")
	fs.DurationVar(&cfg.rtt, "latency", 30*time.Millisecond, "round-trip time the link to S3 adds (a new connection pays one more, for its handshake)")
	rate := fs.String("bandwidth", "10MB", "bandwidth cap of each connection to S3, bytes per second (kB, MB: powers of 1000)")
	slowRate := fs.String("slow-bandwidth", "3MB", "the cap for the slow-link stampede, where a fill outlasts nginx's 5s proxy_cache_lock_timeout")
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of each wrk or h2load measurement")
	fs.IntVar(&cfg.rounds, "rounds", 3, "wrk or h2load measurements per server and scenario, alternating the servers; the table shows their median")
	fs.IntVar(&cfg.connections, "connections", 32, "wrk and h2load connections")
	fs.IntVar(&cfg.serverCPU, "server-cpu", 0, "the core nginx and Caddy are pinned to")
	fs.IntVar(&cfg.loadCPU, "load-cpu", 1, "the core the load generators, the throttling proxy and versitygw are pinned to")
	fs.IntVar(&cfg.restartEntries, "restart-entries", 100_000, "cache entries Caddy holds before the restart scenario")
	fs.DurationVar(&cfg.fillBudget, "fill-budget", 60*time.Second, "at most this long seeding, and then at most this long requesting, the objects that fill the cache for the restart scenario")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "give up, stopping everything, after this long (5m at most with -quick)")
	fs.DurationVar(&cfg.quietBudget, "quiet-budget", time.Minute, "at most this long in all waiting for other processes to leave the cores alone before a measurement, and measuring again after one they disturbed")
	fs.BoolVar(&cfg.profile, "profile", false, "also take CPU and allocation profiles of Caddy serving 50 KB hits (plain HTTP/1.1, and h2 beside its respond over h2) and the working set, "+
		"through its admin endpoint (into build/bench-profiles, or OUT/profiles with -out)")
	fs.Var((*optionLines)(&cfg.caddyOptions), "caddy-option",
		"an extra line for our Caddy's s3_media_cache block, such as 'slice 512KiB' or 'fill_parallel 8'; repeatable")
	fs.StringVar(&cfg.rerender, "rerender", "", "draw table.md and chart.svg again from this results.json, beside it, and run nothing")
	only := fs.String("only", "", "run only the scenarios whose name matches this regular expression (tls, plain, working set, h2, h3, stampede, miss, memory, restart, "+
		"disconnect storm, cold HEAD and Range 0-0, cold suffix Range, cold ffprobe, slow first byte); the warm-up always runs")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var err error
	if cfg.rate, err = parseBytes(*rate); err != nil {
		return cfg, fmt.Errorf("-bandwidth: %w", err)
	}
	if cfg.slowRate, err = parseBytes(*slowRate); err != nil {
		return cfg, fmt.Errorf("-slow-bandwidth: %w", err)
	}
	if cfg.rate <= 0 || cfg.slowRate <= 0 {
		return cfg, errors.New("-bandwidth and -slow-bandwidth must be positive")
	}
	if *only != "" {
		if cfg.only, err = regexp.Compile("(?i)" + *only); err != nil {
			return cfg, fmt.Errorf("-only: %w", err)
		}
	}
	if cfg.rounds < 1 {
		return cfg, errors.New("-rounds must be at least 1")
	}
	if cfg.serverCPU == cfg.loadCPU {
		return cfg, errors.New("-server-cpu and -load-cpu must be different cores")
	}

	cfg.warmup = time.Second
	cfg.bigSize = 20 * mB
	cfg.smallSize = 10 * kB
	cfg.stampedeClients = 100
	cfg.memoryClients = 200
	cfg.memoryObjects = 10
	cfg.workingSet = 10_000
	cfg.seedBudget = cfg.fillBudget
	cfg.profileSeconds = 10
	cfg.stormObjects = 200
	cfg.stormSize = 50 * mB
	cfg.headRangeSize = 50 * mB
	cfg.suffixSize = 100 * mB
	cfg.suffixRate = 5 * mB
	cfg.videoSeconds = 60 // about 61 MB
	cfg.probeCopies = 3
	cfg.firstByteSize = 1 * mB
	cfg.firstByteDelay = 6 * time.Second // past lock_timeout's and proxy_cache_lock_timeout's 5s
	cfg.settleQuiet = 3 * time.Second
	cfg.settleLimit = 60 * time.Second
	if cfg.quick {
		// Every scenario still runs against both servers, so the nginx
		// configs and every code path of the harness are exercised;
		// only the amounts shrink.
		cfg.duration = min(cfg.duration, time.Second)
		cfg.rounds = 1
		cfg.warmup = 0 // timings are not checked
		cfg.memoryClients = 40
		cfg.memoryObjects = 4
		cfg.workingSet = 1_000
		cfg.restartEntries = min(cfg.restartEntries, 3_000)
		cfg.seedBudget = min(cfg.seedBudget, 20*time.Second)
		cfg.fillBudget = min(cfg.fillBudget, 20*time.Second)
		cfg.profileSeconds = 3
		// Fewer storm objects, of the same size: its target is a share
		// of each object, which a smaller one would make a different
		// test. The others stay several slices (1 MiB by default) long,
		// so that what a HEAD or a small Range costs still shows; the
		// HEAD and Range objects are larger than fill_ahead too (8 MiB
		// by default), or they would be fetched whole, by design.
		cfg.stormObjects = 16
		cfg.headRangeSize = 20 * mB
		cfg.suffixSize = 10 * mB
		cfg.videoSeconds = 8 // about 8 MB
		cfg.probeCopies = 1
		cfg.settleQuiet = 500 * time.Millisecond
		cfg.timeout = min(cfg.timeout, 5*time.Minute)
	}
	return cfg, nil
}

// optionLines is a repeatable flag: each value is one line of the
// s3_media_cache block, an option and its arguments.
type optionLines []string

func (o *optionLines) String() string { return strings.Join(*o, "; ") }

func (o *optionLines) Set(v string) error {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return errors.New("empty option")
	case strings.ContainsAny(v, "{}\n\r"):
		return fmt.Errorf("%q: one option on one line, without braces", v)
	}
	*o = append(*o, v)
	return nil
}

// parseBytes reads "10MB", "3.5MB", "500kB" or "1000000" as bytes, in
// powers of 1000 like network rates.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		factor float64
	}{{"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"KB", 1e3}, {"B", 1}}
	num, factor := s, 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, factor = strings.TrimSuffix(s, u.suffix), u.factor
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 10MB, 500kB)", s)
	}
	return int64(v * factor), nil
}
