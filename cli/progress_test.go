package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		3 << 20: "3.0 MiB", 10 << 30: "10.0 GiB", 5 << 40: "5.0 TiB",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestProgressLineHasBytesRateETAAndCounts(t *testing.T) {
	p := newProgress(&bytes.Buffer{}, modeSync)
	p.setTotal(3000, 4<<20, false)
	p.count(1<<20, func(s *Summary) { s.Uploaded += 900 })
	p.count(0, func(s *Summary) { s.Same += 100; s.Failed++ })
	if got, want := p.lineLocked(2*time.Second), "1.0 MiB/4.0 MiB+, 512.0 KiB/s, ETA ? (still counting); 1001/3000+ files: 900 uploaded, 100 skipped, 1 failed"; got != want {
		t.Errorf("while counting:\n got %s\nwant %s", got, want)
	}
	p.setTotal(3000, 4<<20, true)
	if got, want := p.lineLocked(2*time.Second), " 25% 1.0 MiB/4.0 MiB, 512.0 KiB/s, ETA 6s; 1001/3000 files: 900 uploaded, 100 skipped, 1 failed"; got != want {
		t.Errorf("counted:\n got %s\nwant %s", got, want)
	}

	v := newProgress(&bytes.Buffer{}, modeVerify)
	v.setTotal(10, 10, true)
	v.count(10, func(s *Summary) { s.Missing, s.Different, s.Same = 2, 3, 5 })
	if got := v.lineLocked(time.Second); !strings.HasSuffix(got, "10/10 files: 2 missing, 3 different, 0 failed") || !strings.HasPrefix(got, "100% ") {
		t.Errorf("verify line: %s", got)
	}
}

// On a terminal, a note first erases the progress line, so it never
// shares a line with it; in a log, progress lines are plain lines.
func TestProgressOnATerminalAndInALog(t *testing.T) {
	var term bytes.Buffer
	p := &progress{out: &term, mode: modeSync, terminal: true, width: 40, start: time.Now()}
	p.show()
	p.note("failed: %s", "a.png")
	p.show()
	p.finish()
	out := term.String()
	if !strings.HasPrefix(out, "\r") || !strings.Contains(out, "\r\x1b[Kfailed: a.png\n\r") || !strings.HasSuffix(out, "\r\x1b[K") {
		t.Errorf("terminal output %q", out)
	}
	for line := range strings.SplitSeq(out, "\r") {
		if line = strings.TrimSuffix(line, "\x1b[K"); len(line) >= 40 && !strings.Contains(line, "\n") {
			t.Errorf("progress line of %d columns on a 40-column terminal: %q", len(line), line)
		}
	}

	var log bytes.Buffer
	l := newProgress(&log, modeSync)
	if l.terminal {
		t.Fatal("a buffer taken for a terminal")
	}
	l.show()
	l.note("failed: b.png")
	l.finish()
	if lines := strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n"); len(lines) != 2 || strings.ContainsAny(log.String(), "\r\x1b") {
		t.Errorf("log output %q", log.String())
	}
}

func TestProgressTicksUntilFinished(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out, modeDryRun)
	p.every = time.Millisecond
	p.run()
	time.Sleep(20 * time.Millisecond)
	sum := p.finish()
	n := strings.Count(out.String(), "to upload")
	if n == 0 || sum.Duration <= 0 {
		t.Fatalf("%d progress lines, duration %s", n, sum.Duration)
	}
	time.Sleep(5 * time.Millisecond)
	if strings.Count(out.String(), "to upload") != n {
		t.Error("progress printed after finish")
	}
}

