package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A config reload under load, the way `caddy reload` does it (POST /load
// to the admin API): no request fails, the cache is kept with its
// entries (the same files, not fetched again), and hits stay hits.
//
// The load is a keep-alive client, as browsers are: like them, it resends
// an idempotent request once when a reused connection turns out closed
// (Go's transport does). It also resends, once, a request dropped
// unanswered on a new connection, as the suite's send does: Caddy's
// listener handover lets the old server's last Accept take a connection
// while it shuts down, and net/http then reads the request and closes
// the connection without an answer. Such a request never reached this
// module; the test checks that, in the log, and counts them.
func TestReloadUnderLoadFailsNoRequest(t *testing.T) {
	work := t.TempDir()
	bin := testCaddy(t)
	cacheDir := t.TempDir()
	objs := webpObjects(t, 20, 256<<10, 500)
	seeded := seedObjects(t, objs...)
	child := startCaddyChild(t, bin, work, "reload", childOptions{cacheDir: cacheDir, admin: true})

	// Half the objects are cached before: hits. The other half are
	// filled under the load, across the reloads.
	inodes := map[string]uint64{}
	for _, o := range objs[:10] {
		obj := seeded[o.Key]
		if ok, why := child.get(context.Background(), urlPath(obj.Key)).complete(http.StatusOK, obj.Body); !ok {
			t.Fatalf("prefill %s: %s", obj.Key, why)
		}
		waitEntry(t, cacheDir, obj)
		inodes[obj.Key] = inodeOf(entryPathFor(cacheDir, obj))
	}

	const (
		workers   = 4
		reloads   = 6
		perWorker = 5000 // bounds the load by count; the deadline by time
	)
	load := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: workers},
		Timeout:   30 * time.Second,
	}
	defer load.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	stop := make(chan struct{})
	// Each request counts against the reload that completes next
	// after it starts (the last reload's, for those after it).
	var reloadsDone atomic.Int32
	var (
		mu                            sync.Mutex
		failures                      []string
		failedDuring                  [reloads]int
		requests, compared            int64
		mismatches, failedRq, dropped int
	)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; i < perWorker && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				obj := seeded[objs[(w*7+i)%len(objs)].Key]
				during := min(int(reloadsDone.Load()), reloads-1)
				n, sum, err := fetchWhole(load, child.baseURL+urlPath(obj.Key))
				resent := errors.Is(err, errDroppedUnanswered)
				if resent {
					n, sum, err = fetchWhole(load, child.baseURL+urlPath(obj.Key))
				}
				mu.Lock()
				requests++
				if resent {
					dropped++
				}
				var failure string
				switch {
				case err != nil:
					failure = fmt.Sprintf("GET %s: %v", obj.Key, err)
				case sum != obj.SHA256:
					mismatches++
					failure = fmt.Sprintf("GET %s: %d bytes that are not the object's", obj.Key, n)
				}
				compared += n
				if failure != "" {
					failedRq++
					failedDuring[during]++
					if len(failures) < 5 {
						failures = append(failures, failure)
					}
				}
				mu.Unlock()
			}
		})
	}
	for i := range reloads {
		time.Sleep(300 * time.Millisecond)
		postLoad(t, child, child.caddyfile(
			fmt.Sprintf(`cache_control "public, max-age=%d"`, 1000+i),
			fmt.Sprintf("max_size %dMiB", 64+i)))
		reloadsDone.Add(1)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	t.Logf("%d requests under %d reloads: %d failed, %d dropped unanswered by the old server and sent again", requests, reloads, failedRq, dropped)
	if requests < 100 {
		t.Errorf("only %d requests were made: the load did not overlap the reloads", requests)
	}
	// Dropped ones never reached the module: it would have logged an
	// aborted response.
	if log, err := os.ReadFile(child.logPath); err != nil || bytes.Contains(log, []byte("aborting the response")) {
		t.Errorf("the module aborted a response during the reloads (or its log is unreadable: %v)", err)
	}
	recordBytes(t, processFaultsArea, "config reload under load", compared, mismatches)
	for i, failed := range failedDuring {
		recordFault(t, processFaultsArea, "config reload under load", failed == 0,
			fmt.Sprintf("reload %d: %d requests failed; the first failures of the run: %s", i+1, failed, strings.Join(failures, "; ")))
	}

	// The cache was kept: the same entry files, all hits, no S3 request,
	// and the last config's headers.
	env.proxy.Reset()
	for _, o := range objs {
		obj := seeded[o.Key]
		r := child.get(context.Background(), urlPath(obj.Key))
		if ok, why := r.complete(http.StatusOK, obj.Body); !ok {
			t.Errorf("%s after the reloads: %s", obj.Key, why)
			continue
		}
		if got := r.header.Get("X-Cache-Status"); got != "HIT" {
			t.Errorf("%s after the reloads: X-Cache-Status %s, want HIT", obj.Key, got)
		}
		if got, want := r.header.Get("Cache-Control"), fmt.Sprintf("public, max-age=%d", 1000+reloads-1); got != want {
			t.Errorf("%s after the reloads: Cache-Control %q, want the last config's %q", obj.Key, got, want)
		}
		if ino, ok := inodes[obj.Key]; ok && inodeOf(entryPathFor(cacheDir, obj)) != ino {
			t.Errorf("the entry file of %s was replaced across the reloads", obj.Key)
		}
	}
	if n := env.proxy.Count(); n != 0 {
		t.Errorf("S3 saw %d requests for objects that were all cached: %v", n, env.proxy.Counts())
	}
	child.scanLog(t, "log of a child Caddy reloaded under load")
	scanForSecrets(t, "metrics page of a child Caddy reloaded under load", child.admin(t, "/metrics"))
}

// errDroppedUnanswered is a request whose new connection was closed
// before any byte of an answer.
var errDroppedUnanswered = errors.New("connection closed unanswered")

// fetchWhole GETs url and returns the body's length and SHA-256; a status
// other than 200 or a body that does not end cleanly is an error.
func fetchWhole(c *http.Client, url string) (int64, string, error) {
	var reused, answered bool
	trace := &httptrace.ClientTrace{
		GotConn:              func(info httptrace.GotConnInfo) { reused = info.Reused },
		GotFirstResponseByte: func() { answered = true },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		if !reused && !answered && droppedUnanswered(err) {
			return 0, "", fmt.Errorf("%w: %w", errDroppedUnanswered, err)
		}
		return 0, "", err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return n, "", fmt.Errorf("status %d, body broke after %d bytes: %w", resp.StatusCode, n, err)
	}
	if resp.StatusCode != http.StatusOK {
		return n, "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// postLoad replaces the child's config as `caddy reload` does: the
// Caddyfile POSTed to the admin API's /load, adapted there.
func postLoad(t *testing.T, c *caddyChild, caddyfile string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+c.adminAddr+"/load", strings.NewReader(caddyfile))
	must(t, err)
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: status %d: %s", resp.StatusCode, body)
	}
}

// admin GETs path from the child's admin endpoint.
func (c *caddyChild) admin(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + c.adminAddr + path)
	if err != nil {
		t.Fatalf("GET admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET admin %s: status %d, %v", path, resp.StatusCode, err)
	}
	return body
}

// inodeOf is the inode of path, 0 if it does not exist.
func inodeOf(path string) uint64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
