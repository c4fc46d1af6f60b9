package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// How often progress is shown: redrawn in place on a terminal, a new
// line otherwise (a log file or journald should not get five lines a
// second).
const (
	terminalRedraw = 200 * time.Millisecond
	plainLineEvery = 10 * time.Second
)

// Summary counts what sync or verify did with each regular file under
// the source.
type Summary struct {
	// Files is the number of regular files found (an unreadable
	// directory counts as one, failed).
	Files int64
	// Same counts files whose object has the same size and checksum
	// (sync skips them).
	Same int64
	// Missing and Different count files with no object, or an object of
	// another size or checksum: what sync uploads, what --dry-run would,
	// and what verify reports.
	Missing   int64
	Different int64
	// Uploaded counts successful uploads, UploadedBytes their bytes.
	Uploaded      int64
	UploadedBytes int64
	// Failed counts files that could not be read, compared or uploaded,
	// and paths that cannot be keys.
	Failed int64
	// Ignored counts symlinks and special files, which are not copied.
	Ignored  int64
	Duration time.Duration
}

// countDiffering counts a file that is not the same as its object.
func (s *Summary) countDiffering(v verdict) {
	if v == missing {
		s.Missing++
	} else {
		s.Different++
	}
}

// progress keeps the counts of a run and shows them as it goes: a line
// redrawn in place on a terminal, a plain line every few seconds
// otherwise. Notes (failures, skipped files) are printed on lines of
// their own, above the progress line.
type progress struct {
	out      io.Writer
	mode     mode
	terminal bool
	// width is the terminal's, in columns: a longer line would wrap, and
	// the carriage return would then redraw only its last row.
	width   int
	every   time.Duration
	start   time.Time
	stop    chan struct{}
	stopped chan struct{}

	mu sync.Mutex // guards the fields below
	// totalFiles and totalBytes are what the counting walk has seen so
	// far; counted is set when it is over, and they are the totals.
	totalFiles, totalBytes int64
	counted                bool
	// doneBytes is the size of the files handled, whatever the outcome,
	// for the rate and the ETA.
	doneBytes int64
	sum       Summary
	// drawn is true while a progress line is on the terminal without its
	// newline.
	drawn bool
}

// terminalWidth reports whether w is a terminal, where progress can be
// redrawn in place, and how wide it is.
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil || width <= 0 {
		width = 80
	}
	return width, true
}

func newProgress(out io.Writer, m mode) *progress {
	p := &progress{out: out, mode: m, every: plainLineEvery, start: time.Now()}
	if p.width, p.terminal = terminalWidth(out); p.terminal {
		p.every = terminalRedraw
	}
	return p
}

// run shows progress until finish is called.
func (p *progress) run() {
	p.stop, p.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.stopped)
		tick := time.NewTicker(p.every)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				p.show()
			}
		}
	}()
}

// finish stops the display, clears the progress line, and returns the
// final counts.
func (p *progress) finish() Summary {
	if p.stop != nil {
		close(p.stop)
		<-p.stopped
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLine()
	p.sum.Duration = time.Since(p.start)
	return p.sum
}

func (p *progress) show() {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := p.lineLocked(time.Since(p.start))
	if p.terminal {
		if len(line) >= p.width {
			line = line[:p.width-1]
		}
		fmt.Fprintf(p.out, "\r%s\x1b[K", line)
		p.drawn = true
	} else {
		fmt.Fprintln(p.out, line)
	}
}

// clearLine erases the progress line so the next output starts on a
// clean line. Callers hold mu.
func (p *progress) clearLine() {
	if p.drawn {
		fmt.Fprint(p.out, "\r\x1b[K")
		p.drawn = false
	}
}

// note prints a line of its own, above the progress line.
func (p *progress) note(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLine()
	fmt.Fprintf(p.out, format+"\n", args...)
}

// lineLocked is the progress line: bytes, rate, ETA, then the counts.
//
//	42% 1.3 MiB/3.1 MiB, 2.1 MiB/s, ETA 1s; 1290/3002 files: 1200 uploaded, 90 skipped, 0 failed
func (p *progress) lineLocked(elapsed time.Duration) string {
	var b strings.Builder
	rate := float64(p.doneBytes) / max(elapsed.Seconds(), 1e-3)
	if p.counted {
		percent := 100.0
		if p.totalBytes > 0 {
			percent = min(100, 100*float64(p.doneBytes)/float64(p.totalBytes))
		}
		fmt.Fprintf(&b, "%3.0f%% %s/%s, %s/s, ETA %s; %d/%d files",
			percent, formatBytes(p.doneBytes), formatBytes(p.totalBytes), formatBytes(int64(rate)),
			eta(p.totalBytes-p.doneBytes, rate), p.handledLocked(), p.totalFiles)
	} else {
		fmt.Fprintf(&b, "%s/%s+, %s/s, ETA ? (still counting); %d/%d+ files",
			formatBytes(p.doneBytes), formatBytes(p.totalBytes), formatBytes(int64(rate)), p.handledLocked(), p.totalFiles)
	}
	s := p.sum
	switch p.mode {
	case modeSync:
		fmt.Fprintf(&b, ": %d uploaded, %d skipped, %d failed", s.Uploaded, s.Same, s.Failed)
	case modeDryRun:
		fmt.Fprintf(&b, ": %d to upload, %d skipped, %d failed", s.Missing+s.Different, s.Same, s.Failed)
	case modeVerify:
		fmt.Fprintf(&b, ": %d missing, %d different, %d failed", s.Missing, s.Different, s.Failed)
	}
	return b.String()
}

// handledLocked counts the files done with, whatever the outcome.
func (p *progress) handledLocked() int64 {
	s := p.sum
	if p.mode == modeSync {
		return s.Same + s.Uploaded + s.Failed
	}
	return s.Same + s.Missing + s.Different + s.Failed
}

func eta(left int64, rate float64) string {
	if rate <= 0 {
		return "?"
	}
	return (time.Duration(float64(left)/rate) * time.Second).Round(time.Second).String()
}

// foundFile records a file the walk will hand to the workers.
func (p *progress) foundFile() {
	p.mu.Lock()
	p.sum.Files++
	p.mu.Unlock()
}

// setTotal records what the counting walk has seen; done when it has
// seen everything.
func (p *progress) setTotal(files, bytes int64, done bool) {
	p.mu.Lock()
	p.totalFiles, p.totalBytes, p.counted = files, bytes, done
	p.mu.Unlock()
}

// count applies one outcome to the summary under the lock; size is the
// file's size as the walk saw it, for the byte progress.
func (p *progress) count(size int64, apply func(*Summary)) {
	p.mu.Lock()
	p.doneBytes += size
	apply(&p.sum)
	p.mu.Unlock()
}

// ignored counts a file that is not copied at all, and says why.
func (p *progress) ignored(path, why string) {
	p.mu.Lock()
	p.sum.Ignored++
	p.mu.Unlock()
	p.note("skipped %s: %s", printable(path), why)
}

// formatBytes writes a size with binary units, as the README's sizes are.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	value, exp := float64(n)/unit, 0
	for value >= unit && exp < 4 {
		value /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", value, "KMGTP"[exp])
}
