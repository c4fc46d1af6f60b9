// Package caddyfile adds the s3_media_cache directive to the Caddyfile. It
// only parses: it turns each option's words into the handler's JSON
// fields, and refuses what cannot be turned (a wrong number of values, an
// unknown option, a size or a duration that does not read as one), with
// its line. Every check of a value, and every default, lives in package
// s3cache, so JSON configs get the same behaviour.
package caddyfile

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("s3_media_cache", parseDirective)
	// Before file_server, so a site can serve its own static files
	// under other matchers and hand the media paths to us; after the
	// header and encode directives, so those still wrap our responses.
	httpcaddyfile.RegisterDirectiveOrder("s3_media_cache", httpcaddyfile.Before, "file_server")
}

func parseDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(s3cache.Handler)
	if err := Unmarshal(h.Dispenser, handler); err != nil {
		return nil, err
	}
	return handler, nil
}

// Unmarshal fills handler from an s3_media_cache block:
//
//	s3_media_cache [<matcher>] {
//		bucket <name>
//		endpoint <url>
//		region <region>
//		path_style
//		prefix <key prefix>
//		strip_path_prefix <url path prefix>
//		access_key <id>
//		secret_key <secret>
//		anonymous
//		root <dir>
//		cache_dir <dir>
//		max_size <size>
//		connect_timeout <duration>
//		first_byte_timeout <duration>
//		read_timeout <duration>
//		cache_control <value>|off
//		expires <duration>|off
//		cors_origin <value>|off
//		content_security_policy <value>|off
//		nosniff on|off
//		hide_header <name>...
//		max_entries <n>
//		inactive <duration>
//		min_free <size>
//		levels <1|2>[:<1|2>[:<1|2>]]
//		max_object_size <size>
//		lock on|off
//		lock_timeout <duration>
//		slice <size>
//		fill_ahead <size>
//		fill_parallel <n>
//		memory_cache <size>|off
//		max_concurrent_fills <n>|off
//		fill_queue_timeout <duration>
//		etag_check on|off
//		valid [<status>...] <duration>|off
//		revalidate on|off
//		use_stale <condition>...|off
//		ignore_headers Cache-Control|Expires...
//		purge_header <name> <secret>
//		purge_method <method>
//	}
//
// The matcher, if any, has already been consumed by the Helper.
func Unmarshal(d *caddyfile.Dispenser, h *s3cache.Handler) error {
	d.Next() // the directive's name
	h.Site = fmt.Sprintf("%s:%d", d.File(), d.Line())
	if d.NextArg() {
		return d.Errf("s3_media_cache takes no arguments on its first line, only a block of options")
	}
	given := make(map[string]bool)
	for d.NextBlock(0) {
		option := d.Val()
		if given[option] && option != "hide_header" && option != "valid" {
			return d.Errf("s3_media_cache: %s is given twice", option)
		}
		given[option] = true

		var err error
		switch option {
		case "bucket":
			h.Bucket, err = oneArg(d)
		case "endpoint":
			h.Endpoint, err = oneArg(d)
		case "region":
			h.Region, err = oneArg(d)
		case "path_style":
			err = flag(d, &h.PathStyle)
		case "prefix":
			h.Prefix, err = oneArg(d)
		case "strip_path_prefix":
			h.StripPathPrefix, err = oneArg(d)
		case "access_key":
			h.AccessKey, err = oneArg(d)
		case "secret_key":
			h.SecretKey, err = oneArg(d)
		case "anonymous":
			err = flag(d, &h.Anonymous)
		case "root":
			h.Root, err = oneArg(d)
		case "cache_dir":
			h.CacheDir, err = oneArg(d)
		case "max_size":
			h.MaxSize, err = sizeArg(d)
		case "connect_timeout":
			h.ConnectTimeout, err = durationArg(d)
		case "first_byte_timeout":
			h.FirstByteTimeout, err = durationArg(d)
		case "read_timeout":
			h.ReadTimeout, err = durationArg(d)
		case "cache_control":
			h.CacheControl, err = oneArg(d)
		case "expires":
			h.Expires, err = oneArg(d)
		case "cors_origin":
			h.CORSOrigin, err = oneArg(d)
		case "content_security_policy":
			h.ContentSecurityPolicy, err = oneArg(d)
		case "nosniff":
			h.Nosniff, err = onOffArg(d)
		case "max_entries":
			h.MaxEntries, err = countArg(d)
		case "inactive":
			h.Inactive, err = durationArg(d)
		case "min_free":
			h.MinFree, err = sizeArg(d)
		case "levels":
			h.Levels, err = oneArg(d)
		case "max_object_size":
			h.MaxObjectSize, err = sizeArg(d)
		case "lock":
			h.Lock, err = onOffArg(d)
		case "lock_timeout":
			h.LockTimeout, err = durationArg(d)
		case "slice":
			h.Slice, err = sizeArg(d)
		case "fill_ahead":
			h.FillAhead, err = sizeArg(d)
		case "fill_parallel":
			h.FillParallel, err = countArg(d)
		case "memory_cache":
			h.MemoryCache, err = sizeOrOffArg(d)
		case "max_concurrent_fills":
			h.MaxConcurrentFills, err = fillLimitArg(d)
		case "fill_queue_timeout":
			h.FillQueueTimeout, err = durationArg(d)
		case "etag_check":
			h.ETagCheck, err = onOffArg(d)
		case "revalidate":
			h.Revalidate, err = onOffArg(d)
		case "valid":
			err = validArg(d, h)
		case "use_stale":
			h.UseStale = d.RemainingArgs()
			if len(h.UseStale) == 0 {
				return d.Errf("s3_media_cache: use_stale needs conditions (error timeout updating http_500 http_502 http_503 http_504) or off")
			}
		case "ignore_headers":
			h.IgnoreHeaders = d.RemainingArgs()
			if len(h.IgnoreHeaders) == 0 {
				return d.Errf("s3_media_cache: ignore_headers needs Cache-Control, Expires or both")
			}
		case "purge_header":
			args := d.RemainingArgs()
			if len(args) != 2 || args[0] == "" || args[1] == "" {
				return d.Errf("s3_media_cache: purge_header takes a header name and a secret, as in: purge_header Secret-Header {env.CACHE_BUSTER_SECRET}")
			}
			h.PurgeHeader, h.PurgeSecret = args[0], args[1]
		case "purge_method":
			h.PurgeMethod, err = oneArg(d)
		case "hide_header":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.Errf("s3_media_cache: hide_header needs at least one header name")
			}
			h.HideHeaders = append(h.HideHeaders, names...)
		default:
			return d.Errf("s3_media_cache: unrecognized option %q", option)
		}
		if err != nil {
			return err
		}
		if d.NextBlock(1) {
			return d.Errf("s3_media_cache: %s does not take a block", option)
		}
	}
	return nil
}

