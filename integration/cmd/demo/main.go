// Command demo runs the s3_media_cache handler end to end on this machine:
// a throwaway versitygw S3 server seeded with Mastodon-shaped media, and a
// Caddy (the binary you built with xcaddy) in front of it.
//
//	scripts/build
//	go run ./integration/cmd/demo --caddy ./caddy
//
// It prints curl commands to try, and cleans everything up on Ctrl-C.
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
	flag.StringVar(&opts.listen, "listen", "127.0.0.1:8080", "loopback host:port the demo site listens on")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	caddyBin string
	listen   string
}

// check rejects options the demo cannot honour before anything starts.
func (o options) check() error {
	if o.caddyBin == "" {
		return errors.New("--caddy is required: build one with scripts/build and pass ./caddy")
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", o.listen, err)
	}
	// The demo serves test credentials' worth of data with no TLS; keep
	// it off the network.
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %q: the demo only listens on a loopback address such as 127.0.0.1", o.listen)
	}
	return nil
}
