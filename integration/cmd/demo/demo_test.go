package main

// These tests run the demo as scripts/demo does: the built program, a real
// caddy binary with this module (./caddy in its working directory), real
// versitygw. They read what it prints and do what a user would.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const (
	// demoReadyTimeout bounds a start: versitygw, seeding 32 MB, Caddy.
	demoReadyTimeout = 90 * time.Second
	// demoExitTimeout bounds a stop after a signal.
	demoExitTimeout = 30 * time.Second
	// commandTimeout bounds one printed command (the 30 MB one included).
	commandTimeout = 60 * time.Second
	readyLine      = "Press Ctrl-C to stop"
	// caddyEnv names a caddy binary built with scripts/build to run the
	// demo with instead of one built from integration/cmd/testcaddy.
	caddyEnv = "DEMO_CADDY"
)

var demoBuild struct {
	sync.Once
	dir string // holds demo and caddy
	err error
}

// demoBinaries builds the demo program and a caddy with this module into
// one directory, once per run, and returns it. The directory is named
// after this checkout so that go build finds both up to date the next
// time. With DEMO_CADDY set, ./caddy in a directory of its own links to
// that binary instead (one built by scripts/build, as scripts/demo runs).
func demoBinaries(t *testing.T) string {
	t.Helper()
	demoBuild.Do(func() { demoBuild.dir, demoBuild.err = buildDemoBinaries() })
	if demoBuild.err != nil {
		t.Fatal(demoBuild.err)
	}
	return demoBuild.dir
}

func buildDemoBinaries() (string, error) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "s3mc-demo-test-"+hex.EncodeToString(sum[:6]))
	given := os.Getenv(caddyEnv)
	if given != "" {
		dir = filepath.Join(dir, "given-caddy")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := func(out, pkg string) error {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, out), pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build -o %s %s: %w\n%s", out, pkg, err, b)
		}
		return nil
	}
	if err := build("demo", "./integration/cmd/demo"); err != nil {
		return "", err
	}
	if given == "" {
		if err := build("caddy", "./integration/cmd/testcaddy"); err != nil {
			return "", fmt.Errorf("no caddy to run the demo with: %w\n"+
				"fix the build, or build one with scripts/build and run the test with %s=$PWD/caddy", err, caddyEnv)
		}
		return dir, nil
	}
	abs, err := filepath.Abs(given)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("%s=%s: %w; build it with scripts/build, or unset %s to build one", caddyEnv, given, err, caddyEnv)
	}
	link := filepath.Join(dir, "caddy")
	_ = os.Remove(link)
	if err := os.Symlink(abs, link); err != nil {
		return "", err
	}
	return dir, nil
}

// demoRun is one running demo process.
type demoRun struct {
	cmd           *exec.Cmd
	dir           string // its working directory, with ./caddy
	listen, admin string
	out           *syncBuffer // stdout
	errOut        *syncBuffer // stderr
	exited        chan struct{}
	exitErr       error // set before exited closes
}

// syncBuffer is a bytes.Buffer the process writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// launchDemo starts the demo on the given addresses, as scripts/demo does,
// and returns without waiting for it to be ready. It is killed at the end
// of the test if still running.
func launchDemo(t *testing.T, listen, admin string) *demoRun {
	t.Helper()
	dir := demoBinaries(t)
	d := &demoRun{dir: dir, listen: listen, admin: admin, out: &syncBuffer{}, errOut: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(dir, "demo"), "--caddy", "./caddy", "--listen", listen, "--admin", admin)
	d.cmd.Dir = dir
	// A process group of its own, as a shell gives a foreground job, so a
	// test can signal the group the way Ctrl-C on a terminal does.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.errOut
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(d.stop)
	return d
}

// stop ends a demo still running the way a user does, with SIGINT, so
// that it removes its directory; SIGKILL only if it hangs, and then its
// children die with it (Pdeathsig).
func (d *demoRun) stop() { interruptThenKill(d.cmd, d.exited, demoExitTimeout) }

