// Package s3mediacache is what xcaddy builds: importing it registers the
// http.handlers.s3_media_cache module, its s3_media_cache Caddyfile
// directive, its admin API and the caddy s3-media-cache commands.
//
//	xcaddy build --with github.com/s3mediacache/caddy-s3-media-cache
package s3mediacache

import (
	// The Caddyfile directive; it imports the handler module itself.
	_ "github.com/s3mediacache/caddy-s3-media-cache/caddyfile"
	// The caddy s3-media-cache commands: stats, purge, sync, verify.
	_ "github.com/s3mediacache/caddy-s3-media-cache/cli"
	_ "github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)
