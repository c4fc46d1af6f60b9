// Package cli adds `caddy s3-media-cache …` to the caddy command: stats
// and purge through the admin API of a running Caddy, and sync and verify
// for moving an instance's local media into its bucket.
//
// Each command is a function of a context, its flags and a writer
// (Stats, Purge, Sync, Verify); the cobra commands registered here only
// parse flags into them and turn their error into an exit status with
// ExitCode.
package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "s3-media-cache",
		Usage: "stats|purge|sync|verify [flags]",
		Short: "Shows and purges the s3_media_cache, copies local media into the bucket",
		Long: `
Commands for the s3_media_cache handler.

stats and purge talk to a running Caddy through its admin endpoint.
sync copies a Mastodon instance's local media (public/system) into its
bucket, and verify checks that the bucket holds every file unchanged.

Run 'caddy s3-media-cache <command> --help' for a command's flags.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(statsCommand(), purgeCommand(), syncCommand(), verifyCommand())
		},
	})
}

// Exit statuses.
const (
	exitOK = 0
	// exitFailed: the command ran and something failed, or verify found
	// differences.
	exitFailed = 1
	// exitUsage: the flags were wrong; nothing was done.
	exitUsage = 2
)

// ExitCode is the exit status for a command's error: 0 for none, 2 for
// wrong flags (nothing was done), 1 for anything else (some files
// failed, verify found differences, Caddy could not be reached, the run
// was interrupted).
func ExitCode(err error) int {
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &usage):
		return exitUsage
	}
	return exitFailed
}

// runE adapts a command function to cobra through Caddy's wrapper, which
// logs the error and exits with the status. Ctrl-C or SIGTERM cancels
// the context, so sync stops cleanly and prints its summary.
func runE(cmd *cobra.Command, run func(ctx context.Context, out io.Writer) error) func(*cobra.Command, []string) error {
	return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := run(ctx, cmd.OutOrStdout())
		return ExitCode(err), err
	})
}

func addAdminFlags(cmd *cobra.Command, f *AdminFlags) {
	cmd.Flags().StringVar(&f.Address, "address", "", "Caddy's admin endpoint, as in the admin global option (default localhost:2019)")
}

func statsCommand() *cobra.Command {
	var f StatsFlags
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Prints the statistics of every cache of a running Caddy",
		Long: `
Prints, for each cache directory of a running Caddy, its entries, its size
against max_size, the hit ratio, the fills in flight and the clients
waiting on them, S3 errors, evictions, purges and corrupt entries removed.

It asks the admin endpoint's /s3_media_cache/stats; --json prints that
answer as it is.
`,
		Args: cobra.NoArgs,
	}
	addAdminFlags(cmd, &f.AdminFlags)
	cmd.Flags().BoolVar(&f.JSON, "json", false, "Print the admin API's JSON instead of a table")
	cmd.RunE = runE(cmd, func(ctx context.Context, out io.Writer) error { return Stats(ctx, f, out) })
	return cmd
}

func purgeCommand() *cobra.Command {
	var f PurgeFlags
	cmd := &cobra.Command{
		Use:   "purge (--path <url path> | --prefix <url path prefix>)",
		Short: "Removes cached media from a running Caddy",
		Long: `
Removes one media path, or every path under a prefix, from the caches of a
running Caddy, along with any download of it in flight. The next request
fetches it from S3 again.

Paths are URL paths as clients request them, e.g.
  caddy s3-media-cache purge --path /media_attachments/files/109/876/543/210/original/a.png
  caddy s3-media-cache purge --prefix /accounts/avatars/109/
`,
		Args: cobra.NoArgs,
	}
	addAdminFlags(cmd, &f.AdminFlags)
	cmd.Flags().StringVar(&f.Path, "path", "", "The URL path of one media file")
	cmd.Flags().StringVar(&f.Prefix, "prefix", "", "A URL path prefix: everything under it is purged")
	cmd.RunE = runE(cmd, func(ctx context.Context, out io.Writer) error {
		_, err := Purge(ctx, f, out)
		return err
	})
	return cmd
}

func addBucketFlags(cmd *cobra.Command, f *BucketFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.Source, "source", "", "The local media directory, e.g. /home/mastodon/live/public/system (required)")
	fl.StringVar(&f.Bucket, "bucket", "", "The bucket (required)")
	fl.StringVar(&f.Endpoint, "endpoint", "", "The S3 endpoint's URL, e.g. https://s3.fr-par.scw.cloud (default: AWS)")
	fl.StringVar(&f.Region, "region", "", "The region requests are signed for (default: AWS_REGION, else us-east-1)")
	fl.BoolVar(&f.PathStyle, "path-style", false, "Put the bucket in the path, not the host name (MinIO, Garage, versitygw)")
	fl.StringVar(&f.Prefix, "prefix", "", "A key prefix, as the handler's prefix option")
	fl.StringVar(&f.AccessKeyEnv, "access-key-env", defaultAccessKeyEnv, "The environment variable holding the access key")
	fl.StringVar(&f.SecretKeyEnv, "secret-key-env", defaultSecretKeyEnv, "The environment variable holding the secret key")
	fl.IntVar(&f.Concurrency, "concurrency", defaultConcurrency, "How many files to compare or upload at once")
}

// bucketHelp is what sync and verify share: how keys are made, what
// counts as the same object, where the credentials come from.
const bucketHelp = `
Each file's key is its path relative to --source, after --prefix: with
--source /home/mastodon/live/public/system, the file
media_attachments/files/109/…/original/a.png is stored under that key,
which is the URL path Mastodon writes once S3 is enabled.

