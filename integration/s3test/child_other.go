//go:build !linux

package s3test

import "os/exec"

// configureChild has nothing to add outside Linux: there is no portable
// parent-death signal, so cleanup relies on Gateway.Stop.
func configureChild(cmd *exec.Cmd) {}
