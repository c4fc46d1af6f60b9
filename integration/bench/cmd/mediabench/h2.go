package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
)

// h2Scenarios names the HTTP/2 scenarios, for -only: "h2" selects them,
// and "tls" does not (it selects the HTTP/1.1 scenarios over TLS).
const h2Scenarios = "h2 (HTTP/2 end to end)"

// h2Hits measures the hot hits as browsers fetch a media host, over
// HTTP/2 (issue 14): h2load, cfg.connections connections with one and
// with eight requests in flight on each, against the recipe as deployed
// (the TLS nginx, speaking h2, in front of the caching nginx) and against
// our Caddy over TLS, which speaks h2 by default. Beside the 50 KB hit
// are Caddy's own respond over h2, the ceiling of any handler in Caddy,
// and the hit's share of it; beside the 1 MB hit, respond and file_server
// sending as much.
func (b *bench) h2Hits(ctx context.Context) error {
	streamCounts := []int{1, 8}
	how := func(streams int) (long, short string) {
		s := strconv.Itoa(streams) + " stream" + plural(streams)
		return fmt.Sprintf("%d connections × %s", b.cfg.connections, s), s
	}
	for _, streams := range streamCounts {
		l := load{tls: true, streams: streams}
		long, short := how(streams)
		hit := h2HitName(long)
		if err := b.throughput(ctx, row{Scenario: hit, Label: "h2, HIT 50 KB, " + short}, l, []object{b.cat.hot50k}, ratioAtLeast(1.1)); err != nil {
			return err
		}
		respond, err := b.caddyFloor(ctx, l, hit, "h2, "+long, "h2, "+short)
		if err != nil {
			return err
		}
		b.shareOf(hit, respond, "respond", "h2 hot HIT 50 KB, "+long, atLeast(0.95, "≥ 0.95× respond"))
		if b.cfg.profile && streams == slices.Max(streamCounts) {
			if err := b.profileH2(ctx, l); err != nil {
				return err
			}
		}
	}
	for _, streams := range streamCounts {
		long, short := how(streams)
		l := load{tls: true, streams: streams}
		hit := "h2 end to end, hot HIT 1 MB, " + long + ": one Caddy vs two nginx"
		if err := b.throughput(ctx, row{Scenario: hit, Label: "h2, HIT 1 MB, " + short}, l, []object{b.cat.hot1m}, ratioAtLeast(1.5)); err != nil {
			return err
		}
		respond, err := b.caddyReference(ctx, l, respondOf("1 MB", floorLargePath), hit, "h2, "+long, "h2, "+short)
		if err != nil {
			return err
		}
		b.shareOf(hit, respond, "respond", "h2 hot HIT 1 MB, "+long, target{})
		// respond looks for placeholders in its whole body on every
		// request, which at 1 MB costs it more than sending does;
		// file_server sends a file as it is.
		served, err := b.caddyReference(ctx, l, fileServerOf("1 MB", floorFilePath), hit, "h2, "+long, "h2, "+short)
		if err != nil {
			return err
		}
		b.shareOf(hit, served, "file_server", "h2 hot HIT 1 MB, "+long, target{})
	}
	// Each h2load connection asks for the paths of its list in turn, from
	// the first: shuffled (with a fixed seed, so both servers get the
	// same order), the keys follow no pattern a cache could favour.
	paths := make([]string, len(b.cat.workingSet))
	for i, o := range b.cat.workingSet {
		paths[i] = o.path()
	}
	rand.New(rand.NewPCG(20251, 14)).Shuffle(len(paths), func(i, j int) { paths[i], paths[j] = paths[j], paths[i] })
	n := groupThousands(strconv.Itoa(len(paths)))
	for _, streams := range streamCounts {
		long, short := how(streams)
		err := b.throughput(ctx, row{
			Scenario: fmt.Sprintf("h2 end to end, working set of %s small objects (%s), shuffled keys, all cached, %s", n, sizeString(b.cfg.smallSize), long),
			Label:    "h2, working set, " + short,
			Note:     "target: the 50 KB hit's",
		}, load{tls: true, streams: streams, paths: paths}, b.cat.workingSet, ratioAtLeast(1.1))
		if err != nil {
			return err
		}
	}
	return nil
}

// h2HitName is the name of the 50 KB hit's row over h2, for how (the
// connections and streams).
func h2HitName(how string) string {
	return "h2 end to end, hot HIT 50 KB, " + how + ": one Caddy vs two nginx"
}

// shareOf adds the row of the hit named hit as a share of the rate of
// Caddy's own handler, driven the same way: how close our handler comes
// to what Caddy itself can serve. Issue 14 sets a target (t) for the
// 50 KB hit against respond.
func (b *bench) shareOf(hit string, rate float64, handler, what string, t target) {
	var ours float64
	for _, r := range b.report.Rows {
		if r.Scenario == hit {
			ours = r.Ours
		}
	}
	if rate == 0 {
		return
	}
	b.report.add(row{Scenario: what + ": ours / Caddy's own " + handler, Unit: "× " + handler, Ours: ours / rate}, t)
}

// profileH2 takes Caddy's profiles while h2load drives, as l says, the
// 50 KB hit, and then Caddy's own respond of as many bytes: where the
// time of an h2 hit goes, next to what Caddy and Go's h2 server cost
// with no module at all.
func (b *bench) profileH2(ctx context.Context, l load) error {
	l.path = b.cat.hot50k.path()
	what := fmt.Sprintf("h2 50 KB hit (%d streams per connection)", l.streams)
	if err := b.profileCaddy(ctx, what, "caddy-h2", l, "https://"+b.addr.caddyTLS); err != nil {
		return err
	}
	l.path = "/"
	what = fmt.Sprintf("h2 respond of 50 KB (%d streams per connection)", l.streams)
	return b.profileCaddy(ctx, what, "caddy-h2-respond", l, "https://"+b.addr.caddyFloorTLS)
}
