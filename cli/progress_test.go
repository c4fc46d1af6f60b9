package cli

import (
	"bytes"
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
