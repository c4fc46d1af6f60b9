package s3cache

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

// An entry file holds one cached response, possibly only some of its body:
//
//	fixed header  entryHeaderSize bytes, little endian, CRC-protected
//	metadata      JSON, metaLen bytes, CRC-protected
//	slice table   one record per slice of the body
//	padding       to a page boundary, for bodies of more than one slice
//	body          bodyLen bytes at their offsets, to the end of the file
//
// The body is cut into slices of sliceLen bytes (the last one shorter),
// each fetched from S3 with a ranged GET of its own and written in place,
// like nginx's slice module but in one file. The file is created at its
// full size, so a slice not yet fetched is a hole that takes no disk. A
// slice's record holds the CRC-32C of each blockSize bytes of it and a
// seal; the record is written after the slice's bytes, so a slice counts
// as present only once all of it is on disk, and a crash mid-slice leaves
// a slice that is fetched again, never one served half-written.
//
// The fixed header holds what changes after the entry is written
// (freshness times on revalidation) so it can be rewritten in place with
// one small pwrite, like nginx's ngx_http_file_cache_update_header. The
// block checksums let a read of the body, whole or a range, be checked
// before a byte of it is sent. The body runs to the end of the file so a
// complete entry can be handed to sendfile(2) as it is (see directBody).
//
// Version 3 stored whole bodies with one table for all blocks; such files
// fail the magic check and are removed at load, which costs one fetch each
// after an upgrade.
const (
	entryMagic      = "S3MCENT4"
	entryHeaderSize = 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 24 + 4 // magic, metaLen, metaCRC, storedAt, expiresAt, bodyLen, blockSize, sliceLen, reserved, headerCRC
	maxMetaLen      = 64 << 10
	blockSize       = 64 << 10
	// maxSliceLen bounds the slice size an entry file may claim, so a
	// damaged header cannot make the loader allocate without bound.
	maxSliceLen = 64 << 20
	// sliceSealMagic marks a written slice record; a hole reads as zeros
	// and so as "absent".
	sliceSealMagic = "SLC1"
	// bodyAlign is where the body of a multi-slice entry starts: slices
	// then begin on page (and filesystem block) boundaries, so a slice
	// not fetched yet stays a hole and one fetched takes exactly its
	// blocks.
	bodyAlign = 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errCorruptEntry = errors.New("corrupt cache entry")

// entryMeta is what an entry says about its response. It stays in memory
// in the index, so a hit never reads it from disk.
type entryMeta struct {
	Key                string `json:"key"`
	Status             int    `json:"status"`
	ContentType        string `json:"content_type,omitempty"`
	ContentEncoding    string `json:"content_encoding,omitempty"`
	ContentDisposition string `json:"content_disposition,omitempty"`
	ContentLanguage    string `json:"content_language,omitempty"`
	ETag               string `json:"etag,omitempty"`
	LastModified       string `json:"last_modified,omitempty"`
	// ETagIsMD5: S3 defines the ETag as the body's MD5 (a one-part
	// upload, not encrypted with KMS or a customer key), so a complete
	// body is checked against it (etag_check).
	ETagIsMD5 bool `json:"etag_md5,omitempty"`

	// S3's own freshness headers, never sent to clients (the header
	// policy sets ours), kept to recompute the lifetime when a
	// revalidation's 304 does not repeat them.
	UpstreamCacheControl string `json:"upstream_cache_control,omitempty"`
	UpstreamExpires      string `json:"upstream_expires,omitempty"`

	// Set in the fixed header, not in the JSON.
	storedAt  time.Time
	expiresAt time.Time
	bodyLen   int64
	sliceLen  int64 // bytes per slice, a multiple of blockSize
	metaLen   int
	metaCRC   uint32

	// blockCRCs is the CRC-32C of each blockSize bytes of body, for a
	// complete entry only; a fill keeps those of a partial one.
	blockCRCs []uint32
	lengthStr string // bodyLen in decimal, kept for Content-Length on hits
}

// lengthOf is the Content-Length of a section of the body.
func (m *entryMeta) lengthOf(br byteRange) string {
	if br.start == 0 && br.length == m.bodyLen && m.lengthStr != "" {
		return m.lengthStr
	}
	return strconv.FormatInt(br.length, 10)
}

// tableOffset is where the slice table starts in the entry file.
func (m *entryMeta) tableOffset() int64 {
	return int64(entryHeaderSize + m.metaLen)
}

// blockCount is the number of checksummed blocks of the body.
func (m *entryMeta) blockCount() int64 {
	return (m.bodyLen + blockSize - 1) / blockSize
}

// sliceCount is the number of slices of the body.
func (m *entryMeta) sliceCount() int64 {
	return (m.bodyLen + m.sliceLen - 1) / m.sliceLen
}

// blocksPerSlice is the number of blocks of a whole slice.
func (m *entryMeta) blocksPerSlice() int64 {
	return m.sliceLen / blockSize
}

// sliceSpan is the body offset and length of slice k.
func (m *entryMeta) sliceSpan(k int64) (start, length int64) {
	start = k * m.sliceLen
	return start, min(m.sliceLen, m.bodyLen-start)
}

// sliceRecordLen is the size of one record of the slice table: a CRC per
// block of a whole slice, the seal's magic and the seal's CRC.
func (m *entryMeta) sliceRecordLen() int64 {
	return 4*m.blocksPerSlice() + 8
}

// bodyOffset is where the body starts in the entry file.
func (m *entryMeta) bodyOffset() int64 {
	end := m.tableOffset() + m.sliceCount()*m.sliceRecordLen()
	if m.sliceCount() > 1 {
		end = (end + bodyAlign - 1) / bodyAlign * bodyAlign
	}
	return end
}

// fileSize is the exact size of an entry file, complete or not.
func (m *entryMeta) fileSize() int64 {
	return m.bodyOffset() + m.bodyLen
}

// blockCRCOffset is where the CRC of block i of slice k is in the entry
// file: a fill writes it there as soon as the block is on disk, so a fill
// stopped midway (a crash, S3 failing) can resume after it.
func (m *entryMeta) blockCRCOffset(k, i int64) int64 {
	return m.tableOffset() + k*m.sliceRecordLen() + 4*i
}

// encodeSliceRecord renders the record of slice k, whose blocks have the
// checksums crcs.
func encodeSliceRecord(m *entryMeta, k int64, crcs []uint32) []byte {
	b := make([]byte, m.sliceRecordLen())
	for i, c := range crcs {
		binary.LittleEndian.PutUint32(b[4*i:], c)
	}
	n := len(b) - 8
	copy(b[n:], sliceSealMagic)
	binary.LittleEndian.PutUint32(b[n+4:], sliceSeal(m, k, b[:n+4]))
	return b
}

// sliceSeal ties a record to its slice and to the body it belongs to, so a
// record copied from another slice or entry does not pass.
func sliceSeal(m *entryMeta, k int64, record []byte) uint32 {
	var prefix [16]byte
	binary.LittleEndian.PutUint64(prefix[:], uint64(k))
	binary.LittleEndian.PutUint64(prefix[8:], uint64(m.bodyLen))
	return crc32.Update(crc32.Checksum(prefix[:], castagnoli), castagnoli, record)
}

// sliceTable is what the slice table of an entry file says: which slices
// are on disk, and the checksum of each block of those that are.
type sliceTable struct {
	present []bool
	// written is, for a slice not present, how many of its bytes a fill
	// had written when it stopped, in whole blocks whose CRCs it
	// recorded: not checked against the data yet (see checkWritten).
	written []int64
	crcs    []uint32 // one per block of the body; zero where unknown
}

// count is the number of slices present.
func (t *sliceTable) count() int {
	n := 0
	for _, p := range t.present {
		if p {
			n++
		}
	}
	return n
}

// complete reports whether every slice is present.
func (t *sliceTable) complete() bool {
	return t.count() == len(t.present)
}

// readSliceTable reads the slice table of an entry whose header has been
// read. A sealed record is a slice present. A record without a seal is a
// slice not complete: the CRCs at its start are those of the blocks
// written so far (a fill writes each as its block lands), which a fill
// may check and resume from. A seal that does not match is damage, and the
// entry is corrupt.
func readSliceTable(f io.ReaderAt, m *entryMeta) (sliceTable, error) {
	slices := m.sliceCount()
	t := sliceTable{present: make([]bool, slices), written: make([]int64, slices), crcs: make([]uint32, m.blockCount())}
	b := make([]byte, slices*m.sliceRecordLen())
	if _, err := f.ReadAt(b, m.tableOffset()); err != nil {
		return t, fmt.Errorf("%w: reading slice table: %v", errCorruptEntry, err)
	}
	perSlice := m.blocksPerSlice()
	for k := range slices {
		rec := b[k*m.sliceRecordLen() : (k+1)*m.sliceRecordLen()]
		n := len(rec) - 8
		first := k * perSlice
		last := min(first+perSlice, m.blockCount())
		sealed := string(rec[n:n+4]) == sliceSealMagic
		switch {
		case sealed && binary.LittleEndian.Uint32(rec[n+4:]) != sliceSeal(m, k, rec[:n+4]):
			return t, fmt.Errorf("%w: the record of slice %d is damaged", errCorruptEntry, k)
		case !sealed && !allZero(rec[n:]):
			return t, fmt.Errorf("%w: the record of slice %d is damaged", errCorruptEntry, k)
		}
		for i := first; i < last; i++ {
			crc := binary.LittleEndian.Uint32(rec[4*(i-first):])
			if !sealed && crc == 0 {
				break // the blocks written so far end here
			}
			t.crcs[i] = crc
			if !sealed {
				start, length := m.sliceSpan(k)
				t.written[k] = min((i+1)*blockSize-start, length)
			}
		}
		t.present[k] = sealed
	}
	return t, nil
}

// metaFromUpstream records the headers of an S3 response that the cache
// will replay. Everything else S3 sent is dropped here, once, rather than
// on every hit.
func metaFromUpstream(key string, status int, h http.Header) entryMeta {
	return entryMeta{
		Key:                key,
		Status:             status,
		ContentType:        h.Get("Content-Type"),
		ContentEncoding:    h.Get("Content-Encoding"),
		ContentDisposition: h.Get("Content-Disposition"),
		ContentLanguage:    h.Get("Content-Language"),
		ETag:               h.Get("Etag"),
		LastModified:       h.Get("Last-Modified"),

		UpstreamCacheControl: h.Get("Cache-Control"),
		UpstreamExpires:      h.Get("Expires"),
	}
}

// encodeMeta serialises the JSON part; its length is fixed from then on.
func encodeMeta(m *entryMeta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding entry metadata: %w", err)
	}
	if len(b) > maxMetaLen {
		return nil, fmt.Errorf("entry metadata is %d bytes, over the %d limit", len(b), maxMetaLen)
	}
	m.metaLen = len(b)
	m.metaCRC = crc32.ChecksumIEEE(b)
	return b, nil
}

