package s3test

import (
	"fmt"
	"net"
	"syscall"
	"time"
)

// Blackhole is a loopback address where TCP connects hang instead of being
// refused: a listening socket with a backlog of zero that never accepts,
// whose accept queue is filled on purpose. Linux then drops further SYNs,
// so a client's connect times out exactly as it would against a firewalled
// S3 endpoint — without sending a packet off the machine.
type Blackhole struct {
	Addr  string
	fd    int
	conns []net.Conn
}

// NewBlackhole opens the listening socket and fills its accept queue.
func NewBlackhole() (*Blackhole, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("blackhole socket: %w", err)
	}
	sa := &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("blackhole bind: %w", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("blackhole listen: %w", err)
	}
	bound, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("blackhole getsockname: %w", err)
	}
	b := &Blackhole{Addr: fmt.Sprintf("127.0.0.1:%d", bound.(*syscall.SockaddrInet4).Port), fd: fd}
	// A backlog of 0 still admits one or two connections; fill the queue
	// until a connect stops completing. Bounded: a handful of tries.
	for range 8 {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err != nil {
			return b, nil
		}
		b.conns = append(b.conns, c)
	}
	b.Close()
	return nil, fmt.Errorf("blackhole on %s kept accepting connections; cannot simulate a connect timeout", b.Addr)
}

// Endpoint is the blackhole as an S3 endpoint URL.
func (b *Blackhole) Endpoint() string { return "http://" + b.Addr }

// Close releases the socket and the connections that filled it.
func (b *Blackhole) Close() error {
	for _, c := range b.conns {
		c.Close()
	}
	return syscall.Close(b.fd)
}
