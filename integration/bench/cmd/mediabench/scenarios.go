package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/bench/stampede"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// warm puts the hot objects and the working set in both caches, checking
// the bytes of every response, that the second request for an object is
// a HIT, and that our Caddy pulled each object's bytes from S3 exactly
// once (in as many ranged GETs as it has slices).
func (b *bench) warm(ctx context.Context) error {
	hot := []object{b.cat.hot50k, b.cat.hot1m, b.cat.hot20m}
	all := append(slices.Clone(hot), b.cat.workingSet...)
	var total int64
	for _, o := range all {
		total += o.size
	}
	requests, pulled := map[string]float64{}, map[string]float64{}
	for _, s := range b.servers() {
		s.s3.Reset()
		for _, o := range hot {
			for i, url := range []string{s.httpURL + o.path(), s.httpURL + o.path(), s.tlsURL + o.path()} {
				r := b.fetch(ctx, url, o)
				if r.err != nil {
					return errors.Join(errHarness, fmt.Errorf("%s: %w", s.name, r.err))
				}
				if i > 0 && r.cacheStatus != "HIT" {
					return errors.Join(errHarness, fmt.Errorf("%s: GET %s after a first GET: X-Cache-Status %q, want HIT", s.name, url, r.cacheStatus))
				}
			}
		}
		// The working set is loaded at full speed: the link shapes
		// scenarios, not set-up.
		started := time.Now()
		var n int
		err := b.withLink(0, 0, func() error {
			var err error
			n, err = b.fetchAll(ctx, s.httpURL, b.cat.workingSet, 5*time.Minute)
			return err
		})
		if err == nil && n < len(b.cat.workingSet) {
			err = fmt.Errorf("only %d of %d working-set objects fetched within 5 minutes", n, len(b.cat.workingSet))
		}
		if err != nil {
			return errors.Join(errHarness, fmt.Errorf("%s: warming the working set: %w", s.name, err))
		}
		fmt.Printf("  %s: %d hot objects and %d working-set objects cached in %s\n", s.name, len(hot), n, time.Since(started).Round(time.Millisecond))
		u := b.settle(ctx, s, "warm-up", b.cfg.settleLimit)
		requests[s.name], pulled[s.name] = float64(u.Requests), u.ratio(total)
		if s.name == "ours" {
			b.checkEachOnce(u, all, "warm-up")
		}
	}
	what := fmt.Sprintf("warm-up, %s objects", formatValue(float64(len(all)), "requests"))
	b.report.add(row{Scenario: what + ": S3 requests", Unit: "requests", Nginx: f64(requests["nginx"]), Ours: requests["ours"], LowerIsBetter: true,
		Note: "ours: one ranged GET per slice"}, target{})
	b.report.add(row{Scenario: what + ": S3 body bytes / the objects' size", Unit: "× size", Nginx: f64(pulled["nginx"]), Ours: pulled["ours"],
		LowerIsBetter: true}, exactly(1, "each object's bytes once"))
	return nil
}

// checkEachOnce fails the run unless u, what our Caddy pulled from S3,
// holds the bytes of each of objs exactly once.
func (b *bench) checkEachOnce(u s3Use, objs []object, what string) {
	var wrong []string
	for _, o := range objs {
		if got := u.perPath[o.s3Path()]; got != o.size {
			wrong = append(wrong, fmt.Sprintf("%s: %d bytes of %d", o.key, got, o.size))
		}
	}
	if len(wrong) > 0 {
		b.report.fail(fmt.Sprintf("%s: ours pulled %d of %d objects' bytes from S3 other than once: %s", what, len(wrong), len(objs), wrong[0]))
	}
}

func (b *bench) tlsHits(ctx context.Context) error {
	overTLS := load{tls: true}
	hit50k := "end to end over TLS, hot HIT 50 KB: one Caddy vs two nginx"
	err := b.throughput(ctx, row{Scenario: hit50k, Label: "TLS end to end, HIT 50 KB"}, overTLS, []object{b.cat.hot50k}, ratioAtLeast(1.5))
	if err != nil {
		return err
	}
	if _, err := b.caddyFloor(ctx, overTLS, hit50k, "TLS", "TLS"); err != nil {
		return err
	}
	return b.throughput(ctx, row{Scenario: "end to end over TLS, hot HIT 1 MB: one Caddy vs two nginx", Label: "TLS end to end, HIT 1 MB"},
		overTLS, []object{b.cat.hot1m}, ratioAtLeast(1.5))
}

