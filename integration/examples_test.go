package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.yaml.in/yaml/v3"
)

// The production examples: a systemd unit and a Docker Compose file, each
// beside the Caddyfile it runs. CI adapts and validates the Caddyfiles
// (.ci/run); these tests check what an admin installing them would trip
// over: a unit systemd warns about, a path the unit forbids Caddy to
// write, a secret the env file does not define, a cache that does not
// survive the container.
const (
	systemdDir  = "../examples/systemd"
	systemdUnit = "caddy-s3-media-cache.service"
	dockerDir   = "../examples/docker"

	// installedCaddy is where the unit expects the custom binary.
	installedCaddy = "/usr/local/bin/caddy"
	// maxExposure is the highest `systemd-analyze security` exposure
	// (0 to 10, lower is better) the unit may have; it measured 1.9
	// when written, "OK" in systemd's words.
	maxExposure = 2.5
)

// systemdAnalyze is the path of systemd-analyze. Its absence fails the
// test: the unit would otherwise ship unchecked.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is not installed, so the systemd unit cannot be checked: install Debian's systemd package (apt-get install systemd): %v", err)
	}
	return p
}

// TestSystemdUnitVerifiesClean runs `systemd-analyze verify` on the
// shipped unit, and on broken copies of it to show that the check sees
// what it is meant to. The unit names /usr/local/bin/caddy, which need
// not exist here, so each copy points its commands at a stub executable.
func TestSystemdUnitVerifiesClean(t *testing.T) {
	analyze := systemdAnalyze(t)
	original := readFile(t, filepath.Join(systemdDir, systemdUnit))
	unit := parseUnit(t, original)
	for _, key := range []string{"ExecStart", "ExecReload"} {
		if cmd := unit.first("Service", key); !strings.HasPrefix(cmd, installedCaddy+" ") {
			t.Fatalf("%s=%q does not run %s: update this test's stub along with the unit", key, cmd, installedCaddy)
		}
	}
	stub := filepath.Join(t.TempDir(), "caddy")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	withStub := strings.ReplaceAll(original, installedCaddy, stub)

	tests := []struct {
		name string
		unit string
		// wantProblem is a fragment of the complaint expected, "" for none.
		wantProblem string
	}{
		{name: "shipped unit", unit: withStub},
		{name: "unknown key", unit: strings.Replace(withStub, "[Service]\n", "[Service]\nCacheDirectoryy=caddy\n", 1), wantProblem: "Unknown key"},
		{name: "binary missing", unit: original, wantProblem: installedCaddy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), systemdUnit)
			if err := os.WriteFile(file, []byte(tt.unit), 0o644); err != nil {
				t.Fatal(err)
			}
			problems, exitErr := verifyUnit(t, analyze, file)
			switch {
			case tt.wantProblem == "" && (len(problems) > 0 || exitErr != nil):
				t.Errorf("systemd-analyze verify complains about %s (%v):\n%s", systemdUnit, exitErr, strings.Join(problems, "\n"))
			case tt.wantProblem != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tt.wantProblem) }):
				t.Errorf("systemd-analyze verify did not report %q; it said:\n%s", tt.wantProblem, strings.Join(problems, "\n"))
			}
		})
	}
}

// verifyUnit runs systemd-analyze verify on one unit file and returns
// the lines of its output that are about that unit, and the command's
// error. Lines about other units (a broken unit of the host machine) are
// logged, not counted: they are not ours to fix.
func verifyUnit(t *testing.T, analyze, file string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// --recursive-errors=no: only this unit's own problems decide the
	// exit status. --man=no: no man pages to look up.
	out, err := exec.CommandContext(ctx, analyze, "verify", "--recursive-errors=no", "--man=no", file).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("systemd-analyze verify did not finish within a minute: %v", ctx.Err())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running systemd-analyze verify: %v", err)
	}
	var ours []string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.Contains(line, systemdUnit):
			ours = append(ours, line)
		default:
			t.Logf("systemd-analyze verify, about another unit: %s", line)
		}
	}
	return ours, err
}

