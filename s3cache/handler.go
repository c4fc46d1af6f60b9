// Package s3cache is the engine and Caddy handler of caddy-s3-media-cache:
// it serves a fediverse instance's media from an S3 bucket, with a local
// directory tried first, and the header policy of Mastodon's documented
// media proxy. It knows nothing of the Caddyfile; see package caddyfile.
package s3cache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, chosen to match the nginx recipe this module replaces.
const (
	defaultRegion           = "us-east-1"
	defaultMaxSize          = 10 << 30
	defaultConnectTimeout   = 5 * time.Second  // a little under nginx's 60s: S3 either answers fast or not at all
	defaultFirstByteTimeout = 30 * time.Second // S3's own slow-request ceiling is well under this
	defaultReadTimeout      = 60 * time.Second // nginx's proxy_read_timeout
	defaultCacheControl     = "public, max-age=31536000"
	defaultExpires          = 365 * 24 * time.Hour
	defaultCORSOrigin       = "*"
	defaultCSP              = "default-src 'none'; form-action 'none'"
	defaultInactive         = 48 * time.Hour
	defaultLevels           = "1:2"
	defaultMaxObjectSize    = 1 << 30
	defaultLockTimeout      = 5 * time.Second
	defaultMaxFills         = 64
	minDefaultEntries       = 10_000
	bytesPerDefaultEntry    = 32 << 10
	defaultSlice            = 1 << 20
	defaultFillAhead        = 8 << 20
	defaultFillParallel     = 8
	defaultFillQueueTimeout = 5 * time.Second
	defaultValid200         = 48 * time.Hour
	defaultValid404         = time.Minute

	// off disables a header option.
	off = "off"
)

