package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// Defaults of the bucket flags.
const (
	defaultAccessKeyEnv = "S3_ACCESS_KEY"
	defaultSecretKeyEnv = "S3_SECRET_KEY"
	defaultConcurrency  = 8
	defaultRegion       = "us-east-1"
	// maxConcurrency bounds --concurrency: past a few dozen requests in
	// flight, S3 providers throttle rather than go faster.
	maxConcurrency = 256
)

// BucketFlags name a local media tree and the bucket it is copied to.
// sync and verify share them.
type BucketFlags struct {
	// Source is the directory whose files are copied: Mastodon's
	// public/system. If it is a symlink, its target is walked. Required.
	Source string
	// Bucket is the bucket's name. Required.
	Bucket string
	// Endpoint is the S3 endpoint's URL, e.g. https://s3.fr-par.scw.cloud.
	// Default: AWS S3, chosen by Region.
	Endpoint string
	// Region is the region requests are signed for. Default: AWS_REGION or
	// the AWS config file's, else us-east-1.
	Region string
	// PathStyle puts the bucket in the path rather than the host name.
	PathStyle bool
	// Prefix is put before every key, as the handler's prefix option
	// does. Default: none, the key is the path relative to Source.
	Prefix string
	// AccessKeyEnv and SecretKeyEnv name the environment variables that
	// hold the keys. Default: S3_ACCESS_KEY and S3_SECRET_KEY. When
	// neither variable is set, the AWS default credential chain is used.
	AccessKeyEnv string
	SecretKeyEnv string
	// Concurrency is how many files are compared or uploaded at once.
	// Default: 8.
	Concurrency int
}

// usageError is a mistake in the flags: the command did nothing.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// normalize fills in the defaults and rejects impossible values, with the
// flag's name in the message.
func (f *BucketFlags) normalize() error {
	if f.Source == "" {
		return usagef("--source is required: the directory to copy, e.g. /home/mastodon/live/public/system")
	}
	if f.Bucket == "" {
		return usagef("--bucket is required")
	}
	if f.Endpoint != "" {
		// The handler's rule: an endpoint sync accepts, a site accepts.
		if err := s3cache.CheckEndpoint(f.Endpoint); err != nil {
			return usagef("--endpoint: %w", err)
		}
	}
	prefix, err := normalizePrefix(f.Prefix)
	if err != nil {
		return usageError{err}
	}
	f.Prefix = prefix
	if f.AccessKeyEnv == "" {
		f.AccessKeyEnv = defaultAccessKeyEnv
	}
	if f.SecretKeyEnv == "" {
		f.SecretKeyEnv = defaultSecretKeyEnv
	}
	switch {
	case f.Concurrency == 0:
		f.Concurrency = defaultConcurrency
	case f.Concurrency < 0 || f.Concurrency > maxConcurrency:
		return usagef("--concurrency %d: want 1 to %d", f.Concurrency, maxConcurrency)
	}
	return nil
}

// staticKeys reads the keys from the variables the flags name. Both set
// means static keys; neither means the default chain (ok false); one
// without the other is a mistake worth stopping for, since the default
// chain would then quietly sign with some other identity.
func (f BucketFlags) staticKeys() (accessKey, secretKey string, ok bool, err error) {
	accessKey, secretKey = os.Getenv(f.AccessKeyEnv), os.Getenv(f.SecretKeyEnv)
	switch {
	case accessKey != "" && secretKey != "":
		return accessKey, secretKey, true, nil
	case accessKey != "":
		return "", "", false, usagef("%s is set but %s is not: set both, or neither to use the AWS credential chain", f.AccessKeyEnv, f.SecretKeyEnv)
	case secretKey != "":
		return "", "", false, usagef("%s is set but %s is not: set both, or neither to use the AWS credential chain", f.SecretKeyEnv, f.AccessKeyEnv)
	}
	return "", "", false, nil
}

// newClient returns an S3 client for the flags. Unlike the handler's, it
// retries (the SDK's standard three attempts with backoff): a migration
// of a million files should ride out a throttled or flaky request.
func newClient(ctx context.Context, f BucketFlags) (*s3.Client, error) {
	accessKey, secretKey, static, err := f.staticKeys()
	if err != nil {
		return nil, err
	}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 10 * time.Second }).
		WithTransportOptions(func(t *http.Transport) {
			t.TLSHandshakeTimeout = 10 * time.Second
			// Counted from the end of the request body, so it bounds
			// S3's answer, not the upload of a large file.
			t.ResponseHeaderTimeout = time.Minute
			t.MaxIdleConnsPerHost = f.Concurrency
		})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		// The SDK's default logger writes warnings to stderr, in the
		// middle of the progress line.
		config.WithLogger(logging.Nop{}),
	}
	if f.Region != "" {
		opts = append(opts, config.WithRegion(f.Region))
	}
	if static {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(accessKey, secretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if f.Endpoint != "" {
			o.BaseEndpoint = aws.String(f.Endpoint)
		}
		o.UsePathStyle = f.PathStyle
		// Uploads carry Content-MD5, which every S3-compatible server
		// checks. The SDK's default CRC trailers (aws-chunked bodies)
		// are refused by several of them.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// head asks the bucket about key. A missing object is not an error.
func head(ctx context.Context, client *s3.Client, bucket, key string) (remoteObject, error) {
	out, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		var notFound *types.NotFound
		var resp *awshttp.ResponseError
		if errors.As(err, &notFound) || (errors.As(err, &resp) && resp.HTTPStatusCode() == http.StatusNotFound) {
			return remoteObject{}, nil
		}
		return remoteObject{}, err
	}
	return remoteObject{
		exists: true,
		size:   aws.ToInt64(out.ContentLength),
		etag:   trimQuotes(aws.ToString(out.ETag)),
		sha256: out.Metadata[sha256MetaKey],
	}, nil
}

func trimQuotes(etag string) string {
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		return etag[1 : len(etag)-1]
	}
	return etag
}

// checkACL accepts the canned ACLs S3 knows, or none.
func checkACL(acl string) error {
	if acl == "" {
		return nil
	}
	var names []string
	for _, v := range types.ObjectCannedACL("").Values() {
		names = append(names, string(v))
	}
	if !slices.Contains(names, acl) {
		return usagef("--acl %q: want one of %v, or no --acl for providers without ACLs (such as R2)", acl, names)
	}
	return nil
}
