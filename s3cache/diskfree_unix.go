//go:build unix

package s3cache

import "golang.org/x/sys/unix"

// diskFree reports the bytes available to unprivileged users on the
// filesystem holding dir, which is what min_free keeps free.
func diskFree(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