// Handler serves media objects: from a local directory when the file is
// there, otherwise from an S3 bucket, with response headers rewritten for
// public, long-lived, cross-origin media.
type Handler struct {
	// Name of the bucket. Required.
	Bucket string `json:"bucket,omitempty"`

	// S3 endpoint URL, such as https://s3.fr-par.scw.cloud. Default: AWS,
	// chosen by region.
	Endpoint string `json:"endpoint,omitempty"`

	// Region used to sign requests. R2 takes "auto". Default: us-east-1.
	Region string `json:"region,omitempty"`

	// Address the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key. Needed by MinIO, Garage and most self-hosted
	// servers. Default: false.
	PathStyle bool `json:"path_style,omitempty"`

	// Key prefix inside the bucket, such as "mastodon". Default: none.
	Prefix string `json:"prefix,omitempty"`

	// URL path prefix removed before the key is built, such as "/system"
	// when media is served under the main domain. Requests outside it get
	// 404. Default: none.
	StripPathPrefix string `json:"strip_path_prefix,omitempty"`

	// Access key ID. Placeholders such as {env.S3_ACCESS_KEY} are
	// resolved. When both keys are empty and Anonymous is false, the AWS
	// default credential chain is used (environment, shared files, IAM).
	AccessKey string `json:"access_key,omitempty"`

	// Secret access key. Placeholders are resolved; it is never logged.
	SecretKey string `json:"secret_key,omitempty"`

	// Send unsigned requests, for a public-read bucket. Default: false.
	Anonymous bool `json:"anonymous,omitempty"`

	// Local directory tried before S3, like the recipe's
	// "try_files $uri @s3". A regular file under it is served directly;
	// symlinks leading outside it are not followed. Default: none.
	Root string `json:"root,omitempty"`

	// Directory of the disk cache, like nginx's proxy_cache_path. Sites
	// naming the same directory share one cache, and it survives reloads
	// and restarts. Default: none (no cache: every request goes to S3).
	CacheDir string `json:"cache_dir,omitempty"`

	// Upper bound of the disk cache, in bytes, fills in flight included;
	// least-recently-used entries are evicted to stay under it.
	// Default: 10GiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// Most entries the in-memory index holds, like the number of keys
	// nginx's keys_zone has room for; past it the least recently used
	// are evicted. An entry takes about 900 bytes of memory. Negative
	// answers (404s) are kept in memory only, about 230 bytes each, at
	// most a quarter of it, and evicted first. Default: one per 32KiB of
	// max_size (327680 for 10GiB), at least 10000.
	MaxEntries int `json:"max_entries,omitempty"`

	// Entries unused for this long are evicted, whatever their
	// freshness. Default: 48h (the recipe's inactive=48h).
	Inactive caddy.Duration `json:"inactive,omitempty"`

	// Keep at least this many bytes free on the cache's filesystem,
	// evicting entries if needed. Default: 0 (off).
	MinFree int64 `json:"min_free,omitempty"`

	// Directory levels of the cache, nginx's syntax. Default: "1:2".
	Levels string `json:"levels,omitempty"`

	// Objects larger than this are streamed from S3 without being
	// stored. Default: 1GiB.
	MaxObjectSize int64 `json:"max_object_size,omitempty"`

	// Whether concurrent requests for an object that is being fetched
	// share the one fetch (nginx's proxy_cache_lock). false lets each go
	// to S3 on its own. Default: true.
	Lock *bool `json:"lock,omitempty"`

	// How long a request waits for a slice that another request is
	// fetching, counted from the last byte that fetch received, before
	// it reads from S3 itself, uncached (nginx's proxy_cache_lock_timeout,
	// but a slow first byte from S3 does not count: it is waited for, up
	// to first_byte_timeout). Default: 5s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`

	// Size of the slices an object is fetched and stored in, like
	// nginx's slice directive: each is one ranged GET, fetched when a
	// client needs it. A multiple of 64KiB, at most 64MiB.
	// Default: 1MiB.
	Slice int64 `json:"slice,omitempty"`

	// How far ahead of each reader slices are fetched, at most (a reader
	// earns it by reading: a slow or departed one costs one slice);
	// objects of at most this size are fetched whole once started, even
	// if their client leaves. Default: 4MiB.
	FillAhead int64 `json:"fill_ahead,omitempty"`

	// Most slices of one object fetched at once, so a cold object can
	// come faster than one connection to S3 carries it. Default: 4.
	FillParallel int `json:"fill_parallel,omitempty"`

	// Most S3 requests this handler has in flight at once: fills,
	// pass-throughs and revalidations, each counted until its body is
	// read. It bounds what a scan of distinct cold keys can cost. -1
	// removes the bound. Default: 64.
	MaxConcurrentFills int `json:"max_concurrent_fills,omitempty"`

	// Whether whole-object bodies are checked against their ETag: a body
	// whose ETag is its MD5 (one-part uploads without KMS or customer-key
	// encryption) is checked as it streams, and one that does not match is
	// neither stored nor completed to the client. Turn it off only for a
	// store whose plain 32-hex-digit ETags are not MD5s. Default: true.
	ETagCheck *bool `json:"etag_check,omitempty"`

	// How long a request that needs S3 waits for a free slot when
	// max_concurrent_fills are in flight, before it gets a stale copy
	// (use_stale timeout) or a 503 with Retry-After. Default: 5s.
	FillQueueTimeout caddy.Duration `json:"fill_queue_timeout,omitempty"`

	// How long responses stay fresh, by status ("200", "304" for a
	// revalidated entry, "404"), when S3 sends no Cache-Control or
	// Expires. 0 disables caching of that status. Default: 200 for 48h,
	// 404 for 1m.
	Valid map[string]caddy.Duration `json:"valid,omitempty"`

	// Whether expired entries are revalidated with conditional requests
	// (nginx's proxy_cache_revalidate); false downloads them again.
	// Default: true.
	Revalidate *bool `json:"revalidate,omitempty"`

	// When an expired entry may be served: nginx's proxy_cache_use_stale
	// words (error, timeout, updating, http_500, http_502, http_503,
	// http_504, http_403, http_404, http_429), or ["off"].
	// Default: error timeout updating http_500 http_502 http_503 http_504.
	UseStale []string `json:"use_stale,omitempty"`

	// Upstream headers not to take freshness from: "Cache-Control",
	// "Expires" (nginx's proxy_ignore_headers). Default: none.
	IgnoreHeaders []string `json:"ignore_headers,omitempty"`

	// Time allowed to connect to S3, TLS included. Default: 5s.
	ConnectTimeout caddy.Duration `json:"connect_timeout,omitempty"`

	// Time allowed between sending a request and S3's response headers.
	// Default: 30s.
	FirstByteTimeout caddy.Duration `json:"first_byte_timeout,omitempty"`

	// Longest pause allowed between two reads of a response body, like
	// nginx's proxy_read_timeout. Default: 60s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// Cache-Control sent with 2xx and 3xx responses. "off" sends none.
	// Default: "public, max-age=31536000".
	CacheControl string `json:"cache_control,omitempty"`

	// How far ahead Expires is set on 2xx and 3xx responses, as a
	// duration ("365d"), or "off". Default: 365d.
	Expires string `json:"expires,omitempty"`

	// Access-Control-Allow-Origin sent with 2xx and 3xx responses. "off"
	// sends none. Default: "*".
	CORSOrigin string `json:"cors_origin,omitempty"`

	// Content-Security-Policy sent with 2xx and 3xx responses. "off"
	// sends none. Default: "default-src 'none'; form-action 'none'".
	ContentSecurityPolicy string `json:"content_security_policy,omitempty"`

	// Whether "X-Content-Type-Options: nosniff" is sent. Default: true.
	Nosniff *bool `json:"nosniff,omitempty"`

	// Response headers to drop in addition to everything S3 sends that
	// is not media metadata, like nginx's proxy_hide_header.
	HideHeaders []string `json:"hide_header,omitempty"`

	// Request header of Mastodon's cache buster
	// (CACHE_BUSTER_SECRET_HEADER). A request carrying it with
	// PurgeSecret, by PurgeMethod, removes the object from the cache
	// and is answered 204 with no body. Default: none (no purging by
	// request).
	PurgeHeader string `json:"purge_header,omitempty"`

	// The cache buster's secret (CACHE_BUSTER_SECRET). Placeholders are
	// resolved; it is compared in constant time and never logged.
	PurgeSecret string `json:"purge_secret,omitempty"`

	// Method of purge requests (CACHE_BUSTER_HTTP_METHOD). Default: GET.
	PurgeMethod string `json:"purge_method,omitempty"`

	// Where this handler was configured, such as "Caddyfile:12", for
	// errors that must tell two sites apart (sites sharing a cache_dir
	// with different limits): sites on one port differ only by host,
	// which a handler cannot see. The Caddyfile adapter sets it.
	// Default: none (the error names the bucket and the listen address).
	Site string `json:"site,omitempty"`

	mapping     keyMapping // URL paths to object keys and cache keys
	originCfg   originConfig
	origin      origin
	closeOrigin func()
	localRoot   *os.Root
	localDir    *os.File // the same directory, for nothingAt
	localDirFD  int
	policy      headerPolicy
	logger      *zap.Logger

	purgeHeader    string
	purgeSecretSum [32]byte // SHA-256 of the secret: equal-length constant-time compare
	purgeMethod    string
	wrongPurges    *logLimiter

	metrics        *metrics // nil in unit tests
	store          *store   // nil without cache_dir
	storeDir       string
	fresh          freshnessPolicy
	maxObjectBytes int64
	lockTimeout    time.Duration
	lockDisabled   bool
	fills          *fillRules   // for the fills this handler starts
	spoolBudget    *spoolBudget // memory for pass-through chunks (spool.go)
	claim          limitsClaim  // what this site asked of its store
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.s3_media_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

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
	case h.ConnectTimeout < 0 || h.FirstByteTimeout < 0 || h.ReadTimeout < 0 || h.FillQueueTimeout < 0:
		return errors.New("timeouts must not be negative")
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
	}
	return nil
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

