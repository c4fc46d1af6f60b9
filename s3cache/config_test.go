package s3cache

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestValidateNamesTheOption: each value that cannot work is refused by
// Validate, with the option's JSON name (the Caddyfile's word) in the
// error, and nothing else checks it.
func TestValidateNamesTheOption(t *testing.T) {
	tests := []struct {
		name string
		json string // the handler's fields besides bucket
		want []string
	}{
		{"no bucket", `{"bucket":""}`, []string{"bucket is required"}},
		{"anonymous with keys", `{"anonymous":true,"access_key":"k","secret_key":"s"}`, []string{"anonymous", "access_key"}},
		{"access key alone", `{"access_key":"k"}`, []string{"access_key and secret_key"}},
		{"endpoint with credentials", `{"endpoint":"https://key:hunter2@s3.example"}`, []string{"endpoint"}},
		{"endpoint without scheme", `{"endpoint":"s3.example"}`, []string{"endpoint"}},
		{"relative strip_path_prefix", `{"strip_path_prefix":"system"}`, []string{"strip_path_prefix"}},
		{"prefix with dot-dot", `{"prefix":"a/../b"}`, []string{"prefix"}},
		{"negative max_size", `{"max_size":-1}`, []string{"max_size"}},
		{"negative min_free", `{"min_free":-1}`, []string{"min_free"}},
		{"negative inactive", `{"inactive":-1}`, []string{"inactive"}},
		{"negative max_entries", `{"max_entries":-1}`, []string{"max_entries"}},
		{"negative read_timeout", `{"read_timeout":-1}`, []string{"read_timeout"}},
		{"negative fill_queue_timeout", `{"fill_queue_timeout":-1}`, []string{"fill_queue_timeout"}},
		{"bad levels", `{"levels":"1:3"}`, []string{"levels", "1:2"}},
		{"too many levels", `{"levels":"1:1:1:1"}`, []string{"levels", "three"}},
		{"max_concurrent_fills below -1", `{"max_concurrent_fills":-2}`, []string{"max_concurrent_fills"}},
		{"slice not a multiple of 64KiB", `{"slice":100000}`, []string{"slice", "64KiB"}},
		{"negative fill_ahead", `{"fill_ahead":-1}`, []string{"fill_ahead"}},
		{"fill_parallel too high", `{"fill_parallel":65}`, []string{"fill_parallel"}},
		{"valid status", `{"valid":{"500":60000000000}}`, []string{"valid", `"500"`}},
		{"valid negative", `{"valid":{"200":-1}}`, []string{"valid", "negative"}},
		{"ignore_headers", `{"ignore_headers":["Vary"]}`, []string{"ignore_headers", `"Vary"`}},
		{"use_stale word", `{"use_stale":["sometimes"]}`, []string{"use_stale", `"sometimes"`}},
		{"use_stale off with others", `{"use_stale":["off","error"]}`, []string{"use_stale", "off"}},
		{"expires", `{"expires":"forever"}`, []string{"expires", `"forever"`}},
		{"purge_header without secret", `{"purge_header":"X-Secret"}`, []string{"purge_header", "secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Handler{Bucket: "b"}
			if err := json.Unmarshal([]byte(tt.json), &h); err != nil {
				t.Fatal(err)
			}
			err := h.Validate()
			if err == nil {
				t.Fatalf("Validate accepted %s", tt.json)
			}
			for _, want := range append(tt.want, "s3_media_cache: ") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error echoes a credential: %v", err)
			}
		})
	}
}

func TestValidateAcceptsDefaultsAndNamesTheSite(t *testing.T) {
	if err := (&Handler{Bucket: "b"}).Validate(); err != nil {
		t.Fatalf("a bucket alone is a working config: %v", err)
	}
	err := (&Handler{Site: "Caddyfile:12"}).Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "s3_media_cache at Caddyfile:12: bucket") {
		t.Fatalf("error %v does not name the block", err)
	}
}