// encodeFixedHeader renders the fixed header for m, whose JSON part has
// already been encoded by encodeMeta.
func encodeFixedHeader(m *entryMeta) []byte {
	b := make([]byte, entryHeaderSize)
	copy(b, entryMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], uint32(m.metaLen))
	le.PutUint32(b[12:], m.metaCRC)
	le.PutUint64(b[16:], uint64(m.storedAt.UnixNano()))
	le.PutUint64(b[24:], uint64(m.expiresAt.UnixNano()))
	le.PutUint64(b[32:], uint64(m.bodyLen))
	le.PutUint32(b[40:], blockSize)
	le.PutUint32(b[44:], uint32(m.sliceLen))
	le.PutUint32(b[72:], crc32.ChecksumIEEE(b[:72]))
	return b
}

// encodeEntryStart renders everything before the body of a new entry:
// the fixed header, the metadata and an empty slice table, padded to the
// body's offset.
func encodeEntryStart(m *entryMeta) ([]byte, error) {
	metaJSON, err := encodeMeta(m)
	if err != nil {
		return nil, err
	}
	b := make([]byte, m.bodyOffset())
	copy(b, encodeFixedHeader(m))
	copy(b[entryHeaderSize:], metaJSON)
	return b, nil
}

// readEntryHeader reads and checks the fixed header and metadata of an
// entry file. The slice table and the body are checked separately.
func readEntryHeader(f io.ReaderAt) (entryMeta, error) {
	var m entryMeta
	b := make([]byte, entryHeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return m, fmt.Errorf("%w: reading header: %v", errCorruptEntry, err)
	}
	le := binary.LittleEndian
	if string(b[:8]) != entryMagic || le.Uint32(b[72:]) != crc32.ChecksumIEEE(b[:72]) {
		return m, fmt.Errorf("%w: bad magic or header checksum", errCorruptEntry)
	}
	metaLen := int(le.Uint32(b[8:]))
	if metaLen <= 0 || metaLen > maxMetaLen {
		return m, fmt.Errorf("%w: metadata length %d", errCorruptEntry, metaLen)
	}
	meta := make([]byte, metaLen)
	if _, err := f.ReadAt(meta, entryHeaderSize); err != nil {
		return m, fmt.Errorf("%w: reading metadata: %v", errCorruptEntry, err)
	}
	if crc32.ChecksumIEEE(meta) != le.Uint32(b[12:]) {
		return m, fmt.Errorf("%w: metadata checksum", errCorruptEntry)
	}
	if err := json.NewDecoder(bytes.NewReader(meta)).Decode(&m); err != nil {
		return m, fmt.Errorf("%w: decoding metadata: %v", errCorruptEntry, err)
	}
	m.metaLen = metaLen
	m.metaCRC = le.Uint32(b[12:])
	m.storedAt = time.Unix(0, int64(le.Uint64(b[16:])))
	m.expiresAt = time.Unix(0, int64(le.Uint64(b[24:])))
	m.bodyLen = int64(le.Uint64(b[32:]))
	m.sliceLen = int64(le.Uint32(b[44:]))
	if le.Uint32(b[40:]) != blockSize || !validSliceLen(m.sliceLen) || m.bodyLen < 0 || m.bodyLen > 1<<50 ||
		m.Key == "" || m.Status < 200 || m.Status > 599 {
		return m, fmt.Errorf("%w: implausible fields", errCorruptEntry)
	}
	return m, nil
}

// validSliceLen reports whether n can be an entry's slice size: a whole
// number of blocks, at most maxSliceLen.
func validSliceLen(n int64) bool {
	return n >= blockSize && n <= maxSliceLen && n%blockSize == 0
}

// rewriteFixedHeader updates an entry's freshness times in place, after a
// revalidation. One pwrite of a few dozen bytes: a crash leaves either the
// old or the new header, and a torn one fails its checksum at load.
func rewriteFixedHeader(path string, m *entryMeta) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(encodeFixedHeader(m), 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
