package caddyfile

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestDocumentedOptionsMatchTheParser keeps three lists in step with the
// options Unmarshal accepts: the syntax block of README's Options section,
// the rows of the configuration reference, and Unmarshal's doc comment. An
// option added to the parser and forgotten in the docs (or a documented one
// the parser does not know) fails here.
func TestDocumentedOptionsMatchTheParser(t *testing.T) {
	parsed := parserOptions(t)
	if len(parsed) < 30 {
		t.Fatalf("found only %d options in Unmarshal's switch: %v; has the parser changed shape?", len(parsed), parsed)
	}
	readme := syntaxBlockOptions(t, "../README.md", "## Options")
	comment := docCommentOptions(t)
	reference := referenceRowOptions(t, "../docs/configuration.md")
	for _, c := range []struct {
		where string
		got   []string
	}{
		{"README.md's syntax block under ## Options", readme},
		{"Unmarshal's doc comment", comment},
		{"docs/configuration.md's option tables", reference},
	} {
		if missing := without(parsed, c.got); len(missing) > 0 {
			t.Errorf("%s leaves out %v, which the parser accepts", c.where, missing)
		}
		if unknown := without(c.got, parsed); len(unknown) > 0 {
			t.Errorf("%s lists %v, which the parser does not accept", c.where, unknown)
		}
	}
}

// parserOptions are the string cases of the switch on the option name in
// Unmarshal, read from the source.
func parserOptions(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "caddyfile.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var options []string
	ast.Inspect(file, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "Unmarshal" {
			return true
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			sw, ok := n.(*ast.SwitchStmt)
			if !ok {
				return true
			}
			if tag, ok := sw.Tag.(*ast.Ident); !ok || tag.Name != "option" {
				return true
			}
			for _, stmt := range sw.Body.List {
				for _, e := range stmt.(*ast.CaseClause).List {
					if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, err := strconv.Unquote(lit.Value)
						if err != nil {
							t.Fatal(err)
						}
						options = append(options, v)
					}
				}
			}
			return false
		})
		return false
	})
	return sorted(options)
}

// syntaxBlockOptions reads the first ```caddyfile block after the heading
// in path: the first word of each line inside the s3_media_cache block,
// comments aside.
func syntaxBlockOptions(t *testing.T, path, heading string) []string {
	t.Helper()
	lines := readLines(t, path)
	i := slices.Index(lines, heading)
	if i < 0 {
		t.Fatalf("%s has no %q heading", path, heading)
	}
	for ; i < len(lines) && lines[i] != "```caddyfile"; i++ {
	}
	var options []string
	for i++; i < len(lines) && lines[i] != "```"; i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") || line == "}" || strings.HasPrefix(line, "s3_media_cache") {
			continue
		}
		options = append(options, strings.Fields(line)[0])
	}
	if i == len(lines) {
		t.Fatalf("%s: no closed ```caddyfile block after %q", path, heading)
	}
	return sorted(options)
}

// docCommentOptions reads the syntax in Unmarshal's doc comment, the block
// between "s3_media_cache [<matcher>] {" and its closing brace.
func docCommentOptions(t *testing.T) []string {
	t.Helper()
	var options []string
	inside := false
	for _, line := range readLines(t, "caddyfile.go") {
		text := strings.TrimSpace(strings.TrimPrefix(line, "//"))
		switch {
		case !strings.HasPrefix(line, "//"):
			inside = false
		case strings.HasPrefix(text, "s3_media_cache ") && strings.HasSuffix(text, "{"):
			inside = true
		case inside && text == "}":
			inside = false
		case inside && text != "" && !strings.HasPrefix(text, "#"):
			options = append(options, strings.Fields(text)[0])
		}
	}
	return sorted(options)
}

// referenceRowOptions reads the option tables of the configuration
// reference: rows whose first cell starts with a backquoted option.
func referenceRowOptions(t *testing.T, path string) []string {
	t.Helper()
	var options []string
	for _, line := range readLines(t, path) {
		cell, ok := strings.CutPrefix(line, "| `")
		if !ok {
			continue
		}
		name := strings.FieldsFunc(cell, func(r rune) bool { return r == ' ' || r == '`' })[0]
		if strings.Contains(name, "_") || strings.ToLower(name) == name && !strings.ContainsAny(name, "-.") {
			options = append(options, name)
		}
	}
	return sorted(options)
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// without is a minus b.
func without(a, b []string) []string {
	var out []string
	for _, v := range a {
		if !slices.Contains(b, v) {
			out = append(out, v)
		}
	}
	return out
}
