package s3mediacache

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// TestDocsLinksResolve reads every Markdown file of the repository (the
// README, docs/, the examples' READMEs) and checks that each relative link
// names a file that exists and, with a #fragment, a heading of that file;
// and that no two headings of one file make the same anchor, which would
// send a link to the first of them.
func TestDocsLinksResolve(t *testing.T) {
	files := markdownFiles(t)
	if len(files) < 5 {
		t.Fatalf("found only %v: is the test running from the repository root?", files)
	}
	anchors := map[string]map[string]bool{}
	for _, path := range files {
		anchors[path] = map[string]bool{}
		for _, h := range headings(t, path) {
			a := anchorOf(h)
			if anchors[path][a] {
				t.Errorf("%s: two headings make the anchor #%s (the second: %q)", path, a, h)
			}
			anchors[path][a] = true
		}
	}
	checked := 0
	for _, path := range files {
		for _, link := range relativeLinks(t, path) {
			target, fragment, _ := strings.Cut(link, "#")
			resolved := path
			if target != "" {
				resolved = filepath.Clean(filepath.Join(filepath.Dir(path), target))
				if _, err := os.Stat(resolved); err != nil {
					t.Errorf("%s: link %q: %s does not exist", path, link, resolved)
					continue
				}
			}
			if fragment == "" {
				checked++
				continue
			}
			known, ok := anchors[resolved]
			if !ok {
				t.Errorf("%s: link %q: #%s in a file that is not Markdown", path, link, fragment)
				continue
			}
			if !known[fragment] {
				t.Errorf("%s: link %q: %s has no heading with the anchor #%s", path, link, resolved, fragment)
			}
			checked++
		}
	}
	if checked < 30 {
		t.Errorf("checked only %d links; the link pattern may have stopped matching", checked)
	}
}

// markdownFiles are the .md files of the repository, but for generated
// benchmark output and the build directory.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "build" || path == filepath.Join("integration", "bench", "results")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// headings are the ATX headings of a Markdown file, outside code blocks.
func headings(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, line := range outsideCode(t, path) {
		if m := headingLine.FindStringSubmatch(line); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var (
	headingLine = regexp.MustCompile(`^#{1,6} (.+?)\s*$`)
	// markdownLink matches an inline link's target: ](target).
	markdownLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	inlineCode   = regexp.MustCompile("`[^`]*`")
)

// relativeLinks are the link targets of a Markdown file that point inside
// the repository: not URLs with a scheme, not mail addresses.
func relativeLinks(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, line := range outsideCode(t, path) {
		for _, m := range markdownLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(line, ""), -1) {
			if target := m[1]; !strings.Contains(target, "://") && !strings.HasPrefix(target, "mailto:") {
				out = append(out, target)
			}
		}
	}
	return out
}

// outsideCode is the lines of a Markdown file that are not in a fenced
// code block.
func outsideCode(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fenced := false
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, line)
		}
	}
	return out
}

// anchorOf is the anchor GitHub gives a heading: lower case, spaces to
// hyphens, punctuation other than hyphens and underscores dropped.
func anchorOf(heading string) string {
	heading = strings.ReplaceAll(heading, "`", "")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
