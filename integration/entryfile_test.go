package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
)

// The entry file format, as README's "On disk" section documents it and
// s3cache/entry.go writes it, read here independently so the tests check
// what is on disk rather than what the engine says is.
const (
	entryMagic      = "S3MCENT4"
	entryHeaderSize = 76
	entryBlockSize  = 64 << 10
	sliceSealMagic  = "SLC1"
	bodyAlign       = 4096
	// defaultSlice is the slice size of the configs the tests load.
	defaultSlice = 1 << 20
)

// entryOnDisk is what an entry file says of its body.
type entryOnDisk struct {
	bodyLen, sliceLen, bodyOffset int64
	present                       []bool
	// written is, for each slice not present, the bytes of it in whole
	// blocks that a stopped fetch recorded.
	written []int64
	file    []byte
	// allocated is the disk space the file takes (st_blocks), which is
	// less than its size while slices are missing: they are holes.
	allocated int64
}

// readEntryOnDisk parses the entry file at path: header, slice table and
// body. A slice counts as present when its record carries the seal's
// magic; the seal's CRC is the engine's to check (and its unit tests').
func readEntryOnDisk(path string) (entryOnDisk, error) {
	var e entryOnDisk
	data, err := os.ReadFile(path)
	if err != nil {
		return e, err
	}
	if len(data) < entryHeaderSize || string(data[:8]) != entryMagic {
		return e, fmt.Errorf("%s: not an entry file of this version", path)
	}
	le := binary.LittleEndian
	metaLen := int64(le.Uint32(data[8:]))
	e.bodyLen = int64(le.Uint64(data[32:]))
	e.sliceLen = int64(le.Uint32(data[44:]))
	if e.sliceLen <= 0 || e.sliceLen%entryBlockSize != 0 {
		return e, fmt.Errorf("%s: slice size %d", path, e.sliceLen)
	}
	slices := (e.bodyLen + e.sliceLen - 1) / e.sliceLen
	recordLen := 4*(e.sliceLen/entryBlockSize) + 8
	tableAt := entryHeaderSize + metaLen
	e.bodyOffset = tableAt + slices*recordLen
	if slices > 1 {
		e.bodyOffset = (e.bodyOffset + bodyAlign - 1) / bodyAlign * bodyAlign
	}
	if int64(len(data)) != e.bodyOffset+e.bodyLen {
		return e, fmt.Errorf("%s: %d bytes, the header says %d", path, len(data), e.bodyOffset+e.bodyLen)
	}
	for k := range slices {
		rec := data[tableAt+k*recordLen : tableAt+(k+1)*recordLen]
		sealed := string(rec[len(rec)-8:len(rec)-4]) == sliceSealMagic
		e.present = append(e.present, sealed)
		// An unsealed slice keeps the CRCs of the blocks a stopped
		// fetch wrote, which the next one resumes after.
		var written int64
		for i := int64(0); !sealed && i < e.sliceLen/entryBlockSize && binary.LittleEndian.Uint32(rec[4*i:]) != 0; i++ {
			written = min((i+1)*entryBlockSize, e.bodyLen-k*e.sliceLen)
		}
		e.written = append(e.written, written)
	}
	e.file = data
	if info, err := os.Stat(path); err == nil {
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			e.allocated = st.Blocks * 512
		}
	}
	return e, nil
}

// count is the number of slices present.
func (e entryOnDisk) count() int {
	n := 0
	for _, p := range e.present {
		if p {
			n++
		}
	}
	return n
}

// storedBytes is how much of the body is on disk: the slices present and
// the blocks recorded of the others.
func (e entryOnDisk) storedBytes() int64 {
	var n int64
	for k, ok := range e.present {
		if ok {
			n += min(e.sliceLen, e.bodyLen-int64(k)*e.sliceLen)
		} else {
			n += e.written[k]
		}
	}
	return n
}

// complete reports whether every slice is present.
func (e entryOnDisk) complete() bool { return e.count() == len(e.present) }

// holds reports whether every present slice holds the matching bytes of
// body, and the body is body's length: nothing wrong is stored.
func (e entryOnDisk) holds(body []byte) bool {
	if e.bodyLen != int64(len(body)) {
		return false
	}
	stored := e.file[e.bodyOffset:]
	for k, ok := range e.present {
		start := int64(k) * e.sliceLen
		end := min(start+e.sliceLen, e.bodyLen)
		if ok && !bytes.Equal(stored[start:end], body[start:end]) {
			return false
		}
	}
	return true
}

// entryHoldsBody reports whether the entry file at path is complete and
// holds body exactly.
func entryHoldsBody(path string, body []byte) bool {
	e, err := readEntryOnDisk(path)
	return err == nil && e.complete() && e.holds(body)
}
