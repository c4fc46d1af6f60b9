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

func TestObjectKeyJoinsPrefix(t *testing.T) {
	tests := []struct{ prefix, rel, want string }{
		{"", "a/b.png", "a/b.png"},
		{"mastodon", "a/b.png", "mastodon/a/b.png"},
		{"a/b", "c.png", "a/b/c.png"},
	}
	for _, tt := range tests {
		if got := objectKey(tt.prefix, tt.rel); got != tt.want {
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
