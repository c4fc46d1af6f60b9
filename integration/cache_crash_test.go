package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// processFaultsArea is the ledger area of kills and reloads.
const processFaultsArea = "process faults"

// caddyChild is Caddy running as a separate process, so a test can kill
// it with SIGKILL mid-work, which the in-process Caddy cannot simulate,
// and measure its memory, descriptors and goroutines alone.
type caddyChild struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	addr    string
	baseURL string
	// adminAddr is its admin endpoint, "" when it has none.
	adminAddr string
	logPath   string
	opts      childOptions
}

// childOptions say what a child Caddy serves.
type childOptions struct {
	cacheDir string
	// extra are more s3_media_cache options.
	extra []string
	// admin gives it an admin endpoint on a free loopback port, for
	// /load, /metrics and /debug/pprof.
	admin bool
	// site are more directives of its site, such as a log.
	site []string
}

var testCaddyBuild struct {
	sync.Once
	path string
	err  error
}

// testCaddy builds integration/cmd/testcaddy (Caddy with this module),
// once per run, into a directory of the temp dir named after this
// checkout: go build leaves an up-to-date binary alone, so when nothing
// changed since the last run it costs a second instead of a link.
func testCaddy(t *testing.T) string {
	t.Helper()
	testCaddyBuild.Do(func() {
		root, err := filepath.Abs("..")
		if err != nil {
			testCaddyBuild.err = err
			return
		}
		sum := sha256.Sum256([]byte(root))
		dir := filepath.Join(os.TempDir(), "s3mc-testcaddy-"+hex.EncodeToString(sum[:6]))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			testCaddyBuild.err = err
			return
		}
		bin := filepath.Join(dir, "caddy")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/s3mediacache/caddy-s3-media-cache/integration/cmd/testcaddy")
		if out, err := cmd.CombinedOutput(); err != nil {
			testCaddyBuild.err = fmt.Errorf("building the test caddy: %w\n%s", err, out)
			return
		}
		t.Logf("built %s in %s", bin, time.Since(start).Round(time.Millisecond))
		testCaddyBuild.path = bin
	})
	if testCaddyBuild.err != nil {
		t.Fatal(testCaddyBuild.err)
	}
	return testCaddyBuild.path
}

// caddyfile is the child's Caddyfile, with extra s3_media_cache options
// on top of its own: a reload changes these.
func (c *caddyChild) caddyfile(extra ...string) string {
	admin := "off"
	if c.adminAddr != "" {
		admin = c.adminAddr
	}
	block := []string{}
	if c.opts.cacheDir != "" {
		block = append(block, "cache_dir "+c.opts.cacheDir)
	}
	block = append(append(block, c.opts.extra...), extra...)
	return fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	default_bind 127.0.0.1
}

