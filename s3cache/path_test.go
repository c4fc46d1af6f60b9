package s3cache

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestObjectPathAcceptsMastodonPaths(t *testing.T) {
	tests := []struct {
		name, target, strip, want string
	}{
		{"original", "/media_attachments/files/109/876/543/210/original/abc.png", "", "media_attachments/files/109/876/543/210/original/abc.png"},
		{"query ignored", "/accounts/avatars/1/original/a.jpg?v=3", "", "accounts/avatars/1/original/a.jpg"},
		{"encoded space", "/odd/%C3%A9t%C3%A9%20photo.png", "", "odd/été photo.png"},
		{"strip prefix", "/system/cache/a.mp4", "/system", "cache/a.mp4"},
		{"dots inside a name", "/a/b..c.png", "", "a/b..c.png"},
		{"encoded plus kept", "/a/b%2Bc.png", "", "a/b+c.png"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := objectPath(mustParse(t, tt.target), tt.strip)
			if err != nil {
				t.Fatalf("objectPath(%q) failed: %v", tt.target, err)
			}
			if got != tt.want {
				t.Fatalf("objectPath(%q) = %q, want %q", tt.target, got, tt.want)
			}
		})
	}
}

func TestObjectPathRejectsWhatCouldEscapeOrList(t *testing.T) {
	tests := []struct {
		name, target, strip string
		status              int
	}{
		{"dot dot", "/a/../etc/passwd", "", 400},
		{"leading dot dot", "/../etc/passwd", "", 400},
		{"encoded dot dot", "/a/%2e%2e/b", "", 400},
		{"upper encoded dot dot", "/%2E%2E/b", "", 400},
		{"dot segment", "/a/./b", "", 400},
		{"encoded slash", "/a%2Fb", "", 400},
		{"lower encoded slash", "/a%2fb", "", 400},
		{"encoded backslash", "/a%5Cb", "", 400},
		{"encoded NUL", "/a%00b", "", 400},
		// Go re-encodes a path holding these raw, and the re-encoding
		// turned %2F into a real separator.
		{"encoded slash beside a brace", "/odd%2Fa{b.png", "", 400},
		{"encoded slash beside a closing brace", "/odd%2Fa}b.png", "", 400},
		{"encoded slash beside a pipe", "/odd%2fa|b.png", "", 400},
		{"encoded slash beside a quote", "/odd%2Fa\"b.png", "", 400},
		{"encoded slash beside a caret", "/odd%2Fa^b.png", "", 400},
		{"encoded backslash beside a brace", "/odd%5Ca{b.png", "", 400},
		{"segment longer than a file name", "/a/" + strings.Repeat("x", 256) + ".png", "", 404},
		{"backslash", "/a\\b", "", 400},
		{"control char", "/a%01b", "", 400},
		{"DEL", "/a%7Fb", "", 400},
		{"newline", "/a%0Ab", "", 400},
		{"empty segment", "/a//b", "", 400},
		{"leading double slash", "//a", "", 400},
		{"invalid UTF-8", "/a%C0%AFb", "", 400},
		{"root", "/", "", 404},
		{"directory", "/media_attachments/", "", 404},
		{"outside strip prefix", "/other/a.png", "/system", 404},
		{"strip prefix is not a segment", "/systemd/a.png", "/system", 404},
		{"strip prefix alone", "/system", "/system", 404},
		{"strip prefix directory", "/system/", "/system", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := mustParse(t, tt.target)
			got, err := objectPath(u, tt.strip)
			if err == nil {
				t.Fatalf("objectPath(%q) = %q, want an error", tt.target, got)
			}
			if s := statusForPathError(err); s != tt.status {
				t.Fatalf("objectPath(%q): status %d, want %d", tt.target, s, tt.status)
			}
		})
	}
}

// TestObjectPathReadsTheRawPath checks that a path is cut at its
// slashes before its escapes are decoded, whatever form the URL holds it
// in: a rewritten URL whose RawPath is stale goes by its Path.
func TestObjectPathReadsTheRawPath(t *testing.T) {
	stale := &url.URL{Path: "/a/b.png", RawPath: "/other%2Fc.png"}
	if got, err := objectPath(stale, ""); err != nil || got != "a/b.png" {
		t.Fatalf("stale RawPath: %q, %v; want the Path's a/b.png", got, err)
	}
	literal := mustParse(t, "/a%25b.png") // a key with a literal %
	if got, err := objectPath(literal, ""); err != nil || got != "a%b.png" {
		t.Fatalf("%%25: %q, %v; want a%%b.png", got, err)
	}
}

func TestObjectKeyRefusesWhatS3CannotHold(t *testing.T) {
	long := strings.Repeat("a/", 511) + "bc" // 1024 bytes
	if key, err := objectKey("", long); err != nil || len(key) != 1024 {
		t.Fatalf("a 1024-byte key: %d bytes, %v; want it as it is", len(key), err)
	}
	if _, err := objectKey("", long+"d"); !errors.Is(err, errNoObject) {
		t.Fatalf("a 1025-byte key: %v, want errNoObject (404)", err)
	}
	if _, err := objectKey("mastodon", long); !errors.Is(err, errNoObject) {
		t.Fatalf("a prefix that makes the key too long: %v, want errNoObject", err)
	}
}

