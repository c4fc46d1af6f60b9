package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// video is an MP4 of the cold ffprobe scenario, and what ffprobe finds in
// it when it reads the file on disk.
type video struct {
	object
	// moovAtEnd is true for the file whose moov atom (the index a
	// player needs before any frame) follows the media data, as ffmpeg
	// and many phones write it; false for the one written with
	// -movflags faststart, which puts it first.
	moovAtEnd bool
	probe     string
}

// probeEntries is what the scenario asks ffprobe for: enough that it must
// read the index and the first frames of every stream, and that a wrong
// byte anywhere there shows as a different answer.
const probeEntries = "format=duration,size,format_name:stream=index,codec_name,codec_type,nb_frames,width,height,sample_rate"

// videoDir keeps the generated videos between runs: making them takes
// seconds, and the same bytes make runs comparable.
var videoDir = filepath.Join("build", "bench-media")

// prepareVideos returns copies of each of the two MP4s of the same content,
// moov at the end and faststart, under distinct keys so that each is cold
// once, making the files with ffmpeg if an earlier run has not. The
// copies are in turn, one of each layout after the other.
func prepareVideos(ctx context.Context, seconds, copies int) ([]video, error) {
	hint := "install it with: apt-get install ffmpeg (scripts/bench does)"
	ffmpeg, err := findBinary("ffmpeg", hint)
	if err != nil {
		return nil, err
	}
	if _, err := findBinary("ffprobe", hint); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(videoDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", videoDir, err)
	}
	base := fmt.Sprintf("testsrc2-720p-%ds", seconds)
	end := filepath.Join(videoDir, base+"-moov-at-end.mp4")
	fast := filepath.Join(videoDir, base+"-faststart.mp4")
	d := strconv.Itoa(seconds)
	// A test pattern with a tone, in MPEG-4 Part 2 (fast to encode) at
	// 8 Mbit/s, about 1 MB a second, written bit-exact. The mp4 muxer
	// puts the moov atom at the end unless told otherwise.
	err = makeOnce(ctx, end, ffmpeg, "-nostdin", "-v", "error", "-y",
		"-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration="+d,
		"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration="+d,
		"-c:v", "mpeg4", "-b:v", "8M", "-maxrate", "8M", "-bufsize", "4M", "-c:a", "aac", "-b:a", "128k",
		"-fflags", "+bitexact", "-map_metadata", "-1", "-f", "mp4")
	if err != nil {
		return nil, err
	}
	// The same streams, copied, with the moov atom moved to the front.
	err = makeOnce(ctx, fast, ffmpeg, "-nostdin", "-v", "error", "-y", "-i", end,
		"-c", "copy", "-movflags", "+faststart", "-fflags", "+bitexact", "-map_metadata", "-1", "-f", "mp4")
	if err != nil {
		return nil, err
	}
	var files []video
	for i, file := range []string{end, fast} {
		o, err := newFileObject("", file, "video/mp4")
		if err != nil {
			return nil, err
		}
		v := video{object: o, moovAtEnd: i == 0}
		if v.probe, err = ffprobe(ctx, -1, file); err != nil {
			return nil, fmt.Errorf("ffprobe %s: %w", file, err)
		}
		files = append(files, v)
	}
	var out []video
	for c := range copies {
		for i, v := range files {
			v.key = fmt.Sprintf(mediaKeyPattern, fmt.Sprintf("116/000/%03d/%03d", c, i), filepath.Base(v.file))
			out = append(out, v)
		}
	}
	return out, nil
}

// makeOnce runs bin with args and path as its output unless path exists:
// into a temporary file first, renamed into place when complete, so an
// interrupted run leaves nothing half-made behind.
func makeOnce(ctx context.Context, path, bin string, args ...string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	started := time.Now()
	out, err := exec.CommandContext(ctx, bin, append(args, tmp)...).CombinedOutput()
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("making %s with %s: %w\n%s", path, bin, err, out)
	}
	fmt.Printf("made %s in %s\n", path, time.Since(started).Round(time.Millisecond))
	return os.Rename(tmp, path)
}

// ffprobe runs ffprobe on a file or URL, pinned to core cpu (unpinned
// when cpu < 0), and returns what it found, as JSON.
func ffprobe(ctx context.Context, cpu int, input string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	args := []string{"-v", "error", "-show_entries", probeEntries, "-of", "json", input}
	cmd := exec.CommandContext(ctx, "ffprobe", args...)
	if cpu >= 0 {
		cmd = exec.CommandContext(ctx, "taskset", append([]string{"-c", strconv.Itoa(cpu), "ffprobe"}, args...)...)
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return "", errors.Join(ctx.Err(), err)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

// limitedBuffer keeps the first 4 KB written to it: enough of ffprobe's
// complaints for an error message.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
