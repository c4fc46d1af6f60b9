package s3cache

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// errETagMismatch ends a body whose bytes are not the ones its ETag
// promised.
var errETagMismatch = errors.New("body does not match its ETag (MD5)")

// etagCheckingOrigin checks whole-object bodies against their ETag where S3
// defines the ETag as the MD5 of the body: an object uploaded in one part
// and not encrypted with KMS or a customer key. HTTP alone cannot catch
// every wrong body: a Content-Length smaller than what S3 actually holds
// gives a well-formed but short response, which Go's client reads as
// complete. nginx notices extra bytes on its own socket; this check
// notices any difference at all.
//
// The check holds back nothing and costs one MD5 pass (hundreds of MB/s)
// on bytes that came over the network anyway. A body that fails it ends
// with errETagMismatch instead of its last bytes, so a fill is never
// stored and every reader of it, like a pass-through client, sees a cut
// transfer rather than a complete-looking wrong one.
type etagCheckingOrigin struct {
	origin
}

func (o etagCheckingOrigin) fetch(ctx context.Context, req originRequest) (*originResponse, error) {
	resp, err := o.origin.fetch(ctx, req)
	if err != nil || resp.body == nil || resp.status != http.StatusOK {
		return resp, err
	}
	want, ok := md5OfETag(resp.header)
	size, perr := strconv.ParseInt(resp.header.Get("Content-Length"), 10, 64)
	if !ok || perr != nil || size < 0 {
		return resp, nil
	}
	resp.body = &md5CheckedBody{ReadCloser: resp.body, want: want, remaining: size, sum: md5.New()}
	return resp, nil
}

// md5OfETag returns the MD5 an ETag stands for, if it stands for one:
// 32 hex digits, and no server-side encryption header, since S3 (and MinIO,
// Ceph...) give encrypted objects ETags that are not the MD5 of their
// plaintext. A multipart ETag ("...-3") never qualifies.
func md5OfETag(h http.Header) ([]byte, bool) {
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "x-amz-server-side-encryption") {
			return nil, false
		}
	}
	etag := strings.Trim(strings.TrimPrefix(h.Get("Etag"), "W/"), `"`)
	if len(etag) != 2*md5.Size {
		return nil, false
	}
	sum, err := hex.DecodeString(etag)
	return sum, err == nil
}

type md5CheckedBody struct {
	io.ReadCloser
	want      []byte
	remaining int64
	sum       hash.Hash
}

func (b *md5CheckedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.sum.Write(p[:n])
		b.remaining -= int64(n)
		if b.remaining <= 0 && (b.remaining < 0 || !bytes.Equal(b.sum.Sum(nil), b.want)) {
			return 0, errETagMismatch
		}
	}
	return n, err
}

// etagDigest checks a body read back from an entry against its ETag, when
// that is the body's MD5. It does nothing otherwise.
type etagDigest struct {
	want []byte
	sum  hash.Hash
}

func newETagDigest(m *entryMeta, enabled bool) etagDigest {
	if !enabled || !m.ETagIsMD5 {
		return etagDigest{}
	}
	want, err := hex.DecodeString(strings.Trim(strings.TrimPrefix(m.ETag, "W/"), `"`))
	if err != nil || len(want) != md5.Size {
		return etagDigest{}
	}
	return etagDigest{want: want, sum: md5.New()}
}

func (d *etagDigest) write(p []byte) {
	if d.sum != nil {
		d.sum.Write(p)
	}
}

func (d *etagDigest) check() error {
	if d.sum != nil && !bytes.Equal(d.sum.Sum(nil), d.want) {
		return errETagMismatch
	}
	return nil
}
