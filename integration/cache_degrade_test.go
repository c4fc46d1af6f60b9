package integration

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// A damaged entry file is never served: it is dropped with a warning and
// the object is fetched again (or, for damage only found mid-transfer,
// the transfer is cut), whether the damage came with a new mtime (an
// edit) or without one (bit rot), while Caddy ran or while it was
// stopped. The damage is found where the README's format puts it: the
// body by its bytes, the block table by computing it (a CRC-32C per 64
// KiB block), so the cases hold whatever the order of the parts.
func TestCorruptEntryIsNeverServed(t *testing.T) {
	obj := env.objects.Get(s3test.KeyOneMB)
	other := env.objects.Get(s3test.KeyCachedMP4)
	cases := []struct {
		name   string
		damage func(t *testing.T, path, otherPath string)
		// restart: damage the file while Caddy runs without the cache.
		restart bool
		// bitRot: nothing about the file changed but its bytes. Checking
		// a large body before sending it costs a read of it, so a cache
		// may instead check it while sending and cut the transfer: the
		// first client then sees a broken transfer, never wrong bytes.
		bitRot bool
		// tableInMemory: the running cache checks each block against the
		// block table it holds in memory, so damage to the file's copy
		// of the table changes nothing it serves (the right bytes, a
		// HIT). The damage is found when the file is next loaded: see
		// the same case "while stopped".
		tableInMemory bool
	}{
		{name: "bytes altered", damage: flipTail},
		{name: "bytes altered, mtime kept", damage: keepingMtime(flipTail), bitRot: true},
		{name: "bytes altered while stopped, mtime kept", damage: keepingMtime(flipTail), restart: true},
		{name: "one block zeroed, mtime kept", damage: keepingMtime(zeroBlock(obj.Body)), bitRot: true},
		{name: "truncated", damage: truncateHalf},
		{name: "truncated while stopped", damage: truncateHalf, restart: true},
		{name: "grown by a byte", damage: appendByte},
		{name: "emptied", damage: func(t *testing.T, path, _ string) { must(t, os.Truncate(path, 0)) }},
		{name: "header overwritten", damage: overwriteAt(0, []byte("GARBAGE!"))},
		{name: "header field altered", damage: keepingMtime(flipByteAt(20))},
		{name: "header field altered while stopped", damage: keepingMtime(flipByteAt(20)), restart: true},
		{name: "metadata altered", damage: keepingMtime(replaceFirst([]byte(obj.ContentType), []byte("image/wabp")))},
		{name: "block table altered", damage: keepingMtime(alterBlockTable(obj.Body)), tableInMemory: true},
		{name: "block table altered while stopped", damage: keepingMtime(alterBlockTable(obj.Body)), restart: true},
		{name: "swapped with another entry", damage: swapFiles},
		{name: "swapped with another entry while stopped", damage: swapFiles, restart: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			loadCache(t, dir)
			fillEntry(t, dir, obj)
			fillEntry(t, dir, other)
			path, otherPath := entryPathFor(dir, obj), entryPathFor(dir, other)
			if c.restart {
				releaseCache(t)
			}
			offset := suiteLogSize(t)
			c.damage(t, path, otherPath)
			if c.restart {
				loadCache(t, dir)
			}
			env.proxy.Reset()
			r := do(t, http.MethodGet, urlPath(obj.Key))
			whole := r.status == http.StatusOK && r.readErr == nil
			mismatches := 0
			if whole && s3test.SHA256Hex(r.body) != obj.SHA256 {
				mismatches = 1
			}
			recordBytes(t, diskFaultsArea, "entry file damaged", int64(len(r.body)), mismatches)
			switch {
			case mismatches > 0:
				t.Fatalf("the damaged entry was served as a complete 200 (X-Cache-Status %s) with wrong bytes", r.header.Get("X-Cache-Status"))
			case whole && c.tableInMemory:
				wantFromCache(t, r, obj, "HIT")
				wantS3Requests(t, 0)
			case whole:
				wantFromCache(t, r, obj, "MISS")
				wantS3Fetches(t, obj, 1)
			case c.bitRot:
				t.Logf("the first client saw a broken transfer (%v); the next must be a MISS", r.readErr)
				wantMissFromS3(t, obj)
			default:
				t.Errorf("status %d, read error %v: want the object from S3, since the damage shows before a byte is read", r.status, r.readErr)
			}
			if !c.tableInMemory {
				wantWarning(t, offset, "corrupt cache entry")
			}
			// The damaged file is replaced by a good one.
			if !waitFor(5*time.Second, func() bool { return entryHoldsBody(path, obj.Body) }) {
				t.Fatalf("the entry file was not replaced by a good one")
			}
			wantHitWithoutS3(t, obj)
			// Whatever became of the other entry, its bytes are right.
			if got := get(t, urlPath(other.Key)); got.status != http.StatusOK || s3test.SHA256Hex(got.body) != other.SHA256 {
				t.Errorf("%s: status %d, %d bytes (X-Cache-Status %s), want its own bytes", other.Key, got.status, len(got.body), got.header.Get("X-Cache-Status"))
			}
			recordFault(t, diskFaultsArea, "entry file "+c.name, !t.Failed(), "see the test's errors")
		})
	}
}

// Ways to damage an entry file. Each takes the file's path and that of
// another entry.

func flipTail(t *testing.T, path, _ string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	info, err := f.Stat()
	must(t, err)
	tail := make([]byte, 1000)
	_, err = f.ReadAt(tail, info.Size()-int64(len(tail)))
	must(t, err)
	for i := range tail {
		tail[i] ^= 0xff
	}
	_, err = f.WriteAt(tail, info.Size()-int64(len(tail)))
	must(t, err)
}

