package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

const (
	readyTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// process is a server the bench started, pinned to one core.
type process struct {
	name    string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
	// stopSignal asks for a graceful stop: SIGQUIT for nginx, SIGINT
	// for Caddy.
	stopSignal syscall.Signal
	started    time.Time
}

// startPinned runs bin on core cpu through taskset, which execs it in
// place, so the pid is the server's own. Output goes to logPath. If the
// bench dies, the kernel sends the server SIGTERM (Pdeathsig; a fast stop for nginx, a graceful one for Caddy), so no
// server outlives a crashed or killed run.
func startPinned(name string, cpu int, logPath string, stopSignal syscall.Signal, bin string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating %s log: %w", name, err)
	}
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	p := &process{name: name, cmd: cmd, exited: make(chan struct{}), logPath: logPath, stopSignal: stopSignal, started: time.Now()}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// waitListening waits until addr accepts a connection, the process exits,
// or readyTimeout passes.
func (p *process) waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before listening on %s; its log ends with:\n%s", p.name, addr, s3test.LogTail(p.logPath, 15))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s; its log ends with:\n%s", p.name, addr, readyTimeout, s3test.LogTail(p.logPath, 15))
		}
	}
}

// stop asks the server to stop, and kills it if it has not within
// stopTimeout.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(p.stopSignal)
	select {
	case <-p.exited:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
		return fmt.Errorf("%s (pid %d) did not stop within %s and was killed", p.name, p.pid(), stopTimeout)
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid())
	}
}

// tree is the process and its descendants (nginx's workers).
func (p *process) tree() []int { return append([]int{p.pid()}, descendants(p.pid())...) }

// descendants lists the processes below pid, from /proc.
func descendants(pid int) []int {
	var out []int
	for p := range treeOf(readProcs(), pid) {
		if p != pid {
			out = append(out, p)
		}
	}
	return out
}

// processName is the command name of pid.
func processName(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	return strings.TrimSpace(string(b))
}

// peakRSS sums VmHWM, the peak resident set size, of pids, in bytes.
func peakRSS(pids []int) (int64, error) {
	return sumStatus(pids, "VmHWM:")
}

// currentRSS sums VmRSS of pids, in bytes.
func currentRSS(pids []int) (int64, error) {
	return sumStatus(pids, "VmRSS:")
}

// sumStatus adds up a "Name: N kB" field of the processes' status files,
// in bytes. A process that has exited since pids was listed is left out:
// nginx's cache loader exits a minute after nginx starts, which may be in
// the middle of a scenario.
func sumStatus(pids []int, field string) (int64, error) {
	var total int64
	for _, pid := range pids {
		f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("reading the memory of pid %d: %w", pid, err)
		}
		sc := bufio.NewScanner(f)
		found := false
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				if err == nil {
					total += kb << 10
					found = true
				}
				break
			}
		}
		f.Close()
		if !found {
			return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
		}
	}
	return total, nil
}

// resetPeakRSS makes each process's VmHWM start again from its current
// RSS (Linux's clear_refs "5"), so a scenario measures its own peak. A
// process that has exited meanwhile is left out, as in sumStatus.
func resetPeakRSS(pids []int) error {
	for _, pid := range pids {
		err := os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("resetting the peak RSS of pid %d: %w", pid, err)
		}
	}
	return nil
}

// pin moves every thread of pid to core cpu.
func pin(pid, cpu int) error {
	out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c %d %d: %w: %s", cpu, pid, err, out)
	}
	return nil
}

// pinSelfAndHelpers moves this program (the throttling proxy and the
// stampede tool run in it) and versitygw to the load core, leaving the
// other core to the server under test.
func pinSelfAndHelpers(cpu int) error {
	if err := pin(os.Getpid(), cpu); err != nil {
		return err
	}
	for _, pid := range descendants(os.Getpid()) {
		if processName(pid) == "versitygw" {
			if err := pin(pid, cpu); err != nil {
				return err
			}
		}
	}
	return nil
}

// findBinary looks for name on PATH and in the sbin directories, which a
// non-root PATH may lack (Debian installs nginx in /usr/sbin).
func findBinary(name, installHint string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", errors.New(name + " not found; " + installHint)
}