// TestSystemdUnitExposureIsLow asks `systemd-analyze security` to rate
// the unit's sandboxing offline, without loading it, and keeps it at
// systemd's "OK" level.
func TestSystemdUnitExposureIsLow(t *testing.T) {
	analyze := systemdAnalyze(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, "security", "--offline=true", "--no-pager",
		filepath.Join(systemdDir, systemdUnit)).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(systemdUnit) + `: ([0-9.]+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in systemd-analyze security's output:\n%s", out)
	}
	exposure, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exposure level %.1f (%s)", exposure, m[2])
	if exposure > maxExposure {
		t.Errorf("exposure level %.1f (%s) is above %.1f: a hardening line was lost", exposure, m[2], maxExposure)
	}
}

// TestSystemdExampleMatchesItsCaddyfile checks the unit against the
// Caddyfile it runs: the directories Caddy writes are writable under
// ProtectSystem=strict, root is visible under ProtectHome, every {env.*}
// secret is in the env file, and nothing prints the environment.
func TestSystemdExampleMatchesItsCaddyfile(t *testing.T) {
	unit := parseUnit(t, readFile(t, filepath.Join(systemdDir, systemdUnit)))
	site := adaptExample(t, filepath.Join(systemdDir, "Caddyfile"))

	start := unit.first("Service", "ExecStart")
	for _, want := range []string{installedCaddy + " run ", "--config /etc/caddy/Caddyfile"} {
		if !strings.Contains(start, want) {
			t.Errorf("ExecStart=%q lacks %q", start, want)
		}
	}
	// caddy run --environ prints every variable, the secrets of the
	// EnvironmentFile included, into the journal.
	if strings.Contains(start, "--environ") {
		t.Errorf("ExecStart=%q prints the environment, secrets included, into the journal", start)
	}
	if reload := unit.first("Service", "ExecReload"); !strings.Contains(reload, "reload --config /etc/caddy/Caddyfile") {
		t.Errorf("ExecReload=%q does not reload /etc/caddy/Caddyfile", reload)
	}

	writable := unit.paths("Service", "ReadWritePaths")
	readable := append(unit.paths("Service", "BindReadOnlyPaths"), unit.paths("Service", "ReadOnlyPaths")...)
	if got := unit.first("Service", "ProtectSystem"); got != "strict" {
		t.Errorf("ProtectSystem=%q, want strict", got)
	}
	if !under(writable, "/var/lib/caddy") {
		t.Errorf("ReadWritePaths %v leave out Caddy's data directory /var/lib/caddy (certificates)", writable)
	}
	if !under(writable, site.cacheDir) {
		t.Errorf("ReadWritePaths %v leave out cache_dir %s", writable, site.cacheDir)
	}
	if protect := unit.first("Service", "ProtectHome"); strings.HasPrefix(site.root, "/home/") && protect != "read-only" && !under(readable, site.root) {
		t.Errorf("ProtectHome=%s hides root %s: no BindReadOnlyPaths or ReadOnlyPaths for it", protect, site.root)
	}

	envFile := unit.first("Service", "EnvironmentFile")
	if envFile != "/etc/caddy/s3-media-cache.env" {
		t.Errorf("EnvironmentFile=%q, want /etc/caddy/s3-media-cache.env as README.md installs it", envFile)
	}
	wantDefines(t, filepath.Join(systemdDir, path.Base(envFile)), site.envNames)
}

// TestDockerExampleMatchesItsCaddyfile checks compose.yaml against the
// Caddyfile it mounts: the image is xcaddy.Dockerfile's, the cache and the
// certificates are on named volumes, root is mounted read-only at its own
// path, the config read-only, every {env.*} secret is in the env file,
// and the ports and restart policy a public web server needs are there.
func TestDockerExampleMatchesItsCaddyfile(t *testing.T) {
	var compose composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(dockerDir, "compose.yaml"))), &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	svc, ok := compose.Services["caddy"]
	if !ok {
		t.Fatalf("compose.yaml has no caddy service: %v", compose.Services)
	}
	if svc.Build.Dockerfile != "xcaddy.Dockerfile" {
		t.Errorf("build.dockerfile = %q, want xcaddy.Dockerfile", svc.Build.Dockerfile)
	}
	if _, err := os.Stat(filepath.Join(dockerDir, svc.Build.Context, svc.Build.Dockerfile)); err != nil {
		t.Errorf("build context %q has no %s: %v", svc.Build.Context, svc.Build.Dockerfile, err)
	}
	if svc.Restart == "" || svc.Restart == "no" {
		t.Errorf("restart = %q: Caddy would stay down after a crash or a reboot", svc.Restart)
	}
	for _, want := range []string{"80:80", "443:443", "443:443/udp"} {
		if !slices.Contains(svc.Ports, want) {
			t.Errorf("ports %v lack %s", svc.Ports, want)
		}
	}

	mounts := map[string]composeMount{}
	for _, m := range svc.Volumes {
		mounts[m.Target] = m
	}
	config, ok := mounts["/etc/caddy"]
	if !ok || config.Type != "bind" || !config.ReadOnly {
		t.Fatalf("/etc/caddy is not a read-only bind mount: %+v", config)
	}
	site := adaptExample(t, filepath.Join(dockerDir, config.Source, "Caddyfile"))

	for target, what := range map[string]string{"/data": "Caddy's certificates", site.cacheDir: "cache_dir"} {
		m, ok := mounts[target]
		if !ok || m.Type != "volume" {
			t.Errorf("%s (%s) is not on a named volume: %+v", target, what, m)
			continue
		}
		if _, declared := compose.Volumes[m.Source]; !declared {
			t.Errorf("volume %q of %s is not declared under the top-level volumes", m.Source, target)
		}
	}
	if root, ok := mounts[site.root]; !ok || root.Type != "bind" || root.Source != site.root || !root.ReadOnly {
		t.Errorf("root %s is not bind-mounted read-only from the same host path: %+v", site.root, root)
	}

	if len(svc.EnvFile) != 1 {
		t.Fatalf("env_file = %v, want the one file of secrets", svc.EnvFile)
	}
	// The file itself is the admin's copy, with the real secrets; the
	// repository holds its template.
	wantDefines(t, filepath.Join(dockerDir, svc.EnvFile[0]+".example"), site.envNames)
}

// composeFile is the part of a Compose file the test reads.
type composeFile struct {
	Services map[string]struct {
		Build struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Restart string         `yaml:"restart"`
		Ports   []string       `yaml:"ports"`
		EnvFile []string       `yaml:"env_file"`
		Volumes []composeMount `yaml:"volumes"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// composeMount is a volume in Compose's long syntax.
type composeMount struct {
	Type     string `yaml:"type"`
	Source   string `yaml:"source"`
	Target   string `yaml:"target"`
	ReadOnly bool   `yaml:"read_only"`
}

// exampleSite is what an example Caddyfile's s3_media_cache block needs
// from the machine.
type exampleSite struct {
	cacheDir, root string
	// envNames are the {env.NAME} placeholders of the whole config.
	envNames []string
}

// adaptExample adapts a Caddyfile as `caddy adapt` does and returns its
// one s3_media_cache handler's directories and placeholders.
func adaptExample(t *testing.T, caddyfile string) exampleSite {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(readFile(t, caddyfile)), map[string]any{"filename": caddyfile})
	if err != nil {
		t.Fatalf("adapting %s: %v", caddyfile, err)
	}
	for _, w := range warnings {
		t.Errorf("adapting %s: warning: %s", caddyfile, w.String())
	}
	var handlers []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "s3_media_cache" {
				handlers = append(handlers, v)
			}
			for _, child := range v {
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	var tree any
	if err := json.Unmarshal(cfg, &tree); err != nil {
		t.Fatal(err)
	}
	walk(tree)
	if len(handlers) != 1 {
		t.Fatalf("%s has %d s3_media_cache handlers, want 1", caddyfile, len(handlers))
	}
	site := exampleSite{}
	site.cacheDir, _ = handlers[0]["cache_dir"].(string)
	site.root, _ = handlers[0]["root"].(string)
	if site.cacheDir == "" || site.root == "" {
		t.Fatalf("%s: the example should show both cache_dir and root, has %q and %q", caddyfile, site.cacheDir, site.root)
	}
	for _, m := range regexp.MustCompile(`\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`).FindAllStringSubmatch(string(cfg), -1) {
		if !slices.Contains(site.envNames, m[1]) {
			site.envNames = append(site.envNames, m[1])
		}
	}
	if len(site.envNames) == 0 {
		t.Fatalf("%s reads no secret from the environment", caddyfile)
	}
	return site
}

// wantDefines checks that an env file gives each name a value.
func wantDefines(t *testing.T, envFile string, names []string) {
	t.Helper()
	defined := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, envFile)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: %q is not NAME=value", envFile, line)
			continue
		}
		defined[name] = value
	}
	for _, name := range names {
		if defined[name] == "" {
			t.Errorf("%s does not give %s, which the Caddyfile reads, a value", envFile, name)
		}
	}
}

// unitFile is a systemd unit: section, then key, then its values in order.
type unitFile map[string]map[string][]string

// parseUnit reads the sections and keys of a unit file (no line
// continuations, which the example does not use).
func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	unit := unitFile{}
	section := ""
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			unit[section] = map[string][]string{}
		case section == "":
			t.Fatalf("unit line outside a section: %q", line)
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line is not Key=value: %q", line)
			}
			unit[section][key] = append(unit[section][key], value)
		}
	}
	return unit
}

func (u unitFile) first(section, key string) string {
	if values := u[section][key]; len(values) > 0 {
		return values[0]
	}
	return ""
}

// paths are the space-separated paths of every line of a key, without
// the "-" that makes a missing path acceptable.
func (u unitFile) paths(section, key string) []string {
	var out []string
	for _, value := range u[section][key] {
		for _, p := range strings.Fields(value) {
			out = append(out, strings.TrimPrefix(p, "-"))
		}
	}
	return out
}

// under reports whether dir is one of dirs or inside one of them.
func under(dirs []string, dir string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool {
		return dir == d || strings.HasPrefix(dir, strings.TrimSuffix(d, "/")+"/")
	})
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
