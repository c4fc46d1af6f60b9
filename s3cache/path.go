package s3cache

import (
	"errors"
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

// statusForPathError maps a path error to the status the client gets.
func statusForPathError(err error) int {
	if errors.Is(err, errNoObject) {
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

// objectPath turns a request URL into the slash-separated path of an object,
// relative to both the local root and the bucket prefix, or fails with
// errBadPath (400) or errNoObject (404).
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
func objectPath(u *url.URL, stripPrefix string) (string, error) {
	if err := checkEscapes(u.EscapedPath()); err != nil {
		return "", err
	}
	p := u.Path
	if !strings.HasPrefix(p, "/") || !utf8.ValidString(p) {
		return "", errBadPath
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return "", errBadPath
		}
	}
	if stripPrefix != "" {
		rest, ok := strings.CutPrefix(p, stripPrefix)
		if !ok || (rest != "" && rest[0] != '/') {
			return "", errNoObject
		}
		p = rest
	}
	rel := strings.TrimPrefix(p, "/")
	if rel == "" || strings.HasSuffix(rel, "/") {
		// A "directory": S3 would answer with a listing or an empty
		// placeholder object, neither of which is media.
		return "", errNoObject
	}
	for seg := range strings.SplitSeq(rel, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", errBadPath
		}
	}
	return rel, nil
}

// checkEscapes rejects percent-escapes that would decode into a path
// separator or a NUL. After decoding they are indistinguishable from the
// real thing, so they must be caught in the escaped form.
func checkEscapes(escaped string) error {
	for i := 0; i+2 < len(escaped); i++ {
		if escaped[i] != '%' {
			continue
		}
		switch strings.ToLower(escaped[i+1 : i+3]) {
		case "2f", "5c", "00":
			return errBadPath
		}
	}
	return nil
}

// objectKey joins the bucket prefix and an object path into an S3 key.
// prefix has been normalised by Provision to have no leading or trailing
// slash.
func objectKey(prefix, rel string) string {
	if prefix == "" {
		return rel
	}
	return prefix + "/" + rel
}
