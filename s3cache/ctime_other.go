//go:build !linux

package s3cache

import "syscall"

// changeTime is not compared outside Linux, where Stat_t names the field
// differently on each system; size, mtime and inode still are.
func changeTime(*syscall.Stat_t) int64 { return 0 }
