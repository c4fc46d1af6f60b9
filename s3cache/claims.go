package s3cache

import (
	"fmt"
	"strings"
)

// Sites of one config that name the same cache_dir share one store, and so
// one set of limits. A site that declared others would silently get the
// limits of whichever was provisioned last, so its config is refused
// instead, naming both sites and what differs. A new config may change the
// limits freely: the old config's sites are not compared with it, and the
// store takes the new limits.

// limitsClaim is what one site asked of the store.
type limitsClaim struct {
	config any // the config the site belongs to (its metrics registry)
	site   string
	levels []int
	limits storeLimits
}

// claim records c, or fails if a site of the same config asked for other
// limits. The store applies c's limits.
func (s *store) claim(c limitsClaim) error {
	s.mu.Lock()
	for _, other := range s.claims {
		if other.config == c.config {
			if diff := limitsDiff(other, c); diff != "" {
				s.mu.Unlock()
				return fmt.Errorf("cache_dir %s is named by two sites with different limits: %s; sites sharing a cache_dir must give it the same max_size, max_entries, inactive, min_free and levels",
					s.dir, diff)
			}
		}
	}
	s.claims = append(s.claims, c)
	s.mu.Unlock()
	s.setLimits(c.limits)
	return nil
}

// unclaim forgets the claim of a site whose config is being unloaded.
func (s *store) unclaim(config any, site string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.claims {
		if c.config == config && c.site == site {
			s.claims = append(s.claims[:i], s.claims[i+1:]...)
			return
		}
	}
}

// limitsDiff says how two claims differ, "" if they do not.
func limitsDiff(a, b limitsClaim) string {
	var diffs []string
	add := func(option string, x, y any) {
		if x != y {
			diffs = append(diffs, fmt.Sprintf("%s is %v for %s but %v for %s", option, x, a.site, y, b.site))
		}
	}
	add("max_size", a.limits.maxBytes, b.limits.maxBytes)
	if a.limits.maxBytes == b.limits.maxBytes {
		// Otherwise a default max_entries, which follows max_size, would
		// be named as a second difference nobody declared.
		add("max_entries", a.limits.maxEntries, b.limits.maxEntries)
	}
	add("inactive", a.limits.inactiveFor.String(), b.limits.inactiveFor.String())
	add("min_free", a.limits.minFreeBytes, b.limits.minFreeBytes)
	add("levels", formatLevels(a.levels), formatLevels(b.levels))
	return strings.Join(diffs, "; ")
}

// siteName describes a site for the errors above: where it was configured
// when the Caddyfile says so (and then the bucket need not be named, which
// keeps it out of the log the load error goes to), else what it serves
// and on which addresses.
func siteName(configuredAt string, listen []string, m keyMapping) string {
	if configuredAt != "" {
		return "the site at " + configuredAt
	}
	name := "the site of bucket " + m.bucket
	if m.prefix != "" {
		name += " prefix " + m.prefix
	}
	if m.stripPrefix != "" {
		name += " under " + m.stripPrefix
	}
	if len(listen) > 0 {
		name += " on " + strings.Join(listen, ",")
	}
	return name
}
