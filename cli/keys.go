package cli

import (
	"errors"
	"fmt"
	"mime"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// mastodonCacheControl is the Cache-Control Mastodon's Paperclip storage
// sets on every object it uploads; synced media gets the same, so the
// bucket cannot tell a migrated file from one Mastodon wrote.
const mastodonCacheControl = "public, max-age=315576000, immutable"

// maxKeyBytes is S3's limit on the length of an object key.
const maxKeyBytes = 1024

// objectKey is the key a file under the source directory is stored under:
// its slash-separated path relative to the source, after the prefix. It
// is the same join as the handler's prefix option, so a file synced with
// --prefix P is served by a site with `prefix P`.
func objectKey(prefix, rel string) string {
	rel = filepath.ToSlash(rel)
	if prefix == "" {
		return rel
	}
	return prefix + "/" + rel
}

// normalizePrefix trims the slashes around a key prefix, as the handler's
// Provision does, and rejects one that could never be requested.
func normalizePrefix(prefix string) (string, error) {
	p := strings.Trim(prefix, "/")
	if p == "" {
		return "", nil
	}
	if err := checkKey(p); err != nil {
		return "", fmt.Errorf("--prefix %q %w", prefix, err)
	}
	return p, nil
}

var (
	errKeyNotUTF8     = errors.New("is not valid UTF-8")
	errKeyControl     = errors.New("contains a control character")
	errKeyBackslash   = errors.New("contains a backslash")
	errKeyTooLong     = fmt.Errorf("is longer than S3's limit of %d bytes", maxKeyBytes)
	errKeyUnreachable = errors.New("has an empty, . or .. segment")
)

// checkKey rejects keys the handler would refuse to serve (it answers 400
// to a path with a control character, a backslash or invalid UTF-8, see
// s3cache/path.go) and keys S3 itself refuses. Uploading such a file
// would put an object in the bucket that no client can ever fetch.
func checkKey(key string) error {
	if len(key) > maxKeyBytes {
		return errKeyTooLong
	}
	if !utf8.ValidString(key) {
		return errKeyNotUTF8
	}
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c < 0x20 || c == 0x7f:
			return errKeyControl
		case c == '\\':
			return errKeyBackslash
		}
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errKeyUnreachable
		}
	}
	return nil
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
