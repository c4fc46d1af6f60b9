package integration

import (
	"strings"
	"testing"
)

// secretsArea is the ledger area of the secret scans.
const secretsArea = "secrets"

// secretMarkers are strings that must never appear in what a client, a
// log reader or a metrics scraper sees: the bucket names, the S3 endpoint
// (gateway and proxy), both keys, and the marks of S3's XML errors.
// extra adds test-specific secrets such as a purge secret.
func secretMarkers(extra ...string) []string {
	return append([]string{
		privateBucket, publicBucket, env.gateway.Addr, env.proxy.URL(),
		strings.TrimPrefix(env.proxy.URL(), "http://"),
		env.gateway.AccessKey, env.gateway.SecretKey, "<Error>", "<?xml", "S3TESTREQUESTID",
	}, extra...)
}

// scanForSecrets records one scan of data (a response, a log, a metrics
// page) under the "secrets" area, as a bad input that was "rejected" when
// no marker is found in it, and fails t naming every marker found.
func scanForSecrets(t testing.TB, what string, data []byte, extra ...string) {
	t.Helper()
	s := string(data)
	var found []string
	for _, m := range secretMarkers(extra...) {
		if m != "" && strings.Contains(s, m) {
			found = append(found, m)
		}
	}
	recordInput(t, secretsArea, what, len(found) == 0, "contains "+strings.Join(found, ", "))
}
