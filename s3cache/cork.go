package s3cache

import (
	"context"
	"net"
	"net/http"
)

// connCtxKey holds a request's client connection in its context, put there
// by rememberConn, for corkFor.
type connCtxKey struct{}

// rememberConn is registered with the Caddy server (RegisterConnContext)
// so that a response can reach its TCP socket's options.
func rememberConn(ctx context.Context, c net.Conn) context.Context {
	if ctx.Value(connCtxKey{}) != nil {
		return ctx // another handler of this server registered it too
	}
	return context.WithValue(ctx, connCtxKey{}, c)
}

// corkFor holds back partial frames on r's TLS connection until the
// returned function is called, like nginx's tcp_nopush: crypto/tls writes
// one record per 16 KiB of body, plus one for the headers, and without this
// each would leave as a packet of its own. Only for TLS over HTTP/1.x: on
// HTTP/2 other streams share the socket, and on plain HTTP, where the body
// goes out with sendfile, the benchmark measured corking as no faster at
// 50 KB and 20% slower at 1 MB (scripts/bench, hot HIT over plain HTTP).
// Where the socket cannot be reached (a listener wrapper of another kind,
// not Linux) it does nothing.
func corkFor(r *http.Request) (uncork func()) {
	if r.ProtoMajor != 1 || r.TLS == nil {
		return func() {}
	}
	c, _ := r.Context().Value(connCtxKey{}).(net.Conn)
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		c = tc.NetConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return func() {}
	}
	return setCork(tcp)
}
