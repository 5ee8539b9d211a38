//! `benchmarks.svg`: one bar per metric, the ratio tapestry / kernel,
//! coloured by verdict, with the kernel's 1.0 drawn as a vertical reference
//! line and the target as a dashed tick.

use std::fmt::Write as _;

use crate::metrics::Verdict;
use crate::samples::Meta;
use crate::samples::MetricReport;

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const GREY: &str = "#9e9e9e";

/// Top of the first row.
const TOP: f64 = 118.0;
/// Height of one row.
const ROW: f64 = 42.0;
/// Height of one bar.
const BAR: f64 = 18.0;

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Meets => GREEN,
        Verdict::Misses => RED,
        Verdict::NoTarget | Verdict::NoRatio => GREY,
    }
}

/// The axis runs from 0 to max(2.0, largest ratio × 1.1), rounded up to a whole
/// tick; ticks every 0.5 unless that would crowd the axis.
fn axis(reports: &[MetricReport]) -> (f64, f64) {
    let max_ratio = reports.iter().filter_map(|r| r.ratio).fold(0.0, f64::max);
    let want = (max_ratio * 1.1).max(2.0);
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        .into_iter()
        .find(|s| want / s <= 12.0)
        .unwrap_or(want / 10.0);
    ((want / step).ceil() * step, step)
}

fn trim_tick(t: f64) -> String {
    if t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

/// Where everything goes.
struct Layout {
    /// Right edge of the label column.
    label_right: f64,
    /// The plot's left (ratio 0) and right (`axis_max`) edges.
    x0: f64,
    x1: f64,
    width: f64,
    height: f64,
    /// The plot's bottom edge (the axis).
    bottom: f64,
    axis_max: f64,
    step: f64,
}

impl Layout {
    fn new(reports: &[MetricReport]) -> Self {
        // The label column is as wide as the longest label needs (about 7.4 px a
        // character at 13 px in DejaVu Sans), at least 370 px; the plot follows it.
        let longest = reports
            .iter()
            .map(|r| r.label_with_unit().chars().count())
            .max()
            .unwrap_or(0);
        let label_right = (20.0 + 7.4 * longest as f64).max(370.0).round();
        let x0 = label_right + 15.0;
        let x1 = x0 + 515.0;
        let (axis_max, step) = axis(reports);
        let bottom = TOP + ROW * reports.len() as f64;
        Layout {
            label_right,
            x0,
            x1,
            width: x1 + 80.0,
            height: bottom + 62.0,
            bottom,
            axis_max,
            step,
        }
    }

    /// The x coordinate of `ratio`, clamped to the plot.
    fn x(&self, ratio: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * (ratio / self.axis_max).clamp(0.0, 1.0)
    }
}

// Writing to a String cannot fail: the `let _ = writeln!` below ignore nothing.

/// The document's opening, title, subtitle and legend.
fn header(s: &mut String, meta: &Meta, l: &Layout) {
    let (width, height) = (l.width, l.height);
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="32" font-size="20" font-weight="bold" fill="#222">{}</text>"##,
        xml_escape(&meta.title)
    );
    let mut sub = String::from("Ratio = tapestry median / kernel median (kernel = 1.0)");
    if let Some(m) = &meta.machine {
        sub = format!("{m} · {sub}");
    }
    let _ = writeln!(
        s,
        r##"<text x="20" y="54" font-size="13" fill="#555">{}</text>"##,
        xml_escape(&sub)
    );
    let legend = [
        (GREEN, "meets target"),
        (RED, "misses target"),
        (GREY, "no target"),
    ];
    let mut lx = 20.0;
    for (color, text) in legend {
        let _ = writeln!(
            s,
            r##"<rect class="legend" x="{lx}" y="68" width="14" height="14" fill="{color}"/><text x="{}" y="80" font-size="13" fill="#333">{text}</text>"##,
            lx + 20.0
        );
        lx += 140.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="66" x2="{lx}" y2="84" stroke="#222" stroke-width="2"/><text x="{}" y="80" font-size="13" fill="#333">kernel (1.0)</text>"##,
        lx + 8.0
    );
    lx += 130.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="66" x2="{lx}" y2="84" stroke="#333" stroke-width="2" stroke-dasharray="3,2"/><text x="{}" y="80" font-size="13" fill="#333">target</text>"##,
        lx + 8.0
    );
}

