package s3test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// serveRaw answers for the faults that break HTTP itself (Reset,
// LengthDelta), which http.ResponseWriter is built to prevent: it takes
// the client's connection over and writes the response by hand.
func (p *Proxy) serveRaw(w *answerRecorder, r *http.Request, f Fault) {
	if f.Reset && f.CutAfter <= 0 {
		if conn, _, err := http.NewResponseController(w.ResponseWriter).Hijack(); err == nil {
			reset(conn)
		}
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	// Signed for the Host the client dialled, as in the reverse proxy.
	out.Host = r.Host
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()

	conn, buf, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return
	}
	header := resp.Header.Clone()
	for k, vs := range f.Header {
		header[k] = append(header[k], vs...)
	}
	header.Set("Connection", "close")
	if f.LengthDelta != 0 && r.Method != http.MethodHead && resp.StatusCode/100 == 2 && resp.ContentLength > 0 {
		header.Set("Content-Length", strconv.FormatInt(max(0, resp.ContentLength+f.LengthDelta), 10))
	}
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", resp.StatusCode, http.StatusText(resp.StatusCode))
	_ = header.Write(buf)
	buf.WriteString("\r\n")
	w.status = resp.StatusCode

	var body io.Reader = resp.Body
	if f.Reset {
		body = io.LimitReader(resp.Body, f.CutAfter)
	}
	w.bytes, _ = io.Copy(buf, body)
	_ = buf.Flush()
	if f.Reset {
		reset(conn)
		return
	}
	conn.Close()
}

// reset closes conn with a TCP RST instead of a FIN: with SO_LINGER at
// zero, close discards what is unsent and resets the connection.
func reset(conn net.Conn) {
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	conn.Close()
}
