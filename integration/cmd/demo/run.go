package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
// then tears everything down in reverse order. An interruption (SIGINT,
// SIGTERM) is the way the demo is meant to end, so it is no error, even
// in the middle of starting.
func run(ctx context.Context, opts options) error {
	err := start(ctx, opts)
	if ctx.Err() != nil {
		fmt.Println("\nstopped")
		return nil
	}
	return err
}

func start(ctx context.Context, opts options) error {
	if err := opts.check(); err != nil {
		return err
	}
	if err := opts.checkPortsFree(); err != nil {
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

	secrets := caddySecrets{accessKey: gateway.AccessKey, secretKey: gateway.SecretKey, cacheBusterSecret: randomHex(16)}
	headerFile := filepath.Join(workDir, "cache-buster.header")
	if err := os.WriteFile(headerFile, []byte(purgeHeader+": "+secrets.cacheBusterSecret+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", headerFile, err)
	}

	site := siteConfig{
		listen:   opts.listen,
		admin:    opts.admin,
		endpoint: gateway.Endpoint(),
		root:     root,
		cacheDir: filepath.Join(workDir, "cache"),
		nonce:    randomHex(8),
	}
	caddyfilePath := filepath.Join(workDir, "Caddyfile")
	if err := os.WriteFile(caddyfilePath, []byte(demoCaddyfile(site)), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", caddyfilePath, err)
	}

	fmt.Println("starting caddy…")
	caddy, err := startCaddy(ctx, opts.caddyBin, caddyfilePath, filepath.Join(workDir, "caddy.log"), site, secrets)
	if err != nil {
		return err
	}
	defer caddy.stop()

	printTryList(os.Stdout, tryListParams{
		listen:                opts.listen,
		admin:                 opts.admin,
		caddyBin:              opts.caddyBin,
		cacheBusterHeaderFile: headerFile,
		manifest:              manifest,
	}, caddyfilePath, gateway.Endpoint())

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

// randomHex returns n random bytes, hex-encoded: the cache-buster secret
// and the readiness nonce are new for every run.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
