package cli

import (
	"crypto/md5"
	"encoding/hex"
	"hash"
	"slices"
	"strconv"
	"strings"
)

// An object uploaded in parts has an ETag that is not the MD5 of its
// bytes but the MD5 of its parts' MD5s, followed by "-" and the number of
// parts: "<md5 of the concatenated part MD5s>-N". Mastodon's guide seeds
// the bucket with `aws s3 sync`, which uploads every file over 8 MiB that
// way, so most large media arrive in the bucket with such an ETag and no
// x-amz-meta-sha256. The local file reproduces the ETag only when it is
// cut at the same part size, which the ETag does not say; the part count
// and the size narrow it down to a few candidates, which the file is
// hashed with in the same read as its MD5 and SHA-256.

const (
	mib = 1 << 20
	// maxParts and maxPartBytes are S3's limits on a multipart upload.
	maxParts     = 10000
	maxPartBytes = 5 << 30
)

// multipartETag is a parsed multipart ETag.
type multipartETag struct {
	digest string // 32 hex digits, lower case
	parts  int
}

// parseMultipartETag reads an ETag (without quotes) of the form
// "<32 hex digits>-<parts>", reporting false for any other shape.
func parseMultipartETag(etag string) (multipartETag, bool) {
	digest, count, ok := strings.Cut(etag, "-")
	if !ok || !isPlainMD5(digest) {
		return multipartETag{}, false
	}
	parts, err := strconv.Atoi(count)
	if err != nil || parts < 1 || parts > maxParts || count != strconv.Itoa(parts) {
		return multipartETag{}, false
	}
	return multipartETag{digest: strings.ToLower(digest), parts: parts}, true
}

// partsFor is how many parts a file of size bytes is cut into with parts
// of partSize bytes. An empty file is still uploaded as one (empty) part.
func partsFor(size, partSize int64) int64 {
	return max(1, (size+partSize-1)/partSize)
}

// roundUpToMiB rounds n up to a whole number of MiB.
func roundUpToMiB(n int64) int64 {
	return (n + mib - 1) / mib * mib
}

// partSizeCandidates are the part sizes that cut a file of size bytes
// into exactly parts parts, among those the tools that seed buckets use:
//   - the defaults: rclone's 5 MiB (--s3-chunk-size), awscli's 8 MiB
//     (multipart_chunksize), s3cmd's 15 MiB (multipart_chunk_size_mb),
//     and the round sizes admins set instead (16, 32, 64, 100 MiB);
//   - awscli's 8 MiB doubled until a file fits in 10,000 parts, up to
//     S3's 5 GiB per part;
//   - size/parts rounded up to a whole MiB, which is the part size of any
//     tool that splits a file evenly in whole MiB, and rclone's for a
//     file too large for 10,000 parts of its chunk size (it takes
//     size/10,000 rounded up to a whole MiB, which cuts the file into
//     thousands of parts: size/parts rounds up to the same MiB).
//
// For one part, the part size does not change the ETag, and the only
// candidate is the file's size. The result is sorted and has no
// duplicates; it may be empty.
func partSizeCandidates(size int64, parts int) []int64 {
	if size < 0 || parts < 1 || parts > maxParts {
		return nil
	}
	if parts == 1 {
		if size > maxPartBytes {
			return nil
		}
		return []int64{max(size, 1)}
	}
	guesses := []int64{5 * mib, 8 * mib, 15 * mib, 16 * mib, 32 * mib, 64 * mib, 100 * mib}
	for p := int64(128 * mib); p <= maxPartBytes; p *= 2 {
		guesses = append(guesses, p)
	}
	guesses = append(guesses, roundUpToMiB((size+int64(parts)-1)/int64(parts)))
	var fit []int64
	for _, p := range guesses {
		if p > 0 && p <= maxPartBytes && partsFor(size, p) == int64(parts) {
			fit = append(fit, p)
		}
	}
	slices.Sort(fit)
	return slices.Compact(fit)
}

// candidatesFor are the part sizes worth hashing the file with to
// compare it with an object of that ETag: none unless it is a multipart
// ETag.
func candidatesFor(size int64, etag string) []int64 {
	m, ok := parseMultipartETag(etag)
	if !ok {
		return nil
	}
	return partSizeCandidates(size, m.parts)
}

// partHasher computes the multipart ETag of the bytes written to it, cut
// into parts of partSize bytes, as S3 computes it from the parts
// uploaded. Several of them take the same bytes in one read.
type partHasher struct {
	partSize int64
	part     hash.Hash // MD5 of the current part
	inPart   int64     // bytes in the current part
	digests  hash.Hash // MD5 of the finished parts' MD5s
	parts    int
}

func newPartHasher(partSize int64) *partHasher {
	return &partHasher{partSize: partSize, part: md5.New(), digests: md5.New()}
}

func (h *partHasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(int64(len(p)), h.partSize-h.inPart)
		h.part.Write(p[:take])
		h.inPart += take
		p = p[take:]
		if h.inPart == h.partSize {
			h.endPart()
		}
	}
	return n, nil
}

func (h *partHasher) endPart() {
	var digest [md5.Size]byte
	h.digests.Write(h.part.Sum(digest[:0]))
	h.part.Reset()
	h.inPart = 0
	h.parts++
}

// etag ends the last part and returns the ETag of the whole, without
// quotes. The hasher takes no more bytes after it.
func (h *partHasher) etag() string {
	if h.inPart > 0 || h.parts == 0 {
		h.endPart()
	}
	return hex.EncodeToString(h.digests.Sum(nil)) + "-" + strconv.Itoa(h.parts)
}

// compositeETag is the multipart ETag the local file has when cut into
// parts of partSize bytes.
type compositeETag struct {
	partSize int64
	etag     string
}
