package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/cli"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// purgeSecret stands for Mastodon's CACHE_BUSTER_SECRET.
const purgeSecret = "9f3b2c7e-cache-buster"

// adminURL is the in-process Caddy's admin endpoint.
func adminURL(path string) string {
	return fmt.Sprintf("http://localhost:%d%s", env.ports.admin, path)
}

// adminDo sends a request to the admin endpoint, as curl would.
func adminDo(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, adminURL(path), strings.NewReader(body))
	must(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	scanResponse(scanAdmin, method+" "+path, resp.StatusCode, resp.Header, b)
	return resp.StatusCode, string(b)
}

// loadCacheBuster loads a cached site that takes Mastodon's cache buster
// (header Cache-Buster-Secret, secret purgeSecret, given the way an
// operator would: from the environment) and caches obj. It returns the
// cache directory.
func loadCacheBuster(t *testing.T, obj s3test.Seeded) string {
	t.Helper()
	t.Setenv("S3MC_TEST_PURGE_SECRET", purgeSecret)
	dir := t.TempDir()
	loadCache(t, dir, "purge_header Cache-Buster-Secret {env.S3MC_TEST_PURGE_SECRET}")
	fillEntry(t, dir, obj)
	return dir
}

// The request Mastodon's CacheBusterWorker sends: the media URL, its
// method (GET by default), the secret header.
func TestCacheBusterPurgesTheEntry(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	dir := loadCacheBuster(t, obj)

	wrong := do(t, http.MethodGet, urlPath(obj.Key), "Cache-Buster-Secret: not-the-secret")
	wantFromCache(t, wrong, obj, "HIT")
	if !exists(entryPathFor(dir, obj)) {
		t.Fatal("a wrong secret purged the entry")
	}

	r := do(t, http.MethodGet, urlPath(obj.Key), "Cache-Buster-Secret: "+purgeSecret)
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("purge: status %d, %d body bytes; want 204 and no body", r.status, len(r.body))
	}
	if !waitFor(0, func() bool { return !exists(entryPathFor(dir, obj)) }) {
		t.Fatal("the entry file is still on disk after the purge")
	}
	wantMissFromS3(t, obj)
}

func TestAdminAPIStatsAndPurge(t *testing.T) {
	dir, png, mb := cacheTwoObjects(t)
	wantHitWithoutS3(t, png)

	status, body := adminDo(t, http.MethodGet, "/s3_media_cache/stats", "")
	if status != 200 {
		t.Fatalf("stats: %d %s", status, body)
	}
	var stats []struct {
		CacheDir string  `json:"cache_dir"`
		Entries  int     `json:"entries"`
		Bytes    int64   `json:"bytes"`
		Hits     int64   `json:"hits"`
		HitRatio float64 `json:"hit_ratio"`
	}
	must(t, json.Unmarshal([]byte(body), &stats))
	var found bool
	for _, s := range stats {
		if s.CacheDir == dir {
			found = true
			if s.Entries != 2 || s.Bytes < png.Size+mb.Size || s.Hits < 1 || s.HitRatio <= 0 {
				t.Errorf("stats for %s: %+v", dir, s)
			}
		}
	}
	if !found {
		t.Fatalf("no stats for %s in %s", dir, body)
	}
	wantNoSecretIn(t, "admin stats", body)

	status, body = adminDo(t, http.MethodPost, "/s3_media_cache/purge", `{"path": "`+urlPath(mb.Key)+`"}`)
	if status != 200 || !strings.Contains(body, `"purged":1`) {
		t.Fatalf("purge: %d %s", status, body)
	}
	if exists(entryPathFor(dir, mb)) {
		t.Fatal("purged entry still on disk")
	}
	wantHitWithoutS3(t, png)
	if status, body = adminDo(t, http.MethodPost, "/s3_media_cache/purge", `{"path": "/../etc/passwd"}`); status != 400 {
		t.Fatalf("bad purge path: %d %s", status, body)
	}
}

