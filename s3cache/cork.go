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

// corkFor holds back partial frames on r's connection until the returned
// function is called, like nginx's tcp_nopush with sendfile: net/http
// writes the status line and headers on their own before sendfile sends
// the body, and without this they would leave as a packet of their own,
// costing the client a wake-up and both sides a round through the stack
// per response. Where the socket cannot be reached (a wrapped listener,
// not Linux) it does nothing.
func corkFor(r *http.Request) (uncork func()) {
	tc, ok := r.Context().Value(connCtxKey{}).(*net.TCPConn)
	if !ok {
		return func() {}
	}
	return setCork(tc)
}
