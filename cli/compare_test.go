package cli

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func sumsOf(body string) checksums {
	c, _, _ := sum(strings.NewReader(body), partSizeCandidates(int64(len(body)), 1)...)
	return c
}

func TestSumIsMD5AndSHA256InOneRead(t *testing.T) {
	body := "media bytes"
	c, n, err := sum(strings.NewReader(body))
	wantMD5, wantSHA := md5.Sum([]byte(body)), sha256.Sum256([]byte(body))
	if err != nil || n != int64(len(body)) || c.md5 != wantMD5 || c.sha256 != wantSHA {
		t.Fatalf("sum = %x %x %d %v", c.md5, c.sha256, n, err)
	}
	if c.md5Hex() != hex.EncodeToString(wantMD5[:]) || c.md5Base64() != base64.StdEncoding.EncodeToString(wantMD5[:]) {
		t.Errorf("md5Hex %s, md5Base64 %s", c.md5Hex(), c.md5Base64())
	}
}

// The skip rule: same size, and either checksum the object carries
// matches; anything else is uploaded again (or reported by verify).
func TestCompareSkipRule(t *testing.T) {
	const body = "the file's bytes"
	local := sumsOf(body)
	other := sumsOf("other bytes here")
	size := int64(len(body))
	for _, tc := range []struct {
		name string
		obj  remoteObject
		want verdict
	}{
		{"missing", remoteObject{}, missing},
		{"other size", remoteObject{exists: true, size: size + 1, etag: local.md5Hex()}, sizeDiffers},
		{"plain MD5 ETag equal", remoteObject{exists: true, size: size, etag: local.md5Hex()}, same},
		{"plain MD5 ETag in upper case", remoteObject{exists: true, size: size, etag: strings.ToUpper(local.md5Hex())}, same},
		{"plain MD5 ETag different", remoteObject{exists: true, size: size, etag: other.md5Hex()}, checksumDiffers},
		{"multipart ETag, sha256 equal", remoteObject{exists: true, size: size, etag: "0123456789abcdef0123456789abcdef-2", sha256: local.sha256Hex()}, same},
		{"multipart ETag, sha256 different", remoteObject{exists: true, size: size, etag: "0123456789abcdef0123456789abcdef-2", sha256: other.sha256Hex()}, checksumDiffers},
		{"multipart ETag, no sha256", remoteObject{exists: true, size: size, etag: "0123456789abcdef0123456789abcdef-2"}, checksumUnknown},
		// SSE-KMS: 32 hex digits that are not the MD5; the metadata decides.
		{"one-part multipart ETag of the file", remoteObject{exists: true, size: size, etag: s3MultipartETag([]byte(body), len(body))}, same},
		{"non-MD5 plain ETag, sha256 equal", remoteObject{exists: true, size: size, etag: other.md5Hex(), sha256: local.sha256Hex()}, same},
		{"empty ETag, no sha256", remoteObject{exists: true, size: size}, checksumUnknown},
	} {
		if got := compare(size, local, tc.obj); got != tc.want {
			t.Errorf("%s: compare = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestQuickVerdictNeedsNoBytesForMissingOrResized(t *testing.T) {
	if v, ok := quickVerdict(5, remoteObject{}); !ok || v != missing {
		t.Errorf("missing: %v %v", v, ok)
	}
	if v, ok := quickVerdict(5, remoteObject{exists: true, size: 6}); !ok || v != sizeDiffers {
		t.Errorf("resized: %v %v", v, ok)
	}
	if _, ok := quickVerdict(5, remoteObject{exists: true, size: 5}); ok {
		t.Error("same size decided without the checksums")
	}
}

func TestIsPlainMD5(t *testing.T) {
	for etag, want := range map[string]bool{
		"d41d8cd98f00b204e9800998ecf8427e":   true,
		"D41D8CD98F00B204E9800998ECF8427E":   true,
		"d41d8cd98f00b204e9800998ecf8427e-3": false,
		"d41d8cd98f00b204e9800998ecf8427":    false,
		"z41d8cd98f00b204e9800998ecf8427e":   false,
		"":                                   false,
	} {
		if got := isPlainMD5(etag); got != want {
			t.Errorf("isPlainMD5(%q) = %v", etag, got)
		}
	}
}

func TestTrimQuotes(t *testing.T) {
	for in, want := range map[string]string{`"abc"`: "abc", "abc": "abc", `"`: `"`, "": ""} {
		if got := trimQuotes(in); got != want {
			t.Errorf("trimQuotes(%q) = %q", in, got)
		}
	}
}
