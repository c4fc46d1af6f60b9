package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// readBackChunk is how much of an object one ranged GET of readBack asks
// for: a difference stops the comparison at most this many bytes of
// egress after it.
const readBackChunk = 8 * mib

// settle decides a comparison the checksums left open (checksumUnknown):
// an object of the file's size whose ETag no part size tried reproduces,
// and no x-amz-meta-sha256. It asks the bucket, cheapest first:
//
//  1. For a multipart ETag, a HEAD of part 1 (partNumber=1), whose
//     Content-Length is the part size the object was uploaded with. The
//     file is hashed again in parts of that size, if it was not among
//     those tried. No bytes leave the bucket.
//  2. Otherwise, or when that does not match either (parts of unequal
//     sizes, an ETag that is not an MD5 at all, or bytes that differ),
//     the object is read back with ranged GETs and compared with the
//     file, stopping at the first chunk that differs. This costs egress,
//     which is why the summary counts it.
//
// The verdict is same, or bytesDiffer: nothing is left unknown. An error
// is the bucket's or the file's, and the file counts as failed.
func (r *treeRun) settle(ctx context.Context, fl file, f *os.File, size int64, obj remoteObject, local checksums) (verdict, error) {
	if m, ok := parseMultipartETag(obj.etag); ok {
		// A provider that does not know partNumber answers with an error
		// or the whole object's length: either way the read back decides.
		if partSize, err := firstPartSize(ctx, r.client, r.flags.Bucket, fl.key, obj.etag, m.parts); err == nil &&
			partSize > 0 && partsFor(size, partSize) == int64(m.parts) && !local.triedPartSize(partSize) {
			h := newPartHasher(partSize)
			if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
				return same, fmt.Errorf("reading: %w", err)
			}
			if strings.EqualFold(h.etag(), obj.etag) {
				return same, nil
			}
		}
	}
	equal, read, err := readBack(ctx, r.client, r.flags.Bucket, fl.key, obj.etag, f, size)
	r.progress.readBack(read)
	switch {
	case err != nil:
		return same, err
	case equal:
		return same, nil
	}
	return bytesDiffer, nil
}

// firstPartSize asks the size of the object's first part (HEAD with
// partNumber=1), pinned to its ETag. It reports 0 when the answer does
// not say, as from a provider that ignores partNumber.
func firstPartSize(ctx context.Context, client *s3.Client, bucket, key, etag string, parts int) (int64, error) {
	out, err := client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket:     aws.String(bucket),
		Key:        aws.String(key),
		IfMatch:    aws.String(`"` + etag + `"`),
		PartNumber: aws.Int32(1),
	})
	if err != nil {
		return 0, fmt.Errorf("asking the size of part 1 of s3://%s/%s: %w", bucket, key, err)
	}
	if aws.ToInt32(out.PartsCount) != int32(parts) {
		return 0, nil
	}
	return aws.ToInt64(out.ContentLength), nil
}

// readBack compares the object with the file's size bytes, readBackChunk
// bytes per ranged GET, each pinned to the ETag so that an object
// replaced meanwhile is an error rather than a mix of two. It stops at
// the first chunk that differs, and returns whether all were equal and
// how many bytes it read from the bucket.
func readBack(ctx context.Context, client *s3.Client, bucket, key, etag string, f *os.File, size int64) (bool, int64, error) {
	var read int64
	object, local := make([]byte, 64<<10), make([]byte, 64<<10)
	for start := int64(0); start < size; start += readBackChunk {
		end := min(start+readBackChunk, size) // exclusive
		out, err := client.GetObject(ctx, &s3.GetObjectInput{
			Bucket:  aws.String(bucket),
			Key:     aws.String(key),
			IfMatch: aws.String(`"` + etag + `"`),
			Range:   aws.String(fmt.Sprintf("bytes=%d-%d", start, end-1)),
		})
		if err != nil {
			return false, read, fmt.Errorf("reading back s3://%s/%s: %w", bucket, key, err)
		}
		equal, n, err := equalChunk(out.Body, f, start, end, object, local)
		out.Body.Close()
		read += n
		if err != nil || !equal {
			if err != nil {
				err = fmt.Errorf("reading back s3://%s/%s: %w", bucket, key, err)
			}
			return false, read, err
		}
	}
	return true, read, nil
}

// equalChunk compares body with the file's bytes from start to end,
// using the two buffers, and returns how many bytes of body it read.
func equalChunk(body io.Reader, f *os.File, start, end int64, object, local []byte) (bool, int64, error) {
	var read int64
	for pos := start; pos < end; {
		n := int(min(int64(len(object)), end-pos))
		got, err := io.ReadFull(body, object[:n])
		read += int64(got)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("the bucket sent %d bytes of the range from %d, want %d", pos-start+int64(got), start, end-start)
			}
			return false, read, err
		}
		if m, err := f.ReadAt(local[:n], pos); m < n {
			return false, read, fmt.Errorf("reading the file at %d: %w", pos, err)
		}
		if !bytes.Equal(object[:n], local[:n]) {
			return false, read, nil
		}
		pos += int64(n)
	}
	return true, read, nil
}
