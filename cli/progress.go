package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
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
	Ignored int64
	// ReadBack counts the objects read back from the bucket to be
	// compared with their file, ReadBackBytes the bytes read: multipart
	// uploads whose part size could not be found, and objects with
	// neither an MD5 ETag nor x-amz-meta-sha256. This is S3 egress.
	ReadBack      int64
	ReadBackBytes int64
	Duration      time.Duration
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
	// the carriage return would then redraw only its last row. It is
	// measured again before each redraw when tty is set, so a resized
	// window is followed.
	width   int
	tty     *os.File
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
	// and movingBytes the part of the files in hand already read or
	// uploaded (see movingFile), for the percentage, the rate and the
	// ETA.
	doneBytes   int64
	movingBytes int64
	sum         Summary
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
		p.tty = out.(*os.File)
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
	elapsed := time.Since(p.start)
	if !p.terminal {
		fmt.Fprintln(p.out, p.lineLocked(elapsed))
		return
	}
	if p.tty != nil {
		if width, ok := terminalWidth(p.tty); ok {
			p.width = width
		}
	}
	fmt.Fprintf(p.out, "\r%s\x1b[K", fit(p.partsLocked(elapsed), p.width))
	p.drawn = true
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

// lineLocked is the whole progress line: bytes, rate, ETA, then the
// counts.
//
//	42% 1.3 MiB/3.1 MiB, 2.1 MiB/s, ETA 1s; 1290/3002 files: 1200 uploaded, 90 skipped, 0 failed
func (p *progress) lineLocked(elapsed time.Duration) string {
	return fit(p.partsLocked(elapsed), 0)
}

// lineGroup is where a linePart sits on the line, which decides the
// punctuation before it.
type lineGroup int

const (
	groupBytes  lineGroup = iota // percentage, bytes, rate, ETA
	groupFiles                   // files handled of all files
	groupCounts                  // what became of them
)

// linePart is one piece of the progress line. rank orders the pieces by
// importance, 0 the most important: on a narrow terminal the line drops
// the least important first.
type linePart struct {
	text  string
	group lineGroup
	// sep goes before the part when the part before it on the line is
	// of the same group.
	sep  string
	rank int
}

// partsLocked are the pieces of the progress line, in the order shown.
// Failures and the ETA outrank the byte counts and the rate, which a
// narrow window can do without.
func (p *progress) partsLocked(elapsed time.Duration) []linePart {
	done := p.doneBytes + p.movingBytes
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	var parts []linePart
	if p.counted {
		percent := 100.0
		if p.totalBytes > 0 {
			percent = min(100, 100*float64(done)/float64(p.totalBytes))
		}
		parts = append(parts,
			linePart{text: fmt.Sprintf("%3.0f%%", percent), rank: 0},
			linePart{text: formatBytes(done) + "/" + formatBytes(p.totalBytes), sep: " ", rank: 7},
			linePart{text: formatBytes(int64(rate)) + "/s", sep: ", ", rank: 6},
			linePart{text: "ETA " + eta(p.totalBytes-done, rate), sep: ", ", rank: 2},
			linePart{text: fmt.Sprintf("%d/%d files", p.handledLocked(), p.totalFiles), group: groupFiles, rank: 4})
	} else {
		parts = append(parts,
			linePart{text: formatBytes(done) + "/" + formatBytes(p.totalBytes) + "+", rank: 0},
			linePart{text: formatBytes(int64(rate)) + "/s", sep: ", ", rank: 6},
			linePart{text: "ETA ? (still counting)", sep: ", ", rank: 2},
			linePart{text: fmt.Sprintf("%d/%d+ files", p.handledLocked(), p.totalFiles), group: groupFiles, rank: 4})
	}
	count := func(format string, n int64, rank int) {
		parts = append(parts, linePart{text: fmt.Sprintf(format, n), group: groupCounts, sep: ", ", rank: rank})
	}
	s := p.sum
	switch p.mode {
	case modeSync:
		count("%d uploaded", s.Uploaded, 3)
		count("%d skipped", s.Same, 5)
	case modeDryRun:
		count("%d to upload", s.Missing+s.Different, 3)
		count("%d skipped", s.Same, 5)
	case modeVerify:
		count("%d missing", s.Missing, 3)
		count("%d different", s.Different, 3)
	}
	count("%d failed", s.Failed, 1)
	return parts
}