func TestObjectKeyJoinsPrefix(t *testing.T) {
	tests := []struct{ prefix, rel, want string }{
		{"", "a/b.png", "a/b.png"},
		{"mastodon", "a/b.png", "mastodon/a/b.png"},
		{"a/b", "c.png", "a/b/c.png"},
	}
	for _, tt := range tests {
		if got, err := objectKey(tt.prefix, tt.rel); err != nil || got != tt.want {
			t.Errorf("objectKey(%q, %q) = %q, want %q", tt.prefix, tt.rel, got, tt.want)
		}
	}
}

// FuzzObjectPath checks the invariants that keep a request inside the root
// and the bucket prefix, whatever the client sends.
func FuzzObjectPath(f *testing.F) {
	for _, seed := range []string{
		"/a/b.png", "/../x", "/%2e%2e/x", "/a%2fb", "/a%00", "/a\\b", "//a", "/a/./b",
		"/system/a.png", "/%C0%AE%C0%AE/x", "/a?b=c", "/\x7f", "/é.png",
	} {
		f.Add(seed, "/system")
	}
	f.Fuzz(func(t *testing.T, target, strip string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		rel, err := objectPath(u, strip)
		if err != nil {
			if s := statusForPathError(err); s != http.StatusBadRequest && s != http.StatusNotFound {
				t.Fatalf("status %d for %q", s, target)
			}
			if !errors.Is(err, errBadPath) && !errors.Is(err, errNoObject) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if rel == "" || strings.HasPrefix(rel, "/") || strings.HasSuffix(rel, "/") {
			t.Fatalf("%q gave %q: empty or not relative", target, rel)
		}
		if !utf8.ValidString(rel) || strings.ContainsAny(rel, "\\\x00") {
			t.Fatalf("%q gave %q: invalid bytes", target, rel)
		}
		for _, seg := range strings.Split(rel, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("%q gave %q: dangerous segment %q", target, rel, seg)
			}
			for _, c := range []byte(seg) {
				if c < 0x20 || c == 0x7f {
					t.Fatalf("%q gave %q: control byte", target, rel)
				}
			}
		}
	})
}

func mustParse(t *testing.T, target string) *url.URL {
	t.Helper()
	u, err := url.ParseRequestURI(target)
	if err != nil {
		t.Fatalf("parsing %q: %v", target, err)
	}
	return u
}

// TestCheckKey: the keys no request could reach, each with its reason.
func TestCheckKey(t *testing.T) {
	for key, want := range map[string]error{
		"media_attachments/files/1/original/a.png": nil,
		"odd/été photo (1).png":                    nil,
		"a/back\\slash.png":                        errKeyBackslash,
		"a/new\nline.png":                          errKeyControl,
		"a/esc\x1b[31m.png":                        errKeyControl,
		"a/del\x7f.png":                            errKeyControl,
		"a/\xff\xfe.png":                           errKeyNotUTF8,
		"a//b.png":                                 errKeyUnreachable,
		"a/../b.png":                               errKeyUnreachable,
		"a/" + strings.Repeat("s", maxSegmentBytes+1): errKeyLongSegment,
		keyOfLength(maxKeyBytes):                      nil,
		keyOfLength(maxKeyBytes + 1):                  errKeyTooLong,
	} {
		if err := CheckKey(key); !errors.Is(err, want) {
			t.Errorf("CheckKey(%q) = %v, want %v", key, err, want)
		}
	}
}

// TestCheckKeyAgreesWithRequests: CheckKey accepts exactly the keys a
// request (each segment percent-encoded) reaches, so sync uploads no
// object the handler would refuse to serve, and refuses none it serves.
func TestCheckKeyAgreesWithRequests(t *testing.T) {
	for _, key := range []string{
		"media_attachments/files/1/original/a.png", "odd/été photo (1).png", "a/b..c.png",
		"a/back\\slash.png", "a/new\nline.png", "a/del\x7f.png", "a/\xff.png", "a//b.png", "a/./b.png",
		"a/../b.png", "dir/", "", "a/" + strings.Repeat("s", maxSegmentBytes), "a/" + strings.Repeat("s", maxSegmentBytes+1),
		keyOfLength(maxKeyBytes), keyOfLength(maxKeyBytes + 1),
	} {
		segments := strings.Split(key, "/")
		for i, seg := range segments {
			segments[i] = url.PathEscape(seg)
		}
		_, _, reqErr := keyMapping{bucket: "b"}.keys("/" + strings.Join(segments, "/"))
		if keyErr := CheckKey(key); (keyErr == nil) != (reqErr == nil) {
			t.Errorf("key %q: CheckKey says %v, a request gets %v", key, keyErr, reqErr)
		}
	}
}

// keyOfLength is a key of n bytes made of short segments.
func keyOfLength(n int) string {
	key := []byte(strings.Repeat("kkkkkkkkk/", n/10+1)[:n])
	key[n-1] = 'k'
	return string(key)
}
