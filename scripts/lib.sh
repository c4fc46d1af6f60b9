# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared by the scripts in this folder and by .ci/run; source it, don't run it.
# It pins the tool versions in one place and puts Go and the Go-installed
# tools on PATH, so every script works on a fresh machine from any directory.

set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The versions everything here is built and tested with. scripts/build, the
# Dockerfile and CI all read these, so they cannot drift apart.
CADDY_VERSION=v2.11.9
XCADDY_VERSION=v0.4.5
VERSITYGW_VERSION=v1.8.0
MODULE=github.com/s3mediacache/caddy-s3-media-cache
# The module is not published, so the Go module proxy cannot resolve it. xcaddy
# needs some version to require before it can replace it with this checkout;
# the zero pseudo-version is the conventional "no real version" placeholder.
MODULE_PLACEHOLDER_VERSION=v0.0.0-00010101000000-000000000000

# Go is installed in /usr/local/go on our machines but not always on PATH
# (non-login shells, CI).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
	echo "error: go not found; install Go 1.26 (https://go.dev/dl/) and put it on PATH" >&2
	exit 1
fi

# Where `go install` puts binaries: GOBIN if set, else GOPATH/bin.
go_bin_dir=$(go env GOBIN)
if [ -z "$go_bin_dir" ]; then
	go_bin_dir="$(go env GOPATH)/bin"
fi
case ":$PATH:" in
*":$go_bin_dir:"*) ;;
*) PATH="$go_bin_dir:$PATH" ;;
esac
export PATH

# section prints a header that stands out in long CI logs.
section() {
	printf '\n==== %s ====\n' "$*"
}
