package s3cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// entryFileFor lays out a complete entry file around meta (the JSON
// part, taken as it is) and body, with correct checksums everywhere, using
// the layout of entry.go (layoutEntryFile), in slices of one block.
func entryFileFor(meta, body []byte, storedAt, expiresAt time.Time) []byte {
	m := entryMeta{storedAt: storedAt, expiresAt: expiresAt, sliceLen: blockSize}
	return layoutEntryFile(&m, meta, body)
}

// loadEntry writes file to path and reads it back the way the loader
// and a hit do: readEntryFile, then a checked read of length bytes of the
// body from off. An entry with a slice missing is an error here: the
// file was written complete.
func loadEntry(t *testing.T, path string, file []byte, off, length int64) (entryMeta, []byte, error) {
	t.Helper()
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	ef, err := readEntryFile(path)
	if err != nil {
		return ef.meta, nil, err
	}
	if !ef.table.complete() {
		return ef.meta, nil, fmt.Errorf("%w: %d of %d slices present", errCorruptEntry, ef.table.count(), len(ef.table.present))
	}
	m := ef.meta
	m.blockCRCs = ef.table.crcs
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	body := &checkedBody{f: f, entry: &entry{meta: m}}
	section, err := body.section(off, length)
	if err != nil {
		return m, nil, err
	}
	got, err := io.ReadAll(section)
	return m, got, err
}

func TestEntryFileForMatchesTheWriter(t *testing.T) {
	m := metaFromUpstream("b/k.png", 200, map[string][]string{"Content-Type": {"image/png"}, "Etag": {`"v1"`}})
	meta, err := encodeMeta(&m)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("abc"), blockSize)
	got, read, err := loadEntry(t, filepath.Join(t.TempDir(), "entry"), entryFileFor(meta, body, time.Unix(1, 0), time.Unix(2, 0)), 0, int64(len(body)))
	if err != nil {
		t.Fatalf("a well-formed entry does not load: %v", err)
	}
	if got.Key != m.Key || got.ETag != m.ETag || !bytes.Equal(read, body) {
		t.Fatalf("loaded %+v and %d body bytes, want %+v and %d", got, len(read), m, len(body))
	}
}

// FuzzEntryMetadata reaches what FuzzReadEntryHeader's raw bytes almost
// never do: the JSON metadata decoder and the checks after it, behind
// correct header and metadata checksums. The metadata is the fuzzer's,
// the body too (grown past one block by pad), and flip, when not zero,
// flips one bit of the finished file as a failing disk would.
//
// An entry the loader accepts must be plausible, must give back exactly
// its body (or the section asked for), and must survive re-encoding
// unchanged. A rejected entry must be reported as corrupt, so the loader
// removes it. A flipped bit must always be caught, at load or by the
// block checks, and never reach a client.
func FuzzEntryMetadata(f *testing.F) {
	valid := metaFromUpstream("b/media/a.png", 200, map[string][]string{
		"Content-Type": {"image/png"}, "Etag": {`"v1"`}, "Last-Modified": {"Wed, 25 Nov 2026 10:00:00 GMT"},
		"Cache-Control": {"max-age=60"}, "Content-Disposition": {`inline; filename="a.png"`},
	})
	validJSON, _ := encodeMeta(&valid)
	for _, seed := range []struct {
		meta []byte
		body string
		pad  uint16
		flip uint32
	}{
		{validJSON, "hello", 0, 0},
		{validJSON, "hello", 1100, 0},
		{validJSON, "hello", 0, 8 * 100},
		{validJSON, "", 0, 0},
		{[]byte(`{"key":"b/k","status":404}`), "", 0, 0},
		{[]byte(`{"key":"","status":200}`), "x", 0, 0},
		{[]byte(`{"key":"b/k","status":99}`), "x", 0, 0},
		{[]byte(`{"key":"b/k","status":"200"}`), "x", 0, 0},
		{[]byte(`{"key":"b/k","status":200,"key":"b/other"}`), "x", 0, 0},
		{[]byte(`{"key":"b/k","status":200} trailing`), "x", 0, 0},
		{[]byte(`{"key":"b/k","status":2e2}`), "x", 0, 0},
		{[]byte(`{"key":"b/\u0000k","status":200,"etag":"\ud800"}`), "x", 0, 0},
		{[]byte(`null`), "x", 0, 0},
		{[]byte(`[]`), "x", 0, 0},
		{[]byte(`{`), "x", 0, 0},
	} {
		f.Add(seed.meta, []byte(seed.body), seed.pad, seed.flip, uint32(0))
	}
	// One file per fuzzing process, rewritten by every input: a directory
	// per input would cost more than the checks.
	path := filepath.Join(f.TempDir(), "entry")
	f.Fuzz(func(t *testing.T, meta, body []byte, pad uint16, flip, off uint32) {
		if len(meta) == 0 || len(meta) > maxMetaLen {
			return // the framing's own length checks, covered by FuzzReadEntryHeader
		}
		body = append(body, bytes.Repeat([]byte{0xA5}, int(pad%2048)*64)...)
		file := entryFileFor(meta, body, time.Unix(0, 1e18), time.Unix(0, 2e18))
		from := int64(off) % (int64(len(body)) + 1)
		if flip != 0 {
			bit := int64(flip) % (int64(len(file)) * 8)
			file[bit/8] ^= 1 << (bit % 8)
		}
		m, got, err := loadEntry(t, path, file, from, int64(len(body))-from)
		if err != nil {
			if !errors.Is(err, errCorruptEntry) {
				t.Fatalf("rejected with %v, which does not say the entry is corrupt", err)
			}
			return
		}
		if flip != 0 {
			t.Fatalf("a flipped bit (%d of %d bytes) was served: %d body bytes read", flip, len(file), len(got))
		}
		if m.Key == "" || m.Status < 200 || m.Status > 599 || m.bodyLen != int64(len(body)) {
			t.Fatalf("accepted an implausible entry: %+v", m)
		}
		if !bytes.Equal(got, body[from:]) {
			t.Fatalf("read %d bytes from offset %d, not the stored body's %d", len(got), from, len(body)-int(from))
		}

		again := m
		reencoded, err := encodeMeta(&again)
		if err != nil {
			t.Fatalf("an accepted entry's metadata does not encode again: %v", err)
		}
		m2, _, err := loadEntry(t, path, entryFileFor(reencoded, body, m.storedAt, m.expiresAt), 0, 0)
		if err != nil {
			t.Fatalf("re-encoded metadata %s does not load: %v", reencoded, err)
		}
		if js, _ := json.Marshal(&m2); !bytes.Equal(js, reencoded) || !m.storedAt.Equal(m2.storedAt) || !m.expiresAt.Equal(m2.expiresAt) {
			t.Fatalf("re-encoding changed the entry:\n%s\n%s", reencoded, js)
		}
	})
}
