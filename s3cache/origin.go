package s3cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithymiddleware "github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// origin is where objects come from. It is an interface only so that
// fault-injection tests can stand in for S3; the product has one origin.
type origin interface {
	fetch(ctx context.Context, req originRequest) (*originResponse, error)
}

// originRequest is one GET or HEAD of one key, with the client's range and
// validators forwarded so S3 does the byte-range and conditional work.
type originRequest struct {
	key               string
	head              bool
	rangeSpec         string // raw Range header value, "" for the whole object
	ifNoneMatch       string
	ifMatch           string
	ifModifiedSince   time.Time
	ifUnmodifiedSince time.Time
	// noQueue: do not wait for a slot of max_concurrent_fills; fail at
	// once if none is free. For read-ahead, which nobody waits for.
	noQueue bool
}

// op names the S3 operation, for logs and metrics.
func (r originRequest) op() string {
	if r.head {
		return "HeadObject"
	}
	return "GetObject"
}

// originResponse is S3's answer: 200 or 206 with a body (nil for HEAD), or
// one of the bodiless answers to a conditional or range request (304, 412,
// 416). Header is S3's raw header; the handler applies the header policy.
type originResponse struct {
	status int
	header http.Header
	body   io.ReadCloser
}

// originError is a failed fetch, reduced to what the client is told
// (status) and what an operator needs to act (reason). It deliberately does
// not wrap the SDK's error: that text carries the endpoint URL and the
// bucket, and Caddy logs handler errors verbatim.
type originError struct {
	status         int // for the client: 404, 502 or 504
	upstreamStatus int // what S3 answered, 0 if it did not
	timeout        bool
	// busy marks a request that never reached S3 because every slot of
	// max_concurrent_fills stayed taken; the client is told to retry.
	busy   bool
	op     string
	reason string
}

func (e *originError) Error() string {
	return "s3 " + e.op + ": " + e.reason
}

// CheckEndpoint reports whether endpoint can be an S3 endpoint: an
// http:// or https:// URL with a host, an optional port and nothing else.
// A path would be put before every bucket or key, so one there is a
// mistake (a bucket pasted into the URL, say); credentials belong in the
// keys. The handler and `caddy s3-media-cache sync` both check with it.
// Its error does not echo the value, which may hold credentials
// (https://key:secret@host).
func CheckEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return errBadEndpoint
	}
	return nil
}

var errBadEndpoint = errors.New("want an http:// or https:// URL with a host and an optional port, and nothing else (no credentials, path or query), such as https://s3.fr-par.scw.cloud")

// originConfig is what the S3 client needs, after placeholders are resolved.
type originConfig struct {
	bucket           string
	endpoint         string
	region           string
	pathStyle        bool
	accessKey        string
	secretKey        string
	anonymous        bool
	connectTimeout   time.Duration
	firstByteTimeout time.Duration
	readTimeout      time.Duration
}

// s3Origin fetches objects with aws-sdk-go-v2.
type s3Origin struct {
	client      *s3.Client
	conns       *http.Client
	bucket      string
	readTimeout time.Duration
}

