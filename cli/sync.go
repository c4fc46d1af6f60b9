package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// SyncFlags are sync's: the bucket flags, plus what to do with them.
type SyncFlags struct {
	BucketFlags
	// DryRun compares and reports what would be uploaded, uploading
	// nothing.
	DryRun bool
	// ACL is a canned ACL to upload with, e.g. public-read (Mastodon's
	// S3_PERMISSION). Default: none, the bucket's own policy applies,
	// which is what providers without ACLs (Cloudflare R2) require.
	ACL string
}

// mode is what a run does with a file that differs from its object.
type mode int

const (
	modeSync   mode = iota // upload it
	modeDryRun             // say it would be uploaded
	modeVerify             // report it as a problem
)

const (
	// maxPutBytes is S3's limit for one PUT. Mastodon's media are far
	// below it; a larger file is reported rather than sent in parts.
	maxPutBytes = 5 << 30
	// giveUpAfter: when this many HEADs (or PUTs) have failed and none
	// has succeeded, something is wrong for every file (the endpoint, the
	// region, the keys, an --acl the provider refuses), and going on would
	// print the same error a million times.
	giveUpAfter = 20
)

// errGaveUp is the cause of a run stopped by the giveUpAfter rule.
var errGaveUp = errors.New("giving up")

// ErrProblems is wrapped by the error of a run that completed but found
// files it could not copy or verify, or objects that differ.
var ErrProblems = errors.New("problems found")

// Sync copies the regular files under f.Source into the bucket, each
// under its path relative to the source (after f.Prefix), skipping those
// already there with the same size and checksum. Running it again after
// an interruption uploads only what is left. Progress, notes and the
// summary go to out.
//
// The error wraps ErrProblems when some files failed, and is a usage
// error (ExitCode 2) when the flags are wrong.
func Sync(ctx context.Context, f SyncFlags, out io.Writer) (Summary, error) {
	if err := checkACL(f.ACL); err != nil {
		return Summary{}, err
	}
	m := modeSync
	if f.DryRun {
		m = modeDryRun
	}
	return runTree(ctx, f, m, out)
}

// Verify compares every regular file under f.Source with its object,
// as sync would, and reports the objects that are missing or different.
// The error wraps ErrProblems if there are any.
func Verify(ctx context.Context, f BucketFlags, out io.Writer) (Summary, error) {
	return runTree(ctx, SyncFlags{BucketFlags: f}, modeVerify, out)
}

// file is one regular file the walk found.
type file struct {
	path string
	key  string
	size int64
	// moving credits the progress line with its bytes while a worker
	// reads them; nil until then.
	moving *movingFile
}

// treeRun is one run of sync or verify.
type treeRun struct {
	flags    SyncFlags
	mode     mode
	client   *s3.Client
	progress *progress
	// giveUp cancels the run with the reason as its cause.
	giveUp context.CancelCauseFunc
	// heads and puts keep the give-up rule's counts.
	heads, puts firstFailures
}

func runTree(ctx context.Context, f SyncFlags, m mode, out io.Writer) (Summary, error) {
	if err := f.normalize(); err != nil {
		return Summary{}, err
	}
	root, err := sourceRoot(f.Source)
	if err != nil {
		return Summary{}, err
	}
	client, err := newClient(ctx, f.BucketFlags)
	if err != nil {
		return Summary{}, err
	}
	ctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	r := &treeRun{flags: f, mode: m, client: client, progress: newProgress(out, m), giveUp: giveUp}
	r.progress.run()

	files := make(chan file, 4*f.Concurrency)
	var workers sync.WaitGroup
	for range f.Concurrency {
		workers.Go(func() {
			for fl := range files {
				if ctx.Err() == nil {
					r.handle(ctx, fl)
				}
			}
		})
	}
	countCtx, stopCounting := context.WithCancel(ctx)
	counted := make(chan struct{})
	go func() {
		defer close(counted)
		countTree(countCtx, root, r.progress)
	}()
	walkErr := r.walk(ctx, root, files)
	close(files)
	workers.Wait()
	stopCounting()
	<-counted
	sum := r.progress.finish()
	r.printSummary(out, sum)

	switch {
	case errors.Is(context.Cause(ctx), errGaveUp):
		return sum, context.Cause(ctx)
	case ctx.Err() != nil:
		return sum, fmt.Errorf("interrupted after %d files; run the same command again to go on where it stopped: %w",
			sum.Same+sum.Missing+sum.Different+sum.Failed, ctx.Err())
	case walkErr != nil:
		return sum, walkErr
	}
	return sum, r.problems(sum)
}

// problems is the error for a completed run, nil when all is well.
func (r *treeRun) problems(s Summary) error {
	switch {
	case r.mode == modeVerify && s.Missing+s.Different+s.Failed > 0:
		return fmt.Errorf("%w: %d missing, %d different, %d failed", ErrProblems, s.Missing, s.Different, s.Failed)
	case s.Failed > 0:
		return fmt.Errorf("%w: %d of %d files failed; run sync again to retry them", ErrProblems, s.Failed, s.Files)
	}
	return nil
}

