package s3test

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Region is the region the harness signs for; versitygw's default.
const Region = "us-east-1"

// NewClient returns an S3 client for endpoint with path-style addressing
// and static credentials, the way the handler is configured against
// versitygw, MinIO or Garage.
func NewClient(endpoint, accessKey, secretKey string) *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey, secretKey, ""),
		// Only checksum when S3 requires it: the seed data is verified by
		// sha256 in the manifest, and plain PUTs keep the harness
		// independent of which trailing-checksum flavours a gateway knows.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// Client returns an S3 client talking straight to the gateway as its root
// user.
func (g *Gateway) Client() *s3.Client {
	return NewClient(g.Endpoint(), g.AccessKey, g.SecretKey)
}

// CreateBucket creates bucket, treating "already yours" as success so a
// restarted gateway on the same directory can be seeded again.
func CreateBucket(ctx context.Context, client *s3.Client, bucket string) error {
	_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("creating bucket %q: %w", bucket, err)
	}
	return nil
}

// MakePublicRead attaches a bucket policy that lets anyone GET and HEAD the
// bucket's objects, the way a Mastodon media bucket is usually published.
// Listing stays private.
func MakePublicRead(ctx context.Context, client *s3.Client, bucket string) error {
	policy := fmt.Sprintf(`{
  "Version": "2012-10-17",
  "Statement": [{
    "Sid": "PublicReadGetObject",
    "Effect": "Allow",
    "Principal": "*",
    "Action": "s3:GetObject",
    "Resource": "arn:aws:s3:::%s/*"
  }]
}`, bucket)
	if _, err := client.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(bucket), Policy: aws.String(policy)}); err != nil {
		return fmt.Errorf("making bucket %q public-read: %w", bucket, err)
	}
	return nil
}