// On a terminal the line is cut to the window, the least important
// parts first (bytes, rate, skipped, files), so it never wraps; the
// percentage, failures and the ETA stay longest.
func TestProgressLineFitsTheTerminalWidth(t *testing.T) {
	p := newProgress(&bytes.Buffer{}, modeSync)
	p.setTotal(3000, 4<<20, true)
	p.count(1<<20, func(s *Summary) { s.Uploaded += 900 })
	p.count(0, func(s *Summary) { s.Same += 100; s.Failed++ })
	full := " 25% 1.0 MiB/4.0 MiB, 512.0 KiB/s, ETA 6s; 1001/3000 files: 900 uploaded, 100 skipped, 1 failed"
	for _, tc := range []struct {
		width int
		want  string
	}{
		{0, full}, // not a terminal: the whole line
		{200, full},
		{len(full) + 1, full},
		{len(full), " 25%, 512.0 KiB/s, ETA 6s; 1001/3000 files: 900 uploaded, 100 skipped, 1 failed"},
		{80, " 25%, 512.0 KiB/s, ETA 6s; 1001/3000 files: 900 uploaded, 100 skipped, 1 failed"},
		{60, " 25%, ETA 6s; 1001/3000 files: 900 uploaded, 1 failed"},
		{40, " 25%, ETA 6s; 900 uploaded, 1 failed"},
		{30, " 25%, ETA 6s; 1 failed"},
		{20, " 25%; 1 failed"},
		{12, " 25%"},
		{4, " 25"},
		{1, ""},
	} {
		got := fit(p.partsLocked(2*time.Second), tc.width)
		if got != tc.want {
			t.Errorf("width %d:\n got %q\nwant %q", tc.width, got, tc.want)
		}
		if tc.width > 0 && len(got) >= tc.width {
			t.Errorf("width %d: a line of %d columns", tc.width, len(got))
		}
	}

	// While the tree is still being counted, the bytes are the measure
	// of progress and stay.
	v := newProgress(&bytes.Buffer{}, modeVerify)
	v.setTotal(3000, 4<<20, false)
	v.count(1<<20, func(s *Summary) { s.Missing, s.Different, s.Same = 2, 3, 5 })
	for width, want := range map[int]string{
		0:  "1.0 MiB/4.0 MiB+, 512.0 KiB/s, ETA ? (still counting); 10/3000+ files: 2 missing, 3 different, 0 failed",
		80: "1.0 MiB/4.0 MiB+, ETA ? (still counting); 2 missing, 3 different, 0 failed",
		60: "1.0 MiB/4.0 MiB+, ETA ? (still counting); 0 failed",
		40: "1.0 MiB/4.0 MiB+; 0 failed",
		20: "1.0 MiB/4.0 MiB+",
	} {
		if got := fit(v.partsLocked(2*time.Second), width); got != want {
			t.Errorf("still counting, width %d:\n got %q\nwant %q", width, got, want)
		}
	}
}

// The bytes of a file in hand move the line as they are read, once per
// pass expected; a rewind (the SDK retrying an upload) credits nothing
// twice, and the file's end trades its credit for its size.
func TestProgressCountsTheBytesOfFilesInHand(t *testing.T) {
	p := newProgress(&bytes.Buffer{}, modeSync)
	p.setTotal(2, 8<<20, true)
	body := make([]byte, 4<<20)
	big := p.startFile(int64(len(body)), 2)
	r := big.reader(bytes.NewReader(body))
	if _, err := io.CopyN(io.Discard, r, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got := p.lineLocked(time.Second); !strings.HasPrefix(got, " 12% 1.0 MiB/8.0 MiB") {
		t.Errorf("half of a file's first pass of two: %s", got)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	upload := big.reader(bytes.NewReader(body))
	if _, err := io.CopyN(io.Discard, upload, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := upload.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, upload, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got := p.lineLocked(time.Second); !strings.HasPrefix(got, " 38% 3.0 MiB/8.0 MiB") {
		t.Errorf("a pass read and half of the upload, rewound once: %s", got)
	}
	big.finish(func(s *Summary) { s.Uploaded++ })
	if got := p.lineLocked(time.Second); !strings.HasPrefix(got, " 50% 4.0 MiB/8.0 MiB") || p.movingBytes != 0 {
		t.Errorf("finished: %s (%d bytes still in hand)", got, p.movingBytes)
	}

	// A file read more than expected never counts for more than its size.
	small := p.startFile(1<<20, 1)
	small.add(3 << 20)
	if got := p.lineLocked(time.Second); !strings.HasPrefix(got, " 62% 5.0 MiB/8.0 MiB") {
		t.Errorf("over-read: %s", got)
	}
}
