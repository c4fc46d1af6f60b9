package s3cache

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAdminAPIStatsAndPurge(t *testing.T) {
	data := objectBytes(30_000)
	o := servingOrigin(data)
	h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) { h.mapping.stripPrefix = "/system" })
	srv := serve(t, h)
	for _, p := range []string{"/system/accounts/avatars/1/a.png", "/system/accounts/avatars/1/b.png", "/system/media/c.png"} {
		get(t, srv.URL+p)
		waitStored(t, h, strings.TrimPrefix(p, "/system/"))
	}
	get(t, srv.URL+"/system/media/c.png") // a hit

	api := &AdminAPI{}
	rec := httptest.NewRecorder()
	if err := api.handleStats(rec, httptest.NewRequest("GET", "/s3_media_cache/stats", nil)); err != nil {
		t.Fatal(err)
	}
	var stats []StoreStats
	if err := json.Unmarshal(rec.Body.Bytes(), &stats); err != nil {
		t.Fatal(err)
	}
	var mine *StoreStats
	for i := range stats {
		if stats[i].CacheDir == h.storeDir {
			mine = &stats[i]
		}
	}
	if mine == nil || mine.Entries != 3 || mine.Bytes <= 3*30_000 || !mine.Loaded {
		t.Fatalf("stats: %+v", stats)
	}

	purge := func(body string) (int, PurgeResult) {
		rec := httptest.NewRecorder()
		err := api.handlePurge(rec, httptest.NewRequest("POST", "/s3_media_cache/purge", strings.NewReader(body)))
		if err != nil {
			return 400, PurgeResult{}
		}
		var res PurgeResult
		json.Unmarshal(rec.Body.Bytes(), &res)
		return rec.Code, res
	}
	// A prefix that strip_path_prefix only starts as a string, not as a
	// segment, names nothing of this site.
	if code, res := purge(`{"prefix": "/systemx/"}`); code != 200 || res.Purged != 0 {
		t.Fatalf("purge of /systemx/ with strip_path_prefix /system: %d %+v, want nothing purged", code, res)
	}
	if code, res := purge(`{"prefix": "/systemaccounts/"}`); code != 200 || res.Purged != 0 {
		t.Fatalf("purge of /systemaccounts/: %d %+v, want nothing purged", code, res)
	}
	// A path as it appears in URLs and logs, percent-encoded, purges.
	if code, res := purge(`{"path": "/system/media/%63.png"}`); code != 200 || res.Purged != 1 {
		t.Fatalf("purge path: %d %+v", code, res)
	}
	if code, res := purge(`{"prefix": "/system/accounts/avatars/%31/"}`); code != 200 || res.Purged != 2 {
		t.Fatalf("purge prefix: %d %+v", code, res)
	}
	for _, bad := range []string{`{}`, `{"path": "/a", "prefix": "/b"}`, `{"path": "/../etc"}`, `{"prefix": "relative"}`, `{"prefix": "/a%2Fb/"}`, `{"prefix": "/../"}`, `not json`} {
		if code, _ := purge(bad); code != 400 {
			t.Errorf("purge %s: %d, want 400", bad, code)
		}
	}
	if _, ok := h.store.lookup(h.mapping.cacheKey("accounts/avatars/1/a.png"), time.Now()); ok {
		t.Fatal("prefix purge left an entry")
	}
	rec = httptest.NewRecorder()
	if err := api.handleStats(rec, httptest.NewRequest("POST", "/s3_media_cache/stats", nil)); err == nil {
		t.Fatal("POST to stats accepted")
	}
}
