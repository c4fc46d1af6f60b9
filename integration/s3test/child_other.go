//go:build !linux

package s3test

import "os/exec"

// ConfigureChild has nothing to add outside Linux: there is no portable
// parent-death signal, so cleanup relies on the caller stopping the child.
func ConfigureChild(cmd *exec.Cmd) {}
