package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// try is one command of the try-list: printed for the user, and run as
// printed by TestDemoEveryPrintedCommandWorks, in order (a HIT needs the
// MISS before it).
type try struct {
	what string // what it shows, and what to expect
	cmd  string // a shell command, exactly as printed
	// What the answer must be besides an exit status of 0; empty or zero
	// checks nothing more. wantStatus and wantCache are read from the
	// response headers the command prints.
	wantStatus int
	wantCache  string // X-Cache-Status
	wantOutput string // a substring of the output
}

// section is a heading of the try-list and its commands.
type section struct {
	title string
	tries []try
}

// tryListParams is what the commands are made of.
type tryListParams struct {
	listen, admin string
	// caddyBin is the binary as the user named it, so that the command
	// reads as they would type it.
	caddyBin string
	// cacheBusterHeaderFile holds the "Cache-Buster-Secret: …" line: curl
	// reads it with -H @file, so the secret is never printed.
	cacheBusterHeaderFile string
	manifest              s3test.Manifest
}

// tryList returns the commands that show what the handler does, with the
// answer each must get.
func tryList(p tryListParams) []section {
	base := "http://" + p.listen
	adminBase := "http://" + p.admin
	u := func(key string) string { return base + (&url.URL{Path: "/" + key}).EscapedPath() }
	// Headers only, for binary bodies that would garble the terminal.
	headers := func(extra, key string) string {
		return "curl -sS -D - -o /dev/null " + extra + shellQuote(u(key))
	}
	png := p.manifest.Get(s3test.KeyOriginalPNG)
	pngPath := "/" + png.Key
	oddDir := "/" + s3test.KeySpaceUTF8[:strings.LastIndex(s3test.KeySpaceUTF8, "/")+1]
	cli := func(args string) string {
		cmd := shellQuote(p.caddyBin) + " s3-media-cache " + args
		if !isDefaultAdmin(p.admin) {
			cmd += " --address " + p.admin
		}
		return cmd
	}
	adminPost := func(uri, body string) string {
		return "curl -sS -X POST " + adminBase + uri + " -d " + shellQuote(body)
	}

	return []section{
		{"The cache", []try{
			{what: "an image from S3: 200, X-Cache-Status: MISS the first time", cmd: headers("", png.Key), wantStatus: 200, wantCache: "MISS"},
			{what: "the same image again, from the disk cache: X-Cache-Status: HIT", cmd: headers("", png.Key), wantStatus: 200, wantCache: "HIT"},
			{what: "HEAD: 200, Content-Length and no body, from the cache", cmd: "curl -sS -I " + shellQuote(u(png.Key)), wantStatus: 200, wantCache: "HIT"},
			{what: "a byte range: 206, from the cache", cmd: headers("-H 'Range: bytes=0-15' ", png.Key), wantStatus: 206, wantCache: "HIT"},
			{what: "revalidation with the ETag: 304", cmd: headers("-H "+shellQuote("If-None-Match: "+png.ETag)+" ", png.Key), wantStatus: 304, wantCache: "HIT"},
			{what: "a file from the local root, not S3: X-Cache-Status: BYPASS", cmd: headers("", localKey), wantStatus: 200, wantCache: "BYPASS"},
			{what: "a name with a space and UTF-8: 200, MISS", cmd: headers("", s3test.KeySpaceUTF8), wantStatus: 200, wantCache: "MISS"},
			{what: "30 MB streamed: 200 and the byte count", cmd: "curl -sS -o /dev/null -w '%{http_code} %{size_download} bytes\\n' " + shellQuote(u(s3test.KeyThirtyMB)),
				wantOutput: fmt.Sprintf("200 %d bytes", s3test.ThirtyMB)},
			{what: "a missing object: empty 404", cmd: "curl -sS -i " + base + "/media_attachments/files/000/000/000/000/original/missing.png", wantStatus: 404, wantCache: "MISS"},
			{what: "a traversal attempt: 400", cmd: "curl -sS -i --path-as-is " + base + "/media_attachments/../../etc/passwd", wantStatus: 400, wantCache: "BYPASS"},
			{what: "a write: 405, Allow: GET, HEAD", cmd: "curl -sS -i -X DELETE " + shellQuote(u(png.Key)), wantStatus: 405, wantCache: "BYPASS"},
		}},
		{"Watching it", []try{
			{what: "the cache's statistics through the admin API (JSON)", cmd: "curl -sS " + adminBase + "/s3_media_cache/stats", wantOutput: `"cache_dir"`},
			{what: "the same as a table", cmd: cli("stats"), wantOutput: "HIT RATIO"},
			{what: "the same as the admin API's JSON", cmd: cli("stats --json"), wantOutput: `"hit_ratio"`},
			{what: "Prometheus metrics: requests by X-Cache-Status", cmd: "curl -sS " + adminBase + "/metrics | grep '^caddy_s3_media_cache_requests_total'",
				wantOutput: `cache_status="HIT"`},
		}},
		{"Purging", []try{
			{what: "Mastodon's cache buster (" + purgeHeader + " read from a file, so the secret stays off the screen): 204",
				cmd: headers("-H @"+shellQuote(p.cacheBusterHeaderFile)+" ", png.Key), wantStatus: 204, wantCache: "BYPASS"},
			{what: "so the image comes from S3 again: MISS", cmd: headers("", png.Key), wantStatus: 200, wantCache: "MISS"},
			{what: `purge one path through the admin API: {"purged":1}`, cmd: adminPost("/s3_media_cache/purge", `{"path": "`+pngPath+`"}`), wantOutput: `{"purged":1}`},
			{what: "so it comes from S3 again: MISS", cmd: headers("", png.Key), wantStatus: 200, wantCache: "MISS"},
			{what: "purge one path with the command line: purged 1 entry", cmd: cli("purge --path " + shellQuote(pngPath)), wantOutput: "purged 1 entry"},
			{what: `purge a prefix through the admin API, the UTF-8 name above: {"purged":1}`, cmd: adminPost("/s3_media_cache/purge", `{"prefix": "`+oddDir+`"}`), wantOutput: `{"purged":1}`},
			{what: "purge a prefix with the command line: everything under /media_attachments/", cmd: cli("purge --prefix /media_attachments/"), wantOutput: "purged "},
		}},
	}
}