http://%s {
%s	s3_media_cache {
%s
	}
}
`, admin, c.addr, siteLines(c.opts.site), indent(blockFor(block...)))
}

// siteLines renders directives for a site block, one per line.
func siteLines(directives []string) string {
	var b strings.Builder
	for _, d := range directives {
		b.WriteString("\t" + d + "\n")
	}
	return b.String()
}

// startCaddyChild runs bin as a child named name (its files in workDir
// are name.Caddyfile and name.log), and waits until it answers.
func startCaddyChild(t *testing.T, bin, workDir, name string, opts childOptions) *caddyChild {
	t.Helper()
	addr, err := s3test.FreeLoopbackAddr()
	must(t, err)
	c := &caddyChild{addr: addr, baseURL: "http://" + addr, logPath: filepath.Join(workDir, name+".log"), exited: make(chan struct{}), opts: opts}
	if opts.admin {
		if c.adminAddr, err = s3test.FreeLoopbackAddr(); err != nil {
			t.Fatal(err)
		}
	}
	configPath := filepath.Join(workDir, name+".Caddyfile")
	must(t, os.WriteFile(configPath, []byte(c.caddyfile()), 0o600))
	logFile, err := os.Create(c.logPath)
	must(t, err)
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

// get fetches path from the child, reading the body as it comes.
func (c *caddyChild) get(ctx context.Context, path string, headers ...string) streamed {
	return stream(ctx, http.MethodGet, c.baseURL+path, nil, headers...)
}

// scanLog checks everything the child logged for secrets.
func (c *caddyChild) scanLog(t *testing.T, what string) {
	t.Helper()
	data, err := os.ReadFile(c.logPath)
	must(t, err)
	scanForSecrets(t, what, data)
}

// kill -9 in the middle of 50 fills of distinct objects: whatever is on
// disk afterwards holds only right bytes (whole slices of the object,
// sealed; a slice cut by the kill is not counted as present), temp is
// emptied at the next start, and not one wrong byte is ever served: every
// object is compared with the bucket's copy after the restart.
func TestKill9DuringFillsServesNoWrongByte(t *testing.T) {
	work := t.TempDir()
	bin := testCaddy(t)
	const n = 50
	// 256 KiB, then 40 KiB more each: up to 2.2 MiB, 60 MiB in all.
	objs := webpObjects(t, n, 256<<10+(n-1)*40<<10, 300)
	for i := range objs {
		objs[i].Body = objs[i].Body[:256<<10+i*40<<10]
	}
	seeded := seedObjects(t, objs...)
	cacheDir := t.TempDir()
	env.proxy.Reset()

	first := startCaddyChild(t, bin, work, "first", childOptions{cacheDir: cacheDir})
	const prefilled = 4
	for _, o := range objs[:prefilled] {
		obj := seeded[o.Key]
		if ok, why := first.get(context.Background(), urlPath(obj.Key)).complete(http.StatusOK, obj.Body); !ok {
			t.Fatalf("prefill %s: %s", obj.Key, why)
		}
		waitEntry(t, cacheDir, obj)
	}

	// At 512 KiB/s per fill, the objects take 0.5s to 4.4s: at the kill
	// some fills are committed, some are committing, most are mid-body.
	env.proxy.SetFault(s3test.Fault{BytesPerSecond: 512 << 10})
	results := make([]streamed, n)
	var wg sync.WaitGroup
	for i := prefilled; i < n; i++ {
		obj := seeded[objs[i].Key]
		wg.Go(func() { results[i] = first.get(context.Background(), urlPath(obj.Key)) })
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

	// What the kill left: every slice present in an entry file holds
	// the object's bytes.
	known := map[string]s3test.Seeded{}
	for _, o := range objs {
		known[entryPathFor(cacheDir, seeded[o.Key])] = seeded[o.Key]
	}
	var onDisk int64
	badOnDisk, partial := 0, 0
	for path := range entryFiles(t, cacheDir) {
		obj, ok := known[path]
		e, err := readEntryOnDisk(path)
		switch {
		case !ok:
			badOnDisk++
			t.Errorf("an entry file for no object: %s", path)
		case err != nil || !e.holds(obj.Body):
			badOnDisk++
			t.Errorf("the entry file of %s holds wrong bytes (%v)", obj.Key, err)
		default:
			if !e.complete() {
				partial++
			}
			onDisk += min(int64(e.count())*e.sliceLen, obj.Size)
		}
	}
	t.Logf("on disk after the kill: %d bytes in slices, %d entries partial", onDisk, partial)
	recordBytes(t, processFaultsArea, "kill -9: entry files left on disk", onDisk, badOnDisk)

	second := startCaddyChild(t, bin, work, "second", childOptions{cacheDir: cacheDir})
	if names := tempFiles(t, cacheDir); len(names) != 0 {
		t.Errorf("temp holds %v after the restart, want nothing", names)
	}
	hits, mismatches := 0, 0
	var served int64
	for i, o := range objs {
		obj := seeded[o.Key]
		r := second.get(context.Background(), urlPath(obj.Key))
		if r.err == nil && r.readErr == nil && r.status == http.StatusOK {
			served += r.n
			if r.sum != obj.SHA256 {
				mismatches++
			}
		}
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
	recordBytes(t, processFaultsArea, "kill -9: every object served after the restart", served, mismatches)
	t.Logf("after the restart: %d of %d objects were hits", hits, n)
	first.scanLog(t, "log of a child Caddy killed with -9")
	second.scanLog(t, "log of a child Caddy restarted after kill -9")
	recordFault(t, processFaultsArea, "kill -9 during 50 concurrent fills, then restart", !t.Failed(), "see the test's errors")
	if t.Failed() {
		t.Logf("log of the restarted caddy:\n%s", s3test.LogTail(second.logPath, 30))
	}
}