// startDemo launches the demo on free loopback ports and waits for its
// ready line.
func startDemo(t *testing.T) *demoRun {
	t.Helper()
	d := launchDemo(t, freeAddr(t), freeAddr(t))
	deadline := time.After(demoReadyTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(d.out.String(), readyLine) {
		select {
		case <-d.exited:
			t.Fatalf("demo exited before it was ready (%v)\nstdout:\n%s\nstderr:\n%s", d.exitErr, d.out, d.errOut)
		case <-deadline:
			t.Fatalf("demo not ready within %s\nstdout:\n%s\nstderr:\n%s", demoReadyTimeout, d.out, d.errOut)
		case <-tick.C:
		}
	}
	return d
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := s3test.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// printedAfter returns the rest of the printed line that starts with
// prefix, e.g. the Caddyfile path.
func (d *demoRun) printedAfter(t *testing.T, prefix string) string {
	t.Helper()
	for line := range strings.Lines(d.out.String()) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("the demo printed no line starting %q:\n%s", prefix, d.out)
	return ""
}

// workDir is the demo's temporary directory, the one the Caddyfile is in.
func (d *demoRun) workDir(t *testing.T) string {
	t.Helper()
	return filepath.Dir(d.printedAfter(t, "caddy serves http://"+d.listen+" with the Caddyfile "))
}

// s3Addr is versitygw's host:port, from the banner.
func (d *demoRun) s3Addr(t *testing.T) string {
	t.Helper()
	line := d.printedAfter(t, "its admin API is on ")
	_, endpoint, ok := strings.Cut(line, ") on http://")
	if !ok {
		t.Fatalf("no versitygw endpoint in %q", line)
	}
	return endpoint
}

// printedTries reads the try-list back from the output: each "# what"
// line and the command under it.
func (d *demoRun) printedTries(t *testing.T) []try {
	t.Helper()
	var tries []try
	sc := bufio.NewScanner(strings.NewReader(d.out.String()))
	for sc.Scan() {
		what, ok := strings.CutPrefix(sc.Text(), "  # ")
		if !ok {
			continue
		}
		if !sc.Scan() {
			t.Fatalf("%q has no command under it", what)
		}
		tries = append(tries, try{what: what, cmd: strings.TrimPrefix(sc.Text(), "  ")})
	}
	return tries
}

// children are the processes the demo started (Caddy, versitygw).
func (d *demoRun) children(t *testing.T) []int {
	t.Helper()
	paths, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", d.cmd.Process.Pid))
	if err != nil || len(paths) == 0 {
		t.Fatalf("listing the demo's children: %v (%d task files)", err, len(paths))
	}
	var pids []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended meanwhile
		}
		for f := range strings.FieldsSeq(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("reading %s: %v", p, err)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// expectedTries is the try-list the demo must have printed: the commands
// and, for the test, what each must answer.
func (d *demoRun) expectedTries(t *testing.T) []try {
	t.Helper()
	var png []byte
	for _, o := range s3test.Samples() {
		if o.Key == s3test.KeyOriginalPNG {
			png = o.Body
		}
	}
	sum := md5.Sum(png)
	var all []try
	for _, s := range tryList(tryListParams{
		listen: d.listen, admin: d.admin, caddyBin: "./caddy",
		cacheBusterHeaderFile: filepath.Join(d.workDir(t), "cache-buster.header"),
		// versitygw's ETag for a single PUT is the body's MD5, as S3's.
		manifest: s3test.Manifest{s3test.KeyOriginalPNG: {Key: s3test.KeyOriginalPNG, ETag: `"` + hex.EncodeToString(sum[:]) + `"`}},
	}) {
		all = append(all, s.tries...)
	}
	return all
}

func TestDemoEveryPrintedCommandWorks(t *testing.T) {
	d := startDemo(t)
	printed := d.printedTries(t)
	expected := d.expectedTries(t)
	if len(printed) != len(expected) {
		t.Fatalf("printed %d commands, want %d:\n%s", len(printed), len(expected), d.out)
	}
	for i, p := range printed {
		want := expected[i]
		if p.what != want.what || p.cmd != want.cmd {
			t.Fatalf("command %d printed as\n  # %s\n  %s\nwant\n  # %s\n  %s", i+1, p.what, p.cmd, want.what, want.cmd)
		}
	}
	covered := map[string]bool{}
	for i, tr := range expected {
		out := runPrinted(t, d.dir, tr.cmd)
		desc := fmt.Sprintf("command %d (%s): %s", i+1, tr.what, tr.cmd)
		if tr.wantStatus != 0 {
			if got := lastStatus(out); got != tr.wantStatus {
				t.Errorf("%s\nstatus %d, want %d; output:\n%s", desc, got, tr.wantStatus, out)
			}
		}
		if tr.wantCache != "" {
			if got := lastHeader(out, "X-Cache-Status"); got != tr.wantCache {
				t.Errorf("%s\nX-Cache-Status %q, want %q; output:\n%s", desc, got, tr.wantCache, out)
			}
		}
		if tr.wantOutput != "" && !strings.Contains(out, tr.wantOutput) {
			t.Errorf("%s\noutput lacks %q:\n%s", desc, tr.wantOutput, out)
		}
		for _, feature := range []string{"s3-media-cache stats", "s3-media-cache purge --path", "s3-media-cache purge --prefix",
			"/s3_media_cache/stats", `{"path"`, `{"prefix"`, "/metrics", "-H @", "-I ", "Range:", "If-None-Match:"} {
			if strings.Contains(tr.cmd, feature) {
				covered[feature] = true
			}
		}
	}
	if len(covered) != 11 {
		t.Errorf("the try-list covers only %v", covered)
	}

	// No secret on the screen or in the Caddyfile: the cache-buster secret
	// is read from its file, the S3 keys (s3test-…) not printed at all.
	header, err := os.ReadFile(filepath.Join(d.workDir(t), "cache-buster.header"))
	if err != nil {
		t.Fatal(err)
	}
	_, secret, _ := strings.Cut(strings.TrimSpace(string(header)), ": ")
	caddyfile, err := os.ReadFile(filepath.Join(d.workDir(t), "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	for where, text := range map[string]string{"stdout": d.out.String(), "stderr": d.errOut.String(), "the Caddyfile": string(caddyfile)} {
		if len(secret) < 16 || strings.Contains(text, secret) {
			t.Errorf("%s holds the cache-buster secret (or it is too short: %d)", where, len(secret))
		}
		if strings.Contains(text, "s3test-") {
			t.Errorf("%s holds versitygw's access key", where)
		}
	}
}

// runPrinted runs a printed command the way a user pastes it, from the
// directory the demo was started in, and returns its output. It fails the
// test if the command exits non-zero.
func runPrinted(t *testing.T, dir, command string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s\nexited with %v; output:\n%s", command, err, out)
	}
	return string(out)
}

// lastStatus is the status of the last response whose headers curl
// printed (-i, -I or -D -).
func lastStatus(out string) int {
	status := 0
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "HTTP/") {
			if f := strings.Fields(line); len(f) >= 2 {
				status, _ = strconv.Atoi(f[1])
			}
		}
	}
	return status
}

// lastHeader is the value of a header of the last response curl printed.
func lastHeader(out, name string) string {
	value := ""
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "HTTP/") {
			value = ""
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			value = strings.TrimSpace(v)
		}
	}
	return value
}

