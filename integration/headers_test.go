package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// Headers an S3 (or a CDN in front of it) may add, which must never reach
// the client, injected into real versitygw responses by the proxy.
func upstreamJunk() http.Header {
	return http.Header{
		"Set-Cookie":                       {"AWSALB=sticky; Path=/", "session=secret"},
		"X-Amz-Meta-Uploader":              {"alice@example.com"},
		"X-Amz-Server-Side-Encryption":     {"AES256"},
		"X-Amzn-Requestid":                 {"amzn-id"},
		"X-Amzn-Trace-Id":                  {"Root=1-abc"},
		"Access-Control-Allow-Origin":      {"https://evil.example"},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Expose-Headers":    {"x-amz-meta-uploader"},
		"Cache-Control":                    {"private, no-store"},
		"Expires":                          {"Thu, 01 Jan 1970 00:00:00 GMT"},
		"Content-Disposition":              {`inline; filename="photo.png"`},
		"Content-Language":                 {"fr"},
		"Content-Encoding":                 {"identity"},
	}
}

func TestUpstreamHeadersAreFiltered(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	head := do(t, http.MethodHead, urlPath(obj.Key))
	etag, lastModified := head.header.Get("ETag"), head.header.Get("Last-Modified")

	cases := []struct {
		name    string
		method  string
		headers []string
		status  int
	}{
		{"200", http.MethodGet, nil, http.StatusOK},
		{"HEAD 200", http.MethodHead, nil, http.StatusOK},
		{"206", http.MethodGet, []string{"Range: bytes=0-9"}, http.StatusPartialContent},
		{"304", http.MethodGet, []string{"If-None-Match: " + etag}, http.StatusNotModified},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.proxy.Reset()
			env.proxy.SetFault(s3test.Fault{Header: upstreamJunk()})
			r := do(t, c.method, urlPath(obj.Key), c.headers...)
			if r.status != c.status {
				t.Fatalf("status = %d, want %d", r.status, c.status)
			}
			// wantMediaHeaders also rejects x-amz-*, Set-Cookie and S3's
			// other Access-Control-* headers.
			wantMediaHeaders(t, r, "MISS")
			if c.status == http.StatusNotModified {
				return
			}
			kept := map[string]string{
				"Content-Type":        obj.ContentType,
				"ETag":                etag,
				"Last-Modified":       lastModified,
				"Content-Disposition": `inline; filename="photo.png"`,
				"Content-Language":    "fr",
				"Content-Encoding":    "identity",
				"Accept-Ranges":       "bytes",
			}
			for name, want := range kept {
				if got := r.header.Get(name); got != want {
					t.Errorf("%s = %q, want S3's %q", name, got, want)
				}
			}
			if c.method == http.MethodGet && r.status == http.StatusOK {
				wantBody(t, r, http.StatusOK, obj.Body)
			}
		})
	}
}

func TestErrorResponsesCarryNoMediaHeaders(t *testing.T) {
	load(t, siteConfig(blockFor()))
	t.Run("404", func(t *testing.T) {
		env.proxy.SetFault(s3test.Fault{Header: upstreamJunk()})
		r := do(t, http.MethodGet, "/media_attachments/missing.png")
		wantEmptyError(t, r, http.StatusNotFound)
		if got := r.header.Get("X-Cache-Status"); got != "MISS" {
			t.Errorf("X-Cache-Status = %q, want MISS", got)
		}
	})
	t.Run("502", func(t *testing.T) {
		env.proxy.SetFault(s3test.Fault{Status: 500, Header: upstreamJunk()})
		r := do(t, http.MethodGet, urlPath(s3test.KeyOriginalPNG))
		wantEmptyError(t, r, http.StatusBadGateway)
		if got := r.header.Get("X-Cache-Status"); got != "MISS" {
			t.Errorf("X-Cache-Status = %q, want MISS", got)
		}
	})
	env.proxy.ClearFault()
	t.Run("400", func(t *testing.T) {
		wantEmptyError(t, rawRequest(t, http.MethodGet, "/a%2Fb"), http.StatusBadRequest)
	})
	t.Run("405", func(t *testing.T) {
		wantEmptyError(t, do(t, http.MethodPost, urlPath(s3test.KeyOriginalPNG)), http.StatusMethodNotAllowed)
	})
}

