package integration

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// chromiumPath is Debian's chromium, which scripts/install-tools installs.
const chromiumPath = "/usr/bin/chromium"

// seekMP4 is a 6 s, 160x120 VP9 MP4 with a keyframe every second and its
// moov box at the end (no +faststart), made with:
//
//	ffmpeg -f lavfi -i testsrc=duration=6:size=160x120:rate=10 -c:v libvpx-vp9 \
//	  -b:v 100k -g 10 -an -fflags +bitexact -map_metadata -1 -f mp4 seek.mp4
const seekMP4 = "testdata/seek.mp4"

// padMP4 inserts a free box of pad bytes before the moov box at the end
// of an MP4. Offsets into mdat do not move, so the file still plays, but
// a browser must now jump pad bytes ahead to read the index: a Range
// request that does not start at 0.
func padMP4(t *testing.T, mp4 []byte, pad int) []byte {
	t.Helper()
	for i := 0; i+8 <= len(mp4); {
		size := int(binary.BigEndian.Uint32(mp4[i:]))
		if string(mp4[i+4:i+8]) == "moov" {
			if i+size != len(mp4) {
				t.Fatalf("%s: moov is not the last box", seekMP4)
			}
			free := make([]byte, 8+pad)
			binary.BigEndian.PutUint32(free, uint32(len(free)))
			copy(free[4:], "free")
			return slices.Concat(mp4[:i], free, mp4[i:])
		}
		if size < 8 {
			break
		}
		i += size
	}
	t.Fatalf("%s: no moov box at the top level", seekMP4)
	return nil
}

// browserPage is the page the other origin serves. It loads an image with
// crossorigin="anonymous" into a canvas and reads a pixel (a CORS error
// without Access-Control-Allow-Origin), does the same with an image from a
// site without CORS (which must fail), plays the video after seeking into
// it and reads a frame, then POSTs what happened to /result on its own
// origin.
const browserPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>pending</title></head>
<body>
<script>
const media = %q, noCORS = %q, imagePath = %q, videoPath = %q;
const out = {};
let pending = 3, reported = false;
function report() {
  if (reported) return;
  reported = true;
  document.title = JSON.stringify(out);
  fetch("/result", {method: "POST", body: JSON.stringify(out)});
}
function done() { if (--pending === 0) report(); }
setTimeout(() => { out.timeout = true; report(); }, 20000);

function pixel(src, w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(src, 0, 0);
  return Array.from(ctx.getImageData(0, 0, 1, 1).data);
}

const img = new Image();
img.crossOrigin = "anonymous";
img.onload = () => {
  try { out.image = {ok: true, width: img.naturalWidth, height: img.naturalHeight, pixel: pixel(img, img.naturalWidth, img.naturalHeight)}; }
  catch (e) { out.image = {ok: false, error: String(e)}; }
  done();
};
img.onerror = () => { out.image = {ok: false, error: "image did not load"}; done(); };
img.src = media + imagePath;

const bad = new Image();
bad.crossOrigin = "anonymous";
bad.onload = () => {
  try { pixel(bad, 1, 1); out.noCORS = "pixels readable"; }
  catch (e) { out.noCORS = "canvas tainted"; }
  done();
};
bad.onerror = () => { out.noCORS = "blocked"; done(); };
bad.src = noCORS + imagePath;