// isDefaultAdmin tells whether `caddy s3-media-cache` finds admin without
// --address: its default is Caddy's localhost:2019.
func isDefaultAdmin(admin string) bool {
	return admin == "localhost:2019" || admin == "127.0.0.1:2019"
}

// shellQuote quotes s for sh when it holds anything but plain URL and
// path characters.
func shellQuote(s string) string {
	if strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:.-_%=@,+") == "" && s != "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// printTryList shows what to run and what each answer demonstrates.
func printTryList(w io.Writer, p tryListParams, caddyfilePath, s3Endpoint string) {
	fmt.Fprintf(w, "\ncaddy serves http://%s with the Caddyfile %s\n", p.listen, caddyfilePath)
	fmt.Fprintf(w, "its admin API is on http://%s; versitygw (S3, bucket %s) on %s\n", p.admin, demoBucket, s3Endpoint)
	fmt.Fprintln(w, "all three listen on loopback only, out of the network's reach")
	if !filepath.IsAbs(p.caddyBin) {
		if dir, err := os.Getwd(); err == nil {
			fmt.Fprintf(w, "run the %s commands from %s\n", p.caddyBin, dir)
		}
	}
	fmt.Fprint(w, "\nTry, in this order:\n\n")
	for _, s := range tryList(p) {
		fmt.Fprintf(w, "%s\n\n", s.title)
		for _, t := range s.tries {
			fmt.Fprintf(w, "  # %s\n  %s\n\n", t.what, t.cmd)
		}
	}
	fmt.Fprintf(w, "Press Ctrl-C to stop (or kill %d).\n", os.Getpid())
}
