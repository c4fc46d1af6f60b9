package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// report is what a run found: the table rows, the raw measurements behind
// them, and the correctness failures.
type report struct {
	Machine  machine  `json:"machine"`
	Settings settings `json:"settings"`
	// Revision is the checkout's commit, "-dirty" when it has changes.
	Revision string        `json:"revision"`
	Started  time.Time     `json:"started"`
	Took     time.Duration `json:"took_ns"`
	Rows     []row         `json:"rows"`
	Failures []string      `json:"failures"`
	// Warnings are about the measurement, not the server: another
	// process busy on the cores, a saturated load generator.
	Warnings []string       `json:"warnings"`
	Raw      map[string]any `json:"raw"`
	quick    bool
}

type machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemoryGiB int64  `json:"memory_gib"`
	Kernel    string `json:"kernel"`
	Nginx     string `json:"nginx"`
	Caddy     string `json:"caddy"`
	Wrk       string `json:"wrk"`
	H2load    string `json:"h2load,omitempty"`
	Go        string `json:"go"`
}

type settings struct {
	Quick           bool          `json:"quick"`
	RTT             time.Duration `json:"rtt_ns"`
	BytesPerSecond  int64         `json:"bytes_per_second"`
	SlowBytesPerSec int64         `json:"slow_bytes_per_second"`
	WrkDuration     time.Duration `json:"wrk_duration_ns"`
	WrkConnections  int           `json:"wrk_connections"`
	ServerCPU       int           `json:"server_cpu"`
	LoadCPU         int           `json:"load_cpu"`
	// Ours is how our Caddy's fills were configured.
	Ours fillSettings `json:"ours"`
}

// row is one line of the table.
type row struct {
	Scenario string   `json:"scenario"`
	Unit     string   `json:"unit"`
	Nginx    *float64 `json:"nginx,omitempty"`
	Ours     float64  `json:"ours"`
	// Ratio is ours / nginx.
	Ratio  *float64 `json:"ratio,omitempty"`
	Target string   `json:"target"`
	// Met is unset when the target was not evaluated: timings in quick
	// mode.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
	// LowerIsBetter is true for times, memory and request counts.
	LowerIsBetter bool `json:"lower_is_better"`
	// TargetRatio is the target as a ratio to nginx, for the chart; 0
	// when the target is not one.
	TargetRatio float64 `json:"target_ratio,omitempty"`
	// Label is the row's short name in the chart.
	Label string `json:"label,omitempty"`
	// LoadBound is set when the load generator's core, not the server's,
	// set the pace: the figures then compare little.
	LoadBound bool `json:"load_bound,omitempty"`
}

// target is a row's goal.
type target struct {
	text string
	// ok says whether ours (and the ratio to nginx, when there is one)
	// meet it.
	ok func(ours float64, ratio float64) bool
	// correctness targets are checked in every mode, and a miss fails
	// the run: what must hold on any machine, such as the S3 body bytes
	// our Caddy pulled where the sliced engine makes them deterministic
	// (each byte of an object at most once per fill). The others are
	// timings, or counted.
	correctness bool
	// counted targets are on what the throttling proxy counted too, and
	// are evaluated in quick mode as well, but what they count depends on
	// timing (how many requests were open at once at the proxy, a moment
	// after Caddy let one go): a miss is reported, never failed.
	counted bool
	ratio   float64
}

func ratioAtLeast(x float64) target {
	return target{text: fmt.Sprintf("≥ %g×", x), ratio: x, ok: func(_, r float64) bool { return r >= x }}
}

func ratioAtMost(x float64) target {
	return target{text: fmt.Sprintf("≤ %g×", x), ratio: x, ok: func(_, r float64) bool { return r <= x }}
}

func atLeast(v float64, text string) target {
	return target{text: text, ok: func(o, _ float64) bool { return o >= v }}
}

func atMost(v float64, text string) target {
	return target{text: text, ok: func(o, _ float64) bool { return o <= v }}
}

func lessThan(v float64, text string) target {
	return target{text: text, ok: func(o, _ float64) bool { return o < v }}
}

// countedAtMost is a counted target: ours at most v.
func countedAtMost(v float64, text string) target {
	return target{text: text, counted: true, ok: func(o, _ float64) bool { return o <= v }}
}

// mustBeAtMost is a correctness target: ours at most v, or the run fails.
func mustBeAtMost(v float64, text string) target {
	return target{text: text, correctness: true, ok: func(o, _ float64) bool { return o <= v }}
}

// exactly is a correctness target: ours exactly v, or the run fails.
func exactly(v float64, text string) target {
	return target{text: text, correctness: true, ok: func(o, _ float64) bool { return o == v }}
}

func newReport(cfg config) *report {
	return &report{
		Started: time.Now(),
		quick:   cfg.quick,
		Raw:     map[string]any{},
		Settings: settings{
			Quick: cfg.quick, RTT: cfg.rtt, BytesPerSecond: cfg.rate, SlowBytesPerSec: cfg.slowRate,
			WrkDuration: cfg.duration, WrkConnections: cfg.connections, ServerCPU: cfg.serverCPU, LoadCPU: cfg.loadCPU,
		},
	}
}

func (r *report) fail(msg string) {
	fmt.Println("FAIL:", msg)
	r.Failures = append(r.Failures, msg)
}

func (r *report) warn(msg string) {
	fmt.Println("  warning:", msg)
	r.Warnings = append(r.Warnings, msg)
}

