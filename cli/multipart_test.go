package cli

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// s3MultipartETag is the ETag S3 gives body uploaded in parts of
// partSize bytes, computed the plain way: every part in memory.
func s3MultipartETag(body []byte, partSize int) string {
	var digests []byte
	parts := 0
	for start := 0; start < len(body) || parts == 0; start += partSize {
		part := md5.Sum(body[start:min(start+partSize, len(body))])
		digests = append(digests, part[:]...)
		parts++
	}
	whole := md5.Sum(digests)
	return fmt.Sprintf("%s-%d", hex.EncodeToString(whole[:]), parts)
}

func TestParseMultipartETag(t *testing.T) {
	const digest = "d1b18a46c69e36220b7c5d480083927f"
	for _, tc := range []struct {
		etag  string
		parts int
		ok    bool
	}{
		{digest + "-3", 3, true},
		{"D1B18A46C69E36220B7C5D480083927F-10000", 10000, true},
		{digest + "-1", 1, true},
		{digest, 0, false},
		{digest + "-0", 0, false},
		{digest + "-10001", 0, false},
		{digest + "-03", 0, false},
		{digest + "-+3", 0, false},
		{digest + "-3-4", 0, false},
		{"d1b18a46c69e36220b7c5d480083927-3", 0, false},
		{"", 0, false},
	} {
		m, ok := parseMultipartETag(tc.etag)
		if ok != tc.ok || m.parts != tc.parts || (ok && m.digest != digest) {
			t.Errorf("parseMultipartETag(%q) = %+v, %v; want %d parts, %v", tc.etag, m, ok, tc.parts, tc.ok)
		}
	}
}

// The candidates are the part sizes of the tools' defaults (and of their
// adjustments for huge files) that give the ETag's part count, plus the
// size over the count in whole MiB.
func TestPartSizeCandidates(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name  string
		size  int64
		parts int
		want  []int64
	}{
		{"aws s3 sync of 9 MiB: 8 MiB parts", 9 * mib, 2, []int64{5 * mib, 8 * mib}},
		{"aws s3 sync of 20 MiB and a bit: 8 MiB parts, or the size over 3", 20*mib + 12345, 3, []int64{7 * mib, 8 * mib}},
		{"20 MiB exactly in 4 parts: rclone's 5 MiB", 20 * mib, 4, []int64{5 * mib}},
		{"20 MiB and a bit in 5 parts: 5 MiB", 20*mib + 1, 5, []int64{5 * mib}},
		{"s3cmd's 15 MiB on 40 MiB", 40 * mib, 3, []int64{14 * mib, 15 * mib, 16 * mib}},
		{"100 MiB parts", 250 * mib, 3, []int64{84 * mib, 100 * mib}},
		{"no common size: the size over the count in MiB", 70 * mib, 10, []int64{7 * mib}},
		{"one part: the size, whatever the part size was", 3 * mib, 1, []int64{3 * mib}},
		{"one empty part", 0, 1, []int64{1}},
		{"awscli doubles 8 MiB past 10,000 parts: 128 MiB", 1200 * gib, 9600, []int64{128 * mib}},
		{"rclone past 10,000 parts of 5 MiB: size/10,000 in whole MiB", 60 * gib, 8778, []int64{7 * mib}},
		{"more parts than bytes", 3, 4, nil},
		{"over S3's part count", 100 * gib, 10001, nil},
		{"no parts", 10, 0, nil},
	} {
		got := partSizeCandidates(tc.size, tc.parts)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: partSizeCandidates(%d, %d) = %v, want %v", tc.name, tc.size, tc.parts, got, tc.want)
		}
		for _, p := range got {
			if partsFor(tc.size, p) != int64(tc.parts) {
				t.Errorf("%s: candidate %d gives %d parts", tc.name, p, partsFor(tc.size, p))
			}
		}
	}
	if got := candidatesFor(9*mib, "d1b18a46c69e36220b7c5d480083927f"); got != nil {
		t.Errorf("a plain ETag has candidates %v", got)
	}
}