func (b *bench) plainHits(ctx context.Context) error {
	plain := load{}
	hit50k := fmt.Sprintf("hot HIT 50 KB, %d connections, plain HTTP", b.cfg.connections)
	err := b.throughput(ctx, row{Scenario: hit50k, Label: "HIT 50 KB, plain HTTP"}, plain, []object{b.cat.hot50k}, ratioAtLeast(0.9))
	if err != nil {
		return err
	}
	if _, err := b.caddyFloor(ctx, plain, hit50k, "plain HTTP", "plain HTTP"); err != nil {
		return err
	}
	if b.cfg.profile {
		hit := plain
		hit.path = b.cat.hot50k.path()
		if err := b.profileCaddy(ctx, "50 KB hit", "caddy", hit, "http://"+b.addr.caddyHTTP); err != nil {
			return err
		}
	}
	err = b.throughput(ctx, row{Scenario: "hot HIT 1 MB, plain HTTP", Label: "HIT 1 MB, plain HTTP"}, plain, []object{b.cat.hot1m}, ratioAtLeast(1.0))
	if err != nil {
		return err
	}
	return b.throughput(ctx, row{Scenario: "hot HIT 20 MB, plain HTTP", Label: "HIT 20 MB, plain HTTP"}, plain, []object{b.cat.hot20m}, ratioAtLeast(1.0))
}

// caddyFloor measures Caddy's own respond handler sending a body of the
// 50 KB object's size from memory, driven as l says, against nginx's
// figure in the row named hit (the 50 KB hit driven the same way): the
// ratio no handler in Caddy can beat on this machine, next to which the
// hit's own ratio reads. A reference row, with no target; it returns
// respond's rate.
func (b *bench) caddyFloor(ctx context.Context, l load, hit, what, label string) (float64, error) {
	return b.caddyReference(ctx, l, respondOf("50 KB", "/"), hit, what, label)
}

// reference is a response of Caddy's with no module involved, for a
// reference row: the handler that sends it, the size of its body (its
// name in the rows), where the body comes from, and the path that asks
// for it on the reference sites.
type reference struct {
	handler, size, source, path string
}

// respondOf is Caddy's respond handler sending a body of size from
// memory, at path.
func respondOf(size, path string) reference {
	return reference{handler: "respond", size: size, source: "from memory", path: path}
}

// fileServerOf is Caddy's file_server sending a file of size from the
// reference site's directory (in the page cache after the first request),
// at path.
func fileServerOf(size, path string) reference {
	return reference{handler: "file_server", size: size, source: "file", path: path}
}

// caddyReference measures ref on the reference site (over TLS if l says
// so), against nginx's figure in the row named hit, and returns its rate.
func (b *bench) caddyReference(ctx context.Context, l load, ref reference, hit, what, label string) (float64, error) {
	base := "http://" + b.addr.caddyFloor
	if l.tls {
		base = "https://" + b.addr.caddyFloorTLS
	}
	l.path = ref.path
	var nginx float64
	for _, r := range b.report.Rows {
		if r.Scenario == hit && r.Nginx != nil {
			nginx = *r.Nginx
		}
	}
	var rates []float64
	for range b.cfg.rounds {
		res, err := b.measure(ctx, "Caddy's "+ref.handler+" floor, "+what, "caddy "+ref.handler, l, base)
		if err != nil {
			return 0, err
		}
		rates = append(rates, res.RequestsPerSec)
	}
	b.report.add(row{
		Scenario: "reference: Caddy's own " + ref.handler + ", " + ref.size + " " + ref.source + ", no module, " + what + ", req/s (nginx: its " + ref.size + " HIT)",
		Label:    "reference: Caddy " + ref.handler + " " + ref.size + ", " + label, Unit: "req/s", Nginx: f64(nginx), Ours: median(rates),
	}, target{})
	return median(rates), nil
}

func (b *bench) workingSet(ctx context.Context) error {
	paths := make([]string, len(b.cat.workingSet))
	for i, o := range b.cat.workingSet {
		paths[i] = o.path()
	}
	script := filepath.Join(b.work, "working-set.lua")
	if err := writeRandomPathsScript(script, filepath.Join(b.work, "working-set.txt"), paths); err != nil {
		return err
	}
	n := groupThousands(strconv.Itoa(len(paths)))
	l := load{script: script}
	err := b.throughput(ctx, row{
		Scenario: fmt.Sprintf("working set of %s small objects (%s), random keys, all cached", n, sizeString(b.cfg.smallSize)),
		Label:    "working set, " + n + " objects",
	}, l, b.cat.workingSet, ratioAtLeast(0.9))
	if err != nil || !b.cfg.profile {
		return err
	}
	return b.profileCaddy(ctx, "working set", "caddy-working-set", l, "http://"+b.addr.caddyHTTP)
}

