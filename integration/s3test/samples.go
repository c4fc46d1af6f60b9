package s3test

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math/rand/v2"
)

// Keys of the sample objects, shaped like the ones Mastodon's Paperclip
// storage writes. Tests request them by URL path ("/" + key).
const (
	KeyOriginalPNG = "media_attachments/files/109/876/543/210/original/3f6a2c9d8e1b7a54.png"
	KeySmallPNG    = "media_attachments/files/109/876/543/210/small/3f6a2c9d8e1b7a54.png"
	KeyAvatarJPEG  = "accounts/avatars/109/876/543/210/original/a1b2c3d4e5f60718.jpg"
	KeyCachedMP4   = "cache/media_attachments/files/110/123/456/789/original/0f1e2d3c4b5a6978.mp4"
	KeyEmpty       = "media_attachments/files/109/000/000/001/original/e3b0c44298fc1c14.bin"
	KeyOneMB       = "media_attachments/files/111/222/333/444/original/5d41402abc4b2a76.webp"
	KeyThirtyMB    = "media_attachments/files/111/222/333/555/original/7b502c3a1f48c860.mp4"
	KeySpaceUTF8   = "media_attachments/files/odd/été photo.png"
)

// Sizes of the generated objects.
const (
	OneMB     = 1 << 20
	ThirtyMB  = 30 << 20
	pngWidth  = 16
	pngHeight = 12
)

// Object is one sample: its key (without any bucket prefix), body and
// Content-Type, and the Cache-Control stored with it, if any (Mastodon
// uploads media with "public, max-age=315576000, immutable").
type Object struct {
	Key          string
	Body         []byte
	ContentType  string
	CacheControl string
}

// Samples returns the Mastodon-shaped sample set: real PNG and JPEG images,
// an MP4-looking file, an empty object, 1 MB and 30 MB objects of
// deterministic pseudo-random bytes, and a key with a space and UTF-8.
// Everything is generated, so nothing binary is committed, and the same call
// always yields the same bytes.
func Samples() []Object {
	return []Object{
		{Key: KeyOriginalPNG, Body: PNG(pngWidth, pngHeight, 1), ContentType: "image/png"},
		{Key: KeySmallPNG, Body: PNG(pngWidth/2, pngHeight/2, 2), ContentType: "image/png"},
		{Key: KeyAvatarJPEG, Body: JPEG(pngWidth, pngWidth, 3), ContentType: "image/jpeg"},
		{Key: KeyCachedMP4, Body: FakeMP4(64<<10, 4), ContentType: "video/mp4"},
		{Key: KeyEmpty, Body: []byte{}, ContentType: "application/octet-stream"},
		{Key: KeyOneMB, Body: RandomBytes(OneMB, 5), ContentType: "image/webp"},
		{Key: KeyThirtyMB, Body: RandomBytes(ThirtyMB, 6), ContentType: "video/mp4"},
		{Key: KeySpaceUTF8, Body: PNG(pngWidth, pngWidth, 7), ContentType: "image/png"},
	}
}

// RandomBytes returns n deterministic pseudo-random bytes for seed.
func RandomBytes(n int, seed uint64) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	buf := make([]byte, n)
	// ChaCha8's Read fills the buffer in large blocks, so 30 MB takes
	// milliseconds.
	_, _ = rand.NewChaCha8(key).Read(buf)
	return buf
}

// PNG encodes a w×h gradient whose colours depend on seed, so different
// samples have different bytes.
func PNG(w, h int, seed uint8) []byte {
	var buf bytes.Buffer
	// Encoding an in-memory RGBA image to a bytes.Buffer cannot fail.
	_ = png.Encode(&buf, gradient(w, h, seed))
	return buf.Bytes()
}

// JPEG encodes a w×h gradient like PNG does.
func JPEG(w, h int, seed uint8) []byte {
	var buf bytes.Buffer
	_ = jpeg.Encode(&buf, gradient(w, h, seed), &jpeg.Options{Quality: 80})
	return buf.Bytes()
}

func gradient(w, h int, seed uint8) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(x * 255 / w), G: uint8(y * 255 / h), B: seed * 37, A: 255})
		}
	}
	return img
}

// FakeMP4 returns n bytes that start with an ISO BMFF "ftyp" box, as an MP4
// does, followed by pseudo-random payload. No player will decode it, but
// nothing in the handler looks past the bytes.
func FakeMP4(n int, seed uint64) []byte {
	body := RandomBytes(n, seed)
	header := []byte{0, 0, 0, 0x18, 'f', 't', 'y', 'p', 'i', 's', 'o', 'm', 0, 0, 2, 0, 'i', 's', 'o', 'm', 'm', 'p', '4', '1'}
	copy(body, header)
	return body
}
