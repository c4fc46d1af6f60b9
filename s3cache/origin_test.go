package s3cache

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// These tests put the real SDK client in front of a scripted HTTP server so
// that every S3 answer, including the ones versitygw cannot be made to give
// (SlowDown, PermanentRedirect), is mapped to the right client status. The
// same mappings for 404, 502 and 504 are also covered against versitygw in
// the integration suite.

const testBucket = "secret-bucket-name"

func s3Error(status int, code string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.Header().Set("X-Amz-Request-Id", "req-1")
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>` + code +
				`</Code><Message>msg</Message><BucketName>` + testBucket + `</BucketName></Error>`))
		}
	}
}

func newTestOrigin(t *testing.T, endpoint string) *s3Origin {
	t.Helper()
	o, err := newS3Origin(context.Background(), originConfig{
		bucket: testBucket, endpoint: endpoint, region: "us-east-1", pathStyle: true,
		accessKey: "AKIDSECRETACCESS", secretKey: "verysecretkey",
		connectTimeout: time.Second, firstByteTimeout: 300 * time.Millisecond, readTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	return o
}

func TestOriginMapsS3Answers(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		head       bool
		wantStatus int  // status of the response, or of the originError
		wantErr    bool // true when an originError is expected
	}{
		{"no such key", s3Error(404, "NoSuchKey"), false, 404, true},
		{"no such key on HEAD", s3Error(404, ""), true, 404, true},
		{"access denied hides a missing key", s3Error(403, "AccessDenied"), false, 404, true},
		{"forbidden HEAD", s3Error(403, ""), true, 404, true},
		{"bad signature is our fault", s3Error(403, "SignatureDoesNotMatch"), false, 502, true},
		{"unknown access key", s3Error(403, "InvalidAccessKeyId"), false, 502, true},
		{"wrong region", s3Error(301, "PermanentRedirect"), false, 502, true},
		{"internal error", s3Error(500, "InternalError"), false, 502, true},
		{"slow down", s3Error(503, "SlowDown"), false, 502, true},
		{"not modified", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"e1"`)
			w.WriteHeader(304)
		}, false, 304, false},
		{"precondition failed", s3Error(412, "PreconditionFailed"), false, 412, false},
		{"range not satisfiable", s3Error(416, "InvalidRange"), false, 416, false},
		{"no first byte in time", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		}, false, 504, true},
		{"partial content", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-1/10")
			w.Header().Set("Content-Length", "2")
			w.WriteHeader(206)
			w.Write([]byte("ab"))
		}, false, 206, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			o := newTestOrigin(t, srv.URL)
			resp, err := o.fetch(context.Background(), originRequest{key: "a/b.png", head: tt.head})
			if tt.wantErr {
				var oe *originError
				if !errors.As(err, &oe) {
					t.Fatalf("got %v, %v; want an originError", resp, err)
				}
				if oe.status != tt.wantStatus {
					t.Fatalf("status %d (%v), want %d", oe.status, err, tt.wantStatus)
				}
				assertNoInternals(t, err.Error(), srv.URL)
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if resp.body != nil {
				defer resp.body.Close()
			}
			if resp.status != tt.wantStatus {
				t.Fatalf("status %d, want %d", resp.status, tt.wantStatus)
			}
			if resp.body == nil && (resp.header.Get("Content-Type") != "" || resp.header.Get("Content-Length") != "") {
				t.Fatalf("bodiless %d describes S3's error document: %v", resp.status, resp.header)
			}
		})
	}
}

func TestOriginRefusedConnectionIs502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there any more
	_, err = newTestOrigin(t, endpoint).fetch(context.Background(), originRequest{key: "a"})
	var oe *originError
	if !errors.As(err, &oe) || oe.status != http.StatusBadGateway {
		t.Fatalf("got %v, want a 502 originError", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q should say the connection was refused", err)
	}
	assertNoInternals(t, err.Error(), endpoint)
}

func TestOriginBodyStallIsCut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.Write([]byte("abc"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	resp, err := newTestOrigin(t, srv.URL).fetch(context.Background(), originRequest{key: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.body.Close()
	buf := make([]byte, 16)
	start := time.Now()
	var readErr error
	for readErr == nil && time.Since(start) < 5*time.Second {
		_, readErr = resp.body.Read(buf)
	}
	if readErr == nil || readErr.Error() == "EOF" {
		t.Fatalf("stalled body ended with %v, want an error", readErr)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("stall was cut after %s, want about read_timeout", elapsed)
	}
}

func TestOriginSignsAndAddressesPathStyle(t *testing.T) {
	var gotPath, gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotAuth = r.URL.EscapedPath(), r.Header.Get("Authorization")
		w.Write([]byte("x"))
	}))
	defer srv.Close()
	resp, err := newTestOrigin(t, srv.URL).fetch(context.Background(), originRequest{key: "odd/été photo.png"})
	if err != nil {
		t.Fatal(err)
	}
	resp.body.Close()
	if gotPath != "/"+testBucket+"/odd/%C3%A9t%C3%A9%20photo.png" {
		t.Errorf("path %q", gotPath)
	}
	if !strings.HasPrefix(gotAuth, "AWS4-HMAC-SHA256 Credential=AKIDSECRETACCESS/") {
		t.Errorf("request not signed with SigV4: %q", gotAuth)
	}
}

func TestOriginAnonymousSendsNoSignature(t *testing.T) {
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		w.Write([]byte("x"))
	}))
	defer srv.Close()
	o, err := newS3Origin(context.Background(), originConfig{
		bucket: "b", endpoint: srv.URL, region: "us-east-1", pathStyle: true, anonymous: true,
		connectTimeout: time.Second, firstByteTimeout: time.Second, readTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	resp, err := o.fetch(context.Background(), originRequest{key: "a"})
	if err != nil {
		t.Fatal(err)
	}
	resp.body.Close()
	if gotAuth != "" {
		t.Fatalf("anonymous request carried Authorization %q", gotAuth)
	}
}

// assertNoInternals fails if an error text names the endpoint, the bucket
// or a credential: Caddy logs handler errors verbatim.
func assertNoInternals(t *testing.T, text, endpoint string) {
	t.Helper()
	host := strings.TrimPrefix(endpoint, "http://")
	for _, secret := range []string{host, testBucket, "AKIDSECRETACCESS", "verysecretkey", "<Error>", "msg"} {
		if strings.Contains(text, secret) {
			t.Errorf("error %q leaks %q", text, secret)
		}
	}
}
