package s3cache

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestSitesSharingACacheDirMustAgree checks that two sites of one config
// naming the same cache_dir with different limits are refused with an
// error naming both and what differs, that sites agreeing are fine, and
// that a new config may change the limits of the old one.
func TestSitesSharingACacheDirMustAgree(t *testing.T) {
	dir := t.TempDir()
	limits := storeLimits{maxBytes: 10 << 30, maxEntries: 1000, inactiveFor: 48 * time.Hour}
	s, err := openStore(dir, []int{1, 2}, limits, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer releaseStore(dir)
	oldConfig, newConfig := new(int), new(int)
	claim := func(config any, site string, maxBytes int64, levels []int) error {
		l := limits
		l.maxBytes = maxBytes
		return s.claim(limitsClaim{config: config, site: site, levels: levels, limits: l})
	}
	if err := claim(oldConfig, "the site of bucket a on :443", 10<<30, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := claim(oldConfig, "the site of bucket b on :443", 10<<30, []int{1, 2}); err != nil {
		t.Fatalf("a second site with the same limits: %v", err)
	}
	err = claim(oldConfig, "the site of bucket c on :8080", 5<<30, []int{1, 2})
	if err == nil {
		t.Fatal("a site with another max_size was accepted")
	}
	for _, want := range []string{dir, "max_size", "bucket a", "bucket c on :8080", "5368709120", "10737418240"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error %q does not say %q", err, want)
		}
	}
	// A reload with a smaller max_size: the new config's sites agree
	// among themselves, and the store takes their limits.
	if err := claim(newConfig, "the site of bucket a on :443", 5<<30, []int{1, 2}); err != nil {
		t.Fatalf("a new config changing max_size: %v", err)
	}
	s.mu.Lock()
	got := s.limits.maxBytes
	s.mu.Unlock()
	if got != 5<<30 {
		t.Fatalf("the store's max_size is %d after the new config's claim, want 5GiB", got)
	}
	s.unclaim(oldConfig, "the site of bucket a on :443")
	s.unclaim(oldConfig, "the site of bucket b on :443")
}
