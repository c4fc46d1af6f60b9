package s3cache

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the handler's Prometheus series, registered in the config's
// registry (Caddy makes a new one for each config it loads, so a reload
// registers afresh instead of colliding with the old config's series).
// Handlers of one config share one set: the first registers it, the others
// find it through prometheus.AlreadyRegisteredError.
type metrics struct {
	requests      *prometheus.CounterVec   // by cache_status
	responseBytes *prometheus.CounterVec   // body bytes sent, by source: cache or s3
	s3Requests    *prometheus.CounterVec   // by operation and result
	s3Duration    *prometheus.HistogramVec // time to S3's response headers, by operation
	s3Bytes       prometheus.Counter       // body bytes received from S3
	s3Busy        prometheus.Counter       // requests that found every S3 slot taken
	purges        *prometheus.CounterVec   // cache-buster purge requests, by result
	memoryHits    prometheus.Counter       // hits answered from the memory tier

	byStatus map[string]prometheus.Counter // requests, resolved per status once
}

const metricsNamespace = "caddy_s3_media_cache"

var cacheStatuses = []string{cacheHit, cacheMiss, cacheExpired, cacheRevalidated, cacheStale, cacheUpdating, cacheBypass}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "requests_total",
			Help: "Media requests answered, by X-Cache-Status (cache-buster purges are counted in purge_requests_total instead).",
		}, []string{"cache_status"}),
		responseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "response_body_bytes_total",
			Help: "Body bytes sent to clients, by where they came from: the disk cache or S3 (fills and pass-through).",
		}, []string{"source"}),
		s3Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "s3_requests_total",
			Help: "Requests sent to S3, by operation and result (ok, not_modified, not_found, error, timeout).",
		}, []string{"operation", "result"}),
		s3Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "s3_response_header_seconds",
			Help:    "Time from sending a request to S3 to its response headers.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
		s3Bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "s3_body_bytes_total",
			Help: "Body bytes received from S3: the egress the cache exists to save.",
		}),
		s3Busy: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "s3_slots_exhausted_total",
			Help: "Requests that needed S3 but waited fill_queue_timeout without a free slot (max_concurrent_fills), and got a stale copy or a 503.",
		}),
		memoryHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "memory_hits_total",
			Help: "Hits whose body came from the memory tier of small objects (TLS, HTTP/2 and HTTP/3 hits), not from the entry file.",
		}),
		purges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "purge_requests_total",
			Help: "Cache-buster purge requests answered, by result: removed (the object was cached or being fetched) or not_cached.",
		}, []string{"result"}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.responseBytes, err = register(reg, m.responseBytes); err != nil {
		return nil, err
	}
	if m.s3Requests, err = register(reg, m.s3Requests); err != nil {
		return nil, err
	}
	if m.s3Duration, err = register(reg, m.s3Duration); err != nil {
		return nil, err
	}
	if m.s3Bytes, err = register(reg, m.s3Bytes); err != nil {
		return nil, err
	}
	if m.s3Busy, err = register(reg, m.s3Busy); err != nil {
		return nil, err
	}
	if m.purges, err = register(reg, m.purges); err != nil {
		return nil, err
	}
	if m.memoryHits, err = register(reg, m.memoryHits); err != nil {
		return nil, err
	}
	if _, err = register[prometheus.Collector](reg, storeCollector{}); err != nil {
		return nil, err
	}
	m.byStatus = make(map[string]prometheus.Counter, len(cacheStatuses))
	for _, s := range cacheStatuses {
		m.byStatus[s] = m.requests.WithLabelValues(s)
	}
	return m, nil
}

// register registers c, or returns the collector of the same description
// that another handler of this config registered first.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

func (m *metrics) countRequest(cacheStatus string) {
	if m == nil {
		return
	}
	if c, ok := m.byStatus[cacheStatus]; ok {
		c.Inc()
	}
}

// countPurge records a cache-buster purge request, and whether it found
// the object.
func (m *metrics) countPurge(removed bool) {
	if m == nil {
		return
	}
	result := "not_cached"
	if removed {
		result = "removed"
	}
	m.purges.WithLabelValues(result).Inc()
}

func (m *metrics) countMemoryHit() {
	if m != nil {
		m.memoryHits.Inc()
	}
}

func (m *metrics) countBytes(source string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.responseBytes.WithLabelValues(source).Add(float64(n))
}