/// Grid lines with their tick labels, and the axis with its caption.
fn grid(s: &mut String, l: &Layout) {
    let bottom = l.bottom;
    let mut i = 0u32;
    loop {
        let t = f64::from(i) * l.step;
        if t > l.axis_max + 1e-9 {
            break;
        }
        let tx = l.x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{bottom}" stroke="#e3e3e3"/><text x="{tx:.1}" y="{}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##,
            TOP - 6.0,
            bottom + 18.0,
            trim_tick(t)
        );
        i += 1;
    }
    let (x0, x1) = (l.x0, l.x1);
    let _ = writeln!(
        s,
        r##"<line x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}" stroke="#888"/><text x="{}" y="{}" font-size="13" fill="#333" text-anchor="middle">tapestry / kernel</text>"##,
        (x0 + x1) / 2.0,
        bottom + 40.0
    );
}

/// One metric's row at `y`: its labels, bar and target tick into `s`; its
/// ratio label into `values` (drawn last, over the reference lines).
fn row(s: &mut String, values: &mut String, l: &Layout, r: &MetricReport, y: f64) {
    let (label_right, x0) = (l.label_right, l.x0);
    let bar_y = y + (ROW - BAR) / 2.0;
    let direction = match r.kind.better() {
        Some(b) => format!("{} is better", b.as_str()),
        None => "direction unknown".to_owned(),
    };
    let mut hint = match r.target {
        Some(t) => format!("{direction} · target {t}"),
        None => direction,
    };
    // What the ratio divides by, and that median, for the tooltip.
    let (divisor, divisor_median) = match &r.baseline {
        Some(b) => {
            hint += &format!(" · ratio to {}", b.metric);
            (format!("tapestry {}", b.metric), Some(b.median))
        }
        None => ("kernel".to_owned(), r.kernel.as_ref().map(|k| k.median)),
    };
    let _ = writeln!(
        s,
        r##"<text x="{label_right}" y="{}" font-size="13" fill="#222" text-anchor="end">{}</text><text x="{label_right}" y="{}" font-size="11" fill="#777" text-anchor="end">{}</text>"##,
        y + 18.0,
        xml_escape(&r.label_with_unit()),
        y + 33.0,
        xml_escape(&hint)
    );
    match r.ratio {
        Some(ratio) => {
            let end = l.x(ratio);
            let tip = format!(
                "{}: tapestry {} vs {divisor} {} {} (ratio {})",
                r.name,
                r.kind.format_value(r.tapestry.median),
                divisor_median.map_or_else(|| "n/a".to_owned(), |m| r.kind.format_value(m)),
                r.unit,
                r.ratio_text()
            );
            let _ = writeln!(
                s,
                r##"<rect class="bar" x="{x0}" y="{bar_y}" width="{:.1}" height="{BAR}" fill="{}"><title>{}</title></rect>"##,
                end - x0,
                verdict_color(r.verdict),
                xml_escape(&tip),
            );
            let text = format!("{}×", r.ratio_text());
            // A white backing so the reference lines do not cross the digits
            // (bold 12px digits are about 7.5px wide).
            let backing = 4.0 + 7.5 * text.chars().count() as f64;
            let _ = writeln!(
                values,
                r##"<rect class="label-backing" x="{:.1}" y="{}" width="{backing}" height="{BAR}" fill="white" fill-opacity="0.85"/><text x="{:.1}" y="{}" font-size="12" font-weight="bold" fill="#222">{}</text>"##,
                end + 3.0,
                bar_y,
                end + 5.0,
                bar_y + 13.5,
                xml_escape(&text)
            );
        }
        None => {
            let _ = writeln!(
                values,
                r##"<rect class="label-backing" x="{}" y="{bar_y}" width="{:.0}" height="{BAR}" fill="white" fill-opacity="0.85"/><text x="{}" y="{}" font-size="12" fill="#777">n/a ({} median is 0)</text>"##,
                x0 + 3.0,
                // About 7 px a character at 12 px, for "n/a (", " median is 0)" and the divisor.
                7.0 * (18 + divisor.chars().count()) as f64,
                x0 + 5.0,
                bar_y + 13.5,
                xml_escape(&divisor)
            );
        }
    }
    if let Some(t) = r.target {
        let tx = l.x(t.value());
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#333" stroke-width="2" stroke-dasharray="3,2"/>"##,
            bar_y - 4.0,
            bar_y + BAR + 4.0
        );
    }
}

