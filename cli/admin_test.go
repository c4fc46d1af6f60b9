package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// fakeAdmin answers like the admin API of s3cache/admin.go, and records
// the requests.
type fakeAdmin struct {
	stats    []s3cache.StoreStats
	purged   int
	requests []string
}

func (a *fakeAdmin) start(t *testing.T) AdminFlags {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.requests = append(a.requests, r.Method+" "+r.URL.Path+" "+string(body))
		switch r.URL.Path {
		case "/s3_media_cache/stats":
			_ = json.NewEncoder(w).Encode(a.stats)
		case "/s3_media_cache/purge":
			var req s3cache.PurgeRequest
			if err := json.Unmarshal(body, &req); err != nil || strings.Contains(req.Path+req.Prefix, "..") {
				http.Error(w, `{"error":"path is not a media path"}`, http.StatusBadRequest)
				return
			}
			_ = json.NewEncoder(w).Encode(s3cache.PurgeResult{Purged: a.purged})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return AdminFlags{Address: strings.TrimPrefix(srv.URL, "http://")}
}

func TestStatsPrintsOneRowPerCache(t *testing.T) {
	a := &fakeAdmin{stats: []s3cache.StoreStats{
		{CacheDir: "/var/cache/a", Loaded: true, Entries: 81234, Bytes: 9 << 30, MaxBytes: 10 << 30, Requests: 1200345, Hits: 1187001, HitRatio: 0.9889, FillsInFlight: 2, FillWaiters: 5, S3Errors: 3, Evictions: 120, Purges: 4},
		{CacheDir: "/var/cache/b", Entries: 0, MaxBytes: 1 << 30},
	}}
	admin := a.start(t)
	var out bytes.Buffer
	if err := Stats(context.Background(), StatsFlags{AdminFlags: admin}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and two rows:\n%s", out.String())
	}
	for _, want := range [][]string{
		{"CACHE", "DIR", "ENTRIES", "SIZE", "MAX", "SIZE", "HIT", "RATIO", "REQUESTS", "FILLS", "WAITERS", "S3", "ERRORS", "EVICTIONS", "PURGES", "CORRUPT"},
		{"/var/cache/a", "81234", "9.0", "GiB", "10.0", "GiB", "98.9%", "1200345", "2", "5", "3", "120", "4", "0"},
		{"/var/cache/b", "0", "(loading)", "0", "B", "1.0", "GiB", "0.0%", "0", "0", "0", "0", "0", "0", "0"},
	} {
		found := false
		for _, line := range lines {
			found = found || strings.Join(strings.Fields(line), " ") == strings.Join(want, " ")
		}
		if !found {
			t.Errorf("no line %q in\n%s", strings.Join(want, " "), out.String())
		}
	}
	if a.requests[0] != "GET /s3_media_cache/stats " {
		t.Errorf("request %q", a.requests[0])
	}
}

func TestStatsJSONIsTheAdminAnswerAsIs(t *testing.T) {
	a := &fakeAdmin{stats: []s3cache.StoreStats{{CacheDir: "/c", Entries: 1}}}
	admin := a.start(t)
	var out bytes.Buffer
	if err := Stats(context.Background(), StatsFlags{AdminFlags: admin, JSON: true}, &out); err != nil {
		t.Fatal(err)
	}
	var got []s3cache.StoreStats
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || len(got) != 1 || got[0].CacheDir != "/c" {
		t.Errorf("--json printed %q (%v)", out.String(), err)
	}
}

func TestStatsWithNoCacheSaysSo(t *testing.T) {
	admin := (&fakeAdmin{}).start(t)
	var out bytes.Buffer
	if err := Stats(context.Background(), StatsFlags{AdminFlags: admin}, &out); err != nil || !strings.Contains(out.String(), "no s3_media_cache") {
		t.Errorf("%v %q", err, out.String())
	}
}

func TestPurgeSendsOneOfPathAndPrefix(t *testing.T) {
	a := &fakeAdmin{purged: 3}
	admin := a.start(t)
	var out bytes.Buffer
	n, err := Purge(context.Background(), PurgeFlags{AdminFlags: admin, Prefix: "/accounts/avatars/109/"}, &out)
	if err != nil || n != 3 || out.String() != "purged 3 entries\n" {
		t.Fatalf("purge --prefix: %d %v %q", n, err, out.String())
	}
	if a.requests[0] != `POST /s3_media_cache/purge {"prefix":"/accounts/avatars/109/"}` {
		t.Errorf("request %q", a.requests[0])
	}
	a.purged = 1
	out.Reset()
	if n, err := Purge(context.Background(), PurgeFlags{AdminFlags: admin, Path: "/media_attachments/a.png"}, &out); err != nil || n != 1 || out.String() != "purged 1 entry\n" {
		t.Errorf("purge --path: %d %v %q", n, err, out.String())
	}
	_, err = Purge(context.Background(), PurgeFlags{AdminFlags: admin, Path: "/a/../b"}, &out)
	if ExitCode(err) != 1 || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "not a media path") {
		t.Errorf("refused purge: %v", err)
	}
	if len(a.requests) != 3 {
		t.Errorf("%d requests, want 3", len(a.requests))
	}
}

func TestAdminRequestGivesUpWithTheContext(t *testing.T) {
	hung := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hung }))
	defer srv.Close()
	defer close(hung)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Stats(ctx, StatsFlags{AdminFlags: AdminFlags{Address: strings.TrimPrefix(srv.URL, "http://")}}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("stats against a hung endpoint: %v", err)
	}
}