// The site and the admin endpoint must not answer on any other address
// of this machine; the running Caddy's config must name only loopback
// listeners, which checks something even on a machine with no other
// address.
func TestDemoListensOnLoopbackOnly(t *testing.T) {
	d := startDemo(t)

	resp, err := http.Get("http://" + d.admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var cfg adaptedDemo
	if err := json.Unmarshal(body, &cfg); err != nil {
		t.Fatalf("reading the running config: %v\n%s", err, body)
	}
	listeners := []string{cfg.Admin.Listen}
	for _, srv := range cfg.Apps.HTTP.Servers {
		listeners = append(listeners, srv.Listen...)
	}
	if len(listeners) < 2 {
		t.Fatalf("the running config lists %v, want the admin endpoint and the site", listeners)
	}
	for _, l := range listeners {
		host, _, err := net.SplitHostPort(l)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			t.Errorf("the running Caddy listens on %q, not a loopback address", l)
		}
	}

	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, a := range addrs {
		ipNet, ok := a.(*net.IPNet)
		if !ok || ipNet.IP.IsLoopback() || ipNet.IP.IsLinkLocalUnicast() {
			continue
		}
		for _, listen := range []string{d.listen, d.admin} {
			_, port, _ := net.SplitHostPort(listen)
			target := net.JoinHostPort(ipNet.IP.String(), port)
			conn, err := net.DialTimeout("tcp", target, 2*time.Second)
			if err == nil {
				conn.Close()
				t.Errorf("%s accepted a connection: the demo is reachable beyond loopback", target)
				continue
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dialing %s: %v, want connection refused", target, err)
			}
			checked++
		}
	}
	t.Logf("%d connections to non-loopback addresses refused; running config listens on %v", checked, listeners)
}

