// Command demo runs the s3_media_cache handler end to end on this machine:
// a throwaway versitygw S3 server seeded with Mastodon-shaped media, and a
// Caddy (the binary you built with xcaddy) in front of it, its admin API
// on a second loopback port.
//
//	scripts/demo                       # builds ./caddy and this program, then runs it
//	build/demo --caddy ./caddy --listen 127.0.0.1:8080 --admin 127.0.0.1:2019
//
// It prints commands to try (curl, the admin API, caddy s3-media-cache),
// and cleans everything up on SIGINT (Ctrl-C) or SIGTERM, exiting 0.
// Everything listens on loopback only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	var opts options
	flag.StringVar(&opts.caddyBin, "caddy", "", "path of a caddy binary built with this module (scripts/build)")
	flag.StringVar(&opts.listen, "listen", defaultListen, "loopback host:port the demo site listens on")
	flag.StringVar(&opts.admin, "admin", defaultAdmin, "loopback host:port of Caddy's admin endpoint (stats, purge, metrics)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const (
	defaultListen = "127.0.0.1:8080"
	// defaultAdmin is where `caddy s3-media-cache stats` looks when given
	// no --address (Caddy's localhost:2019), so the README's commands work
	// as written.
	defaultAdmin = "127.0.0.1:2019"
)

type options struct {
	caddyBin string
	listen   string
	admin    string
}

// check rejects options the demo cannot honour before anything starts.
func (o options) check() error {
	if o.caddyBin == "" {
		return errors.New("--caddy is required: build one with scripts/build and pass ./caddy")
	}
	if err := checkLoopback("--listen", o.listen); err != nil {
		return err
	}
	if err := checkLoopback("--admin", o.admin); err != nil {
		return err
	}
	if o.listen == o.admin {
		return fmt.Errorf("--listen and --admin are both %s: give them different ports", o.listen)
	}
	return nil
}

// checkLoopback accepts a loopback host and a port number: the demo
// serves throwaway credentials' worth of data with no TLS, so it stays off
// the network, and the commands it prints need a port to name.
func checkLoopback(flagName, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port, such as 127.0.0.1:8080: %w", flagName, addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s %q: the demo only listens on a loopback address such as 127.0.0.1", flagName, addr)
	}
	if n, err := net.LookupPort("tcp", port); err != nil || n == 0 {
		return fmt.Errorf("%s %q: want a port number from 1 to 65535", flagName, addr)
	}
	return nil
}

// checkPortsFree makes sure nothing answers on the demo's ports before it
// starts anything: otherwise the commands it prints would reach that other
// server, or Caddy would fail to start after versitygw was seeded.
func (o options) checkPortsFree() error {
	for _, p := range []struct{ flagName, addr string }{{"--listen", o.listen}, {"--admin", o.admin}} {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			host, _, _ := net.SplitHostPort(p.addr)
			return fmt.Errorf("%s is already in use by another program (%w): stop it, or pick a free port with %s %s",
				p.addr, err, p.flagName, net.JoinHostPort(host, "PORT"))
		}
		if err := ln.Close(); err != nil {
			return fmt.Errorf("releasing %s after checking it is free: %w", p.addr, err)
		}
	}
	return nil
}
