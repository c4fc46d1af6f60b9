package s3cache

import (
	"os"

	"golang.org/x/sys/unix"
)

// deallocate frees the disk blocks of n bytes of f from off, keeping the
// file's size: the range reads as zeros again, a hole.
func deallocate(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
