package s3cache

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// mp4Bytes is an MP4 of size bytes laid out as ftyp, mdat, then a moov of
// moovLen bytes at the end (faststart false), or ftyp, moov, mdat.
func mp4Bytes(size, moovLen int, faststart bool) []byte {
	data := objectBytes(size)
	box := func(at, n int, kind string) {
		binary.BigEndian.PutUint32(data[at:], uint32(n))
		copy(data[at+4:], kind)
	}
	const ftypLen = 24
	box(0, ftypLen, "ftyp")
	if faststart {
		box(ftypLen, moovLen, "moov")
		box(ftypLen+moovLen, size-ftypLen-moovLen, "mdat")
	} else {
		box(ftypLen, size-ftypLen-moovLen, "mdat")
		box(size-moovLen, moovLen, "moov")
	}
	return data
}

func TestMoovOffsetFromTheFirstBoxes(t *testing.T) {
	const size = 10 << 20
	large := mp4Bytes(size, 4000, false)
	binary.BigEndian.PutUint32(large[24:], 1) // mdat with a 64-bit size
	binary.BigEndian.PutUint64(large[32:], uint64(size-24-4000))
	for _, c := range []struct {
		name   string
		head   []byte
		want   int64
		wantOK bool
	}{
		{"moov at the end", mp4Bytes(size, 4000, false)[:4096], size - 4000, true},
		{"mdat with a 64-bit size", large[:4096], size - 4000, true},
		{"faststart", mp4Bytes(size, 4000, true)[:4096], 0, false},
		{"not an MP4", objectBytes(4096), 0, false},
		{"too short to tell", mp4Bytes(size, 4000, false)[:30], 0, false},
		{"mdat to the end of the file", func() []byte {
			b := mp4Bytes(size, 4000, false)
			binary.BigEndian.PutUint32(b[24:], 0)
			return b[:4096]
		}(), 0, false},
		{"a box larger than the object", func() []byte {
			b := mp4Bytes(size, 4000, false)
			binary.BigEndian.PutUint32(b[24:], size)
			return b[:4096]
		}(), 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := moovSliceAfterMdat(c.head, size)
			if got != c.want || ok != c.wantOK {
				t.Errorf("moovSliceAfterMdat = %d, %v; want %d, %v", got, ok, c.want, c.wantOK)
			}
		})
	}
}

// TestMoovSliceIsFetchedBesideTheFirst reads the first bytes of cold
// objects the way a player does before it seeks to the moov: for an MP4
// whose moov is at the end, the slice holding it is fetched at once, and
// for anything else, or for a request of a few bytes, it is not.
func TestMoovSliceIsFetchedBesideTheFirst(t *testing.T) {
	// Larger than the sockets between the test and the handler take, so
	// a client that stops reading stops the read-ahead well before the
	// last slice.
	const slice, size = 256 << 10, 128 * 256 << 10
	moovSlice := fmt.Sprintf("bytes=%d-", 127*slice)
	for _, c := range []struct {
		name      string
		data      []byte
		rangeSpec string
		want      bool
	}{
		{"moov at the end", mp4Bytes(size, 3000, false), "", true},
		{"faststart", mp4Bytes(size, 3000, true), "", false},
		{"not an MP4", objectBytes(size), "", false},
		{"moov at the end, a Range of one byte", mp4Bytes(size, 3000, false), "bytes=0-0", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var asked []string
			o := &scriptedOrigin{respond: func(req originRequest) (*originResponse, error) {
				mu.Lock()
				asked = append(asked, req.rangeSpec)
				mu.Unlock()
				return answerFor(c.data, req, nil), nil
			}}
			h := newCachedHandler(t, o, t.TempDir(), func(h *Handler) { h.Slice, h.FillAhead = slice, slice })
			srv := serve(t, h)
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v/a.mp4", nil)
			if c.rangeSpec != "" {
				req.Header.Set("Range", c.rangeSpec)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			head := make([]byte, 100)
			if _, err := io.ReadFull(resp.Body, head); err != nil && c.rangeSpec == "" {
				t.Fatal(err)
			}
			fetched := func() bool {
				mu.Lock()
				defer mu.Unlock()
				return slices.ContainsFunc(asked, func(r string) bool { return strings.HasPrefix(r, moovSlice) })
			}
			deadline := time.Now().Add(2 * time.Second)
			for !fetched() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			resp.Body.Close()
			if got := fetched(); got != c.want {
				mu.Lock()
				defer mu.Unlock()
				t.Errorf("the moov's slice (%s) fetched: %v, want %v; S3 was asked for %d ranges, the last %q", moovSlice, got, c.want, len(asked), asked[len(asked)-1])
			}
		})
	}
}
