package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// InstallCommand is the command that installs the versitygw binary the
// harness runs. Error messages quote it so a missing binary is one
// copy-paste away from fixed.
const InstallCommand = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

const (
	// readyTimeout bounds how long Start waits for versitygw to answer.
	readyTimeout = 20 * time.Second
	// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 5 * time.Second
)

// GatewayOptions configure StartGateway. Zero values pick sensible defaults.
type GatewayOptions struct {
	// Dir is the POSIX directory versitygw serves; each subdirectory is a
	// bucket. Default: a new temporary directory removed by Close.
	Dir string
	// Addr is the loopback host:port to listen on. Default: a free port on
	// 127.0.0.1.
	Addr string
	// AccessKey and SecretKey are the root credentials. Default:
	// "s3test-access" / "s3test-secret".
	AccessKey string
	SecretKey string
}

// Gateway is a running (or stopped) versitygw process. Stop and Start may be
// called repeatedly; the gateway comes back on the same address and
// directory, which lets a test simulate S3 going down and recovering.
type Gateway struct {
	Binary    string
	Dir       string
	Addr      string
	AccessKey string
	SecretKey string
	// LogPath receives versitygw's stdout and stderr, for diagnosing a
	// failed test.
	LogPath string

	ownsDir bool

	mu     sync.Mutex // guards the fields below
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// StartGateway finds the versitygw binary, starts it on loopback and waits
// until it answers a signed request with the gateway's own credentials.
//
// When opts.Addr is empty the port is picked free, which leaves a moment
// for another process to take it first; versitygw then fails to bind and
// exits, and StartGateway tries again on another port (three times at
// most). Random default credentials make sure that what answered is this
// gateway, not another test run's on a port we thought was ours.
func StartGateway(ctx context.Context, opts GatewayOptions) (*Gateway, error) {
	bin, err := FindVersitygw()
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		Binary:    bin,
		Dir:       opts.Dir,
		AccessKey: opts.AccessKey,
		SecretKey: opts.SecretKey,
	}
	if g.AccessKey == "" {
		g.AccessKey = "s3test-" + randomHex(8)
	}
	if g.SecretKey == "" {
		g.SecretKey = randomHex(20)
	}
	if g.Dir == "" {
		dir, err := os.MkdirTemp("", "s3test-versitygw-")
		if err != nil {
			return nil, fmt.Errorf("creating versitygw data directory: %w", err)
		}
		g.Dir, g.ownsDir = dir, true
	} else if err := os.MkdirAll(g.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating versitygw data directory %s: %w", g.Dir, err)
	}
	logFile, err := os.CreateTemp("", "s3test-versitygw-*.log")
	if err != nil {
		g.removeDir()
		return nil, fmt.Errorf("creating versitygw log: %w", err)
	}
	logFile.Close()
	g.LogPath = logFile.Name()

	for attempt := 1; ; attempt++ {
		g.Addr = opts.Addr
		if g.Addr == "" {
			if g.Addr, err = FreeLoopbackAddr(); err != nil {
				break
			}
		}
		err = g.Start(ctx)
		if err == nil || opts.Addr != "" || attempt == 3 || !errors.Is(err, errExitedEarly) {
			break
		}
	}
	if err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// randomHex returns n random bytes, hex-encoded.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

// FindVersitygw returns the path of the versitygw binary: on PATH, or in
// $(go env GOPATH)/bin where `go install` puts it.
func FindVersitygw() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	candidate := filepath.Join(goPath(), "bin", "versitygw")
	if st, err := os.Stat(candidate); err == nil && !st.IsDir() {
		return candidate, nil
	}
	return "", fmt.Errorf("versitygw binary not found on PATH nor at %s; install it with: %s", candidate, InstallCommand)
}

// goPath mirrors `go env GOPATH` without requiring the go tool at run time
// when GOPATH is set.
func goPath() string {
	if p := os.Getenv("GOPATH"); p != "" {
		return filepath.SplitList(p)[0]
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		if p := strings.TrimSpace(string(out)); p != "" {
			return filepath.SplitList(p)[0]
		}
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, "go")
}