func TestMetricsAreExposed(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, obj)
	wantHitWithoutS3(t, obj)
	status, body := adminDo(t, http.MethodGet, "/metrics", "")
	if status != 200 {
		t.Fatalf("metrics: %d", status)
	}
	for _, want := range []string{
		`caddy_s3_media_cache_requests_total{cache_status="HIT"}`,
		`caddy_s3_media_cache_requests_total{cache_status="MISS"}`,
		`caddy_s3_media_cache_s3_requests_total{operation="GetObject",result="ok"}`,
		`caddy_s3_media_cache_cache_entries{cache_dir="` + dir + `"} 1`,
		`caddy_s3_media_cache_response_body_bytes_total{source="cache"}`,
		`caddy_s3_media_cache_s3_body_bytes_total`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	wantNoSecretIn(t, "metrics", body)
}

// With Caddy's access log on the media site, neither the purge secret nor
// a guess at it reaches the log: requests carrying the purge header are
// kept out of the access log (the handler logs purges itself, without the
// value), and a flood of wrong guesses is one warning line, not one each.
func TestPurgeHeaderNeverReachesTheAccessLog(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	t.Setenv("S3MC_TEST_PURGE_SECRET", purgeSecret)
	dir := t.TempDir()
	accessLog := filepath.Join(t.TempDir(), "access.log")
	site := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t}\n\ts3_media_cache {\n%s\n\t}",
		accessLog, indent(cacheBlock(dir, "purge_header Cache-Buster-Secret {env.S3MC_TEST_PURGE_SECRET}")))
	load(t, caddyfileFor(env.ports, site))
	warmUp(t)
	fillEntry(t, dir, obj)

	from := suiteLogSize(t)
	const guesses = 50
	for i := range guesses {
		r := do(t, http.MethodGet, urlPath(obj.Key), fmt.Sprintf("Cache-Buster-Secret: guess-%03d", i))
		wantBody(t, r, http.StatusOK, obj.Body)
		wantCacheStatus(t, r, "HIT")
	}
	if r := do(t, http.MethodGet, urlPath(obj.Key), "Cache-Buster-Secret: "+purgeSecret); r.status != http.StatusNoContent {
		t.Fatalf("purge with the right secret: status %d, want 204", r.status)
	}
	// An ordinary request after them, so the log is known to be written
	// up to here; the purge made it a MISS.
	r := do(t, http.MethodGet, urlPath(obj.Key))
	wantBody(t, r, http.StatusOK, obj.Body)
	wantCacheStatus(t, r, "MISS")

	var logged []byte
	waitFor(5*time.Second, func() bool {
		logged, _ = os.ReadFile(accessLog)
		return bytes.Contains(logged, []byte(urlPath(obj.Key)))
	})
	// The warm-up, the fill and the request after the purge; none of the
	// 51 requests with the header.
	if n := bytes.Count(logged, []byte("\n")); n != 3 {
		t.Errorf("the access log has %d lines, want 3 (the requests without the purge header): %s", n, logged)
	}
	if bytes.Contains(logged, []byte(`"status":204`)) {
		t.Error("the purge is in the access log")
	}
	for _, marker := range []string{purgeSecret, "guess-"} {
		if bytes.Contains(logged, []byte(marker)) {
			t.Errorf("the access log holds %q", marker)
		}
	}
	var warnings int
	for _, l := range suiteLogSince(t, from) {
		if bytes.Contains(l, []byte(purgeSecret)) || bytes.Contains(l, []byte("guess-")) {
			t.Errorf("Caddy's log holds the secret or a guess: %s", l)
		}
		if bytes.Contains(l, []byte("wrong secret")) {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings for %d wrong guesses in a row, want 1", warnings, guesses)
	}
	recordInput(t, secretsArea, "purge header with a site access log", !t.Failed(),
		fmt.Sprintf("%d wrong guesses and a purge: %d access log lines, %d warnings", guesses, bytes.Count(logged, []byte("\n")), warnings))
}

