package main

import (
	"fmt"
	"io"
	"net/url"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// printTryList shows what to request and what each answer demonstrates.
func printTryList(w io.Writer, listen, caddyfilePath string, m s3test.Manifest) {
	base := "http://" + listen
	u := func(key string) string { return base + (&url.URL{Path: "/" + key}).EscapedPath() }
	// Headers only, for binary bodies that would garble the terminal.
	headers := func(extra, key string) string { return "curl -sS -D - -o /dev/null " + extra + "'" + u(key) + "'" }
	png := m.Get(s3test.KeyOriginalPNG)

	fmt.Fprintf(w, "\ncaddy serves %s with the Caddyfile %s\n\nTry:\n\n", base, caddyfilePath)
	tries := []struct{ what, cmd string }{
		{"an image from S3 (X-Cache-Status: MISS the first time)", headers("", png.Key)},
		{"the same image again, from the disk cache (X-Cache-Status: HIT)", headers("", png.Key)},
		{"HEAD: Content-Length, no body", "curl -I " + u(png.Key)},
		{"a byte range (206)", headers("-H 'Range: bytes=0-15' ", png.Key)},
		{"revalidation (304)", fmt.Sprintf("curl -i -H 'If-None-Match: %s' %s", png.ETag, u(png.Key))},
		{"a file from the local root (X-Cache-Status: BYPASS)", headers("", localKey)},
		{"a name with a space and UTF-8", headers("", s3test.KeySpaceUTF8)},
		{"30 MB streamed", "curl -s -o /dev/null -w '%{http_code} %{size_download} bytes\\n' " + u(s3test.KeyThirtyMB)},
		{"a missing object (empty 404)", "curl -i " + base + "/media_attachments/files/000/000/000/000/original/missing.png"},
		{"a traversal attempt (400)", "curl -i --path-as-is " + base + "/media_attachments/../../etc/passwd"},
		{"a write (405, Allow: GET, HEAD)", "curl -i -X DELETE " + u(png.Key)},
	}
	for _, t := range tries {
		fmt.Fprintf(w, "  # %s\n  %s\n\n", t.what, t.cmd)
	}
	fmt.Fprintln(w, "Press Ctrl-C to stop.")
}
