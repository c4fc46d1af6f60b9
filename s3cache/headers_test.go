package s3cache

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func defaultPolicy() headerPolicy {
	p := newHeaderPolicy(nil)
	p.cacheControl = defaultCacheControl
	p.expiresAfter = defaultExpires
	p.corsOrigin = defaultCORSOrigin
	p.csp = defaultCSP
	p.nosniff = true
	return p
}

// s3Headers is what S3 (here shaped like AWS) sends with a GetObject.
func s3Headers() http.Header {
	return http.Header{
		"Content-Type":                     {"image/png"},
		"Content-Length":                   {"1234"},
		"Etag":                             {`"abc"`},
		"Last-Modified":                    {"Wed, 25 Nov 2026 10:00:00 GMT"},
		"Accept-Ranges":                    {"bytes"},
		"Cache-Control":                    {"max-age=315576000, immutable"},
		"Expires":                          {"Thu, 01 Jan 2037 00:00:00 GMT"},
		"X-Amz-Id-2":                       {"xyz"},
		"X-Amz-Request-Id":                 {"req"},
		"X-Amz-Meta-Owner":                 {"someone"},
		"X-Amz-Server-Side-Encryption":     {"AES256"},
		"X-Amzn-Requestid":                 {"r"},
		"Set-Cookie":                       {"AWSALB=1"},
		"Access-Control-Allow-Origin":      {"https://evil.example"},
		"Access-Control-Allow-Credentials": {"true"},
		"Server":                           {"AmazonS3"},
	}
}

func TestCopyUpstreamKeepsOnlyMediaMetadata(t *testing.T) {
	p := defaultPolicy()
	got := http.Header{}
	p.copyUpstream(got, canonical(s3Headers()))
	want := map[string]string{
		"Content-Type":   "image/png",
		"Content-Length": "1234",
		"Etag":           `"abc"`,
		"Last-Modified":  "Wed, 25 Nov 2026 10:00:00 GMT",
		"Accept-Ranges":  "bytes",
	}
	for name, v := range want {
		if got.Get(name) != v {
			t.Errorf("%s = %q, want %q", name, got.Get(name), v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got headers %v, want only %v", got, want)
	}
}

func TestDecorateBySatus(t *testing.T) {
	tests := []struct {
		status    int
		cacheable bool
	}{
		{200, true}, {206, true}, {304, true},
		{400, false}, {404, false}, {405, false}, {416, false}, {502, false}, {504, false},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			p := defaultPolicy()
			h := http.Header{}
			p.decorate(h, tt.status, cacheMiss, testNow)
			if h.Get("X-Cache-Status") != "MISS" || h.Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("always-on headers missing: %v", h)
			}
			added := map[string]string{
				"Cache-Control":               "public, max-age=31536000",
				"Expires":                     "Thu, 25 Nov 2027 12:00:00 GMT",
				"Access-Control-Allow-Origin": "*",
				"Content-Security-Policy":     "default-src 'none'; form-action 'none'",
			}
			for name, v := range added {
				got := h.Get(name)
				if tt.cacheable && got != v {
					t.Errorf("%s = %q, want %q", name, got, v)
				}
				if !tt.cacheable && got != "" {
					t.Errorf("%s = %q on a %d, want none", name, got, tt.status)
				}
			}
		})
	}
}

func TestHeaderOverrides(t *testing.T) {
	h := &Handler{CacheControl: "off", Expires: "off", CORSOrigin: "https://app.example", ContentSecurityPolicy: "off", Nosniff: new(false), HideHeaders: []string{"etag"}}
	p, err := h.buildHeaderPolicy()
	if err != nil {
		t.Fatal(err)
	}
	got := http.Header{}
	p.copyUpstream(got, canonical(s3Headers()))
	p.decorate(got, 200, cacheMiss, testNow)
	for _, absent := range []string{"Cache-Control", "Expires", "Content-Security-Policy", "X-Content-Type-Options", "Etag"} {
		if v := got.Get(absent); v != "" {
			t.Errorf("%s = %q, want it switched off", absent, v)
		}
	}
	if got.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("cors_origin not applied: %v", got)
	}
}

func TestExpiresRejectsBadDurations(t *testing.T) {
	for _, v := range []string{"soon", "-1h", "0s"} {
		if _, err := (&Handler{Expires: v}).buildHeaderPolicy(); err == nil || !strings.Contains(err.Error(), "expires") {
			t.Errorf("expires %q: error %v, want one naming expires", v, err)
		}
	}
}

func TestPolicyWriterDecoratesOnFirstWrite(t *testing.T) {
	p := defaultPolicy()
	rec := httptest.NewRecorder()
	w := &policyWriter{ResponseWriter: rec, policy: &p, cacheStatus: cacheBypass, now: testNow}
	w.Header().Set("Content-Type", "image/png")
	if _, err := w.Write([]byte("png")); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || rec.Header().Get("X-Cache-Status") != "BYPASS" || rec.Header().Get("Cache-Control") == "" {
		t.Fatalf("got %d %v", rec.Code, rec.Header())
	}
}

func TestLocalETagMatchesNginxFormat(t *testing.T) {
	got := localETag(time.Unix(0x5f5e1000, 0), 0x1a2b)
	if got != `"5f5e1000-1a2b"` {
		t.Fatalf("localETag = %s", got)
	}
}

// FuzzHeaderPolicy feeds arbitrary upstream headers and checks that nothing
// outside the kept set reaches the client, and that an error never carries
// the one-year caching headers.
func FuzzHeaderPolicy(f *testing.F) {
	f.Add("X-Amz-Meta-Secret", "v", 200)
	f.Add("Set-Cookie", "a=b", 206)
	f.Add("Access-Control-Allow-Origin", "https://x", 304)
	f.Add("Content-Type", "image/png", 404)
	f.Fuzz(func(t *testing.T, name, value string, status int) {
		if status < 100 || status > 599 {
			return
		}
		p := defaultPolicy()
		got := http.Header{}
		upstream := canonical(s3Headers())
		upstream[http.CanonicalHeaderKey(name)] = []string{value}
		p.copyUpstream(got, upstream)
		p.decorate(got, status, cacheMiss, testNow)
		for k := range got {
			lk := strings.ToLower(k)
			if strings.HasPrefix(lk, "x-amz") || lk == "set-cookie" || lk == "server" {
				t.Fatalf("%s leaked", k)
			}
			if strings.HasPrefix(lk, "access-control-") && got.Get(k) != "*" {
				t.Fatalf("upstream %s leaked: %q", k, got.Get(k))
			}
		}
		if status >= 400 && (got.Get("Cache-Control") != "" || got.Get("Expires") != "") {
			t.Fatalf("status %d got caching headers", status)
		}
		if got.Get("X-Cache-Status") != cacheMiss {
			t.Fatalf("X-Cache-Status missing")
		}
	})
}

func canonical(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		out[http.CanonicalHeaderKey(k)] = v
	}
	return out
}

func TestPolicyWriterSendsErrorsWithoutBody(t *testing.T) {
	p := defaultPolicy()
	rec := httptest.NewRecorder()
	w := &policyWriter{ResponseWriter: rec, policy: &p, cacheStatus: cacheBypass, now: testNow}
	http.Error(w, "invalid range: failed to overlap", http.StatusRequestedRangeNotSatisfiable)
	if rec.Code != 416 || rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "" || rec.Header().Get("Cache-Control") != "" {
		t.Fatalf("got %d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}