// ServeHTTP answers a media request, or a cache-buster purge, and accounts
// for it: metrics, and the {http.s3_media_cache.status} placeholder for
// access logs.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	purge := h.takePurgeSecret(r)
	var err error
	if purge.present && h.isPurge(r, purge) {
		err = h.servePurge(w, r) // counted as a purge, not a media request
	} else {
		err = h.serveMedia(w, r)
	}
	if purge.present && err != nil {
		// Caddy logs a handler's error with the request's headers, as
		// it cloned them before any handler ran: the error's status is
		// written here instead.
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			w.WriteHeader(he.StatusCode)
			err = nil
		}
	}
	return err
}

// serveMedia answers a media request and counts it.
func (h *Handler) serveMedia(w http.ResponseWriter, r *http.Request) error {
	err := h.serve(w, r)
	status := cacheStatusOf(r)
	h.metrics.countRequest(status)
	if h.store != nil {
		h.store.countRequest(status)
		if err != nil { // errors.As would cost a hit an allocation
			var oe *originError
			if errors.As(err, &oe) && oe.status != http.StatusNotFound {
				h.store.s3Errors.Add(1)
			}
		}
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.s3_media_cache.status", boxedStatus(status))
	}
	return err
}

// serve answers a media request. It reads top to bottom: purge, method
// check, path check, local file, then the cache or S3.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.decorate(w, r, http.StatusMethodNotAllowed, cacheBypass, time.Now())
		return caddyhttp.Error(http.StatusMethodNotAllowed, errMethodNotAllowed)
	}

	rel, err := objectPath(r.URL, h.mapping.stripPrefix)
	if err != nil {
		return h.pathFailure(w, r, err)
	}

	if h.localRoot != nil && h.serveLocal(w, r, rel) {
		return nil
	}

	key, err := h.mapping.objectKey(rel)
	if err != nil {
		return h.pathFailure(w, r, err)
	}
	if h.store == nil {
		return h.serveFromOrigin(w, r, key, cacheMiss)
	}
	return h.serveCached(w, r, key)
}

