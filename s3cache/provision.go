package s3cache

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Provision resolves placeholders, fills defaults and opens the S3 client,
// the local root and the cache. Caddy calls Validate after Provision; it
// runs here first as well, so that a value it refuses never reaches a
// cache the running config shares.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.Validate(); err != nil {
		return err
	}
	opts := h.resolveOptions()
	h.originCfg, h.mapping = opts.origin, opts.mapping

	policy, err := h.buildHeaderPolicy()
	if err != nil {
		return err
	}
	h.policy = policy
	if h.Root != "" {
		if err := h.openRoot(opts.root); err != nil {
			return err
		}
	}
	if err := h.buildFreshness(); err != nil {
		return err
	}
	if h.PurgeHeader != "" {
		h.purgeHeader = http.CanonicalHeaderKey(h.PurgeHeader)
		h.wrongPurges = &logLimiter{}
		h.purgeSecretSum = sha256.Sum256([]byte(opts.purgeSecret))
		h.purgeMethod = strings.ToUpper(cmp.Or(h.PurgeMethod, http.MethodGet))
	}
	if h.CacheDir != "" {
		var listen []string
		if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
			listen = srv.Listen
		}
		if err := h.openCache(opts.cacheDir, ctx.GetMetricsRegistry(), siteName(h.Site, listen, h.mapping)); err != nil {
			return err
		}
	}
	if err := h.openOrigin(ctx); err != nil {
		return err
	}
	h.buildFillRules()
	h.logger.Info("serving media from S3",
		zap.Bool("path_style", h.originCfg.pathStyle),
		zap.Bool("anonymous", h.originCfg.anonymous),
		zap.Bool("local_root", h.localRoot != nil),
		zap.Bool("cache", h.store != nil),
	)
	return nil
}

// openOrigin opens the S3 client (unless a test set one) and wraps it in
// the ETag check, the metrics and the bound on S3 requests in flight.
func (h *Handler) openOrigin(ctx caddy.Context) error {
	if h.origin == nil {
		o, err := newS3Origin(ctx, h.originCfg)
		if err != nil {
			return fmt.Errorf("s3_media_cache: %w", err)
		}
		h.origin, h.closeOrigin = o, o.close
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		srv.RegisterConnContext(rememberConn) // for corkFor
	}
	m, err := newMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("s3_media_cache: registering metrics: %w", err)
	}
	h.metrics = m
	if enabled(h.ETagCheck) {
		h.origin = etagCheckingOrigin{origin: h.origin}
	}
	h.origin = instrumentedOrigin{origin: h.origin, m: m}
	if h.MaxConcurrentFills >= 0 {
		limit := orDefault(h.MaxConcurrentFills, defaultMaxFills)
		wait := durationOr(h.FillQueueTimeout, defaultFillQueueTimeout)
		h.origin = newLimitedOrigin(h.origin, limit, wait, m.s3Busy.Inc)
	}
	return nil
}

// resolvedOptions holds the options that may name placeholders, such as
// {env.S3_SECRET_KEY}, resolved, with their defaults.
type resolvedOptions struct {
	origin      originConfig
	mapping     keyMapping
	prefixErr   error // why prefix is no key's prefix (see NormalizePrefix)
	root        string
	cacheDir    string
	purgeSecret string
}

func (h *Handler) resolveOptions() resolvedOptions {
	repl := caddy.NewReplacer()
	resolve := func(s string) string { return repl.ReplaceKnown(s, "") }
	bucket := resolve(h.Bucket)
	prefix, prefixErr := NormalizePrefix(resolve(h.Prefix))
	return resolvedOptions{
		origin: originConfig{
			bucket:           bucket,
			endpoint:         strings.TrimSuffix(resolve(h.Endpoint), "/"),
			region:           cmp.Or(resolve(h.Region), defaultRegion),
			pathStyle:        h.PathStyle,
			accessKey:        resolve(h.AccessKey),
			secretKey:        resolve(h.SecretKey),
			anonymous:        h.Anonymous,
			connectTimeout:   durationOr(h.ConnectTimeout, defaultConnectTimeout),
			firstByteTimeout: durationOr(h.FirstByteTimeout, defaultFirstByteTimeout),
			readTimeout:      durationOr(h.ReadTimeout, defaultReadTimeout),
		},
		mapping: keyMapping{
			bucket:      bucket,
			prefix:      prefix,
			stripPrefix: strings.TrimSuffix(resolve(h.StripPathPrefix), "/"),
		},
		prefixErr:   prefixErr,
		root:        resolve(h.Root),
		cacheDir:    resolve(h.CacheDir),
		purgeSecret: resolve(h.PurgeSecret),
	}
}

// buildFreshness fills in the cache's freshness rules from the config.
func (h *Handler) buildFreshness() error {
	p, err := h.freshnessRules()
	if err != nil {
		return err
	}
	h.fresh = p
	h.maxObjectBytes = orDefault(h.MaxObjectSize, defaultMaxObjectSize)
	h.lockTimeout = durationOr(h.LockTimeout, defaultLockTimeout)
	h.lockDisabled = !enabled(h.Lock)
	return nil
}

