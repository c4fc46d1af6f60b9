package s3cache

import (
	"os"
	"syscall"
)

// The descriptors of complete entry files that hits keep open, so a hit
// costs no open or close. Two kinds, both bounded by maxOpen:
//
//   - one openFile per entry, read with pread by any number of concurrent
//     requests (TLS and HTTP/2 or 3, where the body passes through this
//     process to be checked and encrypted or framed);
//   - a small pool of spare descriptors per entry for sendfile(2) hits on
//     plain HTTP/1.x, each used by one request at a time because sendfile
//     reads from the descriptor's offset.

// openFile is an entry file kept open for its hits. Its fields are
// guarded by store.mu.
type openFile struct {
	f       *os.File
	users   int  // requests reading it now
	doomed  bool // its entry is gone: close when the last user is done
	counted bool // counts against maxOpen
}

// doomFileLocked closes the open file of an entry leaving the index, now
// or when its last reader is done, and its spare descriptors.
func (s *store) doomFileLocked(e *entry) {
	for _, f := range e.spares {
		f.Close()
		s.open--
	}
	e.spares = nil
	if e.file == nil {
		return
	}
	e.file.doomed = true
	if e.file.users == 0 {
		s.closeFileLocked(e.file)
	}
	e.file = nil
}

func (s *store) closeFileLocked(of *openFile) {
	of.f.Close()
	if of.counted {
		s.open--
		of.counted = false
	}
}

// adoptFile keeps f open for the hits of the entry snapshot e, if that
// entry is still current and the bound on open files allows; the returned
// openFile has the caller as a user either way.
func (s *store) adoptFile(e *entry, f *os.File) *openFile {
	of := &openFile{f: f, users: 1}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.currentLocked(e.meta.Key, e.gen)
	if ok && cur.file == nil && s.open < s.maxOpen {
		cur.file, of.counted = of, true
		s.open++
	} else {
		of.doomed = true // private to this request
	}
	return of
}

// acquireFile returns the open file of the entry snapshot e, with the
// caller as a user, or nil if the entry has none (or is no longer current).
func (s *store) acquireFile(e *entry) *openFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.currentLocked(e.meta.Key, e.gen)
	if !ok || cur.file == nil {
		return nil
	}
	cur.file.users++
	return cur.file
}

// releaseFile ends a request's use of an open entry file.
func (s *store) releaseFile(of *openFile) {
	s.mu.Lock()
	of.users--
	if of.users == 0 && of.doomed {
		s.closeFileLocked(of)
	}
	s.mu.Unlock()
}

// maxSparesPerEntry bounds the idle descriptors pooled for one entry's
// sendfile hits. A hit holds its descriptor only while its body goes to
// the socket, so even a hot object rarely has more than a few in use.
const maxSparesPerEntry = 8

// takeSpare returns an idle descriptor of the entry snapshot e's file for
// one sendfile hit, or nil if there is none or e is no longer current. The
// caller owns it until putSpare. Its offset is wherever the last hit left
// it: the caller seeks.
func (s *store) takeSpare(e *entry) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.currentLocked(e.meta.Key, e.gen)
	if !ok || len(cur.spares) == 0 {
		return nil
	}
	f := cur.spares[len(cur.spares)-1]
	cur.spares[len(cur.spares)-1] = nil
	cur.spares = cur.spares[:len(cur.spares)-1]
	s.open--
	return f
}

// putSpare gives back a descriptor of the entry snapshot e's file after a
// hit that found the file sound. It is kept for the next hit if e is still
// current and the bounds allow, and closed otherwise.
func (s *store) putSpare(e *entry, f *os.File) {
	s.mu.Lock()
	cur, ok := s.currentLocked(e.meta.Key, e.gen)
	if ok && len(cur.spares) < maxSparesPerEntry && s.open < s.maxOpen {
		cur.spares = append(cur.spares, f)
		s.open++
		f = nil
	}
	s.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// maxOpenEntryFiles bounds the entry files kept open: a quarter of the
// process's descriptor limit (Go raises the soft limit to the hard one at
// startup), at most 8192, so sockets always have room.
func maxOpenEntryFiles() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 256
	}
	return int(min(8192, lim.Cur/4))
}