// TestPurgesTakePathsAsWrittenInURLs purges an object whose key has a
// space and a non-ASCII letter in every way an admin may write its path:
// percent-encoded as in a URL or an access log (the cache buster, and the
// CLI), and decoded. Then it checks that the admin API's counters agree
// with the metrics, as docs/operations.md says they do.
func TestPurgesTakePathsAsWrittenInURLs(t *testing.T) {
	t.Setenv("S3MC_TEST_PURGE_SECRET", purgeSecret)
	dir := t.TempDir()
	loadCache(t, dir, "purge_header Cache-Buster-Secret {env.S3MC_TEST_PURGE_SECRET}")
	seeded := seedObjects(t, s3test.Object{Key: testKey(t, "a b é.png"), Body: s3test.RandomBytes(40<<10, 61), ContentType: "image/png"})
	var obj s3test.Seeded
	for _, o := range seeded {
		obj = o
	}
	encoded := urlPath(obj.Key)
	if !strings.Contains(encoded, "%20") || !strings.Contains(encoded, "%C3%A9") {
		t.Fatalf("the test needs an encoded path, got %s", encoded)
	}
	decoded := "/" + obj.Key
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin := cli.AdminFlags{Address: fmt.Sprintf("localhost:%d", env.ports.admin)}

	purges := []struct {
		how   string
		purge func() int
	}{
		{"the cache buster, on the URL's encoded path", func() int {
			if r := do(t, http.MethodGet, encoded, "Cache-Buster-Secret: "+purgeSecret); r.status != http.StatusNoContent {
				t.Fatalf("cache-buster purge: %d", r.status)
			}
			return 1
		}},
		{"caddy s3-media-cache purge --path with the encoded path", func() int {
			n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: encoded}, io.Discard)
			must(t, err)
			return n
		}},
		{"caddy s3-media-cache purge --path with the decoded path", func() int {
			n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: decoded}, io.Discard)
			must(t, err)
			return n
		}},
		{"the admin API with an encoded prefix", func() int {
			n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Prefix: encoded[:strings.LastIndex(encoded, "/")+1]}, io.Discard)
			must(t, err)
			return n
		}},
	}
	for _, p := range purges {
		fillEntry(t, dir, obj)
		if n := p.purge(); n != 1 {
			t.Errorf("%s: %d purged, want 1", p.how, n)
		}
		if !waitFor(0, func() bool { return !exists(entryPathFor(dir, obj)) }) {
			t.Errorf("%s: the entry is still on disk", p.how)
		}
	}
	wantGet(t, obj, "MISS")

	// The counters: 5 media requests (4 fills and the last MISS, each a
	// MISS), 4 purges asked for, 4 entries removed.
	status, body := adminDo(t, http.MethodGet, "/s3_media_cache/stats", "")
	if status != 200 {
		t.Fatalf("stats: %d %s", status, body)
	}
	var stats []s3cache.StoreStats
	must(t, json.Unmarshal([]byte(body), &stats))
	var st *s3cache.StoreStats
	for i := range stats {
		if stats[i].CacheDir == dir {
			st = &stats[i]
		}
	}
	if st == nil {
		t.Fatalf("no stats for %s: %s", dir, body)
	}
	status, metrics := adminDo(t, http.MethodGet, "/metrics", "")
	if status != 200 {
		t.Fatalf("metrics: %d", status)
	}
	requestsTotal := metricSum(metrics, "caddy_s3_media_cache_requests_total{")
	if st.Purges != 4 || st.PurgeRequests != 4 || st.Requests != int64(requestsTotal) || st.Requests < 5 {
		t.Errorf("stats: purges %d (want 4), purge_requests %d (want 4), requests %d (want the sum of requests_total, %v, and at least 5)",
			st.Purges, st.PurgeRequests, st.Requests, requestsTotal)
	}
	if got := metricSum(metrics, `caddy_s3_media_cache_purge_requests_total{result="removed"}`); got != 1 {
		t.Errorf(`purge_requests_total{result="removed"} = %v, want 1 (the cache buster's one purge)`, got)
	}
}

// metricSum adds up the values of the series of a Prometheus text page
// whose line starts with prefix.
func metricSum(page, prefix string) float64 {
	var sum float64
	for line := range strings.Lines(page) {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