func truncateHalf(t *testing.T, path, _ string) {
	info, err := os.Stat(path)
	must(t, err)
	must(t, os.Truncate(path, info.Size()/2))
}

func appendByte(t *testing.T, path, _ string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	defer f.Close()
	_, err = f.Write([]byte{0})
	must(t, err)
}

// swapFiles swaps two entry files: each is whole, but for the other key.
func swapFiles(t *testing.T, path, otherPath string) {
	tmp := path + ".swap"
	must(t, os.Rename(path, tmp))
	must(t, os.Rename(otherPath, path))
	must(t, os.Rename(tmp, otherPath))
}

// keepingMtime gives the file its old modification time back after the
// damage, as bit rot would leave it.
func keepingMtime(damage func(*testing.T, string, string)) func(*testing.T, string, string) {
	return func(t *testing.T, path, otherPath string) {
		info, err := os.Stat(path)
		must(t, err)
		damage(t, path, otherPath)
		must(t, os.Chtimes(path, info.ModTime(), info.ModTime()))
	}
}

// rewrite applies change to the file's content in place, keeping its size.
func rewrite(change func(t *testing.T, data []byte)) func(*testing.T, string, string) {
	return func(t *testing.T, path, _ string) {
		data, err := os.ReadFile(path)
		must(t, err)
		change(t, data)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		must(t, err)
		defer f.Close()
		_, err = f.WriteAt(data, 0)
		must(t, err)
	}
}

func overwriteAt(off int, b []byte) func(*testing.T, string, string) {
	return rewrite(func(t *testing.T, data []byte) { copy(data[off:], b) })
}

func flipByteAt(off int) func(*testing.T, string, string) {
	return rewrite(func(t *testing.T, data []byte) { data[off] ^= 0x01 })
}

// replaceFirst swaps the first occurrence of old (outside the body: the
// metadata comes first) for new, of the same length.
func replaceFirst(old, new []byte) func(*testing.T, string, string) {
	return rewrite(func(t *testing.T, data []byte) {
		i := bytes.Index(data, old)
		if i < 0 || len(old) != len(new) {
			t.Fatalf("%q is not in the entry file", old)
		}
		copy(data[i:], new)
	})
}

// zeroBlock zeroes the second 64 KiB block of body where it lies in the
// file.
func zeroBlock(body []byte) func(*testing.T, string, string) {
	return rewrite(func(t *testing.T, data []byte) {
		i := bytes.Index(data, body)
		if i < 0 {
			t.Fatal("the body is not in the entry file")
		}
		clear(data[i+64<<10 : i+128<<10])
	})
}

// alterBlockTable flips a bit of the table of block checksums, found by
// computing it from body.
func alterBlockTable(body []byte) func(*testing.T, string, string) {
	return rewrite(func(t *testing.T, data []byte) {
		var table []byte
		for off := 0; off < len(body); off += 64 << 10 {
			table = binary.LittleEndian.AppendUint32(table, crc32.Checksum(body[off:min(off+64<<10, len(body))], crc32.MakeTable(crc32.Castagnoli)))
		}
		i := bytes.Index(data, table)
		if i < 0 {
			t.Fatal("the block table is not in the entry file")
		}
		data[i+len(table)/2] ^= 0x01
	})
}

// When the cache cannot be written, requests go to S3 uncached: the
// site keeps working, and entries already there are still hits.
func TestUnwritableCacheFallsBackToS3(t *testing.T) {
	dir := t.TempDir()
	loadCache(t, dir)
	cached := env.objects.Get(s3test.KeyOriginalPNG)
	fillEntry(t, dir, cached)

	// Running as root, chmod would not stop a write: a regular file
	// where the temp directory was does.
	temp := filepath.Join(dir, "temp")
	must(t, os.RemoveAll(temp))
	must(t, os.WriteFile(temp, []byte("not a directory"), 0o600))

	obj := env.objects.Get(s3test.KeyOneMB)
	for range 2 {
		wantMissFromS3(t, obj)
	}
	if exists(entryPathFor(dir, obj)) {
		t.Errorf("an entry appeared with no temp directory to write it in")
	}
	wantHitWithoutS3(t, cached)

	// Once the directory is back, the cache stores again.
	must(t, os.Remove(temp))
	must(t, os.Mkdir(temp, 0o700))
	fillEntry(t, dir, obj)
	wantHitWithoutS3(t, obj)
	recordFault(t, diskFaultsArea, "temp directory replaced by a file", !t.Failed(), "see the test's errors")
}

// Objects over max_object_size are streamed from S3 and never stored.
func TestObjectsOverMaxObjectSizeAreNotStored(t *testing.T) {
	dir := t.TempDir()
	obj := bigObject(t)
	loadCache(t, dir, "max_object_size 1MB")
	// The first request learns the size from the first slice, which goes
	// to the client as the first chunk of the object passed through; the
	// next ones go straight to S3 (hit-for-miss). Either way S3 sends
	// each byte once, a chunk at a time.
	for range 2 {
		env.proxy.Reset()
		wantGet(t, obj, "MISS")
		wantS3Fetches(t, obj, 1)
	}
	wantNoEntry(t, dir)
	wantTempEmpty(t, dir)

	small := env.objects.Get(s3test.KeyCachedMP4)
	fillEntry(t, dir, small)
}
