package s3cache

import (
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

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
	// if their client leaves. Default: 8MiB.
	FillAhead int64 `json:"fill_ahead,omitempty"`

	// Most slices of one object fetched at once, so a cold object can
	// come faster than one connection to S3 carries it. Default: 8.
	FillParallel int `json:"fill_parallel,omitempty"`

	// Bytes of small bodies (up to 1MiB each, from their second hit on)
	// this site keeps in memory for hits that pass the body through the
	// process (TLS, HTTP/2, HTTP/3), so they skip the file read and its
	// checks. Bodies still being sent count too, until their responses
	// end. -1 turns it off. Default: 32MiB.
	MemoryCache int64 `json:"memory_cache,omitempty"`

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
	// errors: Validate's name the block, and those that must tell two
	// sites apart (sites sharing a cache_dir with different limits) name
	// it rather than the host, which a handler cannot see. The Caddyfile
	// adapter sets it. Default: none (errors name the bucket and the
	// listen address).
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
	memory         *memTier     // small bodies for hits that cannot use sendfile; nil when off
	spoolBudget    *spoolBudget // memory for pass-through chunks (spool.go)
	claim          limitsClaim  // what this site asked of its store
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
