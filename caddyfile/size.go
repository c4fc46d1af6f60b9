package caddyfile

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits maps a lower-cased unit to its multiplier. nginx's single
// letters (k, m, g) are binary, as in proxy_cache_path max_size=10g, so a
// recipe's value means the same here; IEC units (KiB, GiB) are binary and
// SI units (KB, GB) decimal, as everywhere else.
var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// parseSize reads a byte size such as "10GiB", "512m" or "1.5GB".
func parseSize(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool {
		return (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
	})
	unit := strings.ToLower(strings.TrimSpace(s[len(num):]))
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or nginx's k, m, g)", s, unit)
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n < 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("invalid size %q: want a non-negative number followed by a unit, such as 10GiB", s)
	}
	bytes := n * mult
	if bytes >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(bytes), nil
}
