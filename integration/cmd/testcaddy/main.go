// Command testcaddy is Caddy with the standard modules and this one, the
// way `xcaddy build --with github.com/s3mediacache/caddy-s3-media-cache`
// makes it. The integration tests build it to run Caddy as a separate
// process: one they can kill -9, which the in-process Caddy of caddytest
// cannot simulate, reload through its admin API, and measure (memory,
// descriptors, goroutines) on its own.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/s3mediacache/caddy-s3-media-cache"
)

func main() {
	caddycmd.Main()
}