func newS3Origin(ctx context.Context, cfg originConfig) (*s3Origin, error) {
	// The SDK's buildable client, not a plain http.Client: it is what
	// LoadDefaultConfig knows how to extend with AWS_CA_BUNDLE, and it
	// never follows redirects (a followed S3 redirect loses its signature).
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = cfg.connectTimeout }).
		WithTransportOptions(func(t *http.Transport) {
			t.TLSHandshakeTimeout = cfg.connectTimeout
			t.ResponseHeaderTimeout = cfg.firstByteTimeout
			// Bytes must reach the client exactly as stored;
			// transparent gzip would drop Content-Length and
			// Content-Encoding on the way.
			t.DisableCompression = true
			// Media bursts hit many keys at once; keep enough warm
			// connections that a burst does not pay a TLS handshake
			// per object.
			t.MaxIdleConnsPerHost = 64
		})

	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.region),
		config.WithHTTPClient(httpClient),
		// No retries: a retried GET doubles the time a client waits
		// before its 502/504, and serve-stale is the better answer to a
		// flaky S3. This matches nginx with a single upstream.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		// The SDK's default logger writes to stderr, outside Caddy's logs.
		config.WithLogger(logging.Nop{}),
	}
	switch {
	case cfg.anonymous:
		opts = append(opts, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
	case cfg.accessKey != "":
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.accessKey, cfg.secretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration: %w", err)
	}
	// Freeze it into a plain client we hold, so Cleanup can close its
	// idle connections.
	frozen, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient)
	if !ok {
		return nil, fmt.Errorf("loading AWS configuration: unexpected HTTP client %T", awsCfg.HTTPClient)
	}
	conns, ok := frozen.Freeze().(*http.Client)
	if !ok {
		return nil, fmt.Errorf("loading AWS configuration: unexpected frozen HTTP client")
	}
	awsCfg.HTTPClient = conns
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.endpoint)
		}
		o.UsePathStyle = cfg.pathStyle
		// Objects are streamed, often as ranges, so the SDK cannot
		// verify a whole-object checksum anyway; asking for it only adds
		// a header and a warning per object that has none.
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return &s3Origin{client: client, conns: conns, bucket: cfg.bucket, readTimeout: cfg.readTimeout}, nil
}

// close drops idle connections to S3, so a config reload does not leave the
// old generation's sockets open until their idle timeout.
func (o *s3Origin) close() {
	o.conns.CloseIdleConnections()
}

func (o *s3Origin) fetch(ctx context.Context, req originRequest) (*originResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	in := &s3.GetObjectInput{
		Bucket:            &o.bucket,
		Key:               &req.key,
		Range:             optional(req.rangeSpec),
		IfNoneMatch:       optional(req.ifNoneMatch),
		IfMatch:           optional(req.ifMatch),
		IfModifiedSince:   optionalTime(req.ifModifiedSince),
		IfUnmodifiedSince: optionalTime(req.ifUnmodifiedSince),
	}
	if req.head {
		defer cancel()
		out, err := o.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: in.Bucket, Key: in.Key, Range: in.Range,
			IfNoneMatch: in.IfNoneMatch, IfMatch: in.IfMatch, IfModifiedSince: in.IfModifiedSince, IfUnmodifiedSince: in.IfUnmodifiedSince})
		if err != nil {
			return answerOrError("HeadObject", err)
		}
		return rawResponse("HeadObject", out.ResultMetadata, nil)
	}

	out, err := o.client.GetObject(ctx, in)
	if err != nil {
		cancel()
		return answerOrError("GetObject", err)
	}
	body := newIdleTimeoutBody(out.Body, o.readTimeout, cancel)
	resp, err := rawResponse("GetObject", out.ResultMetadata, body)
	if err != nil {
		body.Close()
	}
	return resp, err
}

// rawResponse recovers S3's status and headers from the SDK's result. The
// typed output would lose headers we pass on verbatim (Content-Range,
// Accept-Ranges) and formats we must not alter (Last-Modified).
func rawResponse(op string, md smithymiddleware.Metadata, body io.ReadCloser) (*originResponse, error) {
	raw, ok := awsmiddleware.GetRawResponse(md).(*smithyhttp.Response)
	if !ok || raw == nil || raw.Response == nil {
		return nil, &originError{status: http.StatusBadGateway, op: op, reason: "no HTTP response from the SDK"}
	}
	return &originResponse{status: raw.StatusCode, header: raw.Header, body: body}, nil
}