An object counts as the same as the file when it has the same size and
either its ETag is the file's MD5, or its x-amz-meta-sha256 metadata, which
sync writes, is the file's SHA-256, or its ETag is that of a multipart
upload of the file ("<md5 of the parts' MD5s>-N", as 'aws s3 sync' makes
for files over 8 MiB). The file is hashed in the same read with every part
size that gives N parts among those aws, rclone and s3cmd use (5, 8, 15,
16, 32, 64, 100 MiB and more, or the size over N in whole MiB). When none
reproduces the ETag, the size of part 1 is asked of the bucket (a HEAD
with partNumber=1) and tried; only when that fails too is the object read
back and compared byte by byte, which the summary counts as S3 egress.

The keys are read from the environment variables named by
--access-key-env and --secret-key-env (S3_ACCESS_KEY and S3_SECRET_KEY by
default); when neither is set, the AWS default credential chain is used.
Their values are never printed.
`

func syncCommand() *cobra.Command {
	var f SyncFlags
	cmd := &cobra.Command{
		Use:   "sync --source <dir> --bucket <name>",
		Short: "Copies local media into the bucket, skipping what is already there",
		Long: `
Copies every regular file under --source into the bucket, the way the
Mastodon guide's 'aws s3 sync --acl public-read' does, with care:

  - files already in the bucket with the same size and checksum are
    skipped, so a sync interrupted (Ctrl-C, a lost connection) resumes
    where it stopped when run again;
  - each upload carries Content-MD5, so S3 refuses bytes that changed on
    the way, the file's SHA-256 in x-amz-meta-sha256, the Content-Type of
    its extension, and Mastodon's Cache-Control:
    public, max-age=315576000, immutable;
  - --acl is sent only when given: providers without ACLs, such as
    Cloudflare R2, need it left out;
  - symlinks and special files are skipped with a note; paths that cannot
    be keys (control characters, backslashes) are reported as failures.

Progress (bytes, rate, ETA) counts the bytes of the files in hand as they
are read and uploaded. On a terminal it is one line redrawn in place,
shortened to the window's width (the byte counts and the rate go first,
the percentage and failures last); otherwise it is printed in full as a
line every 10 seconds. The exit status is 0 when every file is
in the bucket, 1 if any failed (run sync again to retry them), 2 for wrong
flags.
` + bucketHelp,
		Args: cobra.NoArgs,
	}
	addBucketFlags(cmd, &f.BucketFlags)
	cmd.Flags().BoolVar(&f.DryRun, "dry-run", false, "Report what would be uploaded, upload nothing")
	cmd.Flags().StringVar(&f.ACL, "acl", "", "A canned ACL for the uploads, e.g. public-read (Mastodon's S3_PERMISSION); default none")
	cmd.RunE = runE(cmd, func(ctx context.Context, out io.Writer) error {
		_, err := Sync(ctx, f, out)
		return err
	})
	return cmd
}

func verifyCommand() *cobra.Command {
	var f BucketFlags
	cmd := &cobra.Command{
		Use:   "verify --source <dir> --bucket <name>",
		Short: "Reports local media missing or different in the bucket",
		Long: `
Compares every regular file under --source with its object in the bucket,
as sync does, and prints each one that is missing or different. Nothing is
uploaded. The exit status is 0 when the bucket holds every file unchanged,
1 otherwise, 2 for wrong flags.
` + bucketHelp,
		Args: cobra.NoArgs,
	}
	addBucketFlags(cmd, &f)
	cmd.RunE = runE(cmd, func(ctx context.Context, out io.Writer) error {
		_, err := Verify(ctx, f, out)
		return err
	})
	return cmd
}
