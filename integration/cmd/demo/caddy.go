package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const (
	moduleID          = "http.handlers.s3_media_cache"
	caddyReadyTimeout = 20 * time.Second
	caddyStopTimeout  = 10 * time.Second
	// readyPath is answered by the demo's Caddyfile with the run's nonce,
	// so the readiness check knows it reached this Caddy.
	readyPath = "/demo-ready"
	// purgeHeader is Mastodon's cache-buster header, as in the README.
	purgeHeader = "Cache-Buster-Secret"
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

// siteConfig is what the demo's Caddyfile is made of.
type siteConfig struct {
	listen   string // loopback host:port of the site
	admin    string // loopback host:port of the admin endpoint
	endpoint string // versitygw's URL
	root     string // local files, served before S3
	cacheDir string
	nonce    string // answered on readyPath
}

// demoCaddyfile is the site the demo serves. The keys and the cache-buster
// secret come from the environment through placeholders, the way a real
// deployment should pass them, so the file on disk holds no secret.
//
// A site address alone makes Caddy listen on every interface, whatever
// host it names; bind keeps the site on the loopback address the user
// gave.
func demoCaddyfile(c siteConfig) string {
	host, _, _ := net.SplitHostPort(c.listen) // options.check made sure it splits
	return fmt.Sprintf(`{
	# The admin API: /s3_media_cache/stats, /s3_media_cache/purge, /metrics.
	admin %s
	auto_https off
	persist_config off
}

http://%s {
	# Without bind, Caddy would listen on every interface.
	bind %s
	# Lets the demo check that this Caddy, not another server, has the port.
	respond %s "%s" 200
	s3_media_cache {
		bucket %s
		endpoint %s
		path_style
		access_key {env.S3_ACCESS_KEY}
		secret_key {env.S3_SECRET_KEY}
		root %s
		cache_dir %s
		max_size 1GiB
		# Mastodon's cache buster (CACHE_BUSTER_ENABLED=true).
		purge_header %s {env.CACHE_BUSTER_SECRET}
	}
}
`, c.admin, c.listen, host, readyPath, c.nonce, demoBucket, c.endpoint, c.root, c.cacheDir, purgeHeader)
}

// caddyProcess is the running caddy.
type caddyProcess struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// caddySecrets reach Caddy through its environment only.
type caddySecrets struct {
	accessKey, secretKey, cacheBusterSecret string
}

func startCaddy(ctx context.Context, bin, caddyfile, logPath string, site siteConfig, secrets caddySecrets) (*caddyProcess, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	cmd := exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(),
		"S3_ACCESS_KEY="+secrets.accessKey,
		"S3_SECRET_KEY="+secrets.secretKey,
		"CACHE_BUSTER_SECRET="+secrets.cacheBusterSecret)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	s3test.ConfigureChild(cmd)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own process group: Ctrl-C on the terminal reaches the demo only,
	// which stops Caddy in its turn, rather than racing it.
	cmd.SysProcAttr.Setpgid = true
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
	if err := p.waitReady(ctx, site); err != nil {
		p.stop()
		return nil, fmt.Errorf("caddy did not start serving %s with its admin endpoint on %s: %w; last log lines:\n%s",
			site.listen, site.admin, err, p.logTail())
	}
	return p, nil
}

// waitReady polls until this Caddy answers on both of its ports: the site
// with this run's nonce, the admin endpoint with this run's cache_dir.
// Any other answer is another server's, which must not pass for ours.
func (p *caddyProcess) waitReady(ctx context.Context, site siteConfig) error {
	ctx, cancel := context.WithTimeout(ctx, caddyReadyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		lastErr = checkSiteIsOurs(ctx, client, site)
		if lastErr == nil {
			lastErr = checkAdminIsOurs(ctx, client, site)
		}
		if lastErr == nil {
			return nil
		}
		select {
		case <-p.exited:
			return errors.New("caddy exited before answering")
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", caddyReadyTimeout, lastErr)
		case <-tick.C:
		}
	}
}

func checkSiteIsOurs(ctx context.Context, client *http.Client, site siteConfig) error {
	body, err := get(ctx, client, "http://"+site.listen+readyPath)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(body)) != site.nonce {
		return fmt.Errorf("%s answers, but not with this demo's Caddyfile: another server has the port", site.listen)
	}
	return nil
}

func checkAdminIsOurs(ctx context.Context, client *http.Client, site siteConfig) error {
	body, err := get(ctx, client, "http://"+site.admin+"/s3_media_cache/stats")
	if err != nil {
		return err
	}
	var stats []struct {
		CacheDir string `json:"cache_dir"`
	}
	if err := json.Unmarshal(body, &stats); err != nil {
		return fmt.Errorf("%s does not answer like Caddy's admin endpoint with this module: %w", site.admin, err)
	}
	for _, s := range stats {
		if s.CacheDir == site.cacheDir {
			return nil
		}
	}
	return fmt.Errorf("the admin endpoint on %s does not list this demo's cache %s: another Caddy has the port", site.admin, site.cacheDir)
}

// get returns the body of a 200 answer to a GET of url.
func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return body, nil
}

// stop asks caddy to shut down gracefully, and kills it if it does not.
func (p *caddyProcess) stop() { interruptThenKill(p.cmd, p.exited, caddyStopTimeout) }

// interruptThenKill sends SIGINT to a process still running (exited is
// closed once it has been waited for), and SIGKILL if it has not exited
// within timeout.
func interruptThenKill(cmd *exec.Cmd, exited <-chan struct{}, timeout time.Duration) {
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// logTail returns the last lines caddy logged, for error messages.
func (p *caddyProcess) logTail() string { return s3test.LogTail(p.logPath, 15) }
