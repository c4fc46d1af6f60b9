package main

import (
	"context"
	"fmt"
	"strconv"
)

// h3Scenarios names the HTTP/3 scenarios, for -only ("h3").
const h3Scenarios = "h3 (HTTP/3, ours only)"

// h3Hits measures our 50 KB hit and Caddy's own respond over HTTP/3,
// which Caddy serves by default, with one and with eight requests in
// flight on each of cfg.connections QUIC connections. nginx has no
// counterpart: Debian's nginx 1.22 has no HTTP/3. The load is package
// h3load's, in this process on the load core, and a Go client costs
// about what the Go server does per request, so each row gives how busy
// both cores were, and is marked load-bound when the load core was
// saturated. Next to the h2 rows of the same run, when they ran, each
// hit also gets its ratio to the same hit over h2.
func (b *bench) h3Hits(ctx context.Context) error {
	for _, streams := range []int{1, 8} {
		long := fmt.Sprintf("%d connections × %d stream%s", b.cfg.connections, streams, plural(streams))
		short := strconv.Itoa(streams) + " stream" + plural(streams)
		hit := load{tls: true, h3: true, streams: streams, path: b.cat.hot50k.path()}
		hitName := "h3, hot HIT 50 KB, " + long + ", ours only (nginx 1.22 has no HTTP/3)"
		b.caddyS3.Reset()
		ours, err := b.measureOurs(ctx, row{Scenario: hitName, Label: "h3, HIT 50 KB, " + short}, hit, "https://"+b.addr.caddyH3)
		if err != nil {
			return err
		}
		if n := b.caddyS3.Count("", ""); n != 0 {
			b.report.fail(fmt.Sprintf("%s: ours made %d S3 requests while every object was cached", hitName, n))
		}
		r := b.fetchWith(ctx, b.h3Client, "https://"+b.addr.caddyH3+b.cat.hot50k.path(), b.cat.hot50k)
		if r.err != nil || r.cacheStatus != "HIT" || r.proto != "HTTP/3.0" {
			b.report.fail(fmt.Sprintf("%s: after the run, GET %s: X-Cache-Status %q over %s (want HIT over HTTP/3.0), error %v",
				hitName, b.cat.hot50k.path(), r.cacheStatus, r.proto, r.err))
		}
		respond := hit
		respond.path = "/"
		floor, err := b.measureOurs(ctx, row{Scenario: "reference: Caddy's own respond, 50 KB from memory, no module, h3, " + long,
			Label: "reference: Caddy respond 50 KB, h3, " + short}, respond, "https://"+b.addr.caddyFloorH3)
		if err != nil {
			return err
		}
		if floor > 0 {
			b.report.add(row{Scenario: "h3 hot HIT 50 KB, " + long + ": ours / Caddy's own respond", Unit: "× respond", Ours: ours / floor}, target{})
		}
		for _, rw := range b.report.Rows {
			if rw.Scenario == h2HitName(long) && rw.Ours > 0 {
				b.report.add(row{Scenario: "hot HIT 50 KB, " + long + ": ours over h3 / ours over h2", Unit: "× h2", Ours: ours / rw.Ours}, target{})
			}
		}
	}
	return nil
}

// measureOurs measures our Caddy alone, at base, as l says: a warm-up
// run, then cfg.rounds measured runs. It adds rw with their median, and
// returns it.
func (b *bench) measureOurs(ctx context.Context, rw row, l load, base string) (float64, error) {
	if b.cfg.warmup > 0 {
		if _, err := b.runLoad(ctx, l, base, b.cfg.warmup); err != nil {
			return 0, err
		}
	}
	var runs []loadResult
	var rates, serverBusy, loadBusy []float64
	for range b.cfg.rounds {
		res, err := b.measure(ctx, rw.Scenario, "ours", l, base)
		if err != nil {
			return 0, err
		}
		runs = append(runs, res)
		rates, serverBusy, loadBusy = append(rates, res.RequestsPerSec), append(serverBusy, res.ServerCoreBusy), append(loadBusy, res.LoadCoreBusy)
	}
	b.report.Raw[rw.Scenario] = map[string][]loadResult{"ours": runs}
	rw.Unit, rw.Ours = "req/s", median(rates)
	rw.Note = fmt.Sprintf("median of %d; server core %.0f%% busy, load core %.0f%%", len(rates), median(serverBusy), median(loadBusy))
	rw.LoadBound = !b.cfg.quick && median(loadBusy) > 95
	b.report.add(rw, target{})
	return rw.Ours, nil
}