// sourceRoot resolves the source directory. Its own symlink is followed,
// since public/system is often a link to a bigger disk; links below it
// are not.
func sourceRoot(source string) (string, error) {
	root, err := filepath.EvalSymlinks(source)
	if err != nil {
		return "", usagef("--source %s: %w", source, err)
	}
	info, err := os.Stat(root)
	if err != nil {
		return "", usagef("--source %s: %w", source, err)
	}
	if !info.IsDir() {
		return "", usagef("--source %s is not a directory", source)
	}
	return root, nil
}

// walk sends every regular file under root to files, in lexical order,
// and notes what it does not send. It stops early when ctx ends.
func (r *treeRun) walk(ctx context.Context, root string, files chan<- file) error {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			if path == root {
				return err
			}
			r.progress.foundFile()
			r.fail(file{path: path}, fmt.Errorf("reading: %w", err))
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			r.progress.ignored(path, kindOf(d.Type()))
			return nil
		}
		info, err := d.Info()
		if err != nil {
			r.progress.foundFile()
			r.fail(file{path: path}, err)
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		r.progress.foundFile()
		key := objectKey(r.flags.Prefix, rel)
		if err := checkKey(key); err != nil {
			r.fail(file{path: path, size: info.Size()}, fmt.Errorf("cannot be an object key: it %w", err))
			return nil
		}
		select {
		case files <- file{path: path, key: key, size: info.Size()}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("walking %s: %w", root, err)
	}
	return nil
}

// countTree totals the files and bytes walk will find, for the
// progress line's percentage and ETA. walk itself cannot: it goes at the
// pace of the uploads, held back by the workers, while this walk only
// reads directories and finishes long before them.
func countTree(ctx context.Context, root string, p *progress) {
	var files, bytes int64
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err != nil:
			if path == root {
				return err
			}
			files++ // walk counts it as a failed file
		case d.Type().IsRegular():
			files++
			if info, err := d.Info(); err == nil {
				bytes += info.Size()
			}
			if files%1000 == 0 {
				p.setTotal(files, bytes, false)
			}
		}
		return nil
	})
	p.setTotal(files, bytes, ctx.Err() == nil)
}

// kindOf names a file type that is not copied.
func kindOf(t fs.FileMode) string {
	switch {
	case t&fs.ModeSymlink != 0:
		return "symlink, not followed"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe, not a regular file"
	case t&fs.ModeSocket != 0:
		return "socket, not a regular file"
	case t&fs.ModeDevice != 0:
		return "device, not a regular file"
	}
	return "not a regular file"
}

// handle compares one file with its object, then uploads, reports or
// skips it according to the mode.
func (r *treeRun) handle(ctx context.Context, fl file) {
	obj, err := head(ctx, r.client, r.flags.Bucket, fl.key)
	if err != nil {
		r.failS3(ctx, fl, &r.heads, "checking", err)
		return
	}
	r.heads.succeeded.Store(true)
	v, decided := quickVerdict(fl.size, obj)
	if decided && r.mode != modeSync {
		r.report(fl, v, obj)
		return
	}
	passes := 1
	if decided {
		passes = 2 // read to be summed, then to be uploaded
	}
	fl.moving = r.progress.startFile(fl.size, passes)
	// Both the comparison and the upload need the file's checksums,
	// and the upload needs them before the body (Content-MD5 and the
	// metadata are headers).
	f, err := os.Open(fl.path)
	if err != nil {
		r.fail(fl, err)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		r.fail(fl, err)
		return
	}
	if !info.Mode().IsRegular() {
		r.fail(fl, errors.New("is no longer a regular file"))
		return
	}
	size := info.Size()
	sums, n, err := sum(fl.moving.reader(io.NewSectionReader(f, 0, size)), candidatesFor(size, obj.etag)...)
	if err == nil && n != size {
		err = fmt.Errorf("read %d bytes of %d: the file shrank while being read", n, size)
	}
	if err != nil {
		r.fail(fl, fmt.Errorf("reading: %w", err))
		return
	}
	if v = compare(size, sums, obj); v == checksumUnknown {
		if v, err = r.settle(ctx, fl, f, size, obj, sums); err != nil {
			r.failS3(ctx, fl, &r.heads, "comparing", err)
			return
		}
	}
	if v == same {
		r.count(fl, func(s *Summary) { s.Same++ })
		return
	}
	if r.mode != modeSync {
		r.report(fl, v, obj)
		return
	}
	r.upload(ctx, fl, f, size, sums, v)
}

// count applies a file's outcome to the summary, trading the credit of
// its bytes in hand (if any) for its whole size.
func (r *treeRun) count(fl file, apply func(*Summary)) {
	if fl.moving != nil {
		fl.moving.finish(apply)
		return
	}
	r.progress.count(fl.size, apply)
}

