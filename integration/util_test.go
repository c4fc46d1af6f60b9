package integration

import (
	"strconv"
	"strings"
)

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// cutHeader splits "Name: value".
func cutHeader(h string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(h, ":")
	return name, strings.TrimSpace(value), ok
}
