package s3cache

import (
	"net"
	"syscall"
)

// setCork sets TCP_CORK on c and returns the function that clears it,
// which sends what is held.
func setCork(c *net.TCPConn) (uncork func()) {
	raw, err := c.SyscallConn()
	if err != nil {
		return func() {}
	}
	set := func(on int) bool {
		var serr error
		err := raw.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, on)
		})
		return err == nil && serr == nil
	}
	if !set(1) {
		return func() {}
	}
	return func() { set(0) }
}