// pathFailure answers a path that names no object: 400 for a malformed
// one, 404 for one that cannot name an object (a directory, a key longer
// than S3 allows), without asking S3.
func (h *Handler) pathFailure(w http.ResponseWriter, r *http.Request, err error) error {
	status := statusForPathError(err)
	h.decorate(w, r, status, cacheBypass, time.Now())
	return caddyhttp.Error(status, err)
}

var errMethodNotAllowed = errors.New("method not allowed: media is read-only")

// purgeAttempt is what a request carried of the cache buster's header:
// whether it was there, and the SHA-256 of its value (the value itself is
// not kept).
type purgeAttempt struct {
	present bool
	sum     [32]byte
}

// takePurgeSecret takes the cache buster's header off r, keeping only a
// digest of its value, and keeps the request out of Caddy's access log
// (the log_skip variable): Caddy clones a request's headers for its logs
// before any handler runs, so taking the header off is not enough, and an
// access log line would hold the secret, or a guess at it. The handler
// logs purges itself, without the value (see isPurge and servePurge).
func (h *Handler) takePurgeSecret(r *http.Request) purgeAttempt {
	if h.purgeHeader == "" {
		return purgeAttempt{}
	}
	v, ok := r.Header[h.purgeHeader]
	if !ok {
		return purgeAttempt{}
	}
	delete(r.Header, h.purgeHeader)
	caddyhttp.SetVar(r.Context(), caddyhttp.LogSkipVar, true)
	return purgeAttempt{present: true, sum: sha256.Sum256([]byte(strings.Join(v, ",")))}
}

