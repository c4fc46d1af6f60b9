package s3cache

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
)

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func TestMD5OfETag(t *testing.T) {
	sum := md5Hex([]byte("x"))
	tests := []struct {
		name   string
		header http.Header
		want   bool
	}{
		{"plain MD5", http.Header{"Etag": {`"` + sum + `"`}}, true},
		{"weak MD5", http.Header{"Etag": {`W/"` + sum + `"`}}, true},
		{"multipart", http.Header{"Etag": {`"` + sum + `-3"`}}, false},
		{"not hex", http.Header{"Etag": {`"` + sum[:30] + `zz"`}}, false},
		{"short", http.Header{"Etag": {`"abc"`}}, false},
		{"none", http.Header{}, false},
		{"KMS", http.Header{"Etag": {`"` + sum + `"`}, "X-Amz-Server-Side-Encryption": {"aws:kms"}}, false},
		{"customer key", http.Header{"Etag": {`"` + sum + `"`}, "X-Amz-Server-Side-Encryption-Customer-Algorithm": {"AES256"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := md5OfETag(tt.header)
			if ok != tt.want || (ok && hex.EncodeToString(got) != sum) {
				t.Fatalf("md5OfETag = %x, %v; want ok %v", got, ok, tt.want)
			}
		})
	}
}

// TestBodiesAreCheckedAgainstTheirETag runs fills through
// etagCheckingOrigin: a body that matches is stored; one that differs, or
// that is longer than its Content-Length says (the client would otherwise
// see a complete-looking short response), is cut before its last bytes and
// never stored.
func TestBodiesAreCheckedAgainstTheirETag(t *testing.T) {
	data := objectBytes(3*blockSize + 100)
	other := bytes.Clone(data)
	other[len(other)/2] ^= 1
	tests := []struct {
		name       string
		body       []byte // what S3 sends
		length     int    // the Content-Length it declares
		wantStored bool
	}{
		{"matching", data, len(data), true},
		{"one byte changed", other, len(other), false},
		{"Content-Length short of the body", data, len(data) - 1000, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
				resp := okResponse(tt.body, io.NopCloser(bytes.NewReader(tt.body[:tt.length])))
				resp.header.Set("Content-Length", strconv.Itoa(tt.length))
				resp.header.Set("Etag", `"`+md5Hex(data)+`"`)
				return resp, nil
			}}
			h := newCachedHandler(t, etagCheckingOrigin{origin: o}, t.TempDir(), nil)
			srv := serve(t, h)
			// A body that fails is never delivered complete: the
			// transfer is cut (before or after its status line), or,
			// if it failed before the client's first byte, answered 502.
			resp, got, err := fetch(http.DefaultClient, srv.URL+"/v/a.mp4")
			complete := err == nil && resp.StatusCode == http.StatusOK
			if tt.wantStored != complete {
				t.Fatalf("error %v (%d bytes); want a complete 200: %v", err, len(got), tt.wantStored)
			}
			if complete && !bytes.Equal(got, data) {
				t.Fatal("wrong bytes")
			}
			if tt.wantStored {
				waitStored(t, h, "v/a.mp4")
			} else {
				wantNoBodyStored(t, h, "v/a.mp4")
			}
		})
	}
}

// TestETagMismatchEndsAPassThrough reads a mismatched body directly: the
// last read is the error, not the last bytes.
func TestETagMismatchEndsAPassThrough(t *testing.T) {
	data := objectBytes(1000)
	o := &scriptedOrigin{respond: func(originRequest) (*originResponse, error) {
		resp := okResponse(data, io.NopCloser(bytes.NewReader(data)))
		resp.header.Set("Etag", `"`+md5Hex([]byte("something else"))+`"`)
		return resp, nil
	}}
	resp, err := etagCheckingOrigin{origin: o}.fetch(t.Context(), originRequest{key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.body)
	if !errors.Is(err, errETagMismatch) || len(got) >= len(data) {
		t.Fatalf("read %d bytes, error %v; want fewer than %d and errETagMismatch", len(got), err, len(data))
	}
}
