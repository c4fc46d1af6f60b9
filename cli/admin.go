package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// adminTimeout bounds one admin API request: the endpoint is local and
// answers from memory, so anything slower is a Caddy to look at.
const adminTimeout = 30 * time.Second

// AdminFlags locate Caddy's admin endpoint.
type AdminFlags struct {
	// Address is the admin endpoint, as in the admin global option:
	// host:port or unix//path. Default: localhost:2019.
	Address string
}

// StatsFlags are the stats command's.
type StatsFlags struct {
	AdminFlags
	// JSON prints the admin API's answer as it is.
	JSON bool
}

// PurgeFlags are the purge command's: one of Path and Prefix.
type PurgeFlags struct {
	AdminFlags
	// Path is a media URL path to purge, as clients request it.
	Path string
	// Prefix purges every entry under a URL path prefix.
	Prefix string
}

func (f AdminFlags) address() string {
	if f.Address == "" {
		return caddy.DefaultAdminListen
	}
	return f.Address
}

// Stats prints every cache's statistics from the admin API's
// /s3_media_cache/stats: a table, or the JSON with f.JSON.
func Stats(ctx context.Context, f StatsFlags, out io.Writer) error {
	body, err := adminRequest(ctx, f.address(), http.MethodGet, "/s3_media_cache/stats", nil)
	if err != nil {
		return err
	}
	if f.JSON {
		_, err := out.Write(body)
		return err
	}
	var stats []s3cache.StoreStats
	if err := json.Unmarshal(body, &stats); err != nil {
		return fmt.Errorf("reading the stats from %s: %w", f.address(), err)
	}
	if len(stats) == 0 {
		fmt.Fprintln(out, "no s3_media_cache with a cache_dir is running in this Caddy")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CACHE DIR\tENTRIES\tSIZE\tMAX SIZE\tHIT RATIO\tREQUESTS\tFILLS\tWAITERS\tS3 ERRORS\tEVICTIONS\tPURGES\tCORRUPT")
	for _, s := range stats {
		entries := fmt.Sprint(s.Entries)
		if !s.Loaded {
			entries += " (loading)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f%%\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n",
			printable(s.CacheDir), entries, formatBytes(s.Bytes), formatBytes(s.MaxBytes), 100*s.HitRatio,
			s.Requests, s.FillsInFlight, s.FillWaiters, s.S3Errors, s.Evictions, s.Purges, s.CorruptRemoved)
	}
	return tw.Flush()
}

// Purge asks the admin API to drop one path's entry, or every entry
// under a prefix, and prints how many went. It returns that number.
func Purge(ctx context.Context, f PurgeFlags, out io.Writer) (int, error) {
	if (f.Path == "") == (f.Prefix == "") {
		return 0, usagef("give exactly one of --path and --prefix")
	}
	for name, value := range map[string]string{"--path": f.Path, "--prefix": f.Prefix} {
		if value != "" && !strings.HasPrefix(value, "/") {
			return 0, usagef("%s %q: want a URL path as clients request it, starting with /, e.g. /media_attachments/files/…", name, value)
		}
	}
	req, err := json.Marshal(s3cache.PurgeRequest{Path: f.Path, Prefix: f.Prefix})
	if err != nil {
		return 0, err
	}
	body, err := adminRequest(ctx, f.address(), http.MethodPost, "/s3_media_cache/purge", req)
	if err != nil {
		return 0, err
	}
	var result s3cache.PurgeResult
	if err := json.Unmarshal(body, &result); err != nil {
		return 0, fmt.Errorf("reading the purge result from %s: %w", f.address(), err)
	}
	noun := "entries"
	if result.Purged == 1 {
		noun = "entry"
	}
	fmt.Fprintf(out, "purged %d %s\n", result.Purged, noun)
	return result.Purged, nil
}

// adminRequest sends one request to the admin endpoint with Caddy's own
// client (which speaks unix sockets and sets the Origin the endpoint
// checks) and returns the body. That client takes no context, so the
// request runs aside and is abandoned when ctx ends or adminTimeout
// passes; it ends by itself when the process does.
func adminRequest(ctx context.Context, address, method, uri string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	type answer struct {
		body []byte
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		var reqBody io.Reader
		if body != nil {
			reqBody = bytes.NewReader(body)
		}
		resp, err := caddycmd.AdminAPIRequest(address, method, uri, nil, reqBody)
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		done <- answer{body: b, err: err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			hint := ""
			// Caddy's client says "performing request" when nothing
			// answered, as opposed to "caddy responded with error".
			if strings.Contains(a.err.Error(), "performing request") {
				hint = " (is Caddy running, with its admin endpoint there? --address sets it)"
			}
			return nil, fmt.Errorf("%s %s on Caddy's admin endpoint %s%s: %w", method, uri, address, hint, a.err)
		}
		return a.body, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s %s on Caddy's admin endpoint %s: no answer: %w", method, uri, address, ctx.Err())
	}
}
