package s3cache

import "encoding/binary"

// An MP4 (or MOV, M4A, 3GP) that was not written with "faststart" keeps
// its index, the moov box, after the media data, at the end of the file.
// A player or ffprobe reads the first bytes, finds the mdat box, and then
// asks for the moov where mdat ends: a second round trip to S3 after the
// first, which makes a cold start of such a video about twice as slow as
// a faststart one. When the first bytes of an object show that layout,
// the fill fetches the slice where the moov begins beside the first one,
// as bounded read-ahead of one slice: the player's next request finds it
// on its way.

// moovSliceAfterMdat reads the top-level boxes at the start of an object
// of size bytes, and returns the offset where the moov box should begin
// when the file is an MP4 (its first box is ftyp) whose mdat comes before
// its moov. It returns false for anything else: a faststart file, another
// format, or a head too short to tell.
func moovSliceAfterMdat(head []byte, size int64) (offset int64, ok bool) {
	var off int64
	for i := 0; i < 16; i++ {
		if off+8 > int64(len(head)) {
			return 0, false
		}
		boxSize := int64(binary.BigEndian.Uint32(head[off:]))
		boxType := string(head[off+4 : off+8])
		switch boxSize {
		case 0: // the box runs to the end of the file: nothing after it
			return 0, false
		case 1: // a 64-bit size follows the type
			if off+16 > int64(len(head)) {
				return 0, false
			}
			boxSize = int64(binary.BigEndian.Uint64(head[off+8:]))
		}
		if boxSize < 8 || off+boxSize > size || (i == 0 && boxType != "ftyp") {
			return 0, false
		}
		switch boxType {
		case "moov":
			return 0, false // faststart: the index is already here
		case "mdat":
			end := off + boxSize
			return end, end < size
		}
		off += boxSize
	}
	return 0, false
}

// noteHeadLocked looks at the first bytes of slice 0 as they land, once,
// and notes where the moov begins when the object is an MP4 laid out with
// its moov at the end. Called with f.mu held.
func (f *fill) noteHeadLocked(head []byte) {
	if f.headNoted {
		return
	}
	f.headNoted = true
	if off, ok := moovSliceAfterMdat(head, f.meta.bodyLen); ok && off >= f.meta.sliceLen {
		f.moovSlice = off / f.meta.sliceLen
		f.kickLocked()
	}
}

// moovHintLocked returns the slice where the moov begins, once, while it
// is absent and some reader wants more than the first slice: a Range of
// a few bytes, or a HEAD, must not cost a second slice. A reader that
// comes later still gets the hint.
func (f *fill) moovHintLocked() (int64, bool) {
	k := f.moovSlice
	if k <= 0 {
		return 0, false
	}
	if st := &f.slices[k]; st.phase != sliceAbsent || st.failed {
		f.moovSlice = 0
		return 0, false
	}
	for c := range f.cursors {
		if c.err == nil && c.end > f.meta.sliceLen {
			f.moovSlice = 0
			return k, true
		}
	}
	return 0, false
}
