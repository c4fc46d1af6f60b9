package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3mediacache/caddy-s3-media-cache/integration/s3test"
)

// bucket is the bench bucket on versitygw, public-read so that nginx can
// read it unsigned, as the recipe does.
const bucket = "bench-media"

// Sizes are decimal, like the link rate: 10 MB/s moves a 20 MB object in
// two seconds.
const (
	kB = 1000
	mB = 1000 * kB
)

// Mastodon uploads every attachment with this Cache-Control, so both
// caches keep the objects for ten years and never revalidate them.
const mastodonCacheControl = "public, max-age=315576000, immutable"

// object is one seeded object. The body is never kept: it is regenerated
// from seed when needed, so a hundred thousand objects cost no memory.
type object struct {
	key         string
	size        int64
	seed        uint64
	sha256      string
	contentType string
	// file, when set, holds the body instead of seed: a generated video.
	file string
}

func newObject(key string, size int64, seed uint64, contentType string) object {
	return object{
		key:         key,
		size:        size,
		seed:        seed,
		sha256:      s3test.SHA256Hex(s3test.RandomBytes(int(size), seed)),
		contentType: contentType,
	}
}

// path is the object's URL path on either server.
func (o object) path() string { return "/" + o.key }

// s3Path is the object's path through the throttling proxy, path-style.
func (o object) s3Path() string { return "/" + bucket + "/" + o.key }

func (o object) body() ([]byte, error) {
	if o.file != "" {
		b, err := os.ReadFile(o.file)
		if err == nil && int64(len(b)) != o.size {
			err = fmt.Errorf("%s changed size since the run started", o.file)
		}
		return b, err
	}
	return s3test.RandomBytes(int(o.size), o.seed), nil
}

// newFileObject is an object whose body is the file at path.
func newFileObject(key, path, contentType string) (object, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return object{}, err
	}
	return object{key: key, size: int64(len(b)), sha256: s3test.SHA256Hex(b), contentType: contentType, file: path}, nil
}

// newUnreadObject is an object no client reads whole, so its SHA-256 is
// not worked out: the disconnect storm's are 10 GB.
func newUnreadObject(key string, size int64, seed uint64, contentType string) object {
	return object{key: key, size: size, seed: seed, contentType: contentType}
}

// catalogue is every object a run uses, by purpose. Each cold object is
// asked for by one scenario only, so it is still cold in both caches when
// that scenario starts.
type catalogue struct {
	hot50k, hot1m, hot20m object
	// stampede and slowStampede are fetched cold by a crowd, on the
	// normal and on the slow link.
	stampede, slowStampede object
	// singleMiss is fetched cold by one client, and directly from S3.
	singleMiss object
	// tiny is fetched straight from S3 before the direct GET, to open the
	// connection that GET then reuses.
	tiny object
	// memory are the objects of the memory scenario; the first half is
	// cached beforehand.
	memory []object
	// workingSet are small objects, all cached, asked for at random.
	workingSet []object
	// fillers are only fetched through Caddy, to fill its cache before the
	// restart scenario.
	fillers []object

	// The cold objects of the scenarios of issue 11 (sliced fills), each
	// made and seeded only when its scenario runs: the storm's alone
	// are 10 GB. They are cached after the restart scenario, so they are
	// not in fixed().
	//
	// storm are the disconnect storm's, one per client.
	storm []object
	// heads get a HEAD each, ranges a Range: bytes=0-0.
	heads, ranges []object
	// suffix gets a Range: bytes=-500.
	suffix object
	// videos are the MP4s ffprobe reads: copies of one with the moov at
	// the end and of one with it first (faststart), in turn.
	videos []video
	// firstByte is the slow-first-byte stampede's.
	firstByte object
}

// Seeds for the generated bodies. Different objects must have different
// bytes, so that a mix-up shows up as a wrong SHA-256.
const (
	seedHot = 1 + iota
	seedCold
	seedMemory      = 100
	seedStorm       = 500 // to 500 + stormObjects
	seedSliced      = 800
	seedWorkingSet  = 1_000
	seedFillers     = 1_000_000
	mediaKeyPattern = "media_attachments/files/%s/original/%s"
)

