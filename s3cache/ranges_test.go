package s3cache

import (
	"errors"
	"net/http"
	"testing"
)

func TestParseRange(t *testing.T) {
	const size = 1000
	tests := []struct {
		header string
		want   []byteRange
		unsat  bool
	}{
		{"bytes=0-99", []byteRange{{0, 100}}, false},
		{"bytes=900-", []byteRange{{900, 100}}, false},
		{"bytes=-100", []byteRange{{900, 100}}, false},
		{"bytes=-5000", []byteRange{{0, 1000}}, false},
		{"bytes=990-2000", []byteRange{{990, 10}}, false},
		{"bytes=0-0, 10-19", []byteRange{{0, 1}, {10, 10}}, false},
		{"bytes=0-1,,5-6", []byteRange{{0, 2}, {5, 2}}, false},
		{"bytes=1000-", nil, true},
		{"bytes=-0", nil, true},
		{"bytes=5000-6000, 2000-", nil, true},
		{"bytes=2000-, 0-9", []byteRange{{0, 10}}, false}, // the satisfiable part
		// ignored: the whole body is sent
		{"items=0-9", nil, false},
		{"bytes=9-0", nil, false},
		{"bytes=a-b", nil, false},
		{"bytes=-", nil, false},
		{"bytes=+1-2", nil, false},
		{"bytes= ", nil, false},
		{"bytes=0-999,0-999", nil, false}, // more bytes than the body: amplification
		{"bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8,9-9,10-10,11-11,12-12,13-13,14-14,15-15,16-16", nil, false},
		{"bytes=99999999999999999999-", nil, false},
	}
	for _, tt := range tests {
		got, err := parseRange(tt.header, size)
		if tt.unsat != errors.Is(err, errUnsatisfiable) {
			t.Errorf("%q: error %v, unsatisfiable want %v", tt.header, err, tt.unsat)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("%q: got %v, want %v", tt.header, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%q: got %v, want %v", tt.header, got, tt.want)
			}
		}
	}
}

func TestPreconditions(t *testing.T) {
	const etag, lm = `"v1"`, "Wed, 25 Nov 2026 10:00:00 GMT"
	tests := []struct {
		name    string
		headers []string
		want    int
	}{
		{"none", nil, 0},
		{"if-none-match hit", []string{"If-None-Match", `"v1"`}, 304},
		{"if-none-match weak hit", []string{"If-None-Match", `W/"v1"`}, 304},
		{"if-none-match list", []string{"If-None-Match", `"a", "v1"`}, 304},
		{"if-none-match star", []string{"If-None-Match", `*`}, 304},
		{"if-none-match miss", []string{"If-None-Match", `"v2"`}, 0},
		{"ims not modified", []string{"If-Modified-Since", lm}, 304},
		{"ims modified", []string{"If-Modified-Since", "Tue, 24 Nov 2026 10:00:00 GMT"}, 0},
		{"inm wins over ims", []string{"If-None-Match", `"v2"`, "If-Modified-Since", lm}, 0},
		{"if-match hit", []string{"If-Match", `"v1"`}, 0},
		{"if-match miss", []string{"If-Match", `"v2"`}, 412},
		{"if-match weak is no match", []string{"If-Match", `W/"v1"`}, 412},
		{"ius failed", []string{"If-Unmodified-Since", "Tue, 24 Nov 2026 10:00:00 GMT"}, 412},
		{"ius ok", []string{"If-Unmodified-Since", lm}, 0},
		{"invalid date ignored", []string{"If-Modified-Since", "yesterday"}, 0},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest("GET", "/", nil)
		for i := 0; i+1 < len(tt.headers); i += 2 {
			r.Header.Set(tt.headers[i], tt.headers[i+1])
		}
		if got := preconditionStatus(r, etag, lm); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestIfRange(t *testing.T) {
	const etag, lm = `"v1"`, "Wed, 25 Nov 2026 10:00:00 GMT"
	for _, tt := range []struct {
		ifRange string
		want    bool
	}{{"", true}, {`"v1"`, true}, {`"v2"`, false}, {`W/"v1"`, false}, {lm, true}, {"Tue, 24 Nov 2026 10:00:00 GMT", false}} {
		r, _ := http.NewRequest("GET", "/", nil)
		if tt.ifRange != "" {
			r.Header.Set("If-Range", tt.ifRange)
		}
		if got := rangeApplies(r, etag, lm); got != tt.want {
			t.Errorf("If-Range %q: %v, want %v", tt.ifRange, got, tt.want)
		}
	}
}

// FuzzParseRange checks that every accepted range lies inside the body and
// that together they never ask for more bytes than the body has.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-99", "bytes=-5", "bytes=5-", "bytes=0-0,2-3", "bytes=9-0", "bytes=,,", "bytes=-0"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 {
			return
		}
		ranges, err := parseRange(header, size)
		if err != nil {
			if !errors.Is(err, errUnsatisfiable) || ranges != nil {
				t.Fatalf("bad error result %v %v", ranges, err)
			}
			return
		}
		var total int64
		for _, br := range ranges {
			if br.start < 0 || br.length <= 0 || br.start+br.length > size {
				t.Fatalf("%q size %d: range %+v outside the body", header, size, br)
			}
			total += br.length
		}
		if total > size || len(ranges) > maxRanges {
			t.Fatalf("%q size %d: %d ranges asking %d bytes", header, size, len(ranges), total)
		}
	})
}