// report counts and prints a file that differs from its object, for
// --dry-run and verify.
func (r *treeRun) report(fl file, v verdict, obj remoteObject) {
	r.count(fl, func(s *Summary) { s.countDiffering(v) })
	switch {
	case r.mode == modeDryRun:
		r.progress.note("would upload %s (%s)", fl.key, describe(v, fl.size, obj))
	case v == missing:
		r.progress.note("missing: %s", fl.key)
	default:
		r.progress.note("different: %s: %s", fl.key, describe(v, fl.size, obj))
	}
}

// upload PUTs the file with Mastodon's headers, Content-MD5 so S3
// rejects bytes that changed since they were summed, and its SHA-256 in
// the metadata for the next run's comparison.
func (r *treeRun) upload(ctx context.Context, fl file, f *os.File, size int64, sums checksums, v verdict) {
	if size > maxPutBytes {
		r.fail(fl, fmt.Errorf("%s is over S3's %s limit for one upload", formatBytes(size), formatBytes(maxPutBytes)))
		return
	}
	input := &s3.PutObjectInput{
		Bucket:        aws.String(r.flags.Bucket),
		Key:           aws.String(fl.key),
		Body:          fl.moving.reader(io.NewSectionReader(f, 0, size)),
		ContentLength: aws.Int64(size),
		ContentMD5:    aws.String(sums.md5Base64()),
		ContentType:   aws.String(contentType(fl.path)),
		CacheControl:  aws.String(mastodonCacheControl),
		Metadata:      map[string]string{sha256MetaKey: sums.sha256Hex()},
	}
	if r.flags.ACL != "" {
		input.ACL = types.ObjectCannedACL(r.flags.ACL)
	}
	if _, err := r.client.PutObject(ctx, input); err != nil {
		r.failS3(ctx, fl, &r.puts, "uploading", err)
		return
	}
	r.puts.succeeded.Store(true)
	r.count(fl, func(s *Summary) {
		s.countDiffering(v)
		s.Uploaded++
		s.UploadedBytes += size
	})
}

// fail counts a file that failed and says why.
func (r *treeRun) fail(fl file, err error) {
	r.count(fl, func(s *Summary) { s.Failed++ })
	r.progress.note("failed: %s: %v", printable(fl.path), err)
}

// firstFailures counts the failures of one kind of S3 request, and
// whether any has succeeded.
type firstFailures struct {
	failed    atomic.Int64
	succeeded atomic.Bool
}

// failS3 is fail for an S3 request. A request cut short by the end of
// the run is not a failure of the file; and when the first giveUpAfter
// requests of a kind all failed, the run stops.
func (r *treeRun) failS3(ctx context.Context, fl file, kind *firstFailures, doing string, err error) {
	if ctx.Err() != nil {
		return
	}
	r.fail(fl, fmt.Errorf("%s s3://%s/%s: %w", doing, r.flags.Bucket, fl.key, err))
	if kind.failed.Add(1) >= giveUpAfter && !kind.succeeded.Load() {
		r.giveUp(fmt.Errorf("%w: %s the first %d files all failed; check the endpoint, the region, the keys and their rights (and --acl, which providers such as R2 refuse); the last error: %w",
			errGaveUp, doing, giveUpAfter, err))
	}
}

// printSummary writes the run's result in a few aligned lines.
func (r *treeRun) printSummary(out io.Writer, s Summary) {
	seconds := max(s.Duration.Seconds(), 1e-3)
	switch r.mode {
	case modeSync:
		fmt.Fprintf(out, "uploaded  %d files, %s (%s/s)\n", s.Uploaded, formatBytes(s.UploadedBytes), formatBytes(int64(float64(s.UploadedBytes)/seconds)))
		fmt.Fprintf(out, "skipped   %d files already in the bucket\n", s.Same)
	case modeDryRun:
		fmt.Fprintf(out, "dry run   nothing uploaded; %d files would be (%d missing, %d different)\n", s.Missing+s.Different, s.Missing, s.Different)
		fmt.Fprintf(out, "skipped   %d files already in the bucket\n", s.Same)
	case modeVerify:
		fmt.Fprintf(out, "same      %d files\n", s.Same)
		fmt.Fprintf(out, "missing   %d\n", s.Missing)
		fmt.Fprintf(out, "different %d\n", s.Different)
	}
	fmt.Fprintf(out, "failed    %d\n", s.Failed)
	if s.Ignored > 0 {
		fmt.Fprintf(out, "ignored   %d symlinks and special files\n", s.Ignored)
	}
	if s.ReadBack > 0 {
		fmt.Fprintf(out, "read back %d objects, %s of S3 egress: no checksum could compare them\n", s.ReadBack, formatBytes(s.ReadBackBytes))
	}
	fmt.Fprintf(out, "took      %s for %d files\n", s.Duration.Round(time.Millisecond), s.Files)
}
