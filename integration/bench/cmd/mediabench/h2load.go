package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"time"
)

// h2loadOptions is one h2load run.
type h2loadOptions struct {
	cpu         int // the core h2load is pinned to
	connections int
	// streams is how many requests each connection keeps in flight
	// (h2load -m): 1 is one request at a time, as wrk does over
	// HTTP/1.1; a browser loading a timeline keeps several.
	streams int
	// warmUp is how long h2load runs before it starts counting
	// (--warm-up-time), so that the measurement starts with every
	// connection busy: without it, the requests in flight when it stops
	// are lost, up to connections × streams of them, which at 1 MB and
	// 8 streams is a good part of a 5 s run.
	warmUp   time.Duration
	duration time.Duration
	// url is what every request asks for, unless urlsFile is set: a
	// file of URLs, one a line, that each connection asks for in turn
	// (h2load -i).
	url      string
	urlsFile string
}

var (
	h2loadFinishedRe = regexp.MustCompile(`(?m)^finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s`)
	h2loadRequestsRe = regexp.MustCompile(`(?m)^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadStatusRe   = regexp.MustCompile(`(?m)^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
	h2loadProtocolRe = regexp.MustCompile(`(?m)^Application protocol: (\S+)`)
	h2loadRequestRe  = regexp.MustCompile(`(?m)^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)`)
)

// runH2load runs h2load pinned to o.cpu, with one thread (one core), for
// o.duration: the HTTP/2 counterpart of runWrk. A connection silent for
// 10 s is given up (-N), as wrk gives up a request after 10 s.
func runH2load(ctx context.Context, bin string, o h2loadOptions) (loadResult, error) {
	secs := max(int((o.duration+time.Second/2)/time.Second), 1)
	args := []string{"-c", strconv.Itoa(o.cpu), bin, "-t1", "-c" + strconv.Itoa(o.connections), "-m" + strconv.Itoa(o.streams),
		"-D" + strconv.Itoa(secs), "--warm-up-time=" + strconv.FormatInt(o.warmUp.Milliseconds(), 10) + "ms", "-N10"}
	if o.urlsFile != "" {
		args = append(args, "-i", o.urlsFile)
	} else {
		args = append(args, o.url)
	}
	ctx, cancel := context.WithTimeout(ctx, o.warmUp+time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	what := o.url
	if o.urlsFile != "" {
		what = "the URLs in " + o.urlsFile
	}
	out, err := exec.CommandContext(ctx, "taskset", args...).CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load on %s: %w\n%s", what, err, out)
	}
	r, err := parseH2load(string(out), what, o.connections)
	r.Streams, r.WarmUp = o.streams, o.warmUp
	r.Duration -= o.warmUp // h2load's "finished in" counts the warm-up too
	return r, err
}

// parseH2load reads h2load's summary. Every request that did not end in
// a 2xx counts against the run: h2load's failed requests (errors and
// timeouts among them) as errors, and its 3xx, 4xx and 5xx as Non2xx.
func parseH2load(out, url string, conns int) (loadResult, error) {
	r := loadResult{Tool: "h2load", URL: url, Connections: conns, Output: out, Latency: map[string]time.Duration{}}
	finished := h2loadFinishedRe.FindStringSubmatch(out)
	requests := h2loadRequestsRe.FindStringSubmatch(out)
	status := h2loadStatusRe.FindStringSubmatch(out)
	if finished == nil || requests == nil || status == nil {
		return r, fmt.Errorf("cannot read h2load's output for %s:\n%s", url, out)
	}
	r.Duration = wrkDuration(finished[1], finished[2])
	r.RequestsPerSec, _ = strconv.ParseFloat(finished[3], 64)
	n := func(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }
	r.Requests = n(requests[3]) // done
	r.Errors = n(requests[5])   // failed: errored and timed out included
	r.Non2xx = n(status[2]) + n(status[3]) + n(status[4])
	if m := h2loadProtocolRe.FindStringSubmatch(out); m != nil {
		r.Protocol = m[1]
	}
	if m := h2loadRequestRe.FindStringSubmatch(out); m != nil {
		r.Latency["min"] = wrkDuration(m[1], m[2])
		r.Latency["max"] = wrkDuration(m[3], m[4])
		r.Latency["mean"] = wrkDuration(m[5], m[6])
	}
	return r, nil
}