// throughput drives each server as l says, for objs[0] or, with a
// script or a list of paths, for the objects they pick: a warm-up run
// each, then cfg.rounds measured runs each,
// alternating which server goes first, so that a machine getting slower
// or faster during the scenario weighs on both alike. A run during which another process took more than
// maxForeignCPU of a core is done again (twice at most). The figure is
// the median of the rounds. Every response must be a 2xx (and every
// connection h2 when l asks for it) and ours must not ask S3 for anything;
// afterwards a sample object is fetched, over the same protocol, and must
// be a HIT with the right bytes.
func (b *bench) throughput(ctx context.Context, rw row, l load, objs []object, t target) error {
	scenario := rw.Scenario
	servers := b.servers()
	if l.script == "" && l.paths == nil {
		l.path = objs[0].path()
	}
	base := func(s server) string {
		if l.tls {
			return s.tlsURL
		}
		return s.httpURL
	}
	for _, s := range servers {
		s.s3.Reset()
		if b.cfg.warmup > 0 {
			if _, err := b.runLoad(ctx, l, base(s), b.cfg.warmup); err != nil {
				return err
			}
		}
	}
	runs := map[string][]loadResult{}
	for round := range b.cfg.rounds {
		order := []server{servers[0], servers[1]}
		if round%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, s := range order {
			res, err := b.measure(ctx, scenario, s.name, l, base(s))
			if err != nil {
				return err
			}
			runs[s.name] = append(runs[s.name], res)
		}
	}

	rate, serverBusy, loadBusy := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, s := range servers {
		var rates, sb, lb []float64
		for _, r := range runs[s.name] {
			rates, sb, lb = append(rates, r.RequestsPerSec), append(sb, r.ServerCoreBusy), append(lb, r.LoadCoreBusy)
		}
		rate[s.name], serverBusy[s.name], loadBusy[s.name] = median(rates), median(sb), median(lb)
		if n := s.s3.Count("", ""); n != 0 {
			if s.name == "ours" {
				b.report.fail(fmt.Sprintf("%s: ours made %d S3 requests while every object was cached", scenario, n))
			} else {
				b.report.warn(fmt.Sprintf("%s: nginx made %d S3 requests while every object was cached", scenario, n))
			}
		}
		sample := objs[rand.IntN(len(objs))]
		client, proto := b.client, "HTTP/1.1"
		if l.streams > 0 {
			client, proto = b.h2Client, "HTTP/2.0"
		}
		r := b.fetchWith(ctx, client, base(s)+sample.path(), sample)
		if r.err != nil || r.cacheStatus != "HIT" || r.proto != proto {
			b.report.fail(fmt.Sprintf("%s: %s: after the run, GET %s: X-Cache-Status %q over %s (want HIT over %s), error %v",
				scenario, s.name, sample.path(), r.cacheStatus, r.proto, proto, r.err))
		}
	}
	b.report.Raw[scenario] = runs
	rw.Unit, rw.Nginx, rw.Ours = "req/s", f64(rate["nginx"]), rate["ours"]
	var notes []string
	if b.cfg.rounds > 1 {
		notes = append(notes, fmt.Sprintf("median of %d", b.cfg.rounds))
	}
	if !b.cfg.quick && max(loadBusy["nginx"], loadBusy["ours"]) > 95 {
		// Then the load generator's core, not the server's, sets the
		// pace, and how busy each server was says more than its rate.
		notes = append(notes, fmt.Sprintf("%s's core saturated; server core busy: nginx %.0f%%, ours %.0f%%", l.tool(), serverBusy["nginx"], serverBusy["ours"]))
		rw.LoadBound = true
	}
	rw.Note = strings.Join(notes, "; ")
	b.report.add(rw, t)
	return nil
}

// maxForeignCPU is how much of a core other processes may use during a
// measurement before it is done again: more, and they were competing
// with the server or the load generator.
const maxForeignCPU = 0.05

