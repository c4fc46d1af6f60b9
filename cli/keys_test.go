package cli

import (
	"strings"
	"testing"
)

func TestObjectKeyIsThePathRelativeToTheSourceAfterThePrefix(t *testing.T) {
	for _, tc := range []struct{ prefix, rel, want string }{
		{"", "media_attachments/files/109/original/a.png", "media_attachments/files/109/original/a.png"},
		{"mastodon", "accounts/avatars/1/original/b.jpg", "mastodon/accounts/avatars/1/original/b.jpg"},
		{"a/b", "c.png", "a/b/c.png"},
		{"", "été photo.png", "été photo.png"},
	} {
		if got := objectKey(tc.prefix, tc.rel); got != tc.want {
			t.Errorf("objectKey(%q, %q) = %q, want %q", tc.prefix, tc.rel, got, tc.want)
		}
	}
}

func TestNormalizePrefixTrimsSlashesAndRejectsUnservableOnes(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", "/mastodon/": "mastodon", "a/b": "a/b", "//a//": "a"} {
		got, err := normalizePrefix(in)
		if err != nil || got != want {
			t.Errorf("normalizePrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a/../b", "a//b", "./a", "a\\b", "a\x00b", "tab\there"} {
		if _, err := normalizePrefix(bad); err == nil || !strings.Contains(err.Error(), "--prefix") {
			t.Errorf("normalizePrefix(%q) = %v, want an error naming --prefix", bad, err)
		}
	}
}

// Keys the handler answers 400 or 404 to would be objects no client can
// fetch: they are failures, not uploads (s3cache's TestCheckKey has the
// reasons).
func TestCheckKeyRejectsKeysNoClientCouldFetch(t *testing.T) {
	for key, ok := range map[string]bool{
		"media_attachments/files/1/original/a.png": true,
		"odd/été photo (1).png":                    true,
		"a/back\\slash.png":                        false,
		"a/new\nline.png":                          false,
		"a/\xff\xfe.png":                           false,
		"a//b.png":                                 false,
		strings.Repeat("k", 1025):                  false,
	} {
		if err := checkKey(key); (err == nil) != ok {
			t.Errorf("checkKey(%q) = %v", key, err)
		}
	}
}

func TestContentTypeComesFromTheExtension(t *testing.T) {
	for name, want := range map[string]string{
		"a.png":        "image/png",
		"a.PNG":        "image/png",
		"a.jpg":        "image/jpeg",
		"a.jpeg":       "image/jpeg",
		"a.gif":        "image/gif",
		"a.webp":       "image/webp",
		"a.mp4":        "video/mp4",
		"a.webm":       "video/webm",
		"a.mp3":        "audio/mpeg",
		"a.json":       "application/json",
		"dir.d/noext":  "application/octet-stream",
		"a.unknownext": "application/octet-stream",
	} {
		if got := contentType(name); got != want {
			t.Errorf("contentType(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestMediaTypesAreAudioVideoOrImage(t *testing.T) {
	for ext, typ := range mediaTypes {
		if ext != strings.ToLower(ext) || !strings.HasPrefix(ext, ".") {
			t.Errorf("mediaTypes key %q: want a lower-case extension with its dot", ext)
		}
		if major, _, _ := strings.Cut(typ, "/"); major != "audio" && major != "video" && major != "image" {
			t.Errorf("mediaTypes[%q] = %q", ext, typ)
		}
	}
}

func TestPrintableQuotesOnlyWhatWouldReachTheTerminalRaw(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/media/a.png":     "/srv/media/a.png",
		"/srv/été.png":         "/srv/été.png",
		"/srv/esc\x1b[31m.png": `"/srv/esc\x1b[31m.png"`,
		"/srv/\xff.png":        `"/srv/\xff.png"`,
		"/srv/back\\slash.png": "/srv/back\\slash.png",
		"/srv/new\nline.png":   `"/srv/new\nline.png"`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
}