// answerOrError sorts an SDK error into either a legitimate bodiless answer
// (304, 412, 416: S3 reports them as errors, HTTP does not) or an
// originError carrying the status the client gets.
func answerOrError(op string, err error) (*originResponse, error) {
	var respErr *awshttp.ResponseError
	// The SDK wraps transport failures in a ResponseError too, with no
	// response and status 0; those are sorted below.
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() != 0 {
		status := respErr.HTTPStatusCode()
		code := "unknown"
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) {
			code = apiErr.ErrorCode()
		}
		switch {
		case status == http.StatusNotModified,
			status == http.StatusPreconditionFailed,
			status == http.StatusRequestedRangeNotSatisfiable:
			return &originResponse{status: status, header: bodilessAnswerHeader(status, respErr.Response.Header)}, nil
		case status == http.StatusNotFound:
			return nil, &originError{status: http.StatusNotFound, upstreamStatus: status, op: op, reason: "no such key"}
		case status == http.StatusForbidden && (code == "AccessDenied" || code == "Forbidden"):
			// S3 answers 403 rather than 404 for a missing key when the
			// credentials may not list the bucket, and a HEAD carries
			// no error code at all. Either way the client sees a 404.
			return nil, &originError{status: http.StatusNotFound, upstreamStatus: status, op: op, reason: "access denied (missing key, or no read permission)"}
		default:
			// Bad credentials, a wrong region (301 PermanentRedirect),
			// throttling and 5xx all mean S3 cannot serve us now. The
			// code is S3's own error code, safe to log and the fastest
			// pointer for an operator.
			return nil, &originError{
				status: http.StatusBadGateway, upstreamStatus: status, op: op,
				reason: "S3 answered " + strconv.Itoa(status) + " " + code,
			}
		}
	}
	if isTimeout(err) {
		return nil, &originError{status: http.StatusGatewayTimeout, timeout: true, op: op, reason: "timed out waiting for S3"}
	}
	if errors.Is(err, context.Canceled) {
		return nil, &originError{status: http.StatusBadGateway, op: op, reason: "request canceled"}
	}
	return nil, &originError{status: http.StatusBadGateway, op: op, reason: "cannot reach S3: " + transportReason(err)}
}

// bodilessAnswerHeader keeps what a 304, 412 or 416 may say about the
// object: validators, and the freshness headers a revalidation needs
// (the header policy never passes those two on to clients). S3 sends these with the Content-Type and Content-Length of its
// XML error document, which must not describe our empty body.
func bodilessAnswerHeader(status int, upstream http.Header) http.Header {
	h := http.Header{}
	for _, name := range []string{"Etag", "Last-Modified", "Cache-Control", "Expires"} {
		if v, ok := upstream[name]; ok {
			h[name] = v
		}
	}
	if v, ok := upstream["Content-Range"]; ok && status == http.StatusRequestedRangeNotSatisfiable {
		h["Content-Range"] = v
	}
	return h
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// transportReason names a network failure without quoting the error text,
// which carries the endpoint's host name and address.
func transportReason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "DNS lookup failed for the endpoint"
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Op + " failed"
	}
	return "transport error"
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// idleTimeoutBody cancels the S3 request when no byte arrives for idle,
// like nginx's proxy_read_timeout: a stalled body must not hold a client
// and a connection forever.
type idleTimeoutBody struct {
	io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
}

func newIdleTimeoutBody(body io.ReadCloser, idle time.Duration, cancel context.CancelFunc) *idleTimeoutBody {
	b := &idleTimeoutBody{ReadCloser: body, idle: idle, cancel: cancel}
	if idle > 0 {
		b.timer = time.AfterFunc(idle, cancel)
	}
	return b
}

func (b *idleTimeoutBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.timer != nil && n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, err
}

func (b *idleTimeoutBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// bodyFailureReason describes a body read error without its text, which
// may carry the endpoint address.
func bodyFailureReason(err error) string {
	switch {
	case errors.Is(err, errCorruptEntry):
		return "cache entry failed its checksum; entry removed"
	case errors.Is(err, errETagMismatch):
		return "S3's body does not match its ETag (MD5); not stored (etag_check off if this store's ETags are not MD5s)"
	case isTimeout(err), errors.Is(err, context.Canceled):
		return "stalled past read_timeout, or canceled"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before the end of the object"
	default:
		return transportReason(err)
	}
}
