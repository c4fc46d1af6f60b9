package throttle

import (
	"bufio"
	"io"
	"net/http"
)

// requestReader parses the HTTP/1.x requests of one connection from a copy
// of its bytes, and reports each one's method and path. A stream it cannot
// parse (not HTTP, or TLS) is read to its end and reports nothing, so the
// relay feeding it is never held up.
type requestReader struct {
	w    *io.PipeWriter
	done chan struct{}
}

func newRequestReader(report func(method, path string)) *requestReader {
	r, w := io.Pipe()
	rr := &requestReader{w: w, done: make(chan struct{})}
	go func() {
		defer close(rr.done)
		br := bufio.NewReader(r)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				_, _ = io.Copy(io.Discard, br)
				return
			}
			report(req.Method, req.URL.Path)
			// A request body (there is none on a GET) must be skipped to
			// reach the next request on a kept-alive connection.
			_, err = io.Copy(io.Discard, req.Body)
			req.Body.Close()
			if err != nil {
				_, _ = io.Copy(io.Discard, br)
				return
			}
		}
	}()
	return rr
}

// Write hands the reader a copy of bytes that went to the server.
func (rr *requestReader) Write(b []byte) (int, error) { return rr.w.Write(b) }

// close ends the stream and waits for the last request to be reported.
func (rr *requestReader) close() {
	rr.w.Close()
	<-rr.done
}