// fit joins the parts into a line shorter than width columns (so that it
// never reaches the last column, where a terminal may wrap), dropping the
// least important parts first, and of equal rank the rightmost; the most
// important part alone is cut if it must be. Width 0 means no limit.
func fit(parts []linePart, width int) string {
	keep := make([]bool, len(parts))
	for i := range keep {
		keep[i] = true
	}
	line := joinParts(parts, keep)
	if width <= 0 {
		return line
	}
	order := make([]int, len(parts))
	for i := range order {
		order[i] = i
	}
	// Least important first; of equal rank, rightmost first.
	slices.SortStableFunc(order, func(a, b int) int {
		if parts[a].rank != parts[b].rank {
			return parts[b].rank - parts[a].rank
		}
		return b - a
	})
	for _, i := range order[:len(order)-1] {
		if len(line) < width {
			break
		}
		keep[i] = false
		line = joinParts(parts, keep)
	}
	if len(line) >= width {
		line = line[:max(width-1, 0)]
	}
	return line
}

// joinParts writes the kept parts with their punctuation: a part's own
// separator after one of its group, ": " from the files to their counts,
// "; " between other groups.
func joinParts(parts []linePart, keep []bool) string {
	var b strings.Builder
	prev := -1
	for i, part := range parts {
		if !keep[i] {
			continue
		}
		if prev >= 0 {
			switch from := parts[prev].group; {
			case from == part.group:
				b.WriteString(part.sep)
			case from == groupFiles && part.group == groupCounts:
				b.WriteString(": ")
			default:
				b.WriteString("; ")
			}
		}
		b.WriteString(part.text)
		prev = i
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

// readBack counts an object read back from the bucket, and its bytes.
func (p *progress) readBack(bytes int64) {
	p.mu.Lock()
	p.sum.ReadBack++
	p.sum.ReadBackBytes += bytes
	p.mu.Unlock()
}

// movingFile credits the progress line with a file's bytes while it is
// in hand, as they are read to be compared and read again to be
// uploaded, so that a large file moves the percentage as it goes rather
// than all at once at its end.
type movingFile struct {
	p    *progress
	size int64
	// passes is how many times the bytes are expected to go through: 1
	// to be compared, 2 when an upload is known to follow (the object is
	// missing or of another size). A file of the same size found
	// different is uploaded with its credit already full: its upload
	// does not move the line.
	passes int64
	// moved is the bytes read over all passes, credited the part of
	// size the line shows. Both are guarded by p.mu.
	moved, credited int64
}

// startFile begins crediting a file of size bytes.
func (p *progress) startFile(size int64, passes int) *movingFile {
	return &movingFile{p: p, size: size, passes: int64(max(passes, 1))}
}

// add credits n more bytes read.
func (m *movingFile) add(n int64) {
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	m.moved += n
	credit := min(m.size, m.moved/m.passes)
	m.p.movingBytes += credit - m.credited
	m.credited = credit
}

// finish applies the file's outcome, as count does, trading its partial
// credit for its whole size in the same step so the line never counts
// it twice.
func (m *movingFile) finish(apply func(*Summary)) {
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	m.p.movingBytes -= m.credited
	m.credited = 0
	m.p.doneBytes += m.size
	apply(&m.p.sum)
}

// reader returns r crediting its bytes to the file. Seeking back (the
// SDK rewinds a body to sign or retry it) does not credit the same
// bytes twice.
func (m *movingFile) reader(r io.ReadSeeker) io.ReadSeeker {
	return &creditingReader{r: r, file: m}
}

type creditingReader struct {
	r             io.ReadSeeker
	file          *movingFile
	pos, furthest int64
}

func (c *creditingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.pos += int64(n)
	if c.pos > c.furthest {
		c.file.add(c.pos - c.furthest)
		c.furthest = c.pos
	}
	return n, err
}

func (c *creditingReader) Seek(offset int64, whence int) (int64, error) {
	pos, err := c.r.Seek(offset, whence)
	if err == nil {
		c.pos = pos
	}
	return pos, err
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
