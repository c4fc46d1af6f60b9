package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/cli"
	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// stats lists the cache directory with its entries, as a table and as
// JSON; purge removes an entry by path and by prefix; and each way of
// calling them wrongly exits with the status and message a user acts on.
func TestCLIStatsAndPurge(t *testing.T) {
	dir, png, mb := cacheTwoObjects(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin := cli.AdminFlags{Address: fmt.Sprintf("localhost:%d", env.ports.admin)}

	t.Run("stats", func(t *testing.T) {
		var out bytes.Buffer
		must(t, cli.Stats(ctx, cli.StatsFlags{AdminFlags: admin}, &out))
		if !strings.Contains(out.String(), "CACHE DIR") || !tableRowHas(out.String(), dir, "2") {
			t.Errorf("stats table lacks a row for %s with 2 entries:\n%s", dir, out.String())
		}
	})
	t.Run("stats --json", func(t *testing.T) {
		var out bytes.Buffer
		must(t, cli.Stats(ctx, cli.StatsFlags{AdminFlags: admin, JSON: true}, &out))
		var stats []s3cache.StoreStats
		must(t, json.Unmarshal(out.Bytes(), &stats))
		found := false
		for _, s := range stats {
			if s.CacheDir == dir {
				found = s.Entries == 2 && s.Bytes >= png.Size+mb.Size
			}
		}
		if !found {
			t.Errorf("stats --json has no %s with 2 entries: %s", dir, out.String())
		}
	})
	// The purges run in order: the second finds only the entry the first
	// left.
	purged := t.Run("purge --path", func(t *testing.T) {
		var out bytes.Buffer
		n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: urlPath(mb.Key)}, &out)
		if err != nil || n != 1 || out.String() != "purged 1 entry\n" {
			t.Fatalf("purge --path: %d, %v, %q", n, err, out.String())
		}
		if exists(entryPathFor(dir, mb)) {
			t.Error("the purged entry is still on disk")
		}
	})
	if !purged {
		t.FailNow()
	}
	t.Run("purge --prefix", func(t *testing.T) {
		var out bytes.Buffer
		n, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Prefix: "/media_attachments/files/109/"}, &out)
		if err != nil || n != 1 || !waitFor(0, func() bool { return !exists(entryPathFor(dir, png)) }) {
			t.Fatalf("purge --prefix: %d, %v, %q", n, err, out.String())
		}
	})

	dead, err := s3test.FreeLoopbackAddr()
	must(t, err)
	failures := []struct {
		name   string
		run    func(io.Writer) error
		exit   int
		saying []string // what the error must say
	}{
		{
			name: "purge of a bad path gives Caddy's 400 message",
			run: func(out io.Writer) error {
				_, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: "/../etc/passwd"}, out)
				return err
			},
			exit:   1,
			saying: []string{"is not a media path"},
		},
		{
			name: "purge with --path and --prefix",
			run: func(out io.Writer) error {
				_, err := cli.Purge(ctx, cli.PurgeFlags{AdminFlags: admin, Path: "/a.png", Prefix: "/b/"}, out)
				return err
			},
			exit: 2,
		},
		{
			name: "stats with nothing listening",
			run: func(out io.Writer) error {
				return cli.Stats(ctx, cli.StatsFlags{AdminFlags: cli.AdminFlags{Address: dead}}, out)
			},
			exit:   1,
			saying: []string{dead, "is Caddy running"},
		},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run(io.Discard)
			if cli.ExitCode(err) != tt.exit {
				t.Errorf("%v (exit %d), want exit %d", err, cli.ExitCode(err), tt.exit)
			}
			for _, want := range tt.saying {
				if !strings.Contains(fmt.Sprint(err), want) {
					t.Errorf("%v, want it to say %q", err, want)
				}
			}
		})
	}
}

// tableRowHas reports whether a line of table starts with first and has
// second as its next column.
func tableRowHas(table, first, second string) bool {
	for line := range strings.SplitSeq(table, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && fields[0] == first && fields[1] == second {
			return true
		}
	}
	return false
}
