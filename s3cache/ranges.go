package s3cache

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// byteRange is one satisfiable range of a body: length bytes from start.
type byteRange struct {
	start, length int64
}

func (br byteRange) contentRange(size int64) string {
	return "bytes " + strconv.FormatInt(br.start, 10) + "-" + strconv.FormatInt(br.start+br.length-1, 10) + "/" + strconv.FormatInt(size, 10)
}

// maxRanges bounds a multi-range request. Media players ask for one range;
// more than a handful is a scanner or an attempt to make us do work.
const maxRanges = 16

var errUnsatisfiable = errors.New("no satisfiable range")

// parseRange reads a Range header against a body of size bytes (RFC 9110,
// section 14). It returns nil, nil when the header is to be ignored and
// the whole body sent: absent, not in bytes, syntactically invalid, too
// many ranges, or ranges that together ask for more than the body (the
// overlapping-ranges amplification nginx also refuses). It returns
// errUnsatisfiable when it is valid but no range overlaps the body.
func parseRange(header string, size int64) ([]byteRange, error) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok {
		return nil, nil
	}
	var ranges []byteRange
	var total int64
	count := 0
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // RFC 9110 allows empty list elements
		}
		if count++; count > maxRanges {
			return nil, nil
		}
		first, last, ok := strings.Cut(part, "-")
		if !ok {
			return nil, nil
		}
		first, last = strings.TrimSpace(first), strings.TrimSpace(last)
		var br byteRange
		switch {
		case first == "": // suffix: the last N bytes
			n, err := parseDigits(last)
			if err != nil {
				return nil, nil
			}
			if n == 0 {
				continue // unsatisfiable on its own
			}
			n = min(n, size)
			br = byteRange{start: size - n, length: n}
		default:
			start, err := parseDigits(first)
			if err != nil {
				return nil, nil
			}
			end := size - 1
			if last != "" {
				end, err = parseDigits(last)
				if err != nil || end < start {
					return nil, nil
				}
				end = min(end, size-1)
			}
			if start >= size {
				continue // unsatisfiable on its own
			}
			br = byteRange{start: start, length: end - start + 1}
		}
		if br.length <= 0 {
			continue
		}
		total += br.length
		ranges = append(ranges, br)
	}
	if count == 0 {
		return nil, nil
	}
	if len(ranges) == 0 {
		return nil, errUnsatisfiable
	}
	if total > size {
		return nil, nil
	}
	return ranges, nil
}

// parseDigits parses a non-negative decimal without sign or spaces.
func parseDigits(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// preconditionStatus evaluates the client's conditional headers against a
// cached representation, in the order of RFC 9110, section 13.2.2. It
// returns 0 to proceed, 304 or 412.
//
// The stored Last-Modified is parsed only for a request that carries a
// date to compare it with: most carry none, and this runs on every hit.
func preconditionStatus(r *http.Request, etag, lastModified string) int {
	if im := r.Header.Get("If-Match"); im != "" {
		if !etagListMatches(im, etag, true) {
			return http.StatusPreconditionFailed
		}
	} else if ius := parseHTTPDate(r.Header.Get("If-Unmodified-Since")); !ius.IsZero() {
		if modTime := parseHTTPDate(lastModified); !modTime.IsZero() && modTime.After(ius) {
			return http.StatusPreconditionFailed
		}
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		if etagListMatches(inm, etag, false) {
			return http.StatusNotModified
		}
	} else if ims := parseHTTPDate(r.Header.Get("If-Modified-Since")); !ims.IsZero() {
		if modTime := parseHTTPDate(lastModified); !modTime.IsZero() && !modTime.After(ims) {
			return http.StatusNotModified
		}
	}
	return 0
}

// rangeApplies evaluates If-Range: the range is honoured only if the
// validator still names this representation.
func rangeApplies(r *http.Request, etag, lastModified string) bool {
	ir := r.Header.Get("If-Range")
	if ir == "" {
		return true
	}
	if strings.HasPrefix(ir, `"`) || strings.HasPrefix(ir, "W/") {
		return etagListMatches(ir, etag, true)
	}
	t := parseHTTPDate(ir)
	return !t.IsZero() && t.Equal(parseHTTPDate(lastModified)) && lastModified != ""
}

// etagListMatches compares a list of entity tags (or "*") with etag,
// strongly (If-Match, If-Range) or weakly (If-None-Match).
func etagListMatches(list, etag string, strong bool) bool {
	if etag == "" {
		return false
	}
	if strings.TrimSpace(list) == "*" {
		return true
	}
	weakTag := func(t string) (string, bool) {
		if rest, ok := strings.CutPrefix(t, "W/"); ok {
			return rest, true
		}
		return t, false
	}
	ours, oursWeak := weakTag(etag)
	for candidate := range strings.SplitSeq(list, ",") {
		theirs, theirsWeak := weakTag(strings.TrimSpace(candidate))
		if theirs != ours {
			continue
		}
		if !strong || (!oursWeak && !theirsWeak) {
			return true
		}
	}
	return false
}

func parseHTTPDate(v string) time.Time {
	if v == "" {
		return time.Time{}
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return time.Time{} // an invalid date is ignored, as RFC 9110 says
	}
	return t
}