// add records a row, with its Ratio and Met worked out from t. Nginx is
// nil where nginx has no counterpart. The row is printed at once, so a
// long run shows progress.
func (r *report) add(rw row, t target) {
	rw.Target, rw.TargetRatio = t.text, t.ratio
	ratio := 0.0
	if rw.Nginx != nil && *rw.Nginx != 0 {
		ratio = rw.Ours / *rw.Nginx
		rw.Ratio = &ratio
	}
	if t.ok != nil && (t.correctness || t.counted || !r.quick) {
		met := t.ok(rw.Ours, ratio)
		rw.Met = &met
		if !met && t.correctness {
			r.fail(fmt.Sprintf("%s: %s %s, want %s", rw.Scenario, formatValue(rw.Ours, rw.Unit), rw.Unit, t.text))
		}
	}
	r.Rows = append(r.Rows, rw)
	fmt.Printf("  %s (%s): nginx %s, ours %s  %s\n", rw.Scenario, rw.Unit, formatOptional(rw.Nginx, rw.Unit), formatValue(rw.Ours, rw.Unit), verdict(rw))
}

func f64(v float64) *float64 { return &v }

func formatOptional(v *float64, unit string) string {
	if v == nil {
		return "n/a"
	}
	return formatValue(*v, unit)
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "req/s", "GETs", "entries", "requests", "answers":
		return groupThousands(fmt.Sprintf("%.0f", v))
	case "× size":
		return fmt.Sprintf("%.3f", v)
	case "ms":
		if v < 10 {
			return fmt.Sprintf("%.2f", v)
		}
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func verdict(rw row) string {
	switch {
	case rw.LoadBound:
		return "load-bound"
	case rw.Met == nil && rw.Target == "":
		return ""
	case rw.Met == nil:
		return "not checked (quick)"
	case *rw.Met:
		return "met"
	default:
		return "MISSED"
	}
}

// markdown renders the table as it goes into the README.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| scenario | nginx | ours | ours / nginx | target | |\n")
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | --- | --- |\n")
	for _, rw := range r.Rows {
		ratio := ""
		if rw.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *rw.Ratio)
		}
		name := rw.Scenario + ", " + rw.Unit
		if rw.Note != "" {
			name += " (" + rw.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", name, formatOptional(rw.Nginx, rw.Unit), formatValue(rw.Ours, rw.Unit), ratio, rw.Target, verdict(rw))
	}
	return b.String()
}

func (m machine) String() string {
	tools := m.Wrk
	if m.H2load != "" {
		tools += ", " + m.H2load
	}
	return fmt.Sprintf("%s, %d cores, %d GiB RAM, Linux %s; %s; Caddy %s; %s; %s",
		m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.Nginx, m.Caddy, tools, m.Go)
}

// write prints the table and writes results.json, table.md and chart.svg
// to dir.
func (r *report) write(w io.Writer, dir string) error {
	fmt.Fprintf(w, "\n==== results (%s) ====\n\n", r.Took.Round(time.Second))
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	fmt.Fprintf(w, "revision: %s\n", r.Revision)
	fmt.Fprintf(w, "link to S3: %s round trip, %s per connection; servers on core %d, load on core %d\n",
		r.Settings.RTT, rateString(r.Settings.BytesPerSecond), r.Settings.ServerCPU, r.Settings.LoadCPU)
	fmt.Fprintf(w, "ours: %s", r.Settings.Ours)
	if len(r.Settings.Ours.Options) > 0 {
		fmt.Fprintf(w, " (-caddy-option %q)", r.Settings.Ours.Options)
	}
	fmt.Fprint(w, "\n\n")
	fmt.Fprint(w, r.markdown())
	r.printWarnings(w)
	return r.writeFiles(w, dir)
}

func (r *report) printWarnings(w io.Writer) {
	if n := len(r.Warnings); n > 0 {
		const shown = 8
		fmt.Fprintf(w, "\n%d warning(s) about the measurement:\n  %s\n", n, strings.Join(r.Warnings[:min(n, shown)], "\n  "))
		if n > shown {
			fmt.Fprintf(w, "  … and %d more in results.json\n", n-shown)
		}
	}
}

// writeFiles writes results.json, table.md and chart.svg to dir.
func (r *report) writeFiles(w io.Writer, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "table.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "chart.svg"), []byte(chartSVG(r)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nwrote %s/{results.json,table.md,chart.svg}\n", dir)
	return nil
}

// rerender reads a results.json and writes its table.md and chart.svg
// again beside it, for a change to how they are drawn without a new run.
func rerender(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	r.quick = r.Settings.Quick
	dir := filepath.Dir(path)
	if err := os.WriteFile(filepath.Join(dir, "table.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "chart.svg"), []byte(chartSVG(&r)), 0o644)
}

// describeMachine fills r.Machine from /proc and the tools' versions.
func (r *report) describeMachine(ctx context.Context, caddyBin, nginxBin, wrkBin, h2loadBin string) {
	m := &r.Machine
	m.Cores = runtime.NumCPU()
	m.Go = runtime.Version()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if kb, err := sumStatusFile("/proc/meminfo", "MemTotal:"); err == nil {
		m.MemoryGiB = (kb + 1<<19) >> 20
	}
	version := func(bin string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput() // wrk -v exits 1
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return strings.TrimSpace(line)
	}
	m.Nginx = strings.TrimPrefix(version(nginxBin, "-v"), "nginx version: ")
	caddy, _, _ := strings.Cut(version(caddyBin, "version"), " ")
	m.Caddy = caddy
	wrk, _, _ := strings.Cut(version(wrkBin, "-v"), " [")
	m.Wrk = wrk
	if h2loadBin != "" {
		m.H2load = version(h2loadBin, "--version") // "h2load nghttp2/1.52.0"
	}
	r.Revision = version("git", "describe", "--always", "--dirty")
}

// sumStatusFile reads a "Name: N kB" line of a /proc file, in kB.
func sumStatusFile(path, field string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			var kb int64
			_, err := fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb, err
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}