// measure is one run of the load generator in a throughput scenario,
// done again (twice at most, within the run's budget for waiting) when
// other processes took CPU meanwhile.
func (b *bench) measure(ctx context.Context, scenario, name string, l load, base string) (loadResult, error) {
	for attempt := 0; ; attempt++ {
		background := b.quiet(scenario + ", " + name)
		cpuBefore, procsBefore, start := readCPU(), readProcs(), time.Now()
		res, err := b.runLoad(ctx, l, base, b.cfg.duration)
		if err != nil {
			return res, err
		}
		cpuAfter, procsAfter := readCPU(), readProcs()
		res.BackgroundBusy = background
		res.ForeignCPU = foreignCPU(procsBefore, procsAfter, time.Since(start))
		res.ServerCoreBusy = busyPercent(cpuBefore, cpuAfter, b.cfg.serverCPU)
		res.LoadCoreBusy = busyPercent(cpuBefore, cpuAfter, b.cfg.loadCPU)
		if f := res.failures(); f != "" {
			b.report.fail(name + ": " + f)
		}
		fmt.Printf("  %s: %.0f req/s; server core %.0f%% busy, load core %.0f%%, other processes %.0f%% of a core\n",
			name, res.RequestsPerSec, res.ServerCoreBusy, res.LoadCoreBusy, 100*res.ForeignCPU)
		if b.cfg.quick || res.ForeignCPU <= maxForeignCPU {
			if res.LoadCoreBusy > 95 && !b.cfg.quick {
				b.report.warn(fmt.Sprintf("%s, %s: the load core was %.0f%% busy, so the figure may be the load generator's limit", scenario, name, res.LoadCoreBusy))
			}
			return res, nil
		}
		if attempt == 2 || b.quietLeft == 0 {
			b.report.warn(fmt.Sprintf("%s, %s: other processes used %.0f%% of a core during the run; its figure is suspect", scenario, name, 100*res.ForeignCPU))
			return res, nil
		}
		fmt.Printf("  %s: other processes used %.0f%% of a core during the run; measuring again\n", name, 100*res.ForeignCPU)
		b.quietLeft = max(b.quietLeft-b.cfg.duration, 0)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// profileCaddy takes a CPU profile and the allocations of Caddy at base
// (scheme://host:port) while l drives it, from Caddy's admin endpoint,
// into files named after prefix, and, when the go tool is at hand, writes
// their top lines beside them, by own time and by cumulative time.
func (b *bench) profileCaddy(ctx context.Context, what, prefix string, l load, base string) error {
	// Profiles are large binary files: by default they go to build/,
	// which git ignores, not beside the results that the README shows.
	dir := filepath.Join("build", "bench-profiles")
	if b.cfg.outDir != "" {
		dir = filepath.Join(b.cfg.outDir, "profiles")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	admin := "http://" + b.addr.caddyAdmin + "/debug/pprof/"
	save := func(url, name string) error {
		resp, err := b.client.Get(url)
		if err != nil {
			return fmt.Errorf("fetching %s: %w", url, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("fetching %s: status %d", url, resp.StatusCode)
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.ReadFrom(resp.Body)
		return err
	}
	file := func(kind string) string { return prefix + "-" + kind }
	if err := save(admin+"allocs", file("allocs-before.pprof")); err != nil {
		return err
	}
	loadFor := time.Duration(b.cfg.profileSeconds+2) * time.Second
	var loadErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		var res loadResult
		if res, loadErr = b.runLoad(ctx, l, base, loadFor); loadErr == nil {
			if f := res.failures(); f != "" {
				loadErr = fmt.Errorf("while profiling the %s: %s", what, f)
			}
		}
	})
	time.Sleep(time.Second)
	cpuErr := save(admin+"profile?seconds="+strconv.Itoa(b.cfg.profileSeconds), file("cpu.pprof"))
	wg.Wait()
	if err := errors.Join(loadErr, cpuErr, save(admin+"allocs", file("allocs.pprof"))); err != nil {
		return err
	}
	if _, err := exec.LookPath("go"); err == nil {
		top := func(out string, args ...string) {
			data, err := exec.CommandContext(ctx, "go", append([]string{"tool", "pprof", "-top", "-nodecount=40"}, args...)...).CombinedOutput()
			if err == nil {
				_ = os.WriteFile(filepath.Join(dir, out), data, 0o644)
			}
		}
		top(file("cpu-top.txt"), b.cfg.caddyBin, filepath.Join(dir, file("cpu.pprof")))
		top(file("cpu-cum-top.txt"), "-cum", b.cfg.caddyBin, filepath.Join(dir, file("cpu.pprof")))
		top(file("allocs-top.txt"), "-sample_index=alloc_space", "-base", filepath.Join(dir, file("allocs-before.pprof")),
			b.cfg.caddyBin, filepath.Join(dir, file("allocs.pprof")))
		top(file("allocs-objects-top.txt"), "-sample_index=alloc_objects", "-base", filepath.Join(dir, file("allocs-before.pprof")),
			b.cfg.caddyBin, filepath.Join(dir, file("allocs.pprof")))
	}
	fmt.Printf("  profiles of the %s in %s\n", what, dir)
	return nil
}

func (b *bench) stampedes(ctx context.Context) error {
	err := b.stampede(ctx, b.cat.stampede, b.cfg.rate, func(p string, ttfb, wall map[string]float64) {
		b.report.add(row{Scenario: p + ": median time to first byte", Unit: "ms", Nginx: f64(ttfb["nginx"]), Ours: ttfb["ours"],
			LowerIsBetter: true, Label: "stampede, " + rateString(b.cfg.rate) + ": median TTFB"}, ratioAtMost(0.1))
		b.report.add(row{Scenario: p + ": wall time", Unit: "s", Nginx: f64(wall["nginx"]), Ours: wall["ours"], LowerIsBetter: true}, target{})
	})
	if err != nil {
		return err
	}
	return b.stampede(ctx, b.cat.slowStampede, b.cfg.slowRate, func(p string, ttfb, wall map[string]float64) {
		b.report.add(row{Scenario: p + ": wall time", Unit: "s", Nginx: f64(wall["nginx"]), Ours: wall["ours"],
			LowerIsBetter: true, Label: "stampede, " + rateString(b.cfg.slowRate) + ": wall time"}, ratioAtMost(0.35))
		b.report.add(row{Scenario: p + ": median time to first byte", Unit: "ms", Nginx: f64(ttfb["nginx"]), Ours: ttfb["ours"], LowerIsBetter: true}, target{})
	})
}

// stampede releases cfg.stampedeClients clients at once on cold object o
// of each server, with the link capped at rate. Every client must get
// the right bytes, and ours must pull at most 1.02× the object from S3
// (each byte once; issue 11's bound), counted once the server's S3
// traffic has stopped.
func (b *bench) stampede(ctx context.Context, o object, rate int64, rows func(prefix string, ttfbMs, wallS map[string]float64)) error {
	prefix := fmt.Sprintf("stampede: %d clients, one cold %s object, %s link", b.cfg.stampedeClients, sizeString(o.size), rateString(rate))
	ttfb, wall, requests := map[string]float64{}, map[string]float64{}, map[string]float64{}
	use := map[string]s3Use{}
	raw := map[string]any{}
	err := b.withLink(b.cfg.rtt, rate, func() error {
		for _, s := range b.servers() {
			// nginx's worst case: the lock timeout, then a download
			// of its own for every waiter.
			res, err := b.crowd(ctx, s, o, prefix, 3*time.Duration(o.size/rate)*time.Second+time.Minute)
			if err != nil {
				return err
			}
			if failed := res.Failed(); len(failed) > 0 {
				b.report.fail(fmt.Sprintf("%s: %s: %d of %d clients did not get the object: %s", prefix, s.name, len(failed), len(res.Clients), failed[0]))
			}
			ttfb[s.name] = ms(stampede.Percentile(res.TTFBs(), 50))
			wall[s.name] = res.Wall.Seconds()
			use[s.name] = b.settle(ctx, s, prefix, b.cfg.settleLimit)
			requests[s.name] = float64(use[s.name].Requests)
			raw[s.name] = map[string]any{"stampede": res, "s3": use[s.name]}
			fmt.Printf("  %s: TTFB p50 %s p90 %s max %s; last byte p50 %s max %s; %v S3 requests, %.3f× the object in S3 bodies\n", s.name,
				stampede.Percentile(res.TTFBs(), 50).Round(time.Millisecond), stampede.Percentile(res.TTFBs(), 90).Round(time.Millisecond),
				stampede.Percentile(res.TTFBs(), 100).Round(time.Millisecond), stampede.Percentile(res.TTLBs(), 50).Round(time.Millisecond),
				res.Wall.Round(time.Millisecond), requests[s.name], use[s.name].ratio(o.size))
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.report.Raw[prefix] = raw
	b.report.add(row{Scenario: prefix + ": S3 requests", Unit: "requests", Nginx: f64(requests["nginx"]), Ours: requests["ours"], LowerIsBetter: true,
		Note: b.slicesNote(o.size)}, target{})
	b.report.add(row{Scenario: prefix + ": S3 body bytes / object size", Unit: "× size", Nginx: f64(use["nginx"].ratio(o.size)), Ours: use["ours"].ratio(o.size),
		LowerIsBetter: true, Note: floorNote(use)}, mustBeAtMost(1.02, "≤ 1.02×"))
	rows(prefix, ttfb, wall)
	return nil
}

// crowd resets s's S3 counts and, once the machine is quiet, releases
// cfg.stampedeClients clients at once on o through s.
func (b *bench) crowd(ctx context.Context, s server, o object, what string, timeout time.Duration) (stampede.Result, error) {
	s.s3.Reset()
	b.quiet(what + ", " + s.name)
	res, err := stampede.Run(ctx, stampede.Options{
		Targets: []stampede.Target{{URL: s.httpURL + o.path(), SHA256: o.sha256, Size: o.size}},
		Clients: b.cfg.stampedeClients,
		Timeout: timeout,
	})
	if err != nil {
		return res, fmt.Errorf("%s: %s: %w", what, s.name, err)
	}
	return res, nil
}

// singleMiss times one client fetching a cold object through each server,
// and the same bytes read straight from S3 through the same link on a
// connection already open (what one GET can do when S3 caps each
// connection's bandwidth, and what issue 11's parallel slices are to
// beat), and counts the S3 body bytes each server pulled.
func (b *bench) singleMiss(ctx context.Context) error {
	o := b.cat.singleMiss
	ttlb := map[string]float64{}
	use := map[string]s3Use{}
	raw := map[string]any{}
	for _, s := range b.servers() {
		s.s3.Reset()
		b.quiet("single cold MISS, " + s.name)
		res, err := stampede.Run(ctx, stampede.Options{
			Targets: []stampede.Target{{URL: s.httpURL + o.path(), SHA256: o.sha256, Size: o.size}},
			Clients: 1,
			Timeout: 3*time.Duration(o.size/b.cfg.rate)*time.Second + 30*time.Second,
		})
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if failed := res.Failed(); len(failed) > 0 {
			b.report.fail(fmt.Sprintf("single cold MISS: %s: %s", s.name, failed[0]))
		}
		ttlb[s.name] = res.Wall.Seconds()
		use[s.name] = b.settle(ctx, s, "single cold MISS", b.cfg.settleLimit)
		raw[s.name] = map[string]any{"stampede": res, "s3": use[s.name]}
	}
	direct := b.directS3.URL() + "/" + bucket
	if r := b.fetch(ctx, direct+b.cat.tiny.path(), b.cat.tiny); r.err != nil {
		return fmt.Errorf("direct S3 GET: %w", r.err)
	}
	b.quiet("single cold MISS, direct S3 GET")
	b.directS3.WaitIdle(ctx, 100*time.Millisecond, 10*time.Second) // the small GET's bytes counted
	b.directS3.Reset()
	r := b.fetch(ctx, direct+o.path(), o)
	if r.err != nil {
		return fmt.Errorf("direct S3 GET: %w", r.err)
	}
	// The one GET's body is the object, byte for byte: a check of the
	// proxy's counting that every other S3 bytes figure relies on.
	b.directS3.WaitIdle(ctx, 100*time.Millisecond, 10*time.Second)
	if n := b.directS3.Stats().BodyBytes; n != o.size {
		return errors.Join(errHarness, fmt.Errorf("the throttling proxy counted %d body bytes for a direct S3 GET of %d bytes", n, o.size))
	}
	raw["direct"] = map[string]time.Duration{"ttfb_ns": r.ttfb, "ttlb_ns": r.ttlb}
	b.report.Raw["single cold MISS"] = raw
	directS := r.ttlb.Seconds()
	fmt.Printf("  direct S3 GET through the same link: %s\n", r.ttlb.Round(time.Millisecond))
	name := fmt.Sprintf("single cold MISS %s", sizeString(o.size))
	b.report.add(row{Scenario: name + ": time to last byte", Unit: "s",
		Nginx: f64(ttlb["nginx"]), Ours: ttlb["ours"], LowerIsBetter: true, Note: fmt.Sprintf("direct S3 GET %.2f s", directS)},
		atMost(0.4*directS, fmt.Sprintf("≤ 0.4× direct S3 GET (%.2f s)", directS)))
	b.report.add(row{Scenario: name + ": S3 requests", Unit: "requests", Nginx: f64(float64(use["nginx"].Requests)), Ours: float64(use["ours"].Requests),
		LowerIsBetter: true, Note: b.slicesNote(o.size)}, target{})
	b.report.add(row{Scenario: name + ": S3 body bytes / object size", Unit: "× size", Nginx: f64(use["nginx"].ratio(o.size)), Ours: use["ours"].ratio(o.size),
		LowerIsBetter: true, Note: floorNote(use)}, mustBeAtMost(1.02, "≤ 1.02×"))
	return nil
}

// slicesNote says how many slices our Caddy stores an object of size in.
func (b *bench) slicesNote(size int64) string {
	n := (size + b.fills.SliceBytes - 1) / b.fills.SliceBytes
	return fmt.Sprintf("ours: %d slices of %s", n, binarySize(b.fills.SliceBytes))
}

// memory releases cfg.memoryClients clients at once on the memory
// objects, the first half of which are cached, and measures each server's
// peak RSS meanwhile (VmHWM, reset just before).
func (b *bench) memory(ctx context.Context) error {
	objs := b.cat.memory
	hot, cold := objs[:len(objs)/2], objs[len(objs)/2:]
	targets := make([]stampede.Target, len(objs))
	for i, o := range objs {
		targets[i] = stampede.Target{SHA256: o.sha256, Size: o.size}
	}
	scenario := fmt.Sprintf("memory: %d concurrent clients on %s objects, half cold", b.cfg.memoryClients, sizeString(b.cfg.bigSize))
	peak, pulled := map[string]float64{}, map[string]float64{}
	raw := map[string]any{}
	for _, s := range b.servers() {
		err := b.withLink(0, 0, func() error {
			_, err := b.fetchAll(ctx, s.httpURL, hot, 2*time.Minute)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: caching the hot half: %w", s.name, err)
		}
		pids := s.proc().tree()
		if err := resetPeakRSS(pids); err != nil {
			return err
		}
		s.s3.Reset()
		for i, o := range objs {
			targets[i].URL = s.httpURL + o.path()
		}
		samples := sampleRSS(pids, 50*time.Millisecond)
		res, err := stampede.Run(ctx, stampede.Options{Targets: targets, Clients: b.cfg.memoryClients, Timeout: 3 * time.Minute})
		series := samples()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if failed := res.Failed(); len(failed) > 0 {
			b.report.fail(fmt.Sprintf("%s: %s: %d of %d clients did not get their object: %s", scenario, s.name, len(failed), len(res.Clients), failed[0]))
		}
		p, err := peakRSS(pids)
		if err != nil {
			return err
		}
		peak[s.name] = float64(p) / 1e6
		u := b.settle(ctx, s, scenario, b.cfg.settleLimit)
		for _, o := range cold {
			pulled[s.name] = max(pulled[s.name], u.pulledOf(o))
		}
		if s.name == "ours" {
			for _, o := range hot {
				if n := s.s3.Count("", o.s3Path()); n > 0 {
					b.report.fail(fmt.Sprintf("%s: ours made %d S3 requests for %s, which it had cached", scenario, n, o.key))
				}
			}
		}
		raw[s.name] = map[string]any{"stampede": res, "rss_samples_bytes": series, "pids": pids, "s3": u}
		fmt.Printf("  %s: peak RSS %.1f MB (%d processes), wall %s\n", s.name, peak[s.name], len(pids), res.Wall.Round(time.Millisecond))
	}
	b.report.Raw[scenario] = raw
	b.report.add(row{Scenario: scenario + ": S3 body bytes / object size, most for one cold object", Unit: "× size",
		Nginx: f64(pulled["nginx"]), Ours: pulled["ours"], LowerIsBetter: true}, mustBeAtMost(1.02, "≤ 1.02×"))
	b.report.add(row{Scenario: scenario + ": peak RSS", Unit: "MB", Nginx: f64(peak["nginx"]), Ours: peak["ours"], LowerIsBetter: true,
		Note: "nginx: its processes added up"}, atMost(150, "≤ 150 MB"))
	return nil
}

// sampleRSS records the RSS of pids every interval until the returned
// function is called, which returns the samples.
func sampleRSS(pids []int, interval time.Duration) func() []int64 {
	stop := make(chan struct{})
	var samples []int64
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if rss, err := currentRSS(pids); err == nil {
				samples = append(samples, rss)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	return func() []int64 {
		close(stop)
		wg.Wait()
		return samples
	}
}

// restart fills Caddy's cache with small objects up to cfg.restartEntries
// (within the fill budget), restarts Caddy, and measures how soon the
// first HIT is served and how long the cache loader takes to index
// everything.
func (b *bench) restart(ctx context.Context) error {
	cachedBefore := len(b.cat.fixed()) - 1 // all but the object only read directly
	filled := 0
	if len(b.cat.fillers) > 0 {
		started, before := time.Now(), readCPU()
		err := b.withLink(0, 0, func() error {
			var err error
			filled, err = b.fetchAll(ctx, "http://"+b.addr.caddyHTTP, b.cat.fillers, b.cfg.fillBudget)
			return err
		})
		if err != nil {
			return fmt.Errorf("filling the cache: %w", err)
		}
		after := readCPU()
		fmt.Printf("  requested %d filler objects through Caddy in %s (budget %s); server core %.0f%% busy, load core %.0f%%\n",
			filled, time.Since(started).Round(time.Millisecond), b.cfg.fillBudget,
			busyPercent(before, after, b.cfg.serverCPU), busyPercent(before, after, b.cfg.loadCPU))
	}
	entries := cachedBefore + filled
	probe := b.cat.hot50k
	if filled > 0 {
		probe = b.cat.fillers[filled/2]
	}

	if err := b.caddy.stop(); err != nil {
		return errors.Join(errHarness, err)
	}
	b.quiet("restart")
	loadedLines := countLogLines(b.caddyLog, "cache index loaded")
	b.caddyS3.Reset()
	p, err := launchCaddy(b.cfg.caddyBin, b.caddyConf, b.caddyLog, b.cfg.serverCPU)
	if err != nil {
		return errors.Join(errHarness, err)
	}
	b.caddy = p

	// A new connection for every try: the first ones are refused while
	// Caddy starts.
	probeClient := newClient(nil)
	probeClient.Transport.(*http.Transport).DisableKeepAlives = true
	probeClient.Timeout = 5 * time.Second
	url := "http://" + b.addr.caddyHTTP + probe.path()
	var firstHit time.Duration
	tries := 0
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); tries++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := probeClient.Do(req)
		if err != nil {
			select {
			case <-p.exited:
				return errors.Join(errHarness, fmt.Errorf("caddy exited after the restart; its log ends with:\n%s", s3test.LogTail(b.caddyLog, 15)))
			case <-time.After(2 * time.Millisecond):
			}
			continue
		}
		resp.Body.Close()
		firstHit = time.Since(p.started)
		if cs := resp.Header.Get("X-Cache-Status"); resp.StatusCode != http.StatusOK || cs != "HIT" {
			b.report.fail(fmt.Sprintf("restart: the first answer after the restart was %d %s, want 200 HIT", resp.StatusCode, cs))
		}
		break
	}
	if firstHit == 0 {
		return errors.Join(errHarness, fmt.Errorf("caddy served nothing within 15s of its restart; its log ends with:\n%s", s3test.LogTail(b.caddyLog, 15)))
	}
	if r := b.fetch(ctx, url, probe); r.err != nil {
		b.report.fail("restart: " + r.err.Error())
	}

	loaded, err := waitIndexLoaded(ctx, b.caddyLog, loadedLines, 60*time.Second)
	if err != nil {
		return err
	}
	loadedAfter := time.Since(p.started)
	if n := b.caddyS3.Count("", ""); n != 0 {
		b.report.fail(fmt.Sprintf("restart: %d S3 requests for objects that were cached", n))
	}
	if loaded.Entries < entries {
		b.report.fail(fmt.Sprintf("restart: the cache index holds %d entries after the restart, want at least the %d cached before", loaded.Entries, entries))
	}
	b.report.Raw["restart"] = map[string]any{
		"entries_requested": entries, "fillers_requested": filled, "first_hit_ns": firstHit, "tries": tries,
		"index_loaded": loaded, "index_loaded_seen_after_ns": loadedAfter,
	}
	fmt.Printf("  first HIT %s after start (%d tries); index of %d entries loaded in %s\n",
		firstHit.Round(time.Millisecond), tries, loaded.Entries, loaded.Took.Round(time.Millisecond))
	name := fmt.Sprintf("restart with %s cached entries", groupThousands(strconv.Itoa(loaded.Entries)))
	b.report.add(row{Scenario: name + ": first HIT after start", Unit: "ms", Ours: ms(firstHit), LowerIsBetter: true}, lessThan(1000, "< 1 s"))
	b.report.add(row{Scenario: name + ": index complete", Unit: "s", Ours: loaded.Took.Seconds(), LowerIsBetter: true,
		Note: "the loader's \"took\""}, lessThan(10, "< 10 s"))
	return nil
}

// indexLoaded is the "cache index loaded" line of Caddy's log.
type indexLoaded struct {
	Entries int           `json:"entries"`
	Bytes   int64         `json:"bytes"`
	Took    time.Duration `json:"took_ns"`
}

func countLogLines(path, msg string) int {
	n := 0
	forEachLogLine(path, func(m map[string]any) {
		if m["msg"] == msg {
			n++
		}
	})
	return n
}

func forEachLogLine(path string, f func(map[string]any)) {
	file, err := os.Open(path)
	if err != nil {
		return
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			f(m)
		}
	}
}

// waitIndexLoaded waits for the (skip+1)-th "cache index loaded" line.
func waitIndexLoaded(ctx context.Context, logPath string, skip int, timeout time.Duration) (indexLoaded, error) {
	deadline := time.Now().Add(timeout)
	for {
		var found *indexLoaded
		seen := 0
		forEachLogLine(logPath, func(m map[string]any) {
			if m["msg"] != "cache index loaded" {
				return
			}
			if seen++; seen == skip+1 {
				l := indexLoaded{Took: logDuration(m["took"])}
				if v, ok := m["entries"].(float64); ok {
					l.Entries = int(v)
				}
				if v, ok := m["bytes"].(float64); ok {
					l.Bytes = int64(v)
				}
				found = &l
			}
		})
		if found != nil {
			return *found, nil
		}
		if time.Now().After(deadline) {
			return indexLoaded{}, fmt.Errorf("no \"cache index loaded\" line in %s within %s of the restart", logPath, timeout)
		}
		select {
		case <-ctx.Done():
			return indexLoaded{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logDuration reads a zap duration field: seconds as a number (Caddy's
// JSON encoder) or a Go duration string.
func logDuration(v any) time.Duration {
	switch d := v.(type) {
	case float64:
		return time.Duration(d * float64(time.Second))
	case string:
		parsed, _ := time.ParseDuration(d)
		return parsed
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func sizeString(n int64) string {
	switch {
	case n >= mB:
		return fmt.Sprintf("%g MB", float64(n)/mB)
	default:
		return fmt.Sprintf("%g KB", float64(n)/kB)
	}
}
