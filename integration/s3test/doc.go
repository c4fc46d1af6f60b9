// Package s3test runs a real S3 server for integration tests and demos.
//
// It starts versitygw (a single static binary that serves a POSIX directory
// over the S3 API) on a loopback port, seeds it with Mastodon-shaped media
// objects, and puts a recording reverse proxy in front of it so tests can
// count the S3 requests the handler makes (and see what S3 answered) and
// inject faults (5xx, delays, hangs, bodies cut or reset mid-way, a
// Content-Length that lies, a slow link) without a mock of the S3
// protocol.
//
// It lives outside _test files so that integration/cmd/demo can use it too.
// Every listener is on 127.0.0.1, and every wait is bounded in time.
package s3test