// instrumentedOrigin counts and times every S3 request, and the body
// bytes that come back.
type instrumentedOrigin struct {
	origin
	m *metrics
}

func (o instrumentedOrigin) fetch(ctx context.Context, req originRequest) (*originResponse, error) {
	op := req.op()
	start := time.Now()
	resp, err := o.origin.fetch(ctx, req)
	o.m.s3Duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	result := "ok"
	var oe *originError
	switch {
	case err == nil && resp.status == 304:
		result = "not_modified"
	case err == nil:
	case errors.As(err, &oe) && oe.status == 404:
		result = "not_found"
	case errors.As(err, &oe) && oe.timeout:
		result = "timeout"
	default:
		result = "error"
	}
	o.m.s3Requests.WithLabelValues(op, result).Inc()
	if err == nil && resp.body != nil {
		resp.body = &countingBody{ReadCloser: resp.body, counter: o.m.s3Bytes}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	counter prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.counter.Add(float64(n))
	}
	return n, err
}

// sourceOf names where a response's body came from, for
// response_body_bytes_total.
func sourceOf(cacheStatus string) string {
	switch cacheStatus {
	case cacheHit, cacheStale, cacheUpdating, cacheRevalidated:
		return "cache"
	case cacheBypass:
		return "local"
	default:
		return "s3"
	}
}

// storeCollector reports the state of every open store at scrape time,
// labelled by cache directory.
type storeCollector struct{}

var (
	storeBytesDesc = prometheus.NewDesc(metricsNamespace+"_cache_bytes",
		"Disk taken by entry files: their headers and the slices they hold.", []string{"cache_dir"}, nil)
	storeReservedDesc = prometheus.NewDesc(metricsNamespace+"_cache_reserved_bytes",
		"Disk reserved for slices being fetched and entries being created.", []string{"cache_dir"}, nil)
	storeEntriesDesc = prometheus.NewDesc(metricsNamespace+"_cache_entries",
		"Entries in the index.", []string{"cache_dir"}, nil)
	storePartialDesc = prometheus.NewDesc(metricsNamespace+"_cache_partial_entries",
		"Entries in the index with slices not fetched yet.", []string{"cache_dir"}, nil)
	storeEvictionsDesc = prometheus.NewDesc(metricsNamespace+"_cache_evictions_total",
		"Entries evicted for max_size, inactive or min_free.", []string{"cache_dir"}, nil)
	storePurgesDesc = prometheus.NewDesc(metricsNamespace+"_cache_purges_total",
		"Entries and fills removed by purges (cache buster or admin API); a purge that found nothing adds nothing.", []string{"cache_dir"}, nil)
	storeCorruptDesc = prometheus.NewDesc(metricsNamespace+"_cache_corrupt_entries_total",
		"Entry files removed because they failed their checks.", []string{"cache_dir"}, nil)
	storeFillsDesc = prometheus.NewDesc(metricsNamespace+"_fills_in_flight",
		"Objects being filled: each fetches its slices, shared by all its readers.", []string{"cache_dir"}, nil)
	storeWaitersDesc = prometheus.NewDesc(metricsNamespace+"_fill_waiters",
		"Requests being served from fills in flight.", []string{"cache_dir"}, nil)
)

func (storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{storeBytesDesc, storeReservedDesc, storeEntriesDesc, storePartialDesc, storeEvictionsDesc,
		storePurgesDesc, storeCorruptDesc, storeFillsDesc, storeWaitersDesc} {
		ch <- d
	}
}

func (storeCollector) Collect(ch chan<- prometheus.Metric) {
	stores.Range(func(key, value any) bool {
		s, ok := value.(*store)
		if !ok {
			return true
		}
		st := s.snapshot()
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.dir)
		}
		counter := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, s.dir)
		}
		gauge(storeBytesDesc, float64(st.Bytes))
		gauge(storeReservedDesc, float64(st.ReservedBytes))
		gauge(storeEntriesDesc, float64(st.Entries))
		gauge(storePartialDesc, float64(st.PartialEntries))
		counter(storeEvictionsDesc, float64(st.Evictions))
		counter(storePurgesDesc, float64(st.Purges))
		counter(storeCorruptDesc, float64(st.CorruptRemoved))
		gauge(storeFillsDesc, float64(st.FillsInFlight))
		gauge(storeWaitersDesc, float64(st.FillWaiters))
		return true
	})
}
