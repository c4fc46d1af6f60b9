package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const demoBucket = "mastodon-media"

// localKey is served from the local root rather than S3, to show the
// try_files-style fallthrough.
const localKey = "site_uploads/files/000/000/001/original/local-only.png"

// run starts versitygw, seeds it, starts Caddy and waits for ctx to end,
// then tears everything down in reverse order.
func run(ctx context.Context, opts options) error {
	if err := opts.check(); err != nil {
		return err
	}
	if err := checkCaddyHasModule(ctx, opts.caddyBin); err != nil {
		return err
	}

	workDir, err := os.MkdirTemp("", "s3mc-demo-")
	if err != nil {
		return fmt.Errorf("creating the demo's temporary directory: %w", err)
	}
	defer os.RemoveAll(workDir)

	fmt.Println("starting versitygw…")
	gateway, err := s3test.StartGateway(ctx, s3test.GatewayOptions{Dir: filepath.Join(workDir, "s3")})
	if err != nil {
		return err
	}
	defer gateway.Close()

	client := gateway.Client()
	if err := s3test.CreateBucket(ctx, client, demoBucket); err != nil {
		return err
	}
	manifest, err := s3test.Seed(ctx, client, demoBucket, "", s3test.Samples())
	if err != nil {
		return err
	}

	root := filepath.Join(workDir, "public-system")
	if err := writeLocalFile(root, localKey, s3test.PNG(24, 24, 9)); err != nil {
		return err
	}

	caddyfilePath := filepath.Join(workDir, "Caddyfile")
	caddyfile := demoCaddyfile(opts.listen, gateway.Endpoint(), root, filepath.Join(workDir, "cache"))
	if err := os.WriteFile(caddyfilePath, []byte(caddyfile), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", caddyfilePath, err)
	}

	fmt.Println("starting caddy…")
	caddy, err := startCaddy(ctx, opts.caddyBin, caddyfilePath, filepath.Join(workDir, "caddy.log"), opts.listen, gateway)
	if err != nil {
		return err
	}
	defer caddy.stop()

	printTryList(os.Stdout, opts.listen, caddyfilePath, manifest)

	select {
	case <-ctx.Done():
		fmt.Println("\nstopping caddy and versitygw, removing", workDir)
		return nil
	case <-caddy.exited:
		return fmt.Errorf("caddy exited unexpectedly; last log lines:\n%s", caddy.logTail())
	}
}

func writeLocalFile(root, key string, body []byte) error {
	p := filepath.Join(root, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(p), err)
	}
	if err := os.WriteFile(p, body, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}
