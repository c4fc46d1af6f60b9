package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const (
	moduleID          = "http.handlers.s3_media_cache"
	caddyReadyTimeout = 20 * time.Second
	caddyStopTimeout  = 10 * time.Second
)

// checkCaddyHasModule fails early, with the fix, when the binary is a
// stock Caddy: otherwise the user would only see a Caddyfile error about
// an unrecognized directive.
func checkCaddyHasModule(ctx context.Context, bin string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "list-modules").Output()
	if err != nil {
		return fmt.Errorf("running %s list-modules: %w", bin, err)
	}
	if !bytes.Contains(out, []byte(moduleID)) {
		return fmt.Errorf("%s does not include %s; build it with scripts/build", bin, moduleID)
	}
	return nil
}

// demoCaddyfile is the site the demo serves. The keys come from the
// environment through placeholders, the way a real deployment should pass
// them, so the file on disk holds no secret.
func demoCaddyfile(listen, endpoint, root, cacheDir string) string {
	return fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
}

http://%s {
	s3_media_cache {
		bucket %s
		endpoint %s
		path_style
		access_key {env.S3_ACCESS_KEY}
		secret_key {env.S3_SECRET_KEY}
		root %s
		cache_dir %s
		max_size 1GiB
	}
}
`, listen, demoBucket, endpoint, root, cacheDir)
}

// caddyProcess is the running caddy.
type caddyProcess struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

func startCaddy(ctx context.Context, bin, caddyfile, logPath, listen string, gateway *s3test.Gateway) (*caddyProcess, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	cmd := exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "S3_ACCESS_KEY="+gateway.AccessKey, "S3_SECRET_KEY="+gateway.SecretKey)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &caddyProcess{cmd: cmd, exited: make(chan struct{}), logPath: logPath}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	// Any answer will do: "/" is never an object, so it is a 404.
	if err := s3test.WaitForHTTP(ctx, "http://"+listen+"/", p.exited, caddyReadyTimeout); err != nil {
		p.stop()
		return nil, fmt.Errorf("caddy did not start serving %s: %w; last log lines:\n%s", listen, err, p.logTail())
	}
	return p, nil
}

// stop asks caddy to shut down gracefully, and kills it if it does not.
func (p *caddyProcess) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(caddyStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// logTail returns the last lines caddy logged, for error messages.
func (p *caddyProcess) logTail() string { return s3test.LogTail(p.logPath, 15) }
