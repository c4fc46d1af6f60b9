package throttle

import (
	"bufio"
	"io"
	"net/http"
	"sync"
)

// requestReader parses the HTTP/1.x requests of one connection from a copy
// of its bytes, and reports each one. A stream it cannot
// parse (not HTTP, or TLS) is read to its end and reports nothing, so the
// relay feeding it is never held up.
type requestReader struct {
	w    *io.PipeWriter
	done chan struct{}
}

// newRequestReader reports each request to report, then adds it to ex
// with report's record of it, for the response reader to pair with its
// answer.
func newRequestReader(ex *exchanges, report func(*http.Request) *Request) *requestReader {
	r, w := io.Pipe()
	rr := &requestReader{w: w, done: make(chan struct{})}
	go func() {
		defer close(rr.done)
		// Once no request can be read any more, the response reader
		// must not wait for one: it would hold up the other relay.
		defer ex.end()
		br := bufio.NewReader(r)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				ex.end()
				_, _ = io.Copy(io.Discard, br)
				return
			}
			ex.add(req.Method, report(req))
			// A request body (there is none on a GET) must be skipped to
			// reach the next request on a kept-alive connection.
			_, err = io.Copy(io.Discard, req.Body)
			req.Body.Close()
			if err != nil {
				ex.end()
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

// exchanges pairs the requests of one connection with their responses, in
// order, as HTTP/1.1 without pipelining (nginx, Go) sends them: the
// request reader adds each request, the response reader takes them in
// turn, because the answer to a HEAD has no body whatever its
// Content-Length says, and each body's bytes are counted to its request.
type exchanges struct {
	mu      sync.Mutex // guards the fields below
	cond    *sync.Cond // signalled when pending grows or ended is set
	pending []exchange // requests read whose response has not started
	open    int        // requests sent whose response has not ended
	ended   bool       // no request will be added
}

// exchange is one request, waiting for its response.
type exchange struct {
	method string
	record *Request
}

func newExchanges() *exchanges {
	ex := &exchanges{}
	ex.cond = sync.NewCond(&ex.mu)
	return ex
}

func (ex *exchanges) add(method string, record *Request) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.pending = append(ex.pending, exchange{method: method, record: record})
	ex.cond.Broadcast()
}

// start records that a request's first bytes are going to the server.
func (ex *exchanges) start() {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.open++
}

func (ex *exchanges) end() {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.ended = true
	ex.cond.Broadcast()
}

// next waits for the request the next response answers; false when there
// will be none.
func (ex *exchanges) next() (exchange, bool) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for len(ex.pending) == 0 && !ex.ended {
		ex.cond.Wait()
	}
	if len(ex.pending) == 0 {
		return exchange{}, false
	}
	e := ex.pending[0]
	ex.pending = ex.pending[1:]
	return e, true
}

// answered records that a response has ended.
func (ex *exchanges) answered() {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.open--
}

// unanswered is the number of requests whose response never ended.
func (ex *exchanges) unanswered() int {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.open
}