func newCatalogue(cfg config) catalogue {
	c := catalogue{
		hot50k:       newObject(fmt.Sprintf(mediaKeyPattern, "110/000/000/050", "hot-50k.jpg"), 50*kB, seedHot, "image/jpeg"),
		hot1m:        newObject(fmt.Sprintf(mediaKeyPattern, "110/000/000/001", "hot-1m.webp"), 1*mB, seedHot+1, "image/webp"),
		hot20m:       newObject(fmt.Sprintf(mediaKeyPattern, "110/000/000/020", "hot-20m.mp4"), 20*mB, seedHot+2, "video/mp4"),
		stampede:     newObject(fmt.Sprintf(mediaKeyPattern, "111/000/000/001", "stampede.mp4"), cfg.bigSize, seedCold, "video/mp4"),
		slowStampede: newObject(fmt.Sprintf(mediaKeyPattern, "111/000/000/002", "slow-stampede.mp4"), cfg.bigSize, seedCold+1, "video/mp4"),
		singleMiss:   newObject(fmt.Sprintf(mediaKeyPattern, "111/000/000/003", "single-miss.mp4"), cfg.bigSize, seedCold+2, "video/mp4"),
		tiny:         newObject(fmt.Sprintf(mediaKeyPattern, "111/000/000/004", "tiny.png"), 100, seedCold+3, "image/png"),
	}
	for i := range cfg.memoryObjects {
		c.memory = append(c.memory, newObject(fmt.Sprintf(mediaKeyPattern, fmt.Sprintf("112/000/000/%03d", i), "memory.mp4"),
			cfg.bigSize, uint64(seedMemory+i), "video/mp4"))
	}
	if cfg.selected("disconnect storm") {
		for i := range cfg.stormObjects {
			c.storm = append(c.storm, newUnreadObject(fmt.Sprintf(mediaKeyPattern, fmt.Sprintf("115/000/000/%03d", i), "storm.mp4"),
				cfg.stormSize, uint64(seedStorm+i), "video/mp4"))
		}
	}
	if cfg.selected("cold HEAD and Range 0-0") {
		for i := range 5 {
			o := newObject(fmt.Sprintf(mediaKeyPattern, fmt.Sprintf("115/001/000/%03d", i), "head-or-range.mp4"),
				cfg.headRangeSize, uint64(seedSliced+i), "video/mp4")
			if i < 3 {
				c.heads = append(c.heads, o)
			} else {
				c.ranges = append(c.ranges, o)
			}
		}
	}
	if cfg.selected("cold suffix Range") {
		c.suffix = newObject(fmt.Sprintf(mediaKeyPattern, "115/002/000/000", "suffix.mp4"), cfg.suffixSize, seedSliced+5, "video/mp4")
	}
	if cfg.selected("slow first byte") {
		c.firstByte = newObject(fmt.Sprintf(mediaKeyPattern, "115/003/000/000", "slow-first-byte.webp"), cfg.firstByteSize, seedSliced+6, "image/webp")
	}
	for i := range cfg.workingSet {
		c.workingSet = append(c.workingSet, newObject(
			fmt.Sprintf("media_attachments/files/113/%03d/%03d/small/%06d.jpg", i/1000%1000, i%1000, i),
			cfg.smallSize, uint64(seedWorkingSet+i), "image/jpeg"))
	}
	return c
}

// newFillers returns the objects that fill Caddy's cache up to
// cfg.restartEntries, on top of what the other scenarios cached.
func newFillers(n int) []object {
	out := make([]object, n)
	for i := range n {
		out[i] = newObject(fmt.Sprintf("cache/accounts/avatars/114/%03d/%03d/original/%06d.png", i/1000%1000, i%1000, i),
			1*kB, uint64(seedFillers+i), "image/png")
	}
	return out
}

// fixed is every object but the fillers, which are seeded on their own,
// within a time budget.
func (c catalogue) fixed() []object {
	out := []object{c.hot50k, c.hot1m, c.hot20m, c.stampede, c.slowStampede, c.singleMiss, c.tiny}
	out = append(out, c.memory...)
	return append(out, c.workingSet...)
}

// sliced is every object of the scenarios of issue 11 that run.
func (c catalogue) sliced() []object {
	out := append(slices.Clone(c.storm), c.heads...)
	out = append(out, c.ranges...)
	for _, o := range []object{c.suffix, c.firstByte} {
		if o.key != "" {
			out = append(out, o)
		}
	}
	for _, v := range c.videos {
		out = append(out, v.object)
	}
	return out
}

// seed uploads objs, several at once, and stops at the first error. With
// budget > 0 it also stops, without error, once budget has passed, and
// returns how many objects (a prefix of objs) were stored.
func seed(ctx context.Context, client *s3.Client, objs []object, budget time.Duration) (int, error) {
	return forEachPrefix(ctx, len(objs), budget, func(ctx context.Context, i int) error {
		return put(ctx, client, objs[i])
	})
}

func put(ctx context.Context, client *s3.Client, o object) error {
	body, err := o.body()
	if err != nil {
		return err
	}
	_, err = client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(o.key),
		Body:          bytes.NewReader(body),
		ContentLength: aws.Int64(o.size),
		ContentType:   aws.String(o.contentType),
		CacheControl:  aws.String(mastodonCacheControl),
	})
	if err != nil {
		return fmt.Errorf("putting s3://%s/%s: %w", bucket, o.key, err)
	}
	return nil
}
