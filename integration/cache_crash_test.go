package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// caddyChild is Caddy running as a separate process, so a test can kill
// it with SIGKILL mid-work, which the in-process Caddy cannot simulate.
type caddyChild struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	baseURL string
	logPath string
}

// buildTestCaddy builds integration/cmd/testcaddy (Caddy with this
// module) into dir. With a warm build cache it is a link, a few seconds.
func buildTestCaddy(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/s3mediacache/caddy-s3-media-cache/integration/cmd/testcaddy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the test caddy: %v\n%s", err, out)
	}
	t.Logf("built %s in %s", bin, time.Since(start))
	return bin
}

// startCaddyChild runs bin with a site whose cache is cacheDir, and waits
// until it answers.
func startCaddyChild(t *testing.T, bin, workDir, cacheDir, name string) *caddyChild {
	t.Helper()
	addr, err := s3test.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	caddyfile := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	default_bind 127.0.0.1
}

http://%s {
	s3_media_cache {
%s
	}
}
`, addr, indent(cacheBlock(cacheDir)))
	configPath := filepath.Join(workDir, name+".Caddyfile")
	must(t, os.WriteFile(configPath, []byte(caddyfile), 0o600))
	c := &caddyChild{baseURL: "http://" + addr, logPath: filepath.Join(workDir, name+".log"), exited: make(chan struct{})}
	logFile, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "run", "--config", configPath, "--adapter", "caddyfile")
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	s3test.ConfigureChild(c.cmd)
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		_ = c.cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	t.Cleanup(c.kill)
	if err := s3test.WaitForHTTP(context.Background(), c.baseURL+"/warm-up/", c.exited, 20*time.Second); err != nil {
		t.Fatalf("caddy %s: %v; its log:\n%s", name, err, s3test.LogTail(c.logPath, 20))
	}
	return c
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *caddyChild) kill() {
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
	}
}

// kill -9 in the middle of many fills: whatever is on disk afterwards is
// either a whole entry or nothing, temp is emptied at the next start, and
// not one wrong byte is ever served.
func TestKill9DuringFillsServesNoWrongByte(t *testing.T) {
	work := t.TempDir()
	bin := buildTestCaddy(t, work)
	const n = 30
	// 256 KiB, then 50 KiB more each: up to 1.7 MiB.
	objs := webpObjects(t, n, 2<<20, 300)
	for i := range objs {
		objs[i].Body = objs[i].Body[:256<<10+i*50<<10]
	}
	seeded := seedObjects(t, objs...)
	cacheDir := t.TempDir()
	env.proxy.Reset()

	first := startCaddyChild(t, bin, work, cacheDir, "first")
	const prefilled = 4
	for _, o := range objs[:prefilled] {
		obj := seeded[o.Key]
		r := stream(context.Background(), http.MethodGet, first.baseURL+urlPath(obj.Key), nil)
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Fatalf("prefill %s: %s", obj.Key, why)
		}
		waitEntry(t, cacheDir, obj)
	}

	// At 512 KiB/s per fill, the 256 KiB to 1.7 MiB objects take 0.5s
	// to 3.4s: at the kill some fills are committed, some are
	// committing, most are mid-body.
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 512 << 10})
	results := make([]streamed, n)
	var wg sync.WaitGroup
	for i := prefilled; i < n; i++ {
		obj := seeded[objs[i].Key]
		wg.Go(func() {
			results[i] = stream(context.Background(), http.MethodGet, first.baseURL+urlPath(obj.Key), nil)
		})
	}
	time.Sleep(1200 * time.Millisecond)
	killedAt := time.Now()
	first.kill()
	wg.Wait()
	env.proxy.ClearFault()
	whole := 0
	for i := prefilled; i < n; i++ {
		obj, r := seeded[objs[i].Key], results[i]
		if r.err == nil && r.readErr == nil && r.status == http.StatusOK {
			whole++
			if r.sum != obj.SHA256 {
				t.Errorf("%s: a complete 200 with the wrong bytes before the kill", obj.Key)
			}
		}
	}
	t.Logf("at the kill: %d of %d fills complete, %d entry files, %d temp files",
		whole, n-prefilled, len(entryFiles(t, cacheDir)), len(tempFiles(t, cacheDir)))

	second := startCaddyChild(t, bin, work, cacheDir, "second")
	if names := tempFiles(t, cacheDir); len(names) != 0 {
		t.Errorf("temp holds %v after the restart, want nothing", names)
	}
	hits := 0
	for i, o := range objs {
		obj := seeded[o.Key]
		r := stream(context.Background(), http.MethodGet, second.baseURL+urlPath(obj.Key), nil)
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("%s after the restart: %s", obj.Key, why)
			continue
		}
		status := r.header.Get("X-Cache-Status")
		if status == "HIT" {
			hits++
		}
		// Entries committed well before the kill must have survived it.
		done := i < prefilled || (results[i].readErr == nil && results[i].status == http.StatusOK && results[i].lastByte.Before(killedAt.Add(-300*time.Millisecond)))
		if done && status != "HIT" {
			t.Errorf("%s, complete before the kill, is %s after the restart, want HIT", obj.Key, status)
		}
	}
	t.Logf("after the restart: %d of %d objects were hits", hits, n)
	if t.Failed() {
		t.Logf("log of the restarted caddy:\n%s", s3test.LogTail(second.logPath, 30))
	}
}
