package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Chart geometry, in SVG user units (pixels).
const (
	chartWidth   = 1000
	chartLabelW  = 270 // the row labels on the left
	chartRight   = 250 // room for the value text right of the longest bar
	chartTop     = 70
	chartRowH    = 34
	chartBarH    = 18
	chartBottomH = 90
)

// chartRow is one bar: how much better than nginx we are, whichever way
// the metric goes.
type chartRow struct {
	label     string
	advantage float64 // > 1: better than nginx
	target    float64 // the target in the same terms
	met       *bool
	detail    string
}

// chartRows picks the rows compared with nginx against a ratio target,
// and turns each into an advantage: ours/nginx for throughput, nginx/ours
// for times.
func chartRows(r *report) []chartRow {
	var out []chartRow
	for _, rw := range r.Rows {
		if rw.Ratio == nil || rw.TargetRatio == 0 || *rw.Ratio <= 0 {
			continue
		}
		c := chartRow{label: rw.Label, advantage: *rw.Ratio, target: rw.TargetRatio, met: rw.Met}
		if c.label == "" {
			c.label = rw.Scenario
		}
		if rw.LoadBound {
			// The load generator's core set the pace: drawn grey, as not
			// a verdict.
			c.label += " (load-bound)"
			c.met = nil
		}
		if rw.LowerIsBetter {
			c.advantage, c.target = 1 / *rw.Ratio, 1/rw.TargetRatio
		}
		c.detail = fmt.Sprintf("%.2f×  (nginx %s, ours %s %s)", c.advantage,
			compact(*rw.Nginx, rw.Unit), compact(rw.Ours, rw.Unit), rw.Unit)
		out = append(out, c)
	}
	return out
}

// compact writes 31234 as 31.2k, for the chart's narrow labels.
func compact(v float64, unit string) string {
	if unit == "req/s" && v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return formatValue(v, unit)
}

// chartSVG draws the comparison as a horizontal bar chart on a log2 scale
// centred on parity with nginx: a bar to the right is better than nginx,
// to the left worse; a black tick marks each row's target. Green bars met
// their target, red ones missed it, grey ones were not checked (quick
// mode) or were paced by the load generator.
func chartSVG(r *report) string {
	rows := chartRows(r)
	lo, hi := -2.0, 2.0 // log2 of the axis ends: 0.25× to 4× at least
	for _, c := range rows {
		lo = math.Min(lo, math.Floor(math.Log2(math.Min(c.advantage, c.target))))
		hi = math.Max(hi, math.Ceil(math.Log2(math.Max(c.advantage, c.target))))
	}
	plotW := float64(chartWidth - chartLabelW - chartRight)
	x := func(v float64) float64 {
		return float64(chartLabelW) + (math.Log2(v)-lo)/(hi-lo)*plotW
	}
	height := chartTop + len(rows)*chartRowH + chartBottomH

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="13">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="16" y="26" font-size="17" font-weight="bold">caddy-s3-media-cache against the nginx recipe, same run, one core each</text>`+"\n")
	fmt.Fprintf(&b, `<text x="16" y="46" fill="#555">How many times better than nginx (throughput: ours/nginx; times: nginx/ours), log scale. Black tick: the target.</text>`+"\n")

	// Axis: a gridline per power of two, parity drawn darker.
	axisY := chartTop + len(rows)*chartRowH
	for e := lo; e <= hi; e++ {
		v := math.Pow(2, e)
		stroke, dash := "#dddddd", ""
		if e == 0 {
			stroke, dash = "#444444", ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"%s/>`+"\n", x(v), chartTop-8, x(v), axisY, stroke, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s×</text>`+"\n", x(v), axisY+18, axisLabel(v))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">← nginx better · ours better →</text>`+"\n", x(1), axisY+36)

	for i, c := range rows {
		y := chartTop + i*chartRowH
		barY := y + (chartRowH-chartBarH)/2
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", chartLabelW-10, barY+chartBarH-4, html.EscapeString(c.label))
		x0, x1 := x(1), x(c.advantage)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", math.Min(x0, x1), barY, math.Max(math.Abs(x1-x0), 1), chartBarH, barColour(c.met))
		tx := x(c.target)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000000" stroke-width="3"/>`+"\n", tx, barY-4, tx, barY+chartBarH+4)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#222">%s</text>`+"\n", math.Max(x0, math.Max(x1, tx))+6, barY+chartBarH-4, html.EscapeString(c.detail))
	}

	footer := fmt.Sprintf("%s. Link to S3: %s round trip, %s per connection.", r.Machine, r.Settings.RTT, rateString(r.Settings.BytesPerSecond))
	for i, line := range wrapText(footer, 140) {
		fmt.Fprintf(&b, `<text x="16" y="%d" font-size="11" fill="#777">%s</text>`+"\n", axisY+54+i*14, html.EscapeString(line))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func axisLabel(v float64) string {
	if v >= 1 {
		return fmt.Sprintf("%g", v)
	}
	return fmt.Sprintf("1/%g", 1/v)
}

func barColour(met *bool) string {
	switch {
	case met == nil:
		return "#9e9e9e"
	case *met:
		return "#2e7d32"
	default:
		return "#c62828"
	}
}

// wrapText breaks s into lines of at most width characters, at spaces.
func wrapText(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		if line != "" && len(line)+1+len(word) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
