package cli

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// checksums of a local file, all computed in one read: MD5 because it
// is what a single-part upload's ETag is (and S3 checks Content-MD5 on
// upload), SHA-256 because it is what sync stores in x-amz-meta-sha256
// for the objects whose ETag is not an MD5, and the multipart ETags the
// file has when cut at the part sizes the object may have been uploaded
// with.
type checksums struct {
	md5       [md5.Size]byte
	sha256    [sha256.Size]byte
	multipart []compositeETag
}

// sum reads r to the end and returns its checksums and length, with the
// multipart ETag for each of partSizes.
func sum(r io.Reader, partSizes ...int64) (checksums, int64, error) {
	m, s := md5.New(), sha256.New()
	writers := []io.Writer{m, s}
	hashers := make([]*partHasher, len(partSizes))
	for i, size := range partSizes {
		hashers[i] = newPartHasher(size)
		writers = append(writers, hashers[i])
	}
	n, err := io.Copy(io.MultiWriter(writers...), r)
	var c checksums
	m.Sum(c.md5[:0])
	s.Sum(c.sha256[:0])
	for _, h := range hashers {
		c.multipart = append(c.multipart, compositeETag{partSize: h.partSize, etag: h.etag()})
	}
	return c, n, err
}

// matchesMultipart reports whether one of the file's multipart ETags is
// etag.
func (c checksums) matchesMultipart(etag string) bool {
	for _, m := range c.multipart {
		if strings.EqualFold(m.etag, etag) {
			return true
		}
	}
	return false
}

// triedPartSize reports whether the file was hashed in parts of size.
func (c checksums) triedPartSize(size int64) bool {
	for _, m := range c.multipart {
		if m.partSize == size {
			return true
		}
	}
	return false
}

func (c checksums) md5Hex() string    { return hex.EncodeToString(c.md5[:]) }
func (c checksums) md5Base64() string { return base64.StdEncoding.EncodeToString(c.md5[:]) }
func (c checksums) sha256Hex() string { return hex.EncodeToString(c.sha256[:]) }

// sha256MetaKey is the user metadata key sync writes the SHA-256 under;
// S3 sends it back as x-amz-meta-sha256.
const sha256MetaKey = "sha256"

// remoteObject is what a HEAD of a key said about the object.
type remoteObject struct {
	exists bool
	size   int64
	// etag is the ETag without its quotes.
	etag string
	// sha256 is the x-amz-meta-sha256 metadata, "" when there is none.
	sha256 string
}

// verdict is how an object in the bucket compares with the local file.
type verdict int

const (
	same verdict = iota
	missing
	sizeDiffers
	checksumDiffers
	// checksumUnknown: same size, but the ETag is not an MD5, no part
	// size tried reproduces it, and there is no x-amz-meta-sha256 to
	// compare. Only the bucket can settle it (see settle); it is never
	// reported.
	checksumUnknown
	// bytesDiffer: the object, read back from the bucket, has other
	// bytes than the file.
	bytesDiffer
)

// quickVerdict decides what the size alone can: a missing object or one
// of another size is different without reading the file. It reports
// false when the checksums must decide.
func quickVerdict(size int64, obj remoteObject) (verdict, bool) {
	switch {
	case !obj.exists:
		return missing, true
	case obj.size != size:
		return sizeDiffers, true
	}
	return same, false
}

// compare is the skip rule of sync and the check of verify: the object
// is the same as the file when it has the same size and either its ETag
// is a plain MD5 equal to the file's, or its x-amz-meta-sha256 equals the
// file's SHA-256, or its ETag is a multipart one that the file, cut at
// one of the part sizes tried, reproduces. Any match is enough: a plain
// ETag is not always an MD5 (AWS's SSE-KMS and SSE-C make it something
// else), and the metadata, which S3 replaces on every PUT, was written by
// a sync that S3 checked against Content-MD5.
//
// A multipart ETag no part size tried reproduces proves nothing (the
// object may have been cut at another size), so without metadata to
// decide, the verdict is checksumUnknown, for settle.
func compare(size int64, local checksums, obj remoteObject) verdict {
	if v, decided := quickVerdict(size, obj); decided {
		return v
	}
	md5ETag := isPlainMD5(obj.etag)
	switch {
	case md5ETag && strings.EqualFold(obj.etag, local.md5Hex()):
		return same
	case obj.sha256 != "" && strings.EqualFold(obj.sha256, local.sha256Hex()):
		return same
	case local.matchesMultipart(obj.etag):
		return same
	case md5ETag || obj.sha256 != "":
		return checksumDiffers
	}
	return checksumUnknown
}

// isPlainMD5 reports whether an ETag (without quotes) has the shape of a
// single-part upload's, 32 hex digits. A multipart upload's ends in
// "-<parts>" and is not the MD5 of the bytes.
func isPlainMD5(etag string) bool {
	if len(etag) != 2*md5.Size {
		return false
	}
	_, err := hex.DecodeString(etag)
	return err == nil
}

// describe says why an object is not the same, for verify and --dry-run.
func describe(v verdict, size int64, obj remoteObject) string {
	switch v {
	case missing:
		return "not in the bucket"
	case sizeDiffers:
		return fmt.Sprintf("%d bytes in the bucket, %d here", obj.size, size)
	case checksumDiffers:
		return "same size, different checksum"
	case checksumUnknown:
		return fmt.Sprintf("same size, but ETag %q is not an MD5 and there is no x-amz-meta-sha256 to compare", obj.etag)
	case bytesDiffer:
		return "same size, different bytes (read back from the bucket)"
	}
	return "same"
}
