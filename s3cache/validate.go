package s3cache

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Validate rejects a configuration that cannot work, naming the option
// (and the Caddyfile block, when the adapter said where it is). It is the
// one place options are checked; the Caddyfile parser only parses.
func (h *Handler) Validate() error {
	opts := h.resolveOptions()
	checks := []func() error{
		func() error { return checkOrigin(opts.origin) },
		func() error { return checkMapping(opts.mapping, opts.prefixErr) },
		h.checkLimits,
		h.checkFills,
		func() error { _, err := h.freshnessRules(); return err },
		func() error { _, err := h.buildHeaderPolicy(); return err },
		func() error {
			if h.PurgeHeader != "" && opts.purgeSecret == "" {
				return errors.New("purge_header needs a non-empty secret")
			}
			return nil
		},
	}
	for _, check := range checks {
		if err := check(); err != nil {
			if h.Site != "" {
				return fmt.Errorf("s3_media_cache at %s: %w", h.Site, err)
			}
			return fmt.Errorf("s3_media_cache: %w", err)
		}
	}
	return nil
}

// checkOrigin checks bucket, the credentials and endpoint.
func checkOrigin(c originConfig) error {
	switch {
	case c.bucket == "":
		return errors.New("bucket is required")
	case c.anonymous && (c.accessKey != "" || c.secretKey != ""):
		return errors.New("anonymous cannot be combined with access_key or secret_key")
	case (c.accessKey == "") != (c.secretKey == ""):
		return errors.New("access_key and secret_key must be set together (or both omitted to use the AWS credential chain)")
	}
	if c.endpoint != "" {
		if err := CheckEndpoint(c.endpoint); err != nil {
			return fmt.Errorf("endpoint: %w", err)
		}
	}
	return nil
}

// checkMapping checks strip_path_prefix and prefix.
func checkMapping(m keyMapping, prefixErr error) error {
	if m.stripPrefix != "" && !strings.HasPrefix(m.stripPrefix, "/") {
		return errors.New("strip_path_prefix must start with /")
	}
	if prefixErr != nil {
		return fmt.Errorf("prefix %w", prefixErr)
	}
	return nil
}

// checkLimits checks the cache's size, entries, age and layout, and the
// timeouts.
func (h *Handler) checkLimits() error {
	switch {
	case h.MaxSize < 0:
		return errors.New("max_size must not be negative")
	case h.MinFree < 0:
		return errors.New("min_free must not be negative")
	case h.Inactive < 0:
		return errors.New("inactive must not be negative")
	case h.MaxEntries < 0 || h.MaxEntries > math.MaxInt32:
		return fmt.Errorf("max_entries must be between 1 and %d", math.MaxInt32)
	}
	for _, timeout := range []struct {
		option string
		d      caddy.Duration
	}{
		{"connect_timeout", h.ConnectTimeout}, {"first_byte_timeout", h.FirstByteTimeout},
		{"read_timeout", h.ReadTimeout}, {"fill_queue_timeout", h.FillQueueTimeout},
	} {
		if timeout.d < 0 {
			return fmt.Errorf("%s must not be negative", timeout.option)
		}
	}
	_, err := parseLevels(cmp.Or(h.Levels, defaultLevels))
	return err
}

// checkFills checks how objects are fetched: slice, fill_ahead,
// fill_parallel and max_concurrent_fills.
func (h *Handler) checkFills() error {
	switch {
	case h.MaxConcurrentFills < -1:
		return errors.New("max_concurrent_fills must be positive, or -1 (off) for no bound")
	case h.Slice != 0 && !validSliceLen(h.Slice):
		return fmt.Errorf("slice: %d bytes is not a multiple of 64KiB between 64KiB and 64MiB (try 1MiB)", h.Slice)
	case h.FillAhead < 0:
		return errors.New("fill_ahead must not be negative")
	case h.FillParallel < 0 || h.FillParallel > 64:
		return errors.New("fill_parallel must be between 1 and 64")
	case h.MemoryCache < -1:
		return errors.New("memory_cache must be a size, or -1 (off)")
	}
	return nil
}