// freshnessRules reads valid, revalidate, ignore_headers and use_stale.
func (h *Handler) freshnessRules() (freshnessPolicy, error) {
	p := freshnessPolicy{
		validFor:   map[int]time.Duration{http.StatusOK: defaultValid200, http.StatusNotFound: defaultValid404},
		revalidate: enabled(h.Revalidate),
	}
	for code, d := range h.Valid {
		status, err := strconv.Atoi(code)
		if err != nil || (status != http.StatusOK && status != http.StatusNotModified && status != http.StatusNotFound) {
			return p, fmt.Errorf("valid: status %q cannot be cached (use 200, 304 or 404)", code)
		}
		if d < 0 {
			return p, fmt.Errorf("valid: negative duration for %s", code)
		}
		p.validFor[status] = time.Duration(d)
	}
	for _, name := range h.IgnoreHeaders {
		switch http.CanonicalHeaderKey(name) {
		case "Cache-Control":
			p.ignoreCacheCtl = true
		case "Expires":
			p.ignoreExpires = true
		default:
			return p, fmt.Errorf("ignore_headers: %q is not Cache-Control or Expires", name)
		}
	}
	words := h.UseStale
	if words == nil {
		words = []string{"error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504"}
	}
	stale, err := parseUseStale(words)
	if err != nil {
		return p, err
	}
	p.staleOn = stale
	return p, nil
}

// buildFillRules sets what the fills this handler starts need, once the
// origin is complete.
func (h *Handler) buildFillRules() {
	h.fills = &fillRules{
		origin:         h.origin,
		fresh:          &h.fresh,
		maxObjectBytes: h.maxObjectBytes,
		sliceBytes:     orDefault(h.Slice, defaultSlice),
		aheadBytes:     orDefault(h.FillAhead, defaultFillAhead),
		parallel:       orDefault(h.FillParallel, defaultFillParallel),
		lockTimeout:    h.lockTimeout,
		checkETag:      enabled(h.ETagCheck),
		logger:         h.logger,
	}
	h.spoolBudget = newSpoolBudget(spoolBudgetFor(h.MaxConcurrentFills, h.fills.sliceBytes))
	if h.MemoryCache >= 0 {
		h.memory = newMemTier(orDefault(h.MemoryCache, defaultMemoryCache))
	}
}

// spoolBudgetFor is the memory pass-through chunks may hold at once: a
// slice for each S3 request max_concurrent_fills allows.
func spoolBudgetFor(maxFills int, sliceBytes int64) int64 {
	if maxFills <= 0 {
		maxFills = defaultMaxFills
	}
	return int64(maxFills) * sliceBytes
}

// orDefault is v, or def when v is unset.
func orDefault[T int | int64](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// storeLimits is what max_size, max_entries, inactive and min_free ask of
// the store, with their defaults.
func (h *Handler) storeLimits() storeLimits {
	maxBytes := orDefault(h.MaxSize, defaultMaxSize)
	return storeLimits{
		maxBytes:     maxBytes,
		maxEntries:   orDefault(h.MaxEntries, max(minDefaultEntries, int(maxBytes/bytesPerDefaultEntry))),
		inactiveFor:  durationOr(h.Inactive, defaultInactive),
		minFreeBytes: h.MinFree,
	}
}

// openCache opens (or joins, after a reload) the store for dir. config
// identifies the config being loaded, and site this site, for the store's
// check that the sites of one config sharing it agree on its limits.
func (h *Handler) openCache(dir string, config any, site string) error {
	levels, err := parseLevels(cmp.Or(h.Levels, defaultLevels))
	if err != nil {
		return fmt.Errorf("s3_media_cache: %w", err)
	}
	limits := h.storeLimits()
	s, err := openStore(dir, levels, limits, h.logger)
	if err != nil {
		return fmt.Errorf("s3_media_cache: %w", err)
	}
	h.claim = limitsClaim{config: config, site: site, levels: levels, limits: limits}
	if err := s.claim(h.claim); err != nil {
		releaseStore(dir)
		return fmt.Errorf("s3_media_cache: %w", err)
	}
	h.store, h.storeDir = s, dir
	s.addMapping(h.mapping)
	return nil
}

// openRoot opens the local fallthrough directory. A missing directory is
// not fatal: a fresh cache node may have no local media at all, and the
// S3 path still works. Anything else that is wrong with it is.
func (h *Handler) openRoot(dir string) error {
	root, err := os.OpenRoot(dir)
	if errors.Is(err, os.ErrNotExist) {
		h.logger.Warn("root directory does not exist; every request goes to S3", zap.String("root", dir))
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3_media_cache: opening root %s: %w (check that it is a readable directory)", dir, err)
	}
	h.localRoot = root
	if dir, err := os.Open(dir); err == nil {
		h.localDir, h.localDirFD = dir, int(dir.Fd())
	}
	return nil
}

// buildHeaderPolicy reads the header options: cache_control, expires,
// cors_origin, content_security_policy, nosniff, hide_header.
func (h *Handler) buildHeaderPolicy() (headerPolicy, error) {
	p := newHeaderPolicy(h.HideHeaders)
	p.cacheControl = offOr(h.CacheControl, defaultCacheControl)
	p.corsOrigin = offOr(h.CORSOrigin, defaultCORSOrigin)
	p.csp = offOr(h.ContentSecurityPolicy, defaultCSP)
	p.nosniff = enabled(h.Nosniff)
	switch h.Expires {
	case "":
		p.expiresAfter = defaultExpires
	case off:
	default:
		d, err := caddy.ParseDuration(h.Expires)
		if err != nil || d <= 0 {
			return p, fmt.Errorf("expires: invalid duration %q (want a positive value such as 365d, or off)", h.Expires)
		}
		p.expiresAfter = d
	}
	return p, nil
}

// Cleanup releases what Provision opened.
func (h *Handler) Cleanup() error {
	if h.store != nil {
		h.store.removeMapping(h.mapping)
		h.store.unclaim(h.claim.config, h.claim.site)
		releaseStore(h.storeDir)
	}
	if h.closeOrigin != nil {
		h.closeOrigin()
	}
	if h.localDir != nil {
		h.localDir.Close()
	}
	if h.localRoot != nil {
		return h.localRoot.Close()
	}
	return nil
}
