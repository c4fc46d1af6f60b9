package throttle

import (
	"bufio"
	"io"
	"net/http"
)

// responseReader parses the HTTP/1.x responses of one connection from a
// copy of the bytes passed on to the client, pairs each with its request,
// and counts the bytes of each body as they pass. Like requestReader, it
// reads a stream it cannot parse to its end, so the relay is never held
// up.
type responseReader struct {
	w    *io.PipeWriter
	done chan struct{}
}

// newResponseReader calls body with the size of each piece of a response
// body that passed, and the record of the request it answers, and
// answered once a response has ended.
func newResponseReader(ex *exchanges, body func(r *Request, n int64), answered func()) *responseReader {
	r, w := io.Pipe()
	rr := &responseReader{w: w, done: make(chan struct{})}
	go func() {
		defer close(rr.done)
		br := bufio.NewReaderSize(r, 64<<10)
		for {
			e, ok := ex.next()
			if !ok {
				_, _ = io.Copy(io.Discard, br)
				return
			}
			ended, more := readResponse(br, e.method, func(n int64) { body(e.record, n) })
			if ended {
				ex.answered()
				answered()
			}
			if !more {
				_, _ = io.Copy(io.Discard, br)
				return
			}
		}
	}()
	return rr
}

// readResponse reads the final response to a request with this method,
// and any 1xx before it, counting its body bytes. It reports whether the
// response ended (its body was complete), and whether another response
// may follow it on the connection.
func readResponse(br *bufio.Reader, method string, body func(n int64)) (ended, more bool) {
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return false, false
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // an interim response: the final one follows
		}
		_, err = io.Copy(countingWriter(body), resp.Body)
		resp.Body.Close()
		return err == nil, err == nil && !resp.Close
	}
}

// countingWriter discards what it is given, after counting it.
type countingWriter func(n int64)

func (c countingWriter) Write(b []byte) (int, error) {
	c(int64(len(b)))
	return len(b), nil
}

// Write hands the reader a copy of bytes that went to the client.
func (rr *responseReader) Write(b []byte) (int, error) { return rr.w.Write(b) }

// close ends the stream and waits for the last body to be counted.
func (rr *responseReader) close() {
	rr.w.Close()
	<-rr.done
}
