package s3cache

import (
	"testing"
	"time"
)

// Read-ahead is earned by reading, and doubles only for a reader that has
// both read a couple of slices and stayed a moment: a client that hung up
// at the headers, whatever the kernel took from it, earns no more than as
// much as it "read".
func TestReadAheadIsEarned(t *testing.T) {
	const slice, limit = 1 << 20, 8 << 20
	joined := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name     string
		consumed int64
		stayed   time.Duration
		want     int64
	}{
		{"nothing read yet: half a slice", 0, 0, slice / 2},
		{"a few bytes read, long ago: still half a slice", 100, time.Minute, slice / 2},
		{"a slice and a half taken at once (socket buffers): as much", slice + slice/2, time.Millisecond, slice + slice/2},
		{"a slice and a half over a second: still only as much", slice + slice/2, time.Second, slice + slice/2},
		{"three slices at once: as much, not twice", 3 * slice, doubleAheadAfter - time.Millisecond, 3 * slice},
		{"two slices over a moment: twice", 2 * slice, doubleAheadAfter, 4 * slice},
		{"three slices over a second: twice", 3 * slice, time.Second, 6 * slice},
		{"twice is capped by fill_ahead", 5 * slice, time.Second, limit},
		{"as much is capped by fill_ahead", 20 * slice, 0, limit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &fillCursor{consumed: tc.consumed, joined: joined}
			if got := c.readAhead(joined.Add(tc.stayed), slice, limit); got != tc.want {
				t.Errorf("read-ahead %d bytes, want %d", got, tc.want)
			}
		})
	}
}