// FreeLoopbackAddr returns a 127.0.0.1 address with a port that was free a
// moment ago. The port is released before returning, so a child process can
// bind it.
func FreeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Endpoint is the gateway's base URL, e.g. http://127.0.0.1:41234.
func (g *Gateway) Endpoint() string { return "http://" + g.Addr }

// Start launches versitygw if it is not running and waits until it answers.
func (g *Gateway) Start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd != nil {
		return nil
	}
	logFile, err := os.OpenFile(g.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening versitygw log %s: %w", g.LogPath, err)
	}
	// Credentials go through the environment rather than argv so they do
	// not show up in `ps`.
	// --keep-alive: S3 keeps a client's connections open between
	// requests, and versitygw closes each one after its answer unless
	// told otherwise. Without it every S3 request of a test or benchmark
	// pays a new connection, which real S3 does not charge, and a cache
	// that fails to reuse its connections would go unnoticed.
	cmd := exec.Command(g.Binary, "--keep-alive", "--port", g.Addr, "posix", g.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+g.AccessKey, "ROOT_SECRET_ACCESS_KEY="+g.SecretKey)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	ConfigureChild(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", g.Binary, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	g.cmd, g.exited = cmd, exited

	if err := g.waitReady(ctx, exited); err != nil {
		g.stopLocked()
		return fmt.Errorf("versitygw on %s did not become ready: %w; its last log lines:\n%s", g.Addr, err, LogTail(g.LogPath, 15))
	}
	return nil
}

// errExitedEarly is what waitReady reports when versitygw died before
// answering, typically because its port was taken.
var errExitedEarly = errors.New("versitygw exited before answering")

// waitReady polls with a signed ListBuckets until it succeeds, proving
// that the server on g.Addr is this gateway and not a stranger.
func (g *Gateway) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := g.Client()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		_, lastErr = client.ListBuckets(callCtx, &s3.ListBucketsInput{})
		callCancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return errExitedEarly
		case <-ctx.Done():
			return fmt.Errorf("no successful signed request within %s, last error: %w", readyTimeout, lastErr)
		case <-tick.C:
		}
	}
}

// WaitForHTTP polls url until any HTTP response arrives (whatever its
// status), the process behind exited ends, or timeout passes.
func WaitForHTTP(ctx context.Context, url string, exited <-chan struct{}, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("process exited before answering")
		case <-ctx.Done():
			return fmt.Errorf("no answer from %s within %s: %w", url, timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// Stop terminates versitygw and waits for it to exit. Stopping a stopped
// gateway is a no-op.
func (g *Gateway) Stop() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopLocked()
}

func (g *Gateway) stopLocked() error { return g.endLocked(stopTimeout) }

// endLocked sends SIGTERM and gives versitygw grace to exit, then SIGKILL;
// with no grace, SIGKILL at once.
func (g *Gateway) endLocked(grace time.Duration) error {
	if g.cmd == nil {
		return nil
	}
	cmd, exited := g.cmd, g.exited
	g.cmd, g.exited = nil, nil
	if grace > 0 {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(grace):
		}
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing versitygw pid %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("versitygw pid %d did not exit after SIGKILL", cmd.Process.Pid)
	}
}

// Kill ends versitygw with SIGKILL, as a crash would: no graceful end of
// the responses in flight, which Stop allows. Start brings it back.
func (g *Gateway) Kill() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.endLocked(0)
}

// Close stops the gateway and removes its log, and its data directory if
// the harness created it.
func (g *Gateway) Close() error {
	err := g.Stop()
	g.removeDir()
	if g.LogPath != "" {
		_ = os.Remove(g.LogPath)
	}
	return err
}

func (g *Gateway) removeDir() {
	if g.ownsDir {
		_ = os.RemoveAll(g.Dir)
	}
}

// LogTail returns the last n lines of the log at path, for error messages
// about a child process that would not start.
func LogTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
