package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// AWS_CA_BUNDLE is read by the AWS SDK's default configuration; an
// operator who sets it for the aws CLI must still be able to start Caddy.
func TestProvisionWithAWSCABundleSet(t *testing.T) {
	t.Setenv("AWS_CA_BUNDLE", writeCABundle(t))
	load(t, siteConfig(blockFor()))
	obj := env.objects.Get(s3test.KeyOriginalPNG)
	wantBody(t, get(t, urlPath(obj.Key)), http.StatusOK, obj.Body)
}

// writeCABundle writes a self-signed CA certificate as PEM and returns
// its path.
func writeCABundle(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "s3test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
