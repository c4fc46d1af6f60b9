//go:build !unix

package s3cache

import "errors"

// diskFree is not implemented here; min_free is then not enforced.
func diskFree(string) (int64, error) {
	return 0, errors.New("free space is not known on this platform")
}
