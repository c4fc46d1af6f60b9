package s3test

import (
	"os/exec"
	"syscall"
)

// configureChild makes the kernel kill versitygw if the test binary dies
// without running its cleanup (a panic, a timeout, a kill -9), so no orphan
// keeps the port.
func configureChild(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