// oneArg reads exactly one argument for the current option.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	option := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("s3_media_cache: %s takes exactly one value, got %d", option, len(args))
	}
	if args[0] == "" {
		return "", d.Errf("s3_media_cache: %s must not be empty", option)
	}
	return args[0], nil
}

// flag reads an option that takes no argument.
func flag(d *caddyfile.Dispenser, dst *bool) error {
	option := d.Val()
	if d.NextArg() {
		return d.Errf("s3_media_cache: %s takes no value (remove %q)", option, d.Val())
	}
	*dst = true
	return nil
}

// onOffArg reads an on|off option, whose JSON field is unset for the
// default.
func onOffArg(d *caddyfile.Dispenser) (*bool, error) {
	option := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return nil, err
	}
	switch v {
	case "on":
		return new(true), nil
	case "off":
		return new(false), nil
	}
	return nil, d.Errf("s3_media_cache: %s: want on or off, got %q", option, v)
}

// sizeOrOffArg reads a positive size, or off (-1 in JSON, where 0 means
// the default).
func sizeOrOffArg(d *caddyfile.Dispenser) (int64, error) {
	option := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	if v == "off" {
		return -1, nil
	}
	n, err := parseSize(v)
	if err != nil || n <= 0 {
		return 0, d.Errf("s3_media_cache: %s: invalid value %q (want a size such as 32MiB, or off)", option, v)
	}
	return n, nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	option := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, d.Errf("s3_media_cache: %s: %v", option, err)
	}
	return n, nil
}

// fillLimitArg reads max_concurrent_fills: a positive count, or off (-1 in
// JSON, where 0 means the default).
func fillLimitArg(d *caddyfile.Dispenser) (int, error) {
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	if v == "off" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, d.Errf("s3_media_cache: max_concurrent_fills: invalid value %q (want a positive number of S3 requests, such as 64, or off)", v)
	}
	return n, nil
}

// countArg reads a count. The Caddyfile writes counts and durations as
// positive values: in JSON, zero means the option's default and -1 its
// "off", which the Caddyfile spells by leaving the option out or writing
// off.
func countArg(d *caddyfile.Dispenser) (int, error) {
	option := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, d.Errf("s3_media_cache: %s: invalid value %q (want a positive whole number)", option, v)
	}
	return n, nil
}

// durationArg reads a positive duration (see countArg).
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	option := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("s3_media_cache: %s: invalid duration %q (want a positive value such as 5s, 2m or 1h)", option, v)
	}
	return caddy.Duration(dur), nil
}

// validArg reads nginx's proxy_cache_valid form: "valid 200 304 48h",
// "valid 404 1m", "valid 404 off". Without statuses it applies to 200,
// as in nginx.
func validArg(d *caddyfile.Dispenser, h *s3cache.Handler) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("s3_media_cache: valid needs a duration, as in: valid 200 48h")
	}
	last := args[len(args)-1]
	var dur caddy.Duration
	if last != "off" {
		parsed, err := caddy.ParseDuration(last)
		if err != nil || parsed <= 0 {
			return d.Errf("s3_media_cache: valid: invalid duration %q (want a positive value such as 48h, or off)", last)
		}
		dur = caddy.Duration(parsed)
	}
	codes := args[:len(args)-1]
	if len(codes) == 0 {
		codes = []string{"200"}
	}
	if h.Valid == nil {
		h.Valid = make(map[string]caddy.Duration)
	}
	for _, code := range codes {
		h.Valid[code] = dur
	}
	return nil
}
