package s3cache

import (
	"bytes"
	"errors"
	"hash/crc32"
	"net/http"
	"slices"
	"testing"
	"time"
)

// layoutEntryFile lays out a complete entry file: m's fixed header, the
// metadata metaJSON as it is (its length and CRC are set in m here), a
// sealed record for every slice, and body.
func layoutEntryFile(m *entryMeta, metaJSON, body []byte) []byte {
	m.bodyLen = int64(len(body))
	if m.sliceLen == 0 {
		m.sliceLen = blockSize
	}
	m.metaLen, m.metaCRC = len(metaJSON), crc32.ChecksumIEEE(metaJSON)
	file := make([]byte, m.fileSize())
	copy(file, encodeFixedHeader(m))
	copy(file[entryHeaderSize:], metaJSON)
	for k := range m.sliceCount() {
		start, n := m.sliceSpan(k)
		crcs := make([]uint32, (n+blockSize-1)/blockSize)
		updateBlockCRCs(crcs, 0, body[start:start+n])
		copy(file[m.tableOffset()+k*m.sliceRecordLen():], encodeSliceRecord(m, k, crcs))
	}
	copy(file[m.bodyOffset():], body)
	return file
}

func TestEntryFileRoundTrip(t *testing.T) {
	body := objectBytes(2*blockSize + 100) // two slices of one block, and a third
	m := metaFromUpstream("b/a.png", 200, http.Header{"Content-Type": {"image/png"}, "Etag": {`"x"`}})
	m.storedAt, m.expiresAt = time.Unix(100, 5), time.Unix(200, 7)
	meta, err := encodeMeta(&m)
	if err != nil {
		t.Fatal(err)
	}
	file := layoutEntryFile(&m, meta, body)
	if m.bodyOffset()%bodyAlign != 0 {
		t.Errorf("a multi-slice body starts at %d, not on a %d-byte boundary", m.bodyOffset(), bodyAlign)
	}
	got, err := readEntryHeader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	table, err := readSliceTable(bytes.NewReader(file), &got)
	if err != nil {
		t.Fatal(err)
	}
	wantCRCs := []uint32{crc32.Checksum(body[:blockSize], castagnoli), crc32.Checksum(body[blockSize:2*blockSize], castagnoli), crc32.Checksum(body[2*blockSize:], castagnoli)}
	if got.Key != m.Key || got.ContentType != "image/png" || got.ETag != `"x"` || !got.expiresAt.Equal(m.expiresAt) ||
		got.bodyLen != m.bodyLen || got.sliceLen != blockSize || !table.complete() || !slices.Equal(table.crcs, wantCRCs) || got.fileSize() != int64(len(file)) {
		t.Fatalf("round trip: %+v, table %+v", got, table)
	}

	t.Run("a damaged header is corrupt", func(t *testing.T) {
		for _, i := range []int{0, 9, 20, 44, 75, entryHeaderSize + 2} {
			bad := bytes.Clone(file)
			bad[i] ^= 0xff
			if _, err := readEntryHeader(bytes.NewReader(bad)); !errors.Is(err, errCorruptEntry) {
				t.Errorf("flipping byte %d: %v, want errCorruptEntry", i, err)
			}
		}
	})
	t.Run("a damaged record is corrupt, a zeroed one absent", func(t *testing.T) {
		for k := range int64(3) {
			for _, at := range []int64{0, m.sliceRecordLen() - 5, m.sliceRecordLen() - 1} {
				bad := bytes.Clone(file)
				bad[m.tableOffset()+k*m.sliceRecordLen()+at] ^= 0x10
				if _, err := readSliceTable(bytes.NewReader(bad), &got); !errors.Is(err, errCorruptEntry) {
					t.Errorf("record %d damaged at %d: %v, want errCorruptEntry", k, at, err)
				}
			}
			zeroed := bytes.Clone(file)
			clear(zeroed[m.tableOffset()+k*m.sliceRecordLen() : m.tableOffset()+(k+1)*m.sliceRecordLen()])
			table, err := readSliceTable(bytes.NewReader(zeroed), &got)
			want := []bool{true, true, true}
			want[k] = false
			if err != nil || !slices.Equal(table.present, want) {
				t.Errorf("record %d zeroed: present %v, %v; want %v", k, table.present, err, want)
			}
		}
	})
	t.Run("a record moved to another slice does not pass", func(t *testing.T) {
		bad := bytes.Clone(file)
		r := m.sliceRecordLen()
		copy(bad[m.tableOffset()+r:], file[m.tableOffset():m.tableOffset()+r])
		if table, err := readSliceTable(bytes.NewReader(bad), &got); err == nil && table.present[1] {
			t.Error("slice 0's record was accepted as slice 1's")
		}
	})
	t.Run("a new entry has no slice present", func(t *testing.T) {
		fresh := m
		start, err := encodeEntryStart(&fresh)
		if err != nil {
			t.Fatal(err)
		}
		file := append(start, make([]byte, fresh.bodyLen)...)
		table, err := readSliceTable(bytes.NewReader(file), &fresh)
		if err != nil || table.count() != 0 || len(table.present) != 3 {
			t.Fatalf("table of a new entry: %+v, %v", table, err)
		}
	})
}

func TestDiskUsageCountsWholeBlocks(t *testing.T) {
	m := entryMeta{sliceLen: 1 << 20, metaLen: 200}
	tests := []struct {
		name    string
		bodyLen int64
		present []bool
		want    int64
	}{
		{"negative entry", 0, nil, bodyAlign},
		{"small object, absent", 10_000, []bool{false}, bodyAlign},
		{"small object, present", 10_000, []bool{true}, 3 * bodyAlign},
		{"two slices, first present", 1<<20 + 1, []bool{true, false}, bodyAlign + 1<<20},
		{"two slices, both", 1<<20 + 1, []bool{true, true}, bodyAlign + 1<<20 + bodyAlign},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := m
			m.bodyLen = tt.bodyLen
			if got := diskUsage(&m, tt.present); got != tt.want {
				t.Errorf("diskUsage = %d, want %d", got, tt.want)
			}
		})
	}
}

// FuzzReadEntryHeader checks that no byte string makes the decoder panic
// or accept an entry whose fields are impossible.
func FuzzReadEntryHeader(f *testing.F) {
	m := entryMeta{Key: "k", Status: 200}
	meta, _ := encodeMeta(&m)
	f.Add(layoutEntryFile(&m, meta, []byte("x")))
	f.Add([]byte(entryMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := readEntryHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		if got.Key == "" || got.bodyLen < 0 || got.metaLen <= 0 || got.metaLen > maxMetaLen || !validSliceLen(got.sliceLen) {
			t.Fatalf("accepted impossible entry %+v", got)
		}
		if _, err := readSliceTable(bytes.NewReader(b), &got); err != nil && !errors.Is(err, errCorruptEntry) {
			t.Fatalf("slice table: %v, which does not say the entry is corrupt", err)
		}
	})
}