const v = document.createElement("video");
v.muted = true;
v.crossOrigin = "anonymous";
v.preload = "auto";
const seekTo = 4.2;
let seeked = false;
v.addEventListener("loadedmetadata", () => {
  out.duration = v.duration;
  v.currentTime = seekTo;
});
v.addEventListener("seeked", () => {
  if (seeked) return;
  seeked = true;
  out.seekedAt = v.currentTime;
  v.play().catch(e => { out.video = {ok: false, error: "play: " + String(e)}; done(); });
});
v.addEventListener("timeupdate", () => {
  if (!seeked || out.video || v.currentTime < seekTo + 0.3) return;
  try { out.video = {ok: true, currentTime: v.currentTime, pixel: pixel(v, v.videoWidth, v.videoHeight), width: v.videoWidth}; }
  catch (e) { out.video = {ok: false, error: "frame: " + String(e)}; }
  v.pause();
  done();
});
v.onerror = () => { out.video = {ok: false, error: "video error " + (v.error && v.error.code) + " " + (v.error && v.error.message)}; done(); };
v.src = media + videoPath;
document.body.appendChild(v);
</script>
</body></html>
`

// browserResult is what the page reports.
type browserResult struct {
	Timeout bool `json:"timeout"`
	Image   *struct {
		OK     bool   `json:"ok"`
		Error  string `json:"error"`
		Width  int    `json:"width"`
		Height int    `json:"height"`
		Pixel  []int  `json:"pixel"`
	} `json:"image"`
	NoCORS   string  `json:"noCORS"`
	Duration float64 `json:"duration"`
	SeekedAt float64 `json:"seekedAt"`
	Video    *struct {
		OK          bool    `json:"ok"`
		Error       string  `json:"error"`
		CurrentTime float64 `json:"currentTime"`
		Width       int     `json:"width"`
		Pixel       []int   `json:"pixel"`
	} `json:"video"`
}

// TestBrowserCORSAndRange has headless Chromium, on a page of another
// origin, read the pixels of an image from the media site (CORS), fail to
// with a site whose CORS header is off, and play the video from a point
// it seeks to (Range), reading a frame of it.
func TestBrowserCORSAndRange(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s not found (%v): install it with: apt-get update && apt-get install -y chromium", chromiumPath, err)
	}
	mp4, err := os.ReadFile(seekMP4)
	if err != nil {
		t.Fatal(err)
	}
	mp4 = padMP4(t, mp4, 16<<20)
	imageBody := s3test.PNG(64, 48, 99)
	imageKey, videoKey := testKey(t, "picture.png"), testKey(t, "clip.mp4")
	m := seedObjects(t,
		s3test.Object{Key: imageKey, Body: imageBody, ContentType: "image/png"},
		s3test.Object{Key: videoKey, Body: mp4, ContentType: "video/mp4"},
	)
	video := m.Get(videoKey)

	// The media site logs each request with its headers, so the test can
	// see the Range requests Chromium made.
	tmp := t.TempDir()
	accessLog := filepath.Join(tmp, "access.log")
	noCORSPort := freePorts(t, 1)[0]
	mediaSite := fmt.Sprintf("log {\n\toutput file %s\n\tformat json\n}\ns3_media_cache {\n%s\n}",
		accessLog, indent(cacheBlock(filepath.Join(tmp, "cache"))))
	noCORSSite := fmt.Sprintf("s3_media_cache {\n%s\n}", indent(cacheBlock(filepath.Join(tmp, "cache-nocors"), "cors_origin off")))
	load(t, caddyfileSites(env.ports, sitePort{port: env.ports.http, body: mediaSite}, sitePort{port: noCORSPort, body: noCORSSite}))
	warmUp(t)

	// The other origin: the page, and where it reports.
	results := make(chan []byte, 1)
	page := fmt.Sprintf(browserPage, env.baseURL(), fmt.Sprintf("http://127.0.0.1:%d", noCORSPort), urlPath(imageKey), urlPath(videoKey))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			io.WriteString(w, page)
		case r.Method == http.MethodPost && r.URL.Path == "/result":
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			select {
			case results <- b:
			default:
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer origin.Close()

	var stderr bytes.Buffer
	cmd := exec.Command(chromiumPath,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--no-proxy-server", "--autoplay-policy=no-user-gesture-required",
		"--user-data-dir="+filepath.Join(tmp, "chromium"),
		origin.URL+"/")
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// Chromium and its helpers are in their own process group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("chromium did not exit within 10s of SIGKILL")
		}
	}()

	var raw []byte
	select {
	case raw = <-results:
	case err := <-exited:
		exited <- err
		t.Fatalf("chromium exited (%v) before the page reported; output:\n%s", err, lastLines(stderr.String(), 40))
	case <-time.After(60 * time.Second):
		t.Fatalf("no result from the page within 60s; chromium output:\n%s", lastLines(stderr.String(), 40))
	}
	t.Logf("page reported: %s", raw)
	var res browserResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("page result %q: %v", raw, err)
	}

	if res.Timeout {
		t.Errorf("the page timed out before every check finished")
	}
	decoded, err := png.Decode(bytes.NewReader(imageBody))
	if err != nil {
		t.Fatal(err)
	}
	r, g, b, a := decoded.At(0, 0).RGBA()
	wantPixel := []int{int(r >> 8), int(g >> 8), int(b >> 8), int(a >> 8)}
	switch {
	case res.Image == nil:
		t.Errorf("no image result")
	case !res.Image.OK:
		t.Errorf("image from the media site: %s (CORS not honoured?)", res.Image.Error)
	case res.Image.Width != 64 || res.Image.Height != 48 || fmt.Sprint(res.Image.Pixel) != fmt.Sprint(wantPixel):
		t.Errorf("image %dx%d pixel %v, want 64x48 pixel %v", res.Image.Width, res.Image.Height, res.Image.Pixel, wantPixel)
	}
	if res.NoCORS == "pixels readable" || res.NoCORS == "" {
		t.Errorf("image from the site with cors_origin off: %q, want it blocked or the canvas tainted (the check proves nothing otherwise)", res.NoCORS)
	}
	switch {
	case res.Video == nil:
		t.Errorf("no video result")
	case !res.Video.OK:
		t.Errorf("video: %s", res.Video.Error)
	case res.SeekedAt < 4 || res.Video.CurrentTime < 4.5 || res.Video.Width != 160 || len(res.Video.Pixel) != 4:
		t.Errorf("video: seeked to %.2fs, played to %.2fs, width %d, pixel %v; want a seek to about 4.2s, playing on, 160 wide",
			res.SeekedAt, res.Video.CurrentTime, res.Video.Width, res.Video.Pixel)
	}
	if res.Duration < 5.9 || res.Duration > 6.1 {
		t.Errorf("video duration %.2fs, want 6s", res.Duration)
	}

	// Chromium fetched the video with Range requests answered 206, one of
	// them jumping over the padding to the index at the end.
	ranges := videoRanges(t, accessLog, urlPath(video.Key))
	t.Logf("video requests (Range → status): %v", ranges)
	var jumped bool
	for _, rr := range ranges {
		if rr.rangeHeader == "" || rr.status != http.StatusPartialContent {
			t.Errorf("video request without Range or not answered 206: %v", rr)
		}
		if strings.HasPrefix(rr.rangeHeader, "bytes=") && !strings.HasPrefix(rr.rangeHeader, "bytes=0-") {
			jumped = true
		}
	}
	if !jumped {
		t.Errorf("no Range request for the video started past byte 0: %v", ranges)
	}
}

type rangeRequest struct {
	rangeHeader string
	status      int
}

func (r rangeRequest) String() string { return fmt.Sprintf("%q→%d", r.rangeHeader, r.status) }

// videoRanges reads the media site's access log for the requests of path.
func videoRanges(t *testing.T, logFile, path string) []rangeRequest {
	t.Helper()
	var out []rangeRequest
	// The log is written as requests end; give the last one a moment.
	waitFor(2*time.Second, func() bool {
		out = out[:0]
		f, err := os.Open(logFile)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var entry struct {
				Status  int `json:"status"`
				Request struct {
					URI     string              `json:"uri"`
					Headers map[string][]string `json:"headers"`
				} `json:"request"`
			}
			if json.Unmarshal(sc.Bytes(), &entry) != nil || entry.Request.URI != path {
				continue
			}
			out = append(out, rangeRequest{rangeHeader: strings.Join(entry.Request.Headers["Range"], ","), status: entry.Status})
		}
		return len(out) > 0
	})
	return out
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
