package s3cache

import (
	"strings"

	"golang.org/x/sys/unix"
)

// nothingAt reports whether there is certainly nothing at rel under the
// directory dirFD: one fstatat, the kernel walking the path, as nginx's
// try_files does with stat. On an instance whose media all went to S3
// almost every request finds nothing locally, and os.Root, which walks a
// path one component at a time, would make that miss cost several
// syscalls. fstatat follows symlinks anywhere, so it is trusted only to
// say "absent": whatever it finds, os.Root decides whether it may be
// served.
func nothingAt(dirFD int, rel string) bool {
	if dirFD < 0 || strings.HasPrefix(rel, "/") {
		return false
	}
	var st unix.Stat_t
	err := unix.Fstatat(dirFD, rel, &st, 0)
	return err == unix.ENOENT || err == unix.ENOTDIR
}
