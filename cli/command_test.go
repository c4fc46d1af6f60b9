package cli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// root builds `caddy s3-media-cache` the way Caddy's command factory
// does, from what the package registered.
func root(t *testing.T) *cobra.Command {
	t.Helper()
	registered, ok := caddycmd.Commands()["s3-media-cache"]
	if !ok {
		t.Fatal("s3-media-cache is not registered with caddycmd")
	}
	parent := &cobra.Command{Use: "s3-media-cache", Short: registered.Short, Long: registered.Long}
	registered.CobraFunc(parent)
	caddy := &cobra.Command{Use: "caddy", SilenceUsage: true}
	caddy.AddCommand(parent)
	return caddy
}

func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := root(t)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestEveryCommandHasHelpNamingItsFlags(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"stats":  {"--address", "--json"},
		"purge":  {"--address", "--path", "--prefix"},
		"sync":   {"--source", "--bucket", "--endpoint", "--region", "--path-style", "--prefix", "--concurrency", "--dry-run", "--acl", "--access-key-env", "--secret-key-env"},
		"verify": {"--source", "--bucket", "--endpoint", "--region", "--path-style", "--prefix", "--concurrency", "--access-key-env", "--secret-key-env"},
	} {
		out, err := execute(t, "s3-media-cache", cmd, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		for _, flag := range flags {
			if !strings.Contains(out, flag) {
				t.Errorf("%s --help does not mention %s:\n%s", cmd, flag, out)
			}
		}
	}
	out, err := execute(t, "s3-media-cache", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"stats", "purge", "sync", "verify"} {
		if !strings.Contains(out, cmd) {
			t.Errorf("s3-media-cache --help does not list %s:\n%s", cmd, out)
		}
	}
}

func TestSyncHelpShowsTheDefaults(t *testing.T) {
	out, _ := execute(t, "s3-media-cache", "sync", "--help")
	for _, want := range []string{`(default 8)`, `(default "S3_ACCESS_KEY")`, `(default "S3_SECRET_KEY")`, "public, max-age=315576000, immutable"} {
		if !strings.Contains(out, want) {
			t.Errorf("sync --help lacks %s", want)
		}
	}
}

// Wrong flags reach the command function and come back as exit status 2
// before anything is contacted.
func TestWrongFlagsAreExitStatusTwo(t *testing.T) {
	for _, args := range [][]string{
		{"purge"},
		{"purge", "--path", "/a.png", "--prefix", "/b/"},
		{"purge", "--path", "relative.png"},
		{"sync", "--bucket", "b"},
		{"sync", "--source", t.TempDir()},
		{"sync", "--source", t.TempDir(), "--bucket", "b", "--acl", "everyone"},
		{"verify", "--source", t.TempDir(), "--bucket", "b", "--concurrency", "-3"},
	} {
		_, err := execute(t, append([]string{"s3-media-cache"}, args...)...)
		// caddycmd's exitError, which caddycmd.Main exits with, is not
		// exported: its printed form is all a test can see of it.
		if err == nil || !strings.Contains(fmt.Sprintf("%#v", err), "ExitCode:2") {
			t.Errorf("%v: %#v, want exit status 2", args, err)
		}
	}
}

func TestExitCode(t *testing.T) {
	for err, want := range map[error]int{
		nil:                            0,
		usagef("--bucket is required"): 2,
		fmt.Errorf("wrapped: %w", usageError{errors.New("x")}): 2,
		fmt.Errorf("%w: 1 failed", ErrProblems):                1,
		errors.New("caddy responded with error: HTTP 400"):     1,
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestBucketFlagsDefaultsAndMistakes(t *testing.T) {
	f := BucketFlags{Source: "/srv", Bucket: "b", Prefix: "/mastodon/"}
	if err := f.normalize(); err != nil {
		t.Fatal(err)
	}
	if f.Prefix != "mastodon" || f.Concurrency != defaultConcurrency || f.AccessKeyEnv != "S3_ACCESS_KEY" || f.SecretKeyEnv != "S3_SECRET_KEY" {
		t.Errorf("defaults: %+v", f)
	}
	for name, edit := range map[string]func(*BucketFlags){
		"--source":      func(f *BucketFlags) { f.Source = "" },
		"--bucket":      func(f *BucketFlags) { f.Bucket = "" },
		"--endpoint":    func(f *BucketFlags) { f.Endpoint = "s3.example.com" },
		"--prefix":      func(f *BucketFlags) { f.Prefix = "a/../b" },
		"--concurrency": func(f *BucketFlags) { f.Concurrency = maxConcurrency + 1 },
	} {
		f := BucketFlags{Source: "/srv", Bucket: "b", Endpoint: "https://s3.example.com"}
		edit(&f)
		err := f.normalize()
		if ExitCode(err) != 2 || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want a usage error naming it", name, err)
		}
	}
}

func TestKeysComeFromTheNamedVariablesBothOrNeither(t *testing.T) {
	f := BucketFlags{AccessKeyEnv: "S3MC_UNIT_ACCESS", SecretKeyEnv: "S3MC_UNIT_SECRET"}
	t.Setenv("S3MC_UNIT_ACCESS", "")
	t.Setenv("S3MC_UNIT_SECRET", "")
	if _, _, static, err := f.staticKeys(); static || err != nil {
		t.Errorf("neither set: static %v, %v; want the default chain", static, err)
	}
	t.Setenv("S3MC_UNIT_ACCESS", "AKIDEXAMPLE")
	_, _, _, err := f.staticKeys()
	if ExitCode(err) != 2 || !strings.Contains(err.Error(), "S3MC_UNIT_SECRET is not") || strings.Contains(err.Error(), "AKIDEXAMPLE") {
		t.Errorf("only the access key: %v", err)
	}
	t.Setenv("S3MC_UNIT_SECRET", "wJalrXUtnFEMI")
	id, secret, static, err := f.staticKeys()
	if !static || err != nil || id != "AKIDEXAMPLE" || secret != "wJalrXUtnFEMI" {
		t.Errorf("both set: %v %v", static, err)
	}
}
