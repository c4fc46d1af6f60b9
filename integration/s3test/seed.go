package s3test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Seeded is an object as stored: what to request, what S3 calls it, and
// what the bytes must be.
type Seeded struct {
	// Key is the key without the bucket prefix; the URL path is "/" + Key.
	Key string
	// S3Key is the full object key in the bucket (prefix + Key).
	S3Key       string
	Body        []byte
	Size        int64
	SHA256      string
	ContentType string
	// ETag is the ETag S3 returned on upload, quotes included.
	ETag string
}

// Manifest maps Key to what was stored under it.
type Manifest map[string]Seeded

// Get returns the entry for key, panicking on a key that was never seeded:
// that is a bug in the test, not a condition to handle.
func (m Manifest) Get(key string) Seeded {
	s, ok := m[key]
	if !ok {
		panic(fmt.Sprintf("s3test: %q is not in the manifest", key))
	}
	return s
}

// SHA256Hex is the hex sha256 of b, the form the manifest stores.
func SHA256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Seed uploads objs to bucket, each under prefix + "/" + Key when prefix is
// set (the way the handler's `prefix` option builds keys), and returns
// their manifest.
func Seed(ctx context.Context, client *s3.Client, bucket, prefix string, objs []Object) (Manifest, error) {
	m := make(Manifest, len(objs))
	for _, o := range objs {
		s3Key := o.Key
		if prefix != "" {
			s3Key = strings.TrimSuffix(prefix, "/") + "/" + o.Key
		}
		out, err := client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(bucket),
			Key:           aws.String(s3Key),
			Body:          bytes.NewReader(o.Body),
			ContentLength: aws.Int64(int64(len(o.Body))),
			ContentType:   aws.String(o.ContentType),
			CacheControl:  optional(o.CacheControl),
		})
		if err != nil {
			return nil, fmt.Errorf("putting s3://%s/%s: %w", bucket, s3Key, err)
		}
		m[o.Key] = Seeded{
			Key:         o.Key,
			S3Key:       s3Key,
			Body:        o.Body,
			Size:        int64(len(o.Body)),
			SHA256:      SHA256Hex(o.Body),
			ContentType: o.ContentType,
			ETag:        aws.ToString(out.ETag),
		}
	}
	return m, nil
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}
