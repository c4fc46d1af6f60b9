package s3test

import (
	"os/exec"
	"syscall"
)

// ConfigureChild makes the kernel kill the child (versitygw, a Caddy
// under test) if the test binary dies without running its cleanup (a
// panic, a timeout, a kill -9), so no orphan keeps the port.
func ConfigureChild(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