// The hasher agrees with S3's way of computing a multipart ETag whatever
// the sizes of the writes, including writes that straddle part ends.
func TestPartHasherIsS3sMultipartETag(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	body := make([]byte, 3*mib+17)
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		size, partSize, write int
	}{
		{len(body), mib, 4096},
		{len(body), mib, 1000},
		{len(body), mib + 1, 1 << 20},
		{3 * mib, mib, mib}, // ends exactly at a part's end: no empty last part
		{3 * mib, 5 * mib, 7},
		{0, mib, 1},
	} {
		h := newPartHasher(int64(tc.partSize))
		for start := 0; start < tc.size; start += tc.write {
			if _, err := h.Write(body[start:min(start+tc.write, tc.size)]); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := h.etag(), s3MultipartETag(body[:tc.size], tc.partSize); got != want {
			t.Errorf("%d bytes in parts of %d written %d at a time: %s, want %s", tc.size, tc.partSize, tc.write, got, want)
		}
	}
}

// One read gives the MD5, the SHA-256 and the ETag of every candidate;
// compare finds the object the same when one of them is its ETag.
func TestSumHashesEveryPartSizeInOneRead(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 20*mib/16+99)
	size := int64(len(body))
	reads := 0
	sums, n, err := sum(readCounter{bytes.NewReader(body), &reads}, 5*mib, 8*mib)
	if err != nil || n != size {
		t.Fatalf("sum: %d bytes, %v", n, err)
	}
	if len(sums.multipart) != 2 || sums.multipart[0].etag != s3MultipartETag(body, 5*mib) || sums.multipart[1].etag != s3MultipartETag(body, 8*mib) {
		t.Fatalf("multipart ETags %+v", sums.multipart)
	}
	if sums.md5 != md5.Sum(body) || !sums.triedPartSize(8*mib) || sums.triedPartSize(16*mib) {
		t.Errorf("md5 %x, tried 8 MiB %v", sums.md5, sums.triedPartSize(8*mib))
	}
	if limit := int(size/(32<<10)) + 2; reads > limit {
		t.Errorf("%d reads of the body, want one pass (at most %d)", reads, limit)
	}
	changed := bytes.Clone(body)
	changed[12*mib] ^= 1
	other, _, _ := sum(bytes.NewReader(changed), 5*mib, 8*mib)
	for _, tc := range []struct {
		name string
		etag string
		want verdict
	}{
		{"aws's 8 MiB parts", s3MultipartETag(body, 8*mib), same},
		{"rclone's 5 MiB parts", s3MultipartETag(body, 5*mib), same},
		{"upper case", bytesToUpper(s3MultipartETag(body, 8*mib)), same},
		{"a part size not tried", s3MultipartETag(body, 7*mib), checksumUnknown},
		{"one byte changed", s3MultipartETag(changed, 8*mib), checksumUnknown},
	} {
		if got := compare(size, sums, remoteObject{exists: true, size: size, etag: tc.etag}); got != tc.want {
			t.Errorf("%s: compare = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := compare(size, other, remoteObject{exists: true, size: size, etag: s3MultipartETag(body, 8*mib), sha256: other.sha256Hex()}); got != same {
		t.Errorf("x-amz-meta-sha256 equal: %v, want same (any match is enough)", got)
	}
	if got := compare(size, sums, remoteObject{exists: true, size: size, etag: s3MultipartETag(changed, 8*mib), sha256: other.sha256Hex()}); got != checksumDiffers {
		t.Errorf("x-amz-meta-sha256 different, no ETag match: %v, want checksumDiffers", got)
	}
}

func bytesToUpper(s string) string { return string(bytes.ToUpper([]byte(s))) }

// readCounter counts the Read calls made on r.
type readCounter struct {
	r     *bytes.Reader
	reads *int
}

func (c readCounter) Read(b []byte) (int, error) {
	*c.reads++
	return c.r.Read(b)
}
