package s3cache

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// purgeAttempt is what a request carried of the cache buster's header:
// whether it was there, and the SHA-256 of its value (the value itself is
// not kept).
type purgeAttempt struct {
	present bool
	sum     [32]byte
}

// takePurgeSecret takes the cache buster's header off r, keeping only a
// digest of its value, and keeps the request out of Caddy's access log
// (the log_skip variable): Caddy clones a request's headers for its logs
// before any handler runs, so taking the header off is not enough, and an
// access log line would hold the secret, or a guess at it. The handler
// logs purges itself, without the value (see isPurge and servePurge).
func (h *Handler) takePurgeSecret(r *http.Request) purgeAttempt {
	if h.purgeHeader == "" {
		return purgeAttempt{}
	}
	v, ok := r.Header[h.purgeHeader]
	if !ok {
		return purgeAttempt{}
	}
	delete(r.Header, h.purgeHeader)
	caddyhttp.SetVar(r.Context(), caddyhttp.LogSkipVar, true)
	return purgeAttempt{present: true, sum: sha256.Sum256([]byte(strings.Join(v, ",")))}
}

// wrongPurgeLogEvery is how often at most a wrong cache-buster secret is
// logged: a flood of guesses must not become a flood of log lines.
const wrongPurgeLogEvery = 10 * time.Second

// isPurge reports whether r, which carried the cache buster's header, is a
// purge with the right secret and method. One with the wrong secret is
// logged (at most once per wrongPurgeLogEvery, with the count of the others)
// and then served as an ordinary request, as Mastodon's media would be.
func (h *Handler) isPurge(r *http.Request, purge purgeAttempt) bool {
	if subtle.ConstantTimeCompare(purge.sum[:], h.purgeSecretSum[:]) == 1 && r.Method == h.purgeMethod {
		return true
	}
	if ok, held := h.wrongPurges.allow(time.Now(), wrongPurgeLogEvery); ok {
		h.logger.Warn("cache purge request with a wrong secret or method; serving it as an ordinary request",
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("remote_addr", r.RemoteAddr),
			zap.Int("more_since_last_warning", held))
	}
	return false
}

// servePurge removes the requested object from the cache, and any fill
// of it in flight, and answers 204 without a body. Local files under root
// are not touched: they are Mastodon's own.
func (h *Handler) servePurge(w http.ResponseWriter, r *http.Request) error {
	key, ckey, err := h.mapping.keys(rawPath(r.URL))
	if err != nil {
		return h.pathFailure(w, r, err)
	}
	removed := false
	if h.store != nil {
		h.store.purgeRequests.Add(1)
		removed = h.store.purge(ckey)
		h.logger.Info("purged by cache buster", zap.String("key", key), zap.Bool("was_cached", removed))
	}
	h.metrics.countPurge(removed)
	h.decorate(w, r, http.StatusNoContent, cacheBypass, time.Now())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// logLimiter lets a log line through at most once per interval, and
// counts the ones it held back for the next to report.
type logLimiter struct {
	mu   sync.Mutex
	next time.Time
	held int
}

func (l *logLimiter) allow(now time.Time, every time.Duration) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	l.next, held, l.held = now.Add(every), l.held, 0
	return true, held
}
