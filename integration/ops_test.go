package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
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