func TestHeaderOverrides(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	lt := newLocalTree(t)
	cases := []struct {
		name    string
		options []string
		want    map[string]string // "" means absent
		expires time.Duration     // 0 means absent
	}{
		{
			name:    "cache_control off",
			options: []string{"cache_control off"},
			want:    map[string]string{"Cache-Control": "", "Access-Control-Allow-Origin": "*"},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "cache_control value",
			options: []string{`cache_control "public, max-age=60, immutable"`},
			want:    map[string]string{"Cache-Control": "public, max-age=60, immutable"},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "expires off",
			options: []string{"expires off"},
			want:    map[string]string{"Cache-Control": "public, max-age=31536000"},
		},
		{
			name:    "expires 1h",
			options: []string{"expires 1h"},
			want:    map[string]string{"Cache-Control": "public, max-age=31536000"},
			expires: time.Hour,
		},
		{
			name:    "cors_origin",
			options: []string{"cors_origin https://x.example"},
			want:    map[string]string{"Access-Control-Allow-Origin": "https://x.example"},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "cors_origin off",
			options: []string{"cors_origin off"},
			want:    map[string]string{"Access-Control-Allow-Origin": ""},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "content_security_policy",
			options: []string{`content_security_policy "default-src 'self'"`},
			want:    map[string]string{"Content-Security-Policy": "default-src 'self'"},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "content_security_policy off",
			options: []string{"content_security_policy off"},
			want:    map[string]string{"Content-Security-Policy": ""},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "nosniff off",
			options: []string{"nosniff off"},
			want:    map[string]string{"X-Content-Type-Options": ""},
			expires: 365 * 24 * time.Hour,
		},
		{
			name:    "hide_header",
			options: []string{"hide_header ETag", "hide_header last-modified Accept-Ranges"},
			want:    map[string]string{"ETag": "", "Last-Modified": "", "Accept-Ranges": "", "Content-Type": "image/png"},
			expires: 365 * 24 * time.Hour,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			load(t, siteConfig(blockFor(append(c.options, "root "+lt.root)...)))
			for _, source := range []struct {
				name, path string
				body       []byte
			}{
				{"S3", urlPath(s3test.KeyAvatarJPEG), env.objects.Get(s3test.KeyAvatarJPEG).Body},
				{"local", urlPath(obj.Key), lt.shadow},
			} {
				r := get(t, source.path)
				wantBody(t, r, http.StatusOK, source.body)
				for name, want := range c.want {
					if name == "Content-Type" && source.name == "S3" {
						want = "image/jpeg"
					}
					got, present := r.header[http.CanonicalHeaderKey(name)]
					switch {
					case want == "" && present:
						t.Errorf("%s: %s = %q, want it absent", source.name, name, got)
					case want != "" && (len(got) != 1 || got[0] != want):
						t.Errorf("%s: %s = %q, want %q", source.name, name, got, want)
					}
				}
				if c.expires == 0 {
					wantAbsent(t, r, "Expires")
				} else {
					wantExpiresIn(t, r, c.expires)
				}
			}
		})
	}
}

// RFC 9110 asks a 304 to carry the ETag and Last-Modified a 200 would
// have, so a browser can update its stored copy. AWS sends them on its
// 304; versitygw does not, so the proxy adds them here.
func TestNotModifiedKeepsS3Validators(t *testing.T) {
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	const lastModified = "Wed, 21 Oct 2015 07:28:00 GMT"
	env.proxy.SetFault(s3test.Fault{Header: http.Header{"Etag": {obj.ETag}, "Last-Modified": {lastModified}}})
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		t.Run(method, func(t *testing.T) {
			r := do(t, method, urlPath(obj.Key), "If-None-Match: "+obj.ETag)
			if r.status != http.StatusNotModified {
				t.Fatalf("status = %d, want 304", r.status)
			}
			if got := r.header.Get("ETag"); got != obj.ETag {
				t.Errorf("ETag = %q, want S3's %q", got, obj.ETag)
			}
			if got := r.header.Get("Last-Modified"); got != lastModified {
				t.Errorf("Last-Modified = %q, want S3's %q", got, lastModified)
			}
			if ct := r.header.Get("Content-Type"); ct != "" {
				t.Errorf("304 has Content-Type %q (S3 sends application/xml on its 304)", ct)
			}
		})
	}
}