// wrongPurgeLogEvery is how often at most a wrong cache-buster secret is
// logged: a flood of guesses must not become a flood of log lines.
const wrongPurgeLogEvery = 10 * time.Second

// isPurge reports whether r, which carried the cache buster's header, is a
// purge with the right secret and method. One with the wrong secret is
// logged (at most once per wrongPurgeLogEvery, with the count of the others)
// and then served as an ordinary request, as Mastodon's media would be.
func (h *Handler) isPurge(r *http.Request, purge purgeAttempt) bool {
	if subtle.ConstantTimeCompare(purge.sum[:], h.purgeSecretSum[:]) == 1 && r.Method == h.purgeMethod {
		return true
	}
	if ok, held := h.wrongPurges.allow(time.Now(), wrongPurgeLogEvery); ok {
		h.logger.Warn("cache purge request with a wrong secret or method; serving it as an ordinary request",
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("remote_addr", r.RemoteAddr),
			zap.Int("more_since_last_warning", held))
	}
	return false
}

// servePurge removes the requested object from the cache, and any fill
// of it in flight, and answers 204 without a body. Local files under root
// are not touched: they are Mastodon's own.
func (h *Handler) servePurge(w http.ResponseWriter, r *http.Request) error {
	key, ckey, err := h.mapping.keys(rawPath(r.URL))
	if err != nil {
		return h.pathFailure(w, r, err)
	}
	removed := false
	if h.store != nil {
		h.store.purgeRequests.Add(1)
		removed = h.store.purge(ckey)
		h.logger.Info("purged by cache buster", zap.String("key", key), zap.Bool("was_cached", removed))
	}
	h.metrics.countPurge(removed)
	h.decorate(w, r, http.StatusNoContent, cacheBypass, time.Now())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// serveLocal serves rel from the local root if it is a regular file there,
// and reports whether it did. http.ServeContent answers Range (single and
// multipart), If-None-Match, If-Modified-Since, If-Match, If-Range and
// HEAD, as nginx's static module does.
func (h *Handler) serveLocal(w http.ResponseWriter, r *http.Request, rel string) bool {
	if h.localDir != nil && nothingAt(h.localDirFD, rel) {
		return false
	}
	info, err := h.localRoot.Stat(rel)
	if err != nil || !info.Mode().IsRegular() {
		// Missing, a directory, a device, or a symlink leading outside
		// root (os.Root refuses those): the object is S3's business.
		return false
	}
	f, err := h.localRoot.Open(rel)
	if err != nil {
		h.logger.Debug("local file not readable; trying S3", zap.String("path", rel), zap.Error(err))
		return false
	}
	defer f.Close()

	if h.policy.keeps("ETag") {
		w.Header().Set("ETag", localETag(info.ModTime(), info.Size()))
	}
	setCacheStatus(r, cacheBypass)
	pw := &policyWriter{ResponseWriter: w, policy: &h.policy, cacheStatus: cacheBypass, now: time.Now()}
	http.ServeContent(pw, r, info.Name(), info.ModTime(), f)
	return true
}

// serveFromOrigin streams the object from S3 to the client without
// storing it: when there is no cache, or this request cannot use it. A GET
// of the whole object, or of a range from a given byte, asks S3 for its
// first chunk only and the rest chunk by chunk (spool.go), so memory stays
// flat whatever the object's size and the client's pace holds no S3
// request: the client is answered as if S3 had sent it all at once.
func (h *Handler) serveFromOrigin(w http.ResponseWriter, r *http.Request, key, cacheStatus string) error {
	req := clientOriginRequest(r, key)
	asked, chunked := req.rangeSpec, false
	if h.spoolBudget != nil && r.Method == http.MethodGet {
		req.rangeSpec, chunked = firstChunk(req.rangeSpec, h.fills.sliceBytes)
	}
	resp, err := h.origin.fetch(r.Context(), req)
	if err == nil && chunked && resp.status == http.StatusRequestedRangeNotSatisfiable && asked == "" {
		// An empty object refuses any range: ask for it whole.
		req.rangeSpec = ""
		resp, err = h.origin.fetch(r.Context(), req)
	}
	if err != nil {
		return h.originFailure(w, r, err, cacheStatus)
	}
	defer func() {
		if resp.body != nil {
			resp.body.Close() // the spooled body, once spool has wrapped it
		}
	}()
	if chunked && resp.status == http.StatusPartialContent {
		first, last, _, ok := parseContentRange(resp.header.Get("Content-Range"))
		if !ok || resp.header.Get("Content-Length") != strconv.FormatInt(last-first+1, 10) {
			// S3's Content-Length and Content-Range disagree: which
			// one frames the body cannot be known.
			return h.originFailure(w, r, &originError{status: http.StatusBadGateway, op: req.op(), reason: "S3's Content-Length and Content-Range disagree"}, cacheStatus)
		}
		widen(resp, asked)
	}
	return h.respondOrigin(w, r, key, cacheStatus, resp)
}

// firstChunk is the Range that asks S3 for the first chunk of what the
// client asked: the start of the object for a plain GET, or of a range
// with a first byte (a suffix range goes as it is). It reports whether it
// changed anything.
func firstChunk(asked string, chunk int64) (string, bool) {
	if asked == "" {
		return rangeSpec(0, chunk), true
	}
	spec, _ := strings.CutPrefix(asked, "bytes=")
	first, last, _ := strings.Cut(spec, "-")
	from, err := parseDigits(first)
	if err != nil {
		return asked, false // a suffix range
	}
	to := from + chunk - 1
	if last != "" {
		end, err := parseDigits(last)
		if err != nil {
			return asked, false
		}
		to = min(to, end)
	}
	return "bytes=" + strconv.FormatInt(from, 10) + "-" + strconv.FormatInt(to, 10), true
}

// widen turns S3's answer for the first chunk into the answer to what the
// client asked (asked, its Range or none): 200 with the whole object's
// length, or 206 with the client's range, clipped to the object.
func widen(resp *originResponse, asked string) {
	first, _, total, ok := parseContentRange(resp.header.Get("Content-Range"))
	if !ok || total < 0 {
		return
	}
	if asked == "" {
		resp.status = http.StatusOK
		resp.header.Del("Content-Range")
		resp.header.Set("Content-Length", strconv.FormatInt(total, 10))
		return
	}
	end := total - 1
	spec, _ := strings.CutPrefix(asked, "bytes=")
	if _, last, _ := strings.Cut(spec, "-"); last != "" {
		if n, err := parseDigits(last); err == nil {
			end = min(end, n)
		}
	}
	resp.header.Set("Content-Range", byteRange{first, end - first + 1}.contentRange(total))
	resp.header.Set("Content-Length", strconv.FormatInt(end-first+1, 10))
}

// respondOrigin relays an S3 response through the header policy.
func (h *Handler) respondOrigin(w http.ResponseWriter, r *http.Request, key, cacheStatus string, resp *originResponse) error {
	hdr := w.Header()
	h.policy.copyUpstream(hdr, resp.header)
	if resp.status == http.StatusOK || resp.status == http.StatusPartialContent {
		// Validators S3 was not sent (a list too long to forward, see
		// forwardableValidators) are evaluated here; for those it was
		// sent, S3 already did and this finds nothing to add.
		if status := preconditionStatus(r, resp.header.Get("Etag"), resp.header.Get("Last-Modified")); status != 0 {
			h.writeBodiless(w, r, status, cacheStatus, time.Now())
			return nil
		}
	}
	h.decorate(w, r, resp.status, cacheStatus, time.Now())
	w.WriteHeader(resp.status)
	if resp.body == nil || r.Method == http.MethodHead {
		return nil
	}
	h.spool(r.Context(), resp, key)
	h.copyOrAbort(w, resp.body, key, cacheStatus)
	return nil
}

// clientOriginRequest forwards the client's range and validators to S3.
// A Range made conditional by If-Range is dropped rather than forwarded
// unconditionally: S3 has no If-Range, and a full 200 is always a correct
// answer to one (RFC 9110, section 13.1.5).
func clientOriginRequest(r *http.Request, key string) originRequest {
	req := originRequest{
		key:         key,
		head:        r.Method == http.MethodHead,
		rangeSpec:   forwardableRange(r.Header.Get("Range")),
		ifNoneMatch: forwardableValidators(r.Header.Get("If-None-Match")),
		ifMatch:     forwardableValidators(r.Header.Get("If-Match")),
	}
	if r.Header.Get("If-Range") != "" {
		req.rangeSpec = ""
	}
	// If-Modified-Since is ignored when If-None-Match is present
	// (RFC 9110, section 13.1.3); S3 would apply both.
	if req.ifNoneMatch == "" {
		req.ifModifiedSince = parseHTTPDate(r.Header.Get("If-Modified-Since"))
	}
	if req.ifMatch == "" {
		req.ifUnmodifiedSince = parseHTTPDate(r.Header.Get("If-Unmodified-Since"))
	}
	return req
}

// maxForwardedValidators bounds an If-None-Match or If-Match list sent
// to S3. A browser sends one ETag; a list long enough to push S3's request
// headers over its limit would turn the client's request into S3's 400,
// which the client would see as a 502.
const maxForwardedValidators = 1024

// forwardableRange is the client's Range if it is one well-formed byte
// range, which S3 answers; anything else (several ranges, which S3 ignores
// anyway, other units, garbage) is dropped, and the whole object is sent,
// as RFC 9110 allows a server to do with a Range it does not honour.
func forwardableRange(v string) string {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return ""
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok || (first == "" && last == "") || len(first) > 19 || len(last) > 19 ||
		strings.Trim(first, "0123456789") != "" || strings.Trim(last, "0123456789") != "" {
		return ""
	}
	return v
}

// forwardableValidators drops an ETag list too long to forward; S3 then
// sends the object, and respondOrigin evaluates the list itself.
func forwardableValidators(v string) string {
	if len(v) > maxForwardedValidators {
		return ""
	}
	return v
}

func parseHTTPDate(v string) time.Time {
	if v == "" {
		return time.Time{}
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return time.Time{} // an invalid date is ignored, as RFC 9110 says
	}
	return t
}

// readErrorRecorder remembers a read error so a failed copy can be blamed
// on the right side: S3 (abort the client) or the client (just stop).
type readErrorRecorder struct {
	r   io.Reader
	err error
}

func (rr *readErrorRecorder) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && err != io.EOF {
		rr.err = err
	}
	return n, err
}

// bodyFailureReason describes a body read error without its text, which
// may carry the endpoint address.
func bodyFailureReason(err error) string {
	switch {
	case errors.Is(err, errCorruptEntry):
		return "cache entry failed its checksum; entry removed"
	case errors.Is(err, errETagMismatch):
		return "S3's body does not match its ETag (MD5); not stored (etag_check off if this store's ETags are not MD5s)"
	case isTimeout(err), errors.Is(err, context.Canceled):
		return "stalled past read_timeout, or canceled"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before the end of the object"
	default:
		return transportReason(err)
	}
}

func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// enabled reads an on|off option, on unless set to false.
func enabled(option *bool) bool {
	return option == nil || *option
}

// offOr returns def for an unset option, "" for "off", else the value.
func offOr(v, def string) string {
	switch v {
	case "":
		return def
	case off:
		return ""
	}
	return v
}

// logLimiter lets a log line through at most once per interval, and
// counts the ones it held back for the next to report.
type logLimiter struct {
	mu   sync.Mutex
	next time.Time
	held int
}

func (l *logLimiter) allow(now time.Time, every time.Duration) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	l.next, held, l.held = now.Add(every), l.held, 0
	return true, held
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
