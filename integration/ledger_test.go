package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
)

// The ledger tallies what the reliability suite (issue 7) did to the
// handler and how it came through: faults injected and survived, bad
// inputs tried and rejected cleanly, bytes compared against the bucket and
// mismatches found. TestMain prints it as a table after the run and, when
// S3MC_RELIABILITY_REPORT names a file, writes it there as JSON.
//
// Recording never replaces an assertion: a fault not survived or an input
// not rejected cleanly also fails the test that recorded it, so the table
// can only show what the tests themselves passed or failed.
type ledger struct {
	mu   sync.Mutex
	rows map[ledgerKey]*ledgerRow
}

type ledgerKey struct{ Area, Case string }

// ledgerRow is one line of the table: an area (the issue's headings: "S3
// faults", "process faults", "disk faults", "load", "abuse", "secrets")
// and a case within it.
type ledgerRow struct {
	Area string `json:"area"`
	Case string `json:"case"`
	// Faults injected and how many the handler survived: every client got
	// a correct answer (full bytes, a stale copy, a clean 502/504, or an
	// aborted connection) and nothing bad was cached.
	Faults   int `json:"faults"`
	Survived int `json:"survived"`
	// Bad inputs sent and how many were rejected cleanly: a 4xx with no
	// S3 XML, no internals, and nothing outside root.
	Inputs   int `json:"inputs"`
	Rejected int `json:"rejected"`
	// Bytes compared against the bucket's copy, and the mismatches found.
	Bytes      int64 `json:"bytes_compared"`
	Mismatches int   `json:"mismatches"`
	// Figure is a measurement the case reports (a peak, a ratio), for
	// README's reliability table.
	Figure string `json:"figure,omitempty"`
}

var tally = &ledger{rows: map[ledgerKey]*ledgerRow{}}

func (l *ledger) row(area, name string) *ledgerRow {
	k := ledgerKey{area, name}
	r := l.rows[k]
	if r == nil {
		r = &ledgerRow{Area: area, Case: name}
		l.rows[k] = r
	}
	return r
}

// count applies update to the row of area and name.
func (l *ledger) count(area, name string, update func(*ledgerRow)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	update(l.row(area, name))
}

// recordFault counts one injected fault; survived=false also fails t
// with detail.
func recordFault(t testing.TB, area, name string, survived bool, detail string) {
	t.Helper()
	tally.count(area, name, func(r *ledgerRow) {
		r.Faults++
		r.Survived += btoi(survived)
	})
	if !survived {
		t.Errorf("%s / %s: not survived: %s", area, name, detail)
	}
}

// recordInput counts one bad input; rejected=false also fails t with
// detail.
func recordInput(t testing.TB, area, name string, rejected bool, detail string) {
	t.Helper()
	tally.count(area, name, func(r *ledgerRow) {
		r.Inputs++
		r.Rejected += btoi(rejected)
	})
	if !rejected {
		t.Errorf("%s / %s: not rejected cleanly: %s", area, name, detail)
	}
}

// recordBytes counts n bytes compared with the bucket's copy; mismatches
// above zero also fail t.
func recordBytes(t testing.TB, area, name string, n int64, mismatches int) {
	t.Helper()
	tally.count(area, name, func(r *ledgerRow) {
		r.Bytes += n
		r.Mismatches += mismatches
	})
	if mismatches > 0 {
		t.Errorf("%s / %s: %d byte mismatches", area, name, mismatches)
	}
}

// recordFigure records a measurement of a case, shown in the table's last
// column. It asserts nothing: the test that measured it does.
func recordFigure(t testing.TB, area, name, value string) {
	t.Helper()
	tally.count(area, name, func(r *ledgerRow) { r.Figure = value })
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// sorted returns the rows by area, in the order, then case.
func (l *ledger) sorted() []ledgerRow {
	order := map[string]int{"S3 faults": 0, "process faults": 1, "disk faults": 2, "load": 3, "abuse": 4, "hostile day": 5, "secrets": 6}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ledgerRow, 0, len(l.rows))
	for _, r := range l.rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		oi, iok := order[out[i].Area]
		oj, jok := order[out[j].Area]
		if !iok {
			oi = len(order)
		}
		if !jok {
			oj = len(order)
		}
		if oi != oj || out[i].Area != out[j].Area {
			if oi != oj {
				return oi < oj
			}
			return out[i].Area < out[j].Area
		}
		return out[i].Case < out[j].Case
	})
	return out
}

// print writes the table, a totals line last. It prints nothing when no
// test recorded anything (a run narrowed with -run to other tests).
func (l *ledger) print(w io.Writer) {
	rows := l.sorted()
	if len(rows) == 0 {
		return
	}
	var total ledgerRow
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "area\tcase\tfaults\tsurvived\tbad inputs\trejected\tbytes compared\tmismatches\tfigure\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Area, r.Case,
			count(r.Faults, r.Faults+r.Inputs > 0), count(r.Survived, r.Faults > 0),
			count(r.Inputs, r.Faults+r.Inputs > 0), count(r.Rejected, r.Inputs > 0),
			bytesCount(r.Bytes), count(r.Mismatches, r.Bytes > 0), r.Figure)
		total.Faults += r.Faults
		total.Survived += r.Survived
		total.Inputs += r.Inputs
		total.Rejected += r.Rejected
		total.Bytes += r.Bytes
		total.Mismatches += r.Mismatches
	}
	fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t\t\n", "total", strings.Repeat("-", 4),
		total.Faults, total.Survived, total.Inputs, total.Rejected, bytesCount(total.Bytes), total.Mismatches)
	tw.Flush()
}

func count(n int, shown bool) string {
	if !shown && n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func bytesCount(n int64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// report prints the table to stdout and, when S3MC_RELIABILITY_REPORT
// names a .json file, writes the rows there and the table beside it (.txt).
func (l *ledger) report() error {
	rows := l.sorted()
	if len(rows) == 0 {
		return nil
	}
	fmt.Println("\nreliability suite (issue 7):")
	l.print(os.Stdout)
	path := os.Getenv("S3MC_RELIABILITY_REPORT")
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return err
	}
	// The table as printed, beside the JSON: go test shows a passing
	// package's output only when run from its directory, and
	// scripts/test, which runs ./..., prints this file instead.
	var table strings.Builder
	l.print(&table)
	return os.WriteFile(strings.TrimSuffix(path, ".json")+".txt", []byte(table.String()), 0o644)
}

// fullRun reports whether this is the full reliability run
// (scripts/reliability sets S3MC_FULL=1): long soak, more inputs. The
// default is CI's reduced run, which checks the same properties on a
// shorter clock.
func fullRun() bool { return os.Getenv("S3MC_FULL") == "1" }
