package cli

import (
	"fmt"
	"mime"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/s3mediacache/caddy-s3-media-cache/s3cache"
)

// mastodonCacheControl is the Cache-Control Mastodon's Paperclip storage
// sets on every object it uploads; synced media gets the same, so the
// bucket cannot tell a migrated file from one Mastodon wrote.
const mastodonCacheControl = "public, max-age=315576000, immutable"

// objectKey is the key a file under the source directory is stored under:
// its path relative to the source, after the prefix, joined as the
// handler joins its prefix option to a request's path.
func objectKey(prefix, rel string) string {
	return s3cache.JoinKey(prefix, filepath.ToSlash(rel))
}

// checkKey refuses a key no request could ever reach: uploading such a
// file would put an object in the bucket that no client can fetch. The
// rules are the handler's (s3cache.CheckKey).
func checkKey(key string) error {
	return s3cache.CheckKey(key)
}

// normalizePrefix trims the slashes around --prefix, as the handler does
// with its prefix option, and refuses one no request could reach.
func normalizePrefix(prefix string) (string, error) {
	p, err := s3cache.NormalizePrefix(prefix)
	if err != nil {
		return "", fmt.Errorf("--prefix %w", err)
	}
	return p, nil
}

// mediaTypes are the types of the formats Mastodon stores (its
// MediaAttachment IMAGE_, VIDEO_ and AUDIO_MIME_TYPES), fixed here
// because the system's table varies: Go's built-in one lacks audio and
// video, and /etc/mime.types, which overrides it, differs between
// distributions (.webm is audio/webm on some, video/webm on others).
var mediaTypes = map[string]string{
	".jpg":  "image/jpeg",
	".jpeg": "image/jpeg",
	".png":  "image/png",
	".gif":  "image/gif",
	".webp": "image/webp",
	".avif": "image/avif",
	".heic": "image/heic",
	".heif": "image/heif",
	".mp4":  "video/mp4",
	".m4v":  "video/mp4",
	".webm": "video/webm",
	".mov":  "video/quicktime",
	".ogv":  "video/ogg",
	".mp3":  "audio/mpeg",
	".m4a":  "audio/mp4",
	".aac":  "audio/aac",
	".ogg":  "audio/ogg",
	".oga":  "audio/ogg",
	".opus": "audio/ogg",
	".wav":  "audio/wav",
	".flac": "audio/flac",
}

// contentType is the Content-Type an object is uploaded with: the media
// type of the file's extension, else the system's type for it, else
// application/octet-stream, the type S3 itself gives an object uploaded
// without one.
func contentType(name string) string {
	ext := filepath.Ext(name)
	if ext == "" {
		return "application/octet-stream"
	}
	if t, ok := mediaTypes[strings.ToLower(ext)]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}

// printable returns a path as it can be shown on a terminal: as is when
// it is clean, quoted when it holds control characters or invalid UTF-8
// that would otherwise reach the terminal raw.
func printable(path string) string {
	if checkPrintable(path) {
		return path
	}
	return strconv.Quote(path)
}

func checkPrintable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
