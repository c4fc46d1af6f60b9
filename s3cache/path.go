package s3cache

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// errBadPath and errNoObject are the two ways a request path can fail to
// name an object. They carry no detail on purpose: the client only needs the
// status, and echoing its input back is how log and response injection start.
var (
	errBadPath  = errors.New("malformed request path")
	errNoObject = errors.New("path does not name an object")
)

// S3's limits on a key: 1024 bytes in all, and, on the servers that keep
// objects as files (MinIO, Garage, versitygw), 255 bytes per segment. A
// path past them names no object anywhere, so it is a 404 without asking.
const (
	maxKeyBytes     = 1024
	maxSegmentBytes = 255
)

// statusForPathError maps a path error to the status the client gets.
func statusForPathError(err error) int {
	if errors.Is(err, errNoObject) {
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

// objectPath turns a request URL into the slash-separated path of an object,
// relative to both the local root and the bucket prefix, or fails with
// errBadPath (400) or errNoObject (404). See objectPathOf.
func objectPath(u *url.URL, stripPrefix string) (string, error) {
	return objectPathOf(rawPath(u), stripPrefix)
}

// rawPath is u's path as the client sent it, escapes included. Go keeps
// that in RawPath whenever it differs from the default encoding of the
// decoded Path; EscapedPath would encode Path afresh when RawPath has
// characters it would not have left raw (a "{", say), and so turn an
// encoded slash into a real one. A RawPath that no longer decodes to Path
// (a rewrite changed Path alone) is stale, and Path is what counts.
func rawPath(u *url.URL) string {
	if u.RawPath != "" {
		if p, err := url.PathUnescape(u.RawPath); err == nil && p == u.Path {
			return u.RawPath
		}
	}
	return u.EscapedPath()
}

// objectPathOf turns a path as sent on the wire (percent-escapes not yet
// decoded) into the slash-separated path of an object: the path is cut at
// its slashes first, and each segment decoded on its own, so an escape can
// never become a separator. This is the one place path rules are checked,
// for requests, purges and the admin API alike.
//
// Nothing is "fixed up": Mastodon never produces dot segments, encoded
// slashes or empty segments, so a request carrying one is either broken or
// probing, and rejecting it outright is the only way to be sure the same
// string can never mean one file on disk and another key in S3. This is
// stricter than nginx's merge_slashes and path normalisation on purpose.
//
// stripPrefix, when not empty, must start the path as whole segments
// ("/system" matches "/system/a.png", not "/systemd/a.png"); it is removed
// before the object path is returned.
func objectPathOf(raw, stripPrefix string) (string, error) {
	segments, err := decodeSegments(raw)
	if err != nil {
		return "", err
	}
	if stripPrefix != "" {
		for _, want := range strings.Split(strings.TrimPrefix(stripPrefix, "/"), "/") {
			if len(segments) == 0 || segments[0] != want {
				return "", errNoObject
			}
			segments = segments[1:]
		}
	}
	if len(segments) == 0 || segments[len(segments)-1] == "" {
		// A "directory": S3 would answer with a listing or an empty
		// placeholder object, neither of which is media.
		return "", errNoObject
	}
	for _, seg := range segments {
		switch {
		case seg == "" || seg == "." || seg == "..":
			return "", errBadPath
		case len(seg) > maxSegmentBytes:
			return "", errNoObject
		}
	}
	return strings.Join(segments, "/"), nil
}

// decodeSegments cuts a path as sent on the wire, which must start with
// "/", at its slashes, and decodes each segment (see decodeSegment).
func decodeSegments(raw string) ([]string, error) {
	rest, ok := strings.CutPrefix(raw, "/")
	if !ok {
		return nil, errBadPath
	}
	segments := strings.Split(rest, "/")
	for i, seg := range segments {
		decoded, err := decodeSegment(seg)
		if err != nil {
			return nil, err
		}
		segments[i] = decoded
	}
	return segments, nil
}

// decodeSegment decodes one path segment, refusing what a segment must
// not hold once decoded: a separator (an encoded "/" or "\"), a control
// character or NUL, or bytes that are not UTF-8.
func decodeSegment(seg string) (string, error) {
	decoded, err := url.PathUnescape(seg)
	if err != nil || !utf8.ValidString(decoded) {
		return "", errBadPath
	}
	for i := 0; i < len(decoded); i++ {
		if c := decoded[i]; c < 0x20 || c == 0x7f || c == '\\' || c == '/' {
			return "", errBadPath
		}
	}
	return decoded, nil
}

// keyMapping is how one site turns URL paths into object keys and cache
// keys: the one place those rules live, for requests, purges and the
// admin API.
type keyMapping struct {
	bucket, prefix, stripPrefix string
}

// keys returns the object key and the cache key of the object a URL path,
// as sent on the wire, names; or errBadPath or errNoObject.
func (m keyMapping) keys(rawPath string) (objectKey, cacheKey string, err error) {
	rel, err := objectPathOf(rawPath, m.stripPrefix)
	if err != nil {
		return "", "", err
	}
	if objectKey, err = m.objectKey(rel); err != nil {
		return "", "", err
	}
	return objectKey, m.cacheKey(objectKey), nil
}

// objectKey joins the bucket prefix and an object path into an S3 key.
func (m keyMapping) objectKey(rel string) (string, error) {
	return objectKey(m.prefix, rel)
}

// cacheKey names an object in the store. The bucket is part of it so two
// sites sharing a cache_dir with different buckets cannot collide.
func (m keyMapping) cacheKey(objectKey string) string {
	return m.bucket + "/" + objectKey
}

// objectKeyOf is the object key of a cache key, for logs, which name the
// object and never the bucket.
func (m keyMapping) objectKeyOf(cacheKey string) string {
	return strings.TrimPrefix(cacheKey, m.bucket+"/")
}

// objectKey is JoinKey for a request, whose path has passed objectPathOf's
// rules. It fails with errNoObject for a key longer than S3 allows.
func objectKey(prefix, rel string) (string, error) {
	key := JoinKey(prefix, rel)
	if len(key) > maxKeyBytes {
		return "", errNoObject
	}
	return key, nil
}

// JoinKey is the S3 key of the object at rel, a slash-separated path
// relative to the media root, under prefix (see NormalizePrefix): the join
// the handler serves a request by and `caddy s3-media-cache sync` uploads
// by, so that a file synced with --prefix P is served by a site with
// `prefix P`. CheckKey says whether a request could reach it.
func JoinKey(prefix, rel string) string {
	if prefix == "" {
		return rel
	}
	return prefix + "/" + rel
}

// Why CheckKey refuses a key; each completes "the key ...".
var (
	errKeyTooLong     = fmt.Errorf("is longer than S3's limit of %d bytes", maxKeyBytes)
	errKeyNotUTF8     = errors.New("is not valid UTF-8")
	errKeyControl     = errors.New("contains a control character")
	errKeyBackslash   = errors.New("contains a backslash")
	errKeyUnreachable = errors.New("has an empty, . or .. segment")
	errKeyLongSegment = fmt.Errorf("has a segment longer than %d bytes", maxSegmentBytes)
)

// CheckKey reports why no request could ever reach key: the rules
// objectPathOf applies to a request's path (each segment valid UTF-8,
// without control characters, backslashes or slashes, and not empty, "."
// or ".."), and S3's limits on its length. It is nil for a key the handler
// serves.
func CheckKey(key string) error {
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
		switch {
		case seg == "" || seg == "." || seg == "..":
			return errKeyUnreachable
		case len(seg) > maxSegmentBytes:
			return errKeyLongSegment
		}
	}
	return nil
}

// NormalizePrefix is the bucket prefix as keys are built with it: without
// the slashes around it. It fails, saying why, for a prefix no request
// could reach (see CheckKey).
func NormalizePrefix(prefix string) (string, error) {
	p := strings.Trim(prefix, "/")
	if p == "" {
		return "", nil
	}
	if err := CheckKey(p); err != nil {
		return "", fmt.Errorf("%q %w", prefix, err)
	}
	return p, nil
}
