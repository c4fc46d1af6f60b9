package h3load

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// startServer runs quic-go's HTTP/3 server on a loopback UDP port: 1,000
// bytes at /ok, a 404 elsewhere. It returns the base URL and the client's
// TLS configuration.
func startServer(t *testing.T) (string, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write([]byte(strings.Repeat("x", 1000)))
	})
	srv := &http3.Server{
		Handler:   mux,
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}),
	}
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(conn) }()
	t.Cleanup(func() { _ = srv.Close(); _ = conn.Close() })
	return "https://" + conn.LocalAddr().String(), &tls.Config{RootCAs: pool}
}

func TestRunCountsWholeAnswersOverHTTP3AfterTheWarmUp(t *testing.T) {
	base, tlsConf := startServer(t)
	res, err := Run(t.Context(), Options{URL: base + "/ok", Connections: 2, Streams: 3, WarmUp: 200 * time.Millisecond, Duration: 500 * time.Millisecond, TLS: tlsConf})
	if err != nil {
		t.Fatal(err)
	}
	if res.Protocol != "HTTP/3.0" || res.Requests == 0 || res.Non2xx != 0 || res.Errors != 0 {
		t.Errorf("result %+v: want answers over HTTP/3.0, all 2xx, no errors", res)
	}
	if res.BodyBytes != res.Requests*1000 || res.Duration != 500*time.Millisecond || res.RequestsPerSec != float64(res.Requests)/0.5 {
		t.Errorf("result %+v: want 1,000 bytes an answer, counted over the 500 ms after the warm-up", res)
	}
}

func TestRunFailsWhenTheFirstAnswerIsNot2xxOrTheOptionsAreWrong(t *testing.T) {
	base, tlsConf := startServer(t)
	if _, err := Run(t.Context(), Options{URL: base + "/missing", Connections: 1, Streams: 1, Duration: 100 * time.Millisecond, TLS: tlsConf}); err == nil ||
		!strings.Contains(err.Error(), "status 404") {
		t.Errorf("a 404 on the first request gave %v", err)
	}
	if _, err := Run(t.Context(), Options{URL: base + "/ok", Connections: 0, Streams: 1, Duration: time.Second, TLS: tlsConf}); err == nil {
		t.Error("no connections accepted")
	}
}