/// The chart.
pub fn svg_chart(meta: &Meta, reports: &[MetricReport]) -> String {
    let l = Layout::new(reports);
    let mut s = String::new();
    header(&mut s, meta, &l);
    grid(&mut s, &l);
    let mut values = String::new();
    let mut y = TOP;
    for r in reports {
        row(&mut s, &mut values, &l, r, y);
        y += ROW;
    }
    // The kernel reference line goes over the bars.
    let (kx, bottom) = (l.x(1.0), l.bottom);
    let _ = writeln!(
        s,
        r##"<line x1="{kx:.1}" y1="{}" x2="{kx:.1}" y2="{bottom}" stroke="#222" stroke-width="2"/><text x="{kx:.1}" y="{}" font-size="12" font-weight="bold" fill="#222" text-anchor="middle">kernel</text>"##,
        TOP - 10.0,
        TOP - 14.0
    );
    s += &values;
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::fixture::{fixture, meta, policy_fixture};

    /// A small stack-based check: every tag is closed in order, and attribute
    /// values carry no raw `<` or `&` that is not an entity.
    fn assert_well_formed(svg: &str) {
        let body = svg
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .expect("xml declaration")
            .trim_start();
        assert!(body.starts_with("<svg "));
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find('<') {
            let text = rest.get(..open).unwrap_or_default();
            for (i, _) in text.match_indices('&') {
                let after = text.get(i..).unwrap_or_default();
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| after.starts_with(e)),
                    "bare & in {text:?}"
                );
            }
            let after = rest.get(open + 1..).unwrap_or_default();
            let close = after.find('>').expect("tag closes");
            let tag = after.get(..close).unwrap_or_default();
            assert!(!tag.contains('<'), "< inside tag {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                stack.push(name.to_owned());
            }
            rest = after.get(close + 1..).unwrap_or_default();
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(rest.trim(), "");
    }

    #[test]
    fn svg_is_well_formed_with_one_bar_per_metric() {
        let reports = fixture();
        let svg = svg_chart(&meta(), &reports);
        assert_well_formed(&svg);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), reports.len());
        assert!(svg.contains(">kernel</text>"));
        assert!(svg.contains("Fixture &lt;&amp;&gt; run"));
        assert!(svg.contains(RED) && svg.contains(GREEN) && svg.contains(GREY));
        assert!(svg.contains(">0.87×</text>"));
    }

    #[test]
    fn tapestry_only_rows_are_drawn_against_their_baseline() {
        let reports = policy_fixture();
        let svg = svg_chart(&meta(), &reports);
        assert_well_formed(&svg);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), reports.len());
        assert!(svg.contains("ratio to tcp_same_node"));
        assert!(svg.contains(
            "tcp_same_node_policy1000: tapestry 9.60 vs tapestry tcp_same_node 10.00 Gbit/s (ratio 0.96)"
        ));
    }

    #[test]
    fn axis_range_and_ticks() {
        let mut reports = fixture();
        assert_eq!(axis(&reports), (2.0, 0.5));
        if let Some(r) = reports.first_mut() {
            r.ratio = Some(2.5);
        }
        // 2.5 × 1.1 = 2.75, rounded up to the next 0.5.
        assert_eq!(axis(&reports), (3.0, 0.5));
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(
            xml_escape(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
    }
}
