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

// An entry file holds one cached response:
//
//	fixed header  entryHeaderSize bytes, little endian, CRC-protected
//	metadata      JSON, metaLen bytes, CRC-protected
//	block table   one CRC-32C per blockSize bytes of body
//	body          bodyLen bytes, exactly as S3 sent them, to the end of the file
//
// The fixed header holds what changes after the entry is written
// (freshness times on revalidation) so it can be rewritten in place with
// one small pwrite, like nginx's ngx_http_file_cache_update_header;
// everything else is written once. The block table lets a read of the
// body, whole or a range, be checked before a byte of it is sent: a
// flipped bit on disk costs one block's CRC to notice, not a reread of the
// object. The table comes before the body, its size known from S3's
// Content-Length and filled in when the body is complete, so that the body
// runs to the end of the file and a checked file can be handed to
// sendfile(2) as it is (see directBody).
//
// Version 2 kept the table after the body; such files fail the magic check
// and are removed at load, which costs one S3 fetch each after an upgrade.
const (
	entryMagic      = "S3MCENT3"
	entryHeaderSize = 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 24 + 4 // magic, metaLen, metaCRC, storedAt, expiresAt, bodyLen, blockSize, tableCRC, reserved, headerCRC
	maxMetaLen      = 64 << 10
	blockSize       = 64 << 10
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

	// S3's own freshness headers, never sent to clients (the header
	// policy sets ours), kept to recompute the lifetime when a
	// revalidation's 304 does not repeat them.
	UpstreamCacheControl string `json:"upstream_cache_control,omitempty"`
	UpstreamExpires      string `json:"upstream_expires,omitempty"`

	// Set in the fixed header, not in the JSON.
	storedAt  time.Time
	expiresAt time.Time
	bodyLen   int64
	blockCRCs []uint32 // CRC-32C of each blockSize bytes of body
	tableCRC  uint32   // CRC-32C of the block table as stored
	metaLen   int
	metaCRC   uint32
	lengthStr string // bodyLen in decimal, kept for Content-Length on hits
}

// lengthOf is the Content-Length of a section of the body.
func (m *entryMeta) lengthOf(br byteRange) string {
	if br.start == 0 && br.length == m.bodyLen && m.lengthStr != "" {
		return m.lengthStr
	}
	return strconv.FormatInt(br.length, 10)
}

// tableOffset is where the block table starts in the entry file.
func (m *entryMeta) tableOffset() int64 {
	return int64(entryHeaderSize + m.metaLen)
}

// blockCount is the number of checksummed blocks of the body.
func (m *entryMeta) blockCount() int64 {
	return (m.bodyLen + blockSize - 1) / blockSize
}

// bodyOffset is where the body starts in the entry file.
func (m *entryMeta) bodyOffset() int64 {
	return m.tableOffset() + 4*m.blockCount()
}

// fileSize is the exact size of a complete entry file.
func (m *entryMeta) fileSize() int64 {
	return m.bodyOffset() + m.bodyLen
}

// encodeBlockTable renders the block table and records its CRC.
func encodeBlockTable(m *entryMeta) []byte {
	b := make([]byte, 4*len(m.blockCRCs))
	for i, c := range m.blockCRCs {
		binary.LittleEndian.PutUint32(b[4*i:], c)
	}
	m.tableCRC = crc32.Checksum(b, castagnoli)
	return b
}

// readBlockTable reads and checks the block table of an entry whose
// header has been read.
func readBlockTable(f io.ReaderAt, m *entryMeta) error {
	b := make([]byte, 4*m.blockCount())
	if _, err := f.ReadAt(b, m.tableOffset()); err != nil {
		return fmt.Errorf("%w: reading block table: %v", errCorruptEntry, err)
	}
	if crc32.Checksum(b, castagnoli) != m.tableCRC {
		return fmt.Errorf("%w: block table checksum", errCorruptEntry)
	}
	m.blockCRCs = make([]uint32, len(b)/4)
	for i := range m.blockCRCs {
		m.blockCRCs[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return nil
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
	le.PutUint32(b[44:], m.tableCRC)
	le.PutUint32(b[72:], crc32.ChecksumIEEE(b[:72]))
	return b
}

// readEntryHeader reads and checks the fixed header and metadata of an
// entry file. The block table and the body are checked separately.
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
	m.tableCRC = le.Uint32(b[44:])
	if le.Uint32(b[40:]) != blockSize || m.bodyLen < 0 || m.bodyLen > 1<<50 || m.Key == "" || m.Status < 200 || m.Status > 599 {
		return m, fmt.Errorf("%w: implausible fields", errCorruptEntry)
	}
	return m, nil
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