// kill -INT and kill -TERM of the demo's PID (scripts/demo execs it, so
// that is the script's PID), and Ctrl-C on a terminal, which signals
// Caddy and versitygw too: all must leave nothing behind and exit 0.
func TestDemoStopsCleanlyOnSignal(t *testing.T) {
	cases := []struct {
		name  string
		sig   syscall.Signal
		group bool // signal the whole process group, as a terminal does
	}{
		{"kill -INT", syscall.SIGINT, false},
		{"kill -TERM", syscall.SIGTERM, false},
		{"Ctrl-C", syscall.SIGINT, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sig := c.sig
			d := startDemo(t)
			workDir, s3 := d.workDir(t), d.s3Addr(t)
			children := d.children(t)
			if len(children) != 2 {
				t.Fatalf("demo has children %v, want caddy and versitygw", children)
			}
			target := d.cmd.Process.Pid
			if c.group {
				target = -target
			}
			if err := syscall.Kill(target, sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-d.exited:
			case <-time.After(demoExitTimeout):
				t.Fatalf("demo still running %s after %s\nstdout:\n%s", demoExitTimeout, sig, d.out)
			}
			if d.exitErr != nil {
				t.Errorf("demo exited with %v after %s, want status 0\nstderr:\n%s", d.exitErr, sig, d.errOut)
			}
			for _, pid := range children {
				if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
					t.Errorf("child %d still exists after the demo exited (kill -0: %v)", pid, err)
				}
			}
			for _, addr := range []string{d.listen, d.admin, s3} {
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					t.Errorf("%s still taken after the demo exited: %v", addr, err)
					continue
				}
				ln.Close()
			}
			if _, err := os.Stat(workDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after the demo exited (%v)", workDir, err)
			}
		})
	}
}

func TestDemoRefusesATakenPortBeforeStartingAnything(t *testing.T) {
	cases := []struct {
		name     string
		takeSite bool
		wantFlag string
	}{
		{"site port", true, "--listen"},
		{"admin port", false, "--admin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			taken, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Close()
			listen, admin := freeAddr(t), taken.Addr().String()
			if c.takeSite {
				listen, admin = taken.Addr().String(), freeAddr(t)
			}
			d := launchDemo(t, listen, admin)
			select {
			case <-d.exited:
			case <-time.After(20 * time.Second):
				t.Fatalf("demo still running with %s taken\nstdout:\n%s", taken.Addr(), d.out)
			}
			var exit *exec.ExitError
			if !errors.As(d.exitErr, &exit) || exit.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1", d.exitErr)
			}
			for _, want := range []string{taken.Addr().String() + " is already in use", c.wantFlag + " 127.0.0.1:PORT"} {
				if !strings.Contains(d.errOut.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, d.errOut)
				}
			}
			if out := d.out.String(); out != "" {
				t.Errorf("the demo started something or printed a banner before refusing:\n%s", out)
			}
		})
	}
}
