//! `tapestry-benchreport`: turns the raw results of `scripts/bench.sh` into a report.
//!
//! `bench.sh` runs every measurement several times for two systems, `tapestry` and
//! `kernel` (the Linux bridge/VXLAN/iptables datapath), interleaved, and appends one
//! JSON object per line:
//!
//! ```text
//! {"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":9.71,"rep":1}
//! ```
//!
//! This tool takes the median of each (metric, system) group, the ratio
//! tapestry / kernel, and a verdict against the project's targets (throughput and
//! packet rate at least the kernel's, latency at most 1.2× the kernel's, CPU per GB
//! reported without a target). It prints a table and writes `benchmarks.json`,
//! `benchmarks-table.md` and `benchmarks.svg` into the output directory.
//!
//! Medians, not means: a rep that hit a noisy neighbour moves a mean but not a
//! median. Input problems (missing or empty file, a malformed line, a metric measured
//! for only one system) are reported and exit with status 2 before anything is
//! written, so a stale report is never half-overwritten.
#![forbid(unsafe_code)]

use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Summarise `scripts/bench.sh` results: medians, tapestry/kernel ratios, verdicts.
#[derive(Parser, Debug)]
#[command(name = "tapestry-benchreport", version)]
struct Args {
    /// Raw results, one JSON object per line (as appended by scripts/bench.sh).
    #[arg(long, value_name = "FILE.jsonl")]
    raw: PathBuf,
    /// Where benchmarks.json, benchmarks-table.md and benchmarks.svg are written.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Title for the chart and the JSON report.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_TITLE)]
    title: String,
    /// The machine the numbers came from (CPU, kernel, NIC…), shown with the results.
    #[arg(long, value_name = "TEXT")]
    machine: Option<String>,
    /// Timestamp to record instead of the current UTC time (keeps outputs reproducible).
    #[arg(long, value_name = "TEXT")]
    date: Option<String>,
}

const DEFAULT_TITLE: &str = "Tapestry vs the Linux kernel datapath";

fn main() -> ExitCode {
    let args = Args::parse();
    let text = match std::fs::read_to_string(&args.raw) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "tapestry-benchreport: cannot read {}: {e}",
                args.raw.display()
            );
            return ExitCode::from(2);
        }
    };
    let reports = match parse_samples(&text).and_then(|samples| {
        if let Some(s) = first_repeated_rep(&samples) {
            eprintln!(
                "tapestry-benchreport: warning: {}: line {}: {} rep {} of {} repeats an earlier line; does the file hold more than one run?",
                args.raw.display(),
                s.line,
                s.system.as_str(),
                s.rep.unwrap_or_default(),
                s.metric
            );
        }
        summarise(&samples)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapestry-benchreport: {}: {e}", args.raw.display());
            return ExitCode::from(2);
        }
    };
    let meta = Meta {
        title: args.title,
        machine: args.machine,
        generated_at: args.date.unwrap_or_else(now_rfc3339),
    };
    print!("{}", text_table(&reports));
    if let Some(m) = &meta.machine {
        println!("Machine: {m}");
    }
    if let Err(e) = write_outputs(&args.out_dir, &meta, &reports) {
        eprintln!("tapestry-benchreport: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What the report is about, beyond the numbers.
struct Meta {
    title: String,
    machine: Option<String>,
    generated_at: String,
}

fn write_outputs(dir: &Path, meta: &Meta, reports: &[MetricReport]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&json_report(meta, reports))
        .map_err(|e| format!("cannot encode the JSON report: {e}"))?;
    let files = [
        ("benchmarks.json", json + "\n"),
        ("benchmarks-table.md", markdown(meta, reports)),
        ("benchmarks.svg", svg_chart(meta, reports)),
    ];
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("tapestry-benchreport: wrote {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The metric table.

/// Which way is better for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

impl Better {
    fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// How a metric's values are formatted and judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Gbit/s, two decimals, target ratio >= 1.0.
    Throughput,
    /// Packets per second, shown as "412 k", target ratio >= 1.0.
    PacketRate,
    /// Microseconds, no decimals, target ratio <= 1.2.
    Latency,
    /// CPU seconds per GB moved, two decimals, no target.
    CpuPerGb,
    /// A metric this tool does not know: shown, not judged.
    Unknown,
}

struct KnownMetric {
    name: &'static str,
    label: &'static str,
    kind: Kind,
}

/// Known metrics in display order.
const KNOWN: &[KnownMetric] = &[
    KnownMetric {
        name: "tcp_same_node",
        label: "TCP throughput, pod to pod, same node",
        kind: Kind::Throughput,
    },
    KnownMetric {
        name: "tcp_cross_node",
        label: "TCP throughput, pod to pod, cross node",
        kind: Kind::Throughput,
    },
    KnownMetric {
        name: "tcp_cluster_ip",
        label: "TCP throughput, pod to ClusterIP service",
        kind: Kind::Throughput,
    },
    KnownMetric {
        name: "udp64_pps_same_node",
        label: "UDP 64-byte packet rate under flood, same node",
        kind: Kind::PacketRate,
    },
    KnownMetric {
        name: "udp64_lossfree_same_node",
        label: "UDP 64-byte packet rate at ≤ 1% loss, same node",
        kind: Kind::PacketRate,
    },
    KnownMetric {
        name: "udp64_pps_cross_node",
        label: "UDP 64-byte packet rate under flood, cross node",
        kind: Kind::PacketRate,
    },
    KnownMetric {
        name: "udp64_lossfree_cross_node",
        label: "UDP 64-byte packet rate at ≤ 1% loss, cross node",
        kind: Kind::PacketRate,
    },
    KnownMetric {
        name: "latency_p50_same_node",
        label: "Round-trip latency p50, same node",
        kind: Kind::Latency,
    },
    KnownMetric {
        name: "latency_p99_same_node",
        label: "Round-trip latency p99, same node",
        kind: Kind::Latency,
    },
    KnownMetric {
        name: "latency_p50_cross_node",
        label: "Round-trip latency p50, cross node",
        kind: Kind::Latency,
    },
    KnownMetric {
        name: "latency_p99_cross_node",
        label: "Round-trip latency p99, cross node",
        kind: Kind::Latency,
    },
    KnownMetric {
        name: "cpu_s_per_gb_tcp_same_node",
        label: "CPU per GB, TCP same node",
        kind: Kind::CpuPerGb,
    },
    KnownMetric {
        name: "cpu_s_per_gb_tcp_cross_node",
        label: "CPU per GB, TCP cross node",
        kind: Kind::CpuPerGb,
    },
];

impl Kind {
    fn better(self) -> Option<Better> {
        match self {
            Kind::Throughput | Kind::PacketRate => Some(Better::Higher),
            Kind::Latency | Kind::CpuPerGb => Some(Better::Lower),
            Kind::Unknown => None,
        }
    }

    fn target(self) -> Option<Target> {
        match self {
            Kind::Throughput | Kind::PacketRate => Some(Target::AtLeast(1.0)),
            Kind::Latency => Some(Target::AtMost(1.2)),
            Kind::CpuPerGb | Kind::Unknown => None,
        }
    }

    fn format_value(self, v: f64) -> String {
        match self {
            Kind::Throughput | Kind::CpuPerGb => format!("{v:.2}"),
            Kind::Latency => format!("{v:.0}"),
            Kind::PacketRate if v.abs() >= 1e6 => format!("{:.2} M", v / 1e6),
            Kind::PacketRate if v.abs() >= 1e3 => format!("{:.0} k", v / 1e3),
            Kind::PacketRate => format!("{v:.0}"),
            Kind::Unknown if v.abs() >= 100.0 => format!("{v:.0}"),
            Kind::Unknown if v.abs() >= 1.0 => format!("{v:.2}"),
            Kind::Unknown => format!("{v:.3}"),
        }
    }
}

/// The project's target for the ratio tapestry / kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met_by(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }

    fn value(self) -> f64 {
        match self {
            Target::AtLeast(t) | Target::AtMost(t) => t,
        }
    }

    fn op(self) -> &'static str {
        match self {
            Target::AtLeast(_) => ">=",
            Target::AtMost(_) => "<=",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Target::AtLeast(_) => "≥",
            Target::AtMost(_) => "≤",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:.2}", self.symbol(), self.value())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Meets,
    Misses,
    /// The metric has no target (CPU per GB, unknown metrics).
    NoTarget,
    /// There is a target but no ratio (the kernel's median is zero).
    NoRatio,
}

impl Verdict {
    fn of(target: Option<Target>, ratio: Option<f64>) -> Verdict {
        match (target, ratio) {
            (None, _) => Verdict::NoTarget,
            (Some(_), None) => Verdict::NoRatio,
            (Some(t), Some(r)) if t.met_by(r) => Verdict::Meets,
            (Some(_), Some(_)) => Verdict::Misses,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "misses",
            Verdict::NoTarget => "—",
            Verdict::NoRatio => "n/a",
        }
    }

    fn json(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "misses",
            Verdict::NoTarget => "no target",
            Verdict::NoRatio => "no ratio",
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading and summarising.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Tapestry,
    Kernel,
}

impl System {
    fn as_str(self) -> &'static str {
        match self {
            System::Tapestry => "tapestry",
            System::Kernel => "kernel",
        }
    }
}

/// One raw measurement.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    /// 1-based line in the raw file.
    line: usize,
    system: System,
    metric: String,
    unit: String,
    value: f64,
    rep: Option<u64>,
}

#[derive(Deserialize)]
struct RawLine {
    system: String,
    metric: String,
    unit: String,
    value: f64,
    #[serde(default)]
    rep: Option<u64>,
}

/// Why the raw results cannot be summarised.
#[derive(Debug, PartialEq)]
enum InputError {
    /// No non-blank lines.
    Empty,
    /// A line is not a well-formed result object.
    Malformed { line: usize, reason: String },
    /// A metric's lines disagree on its unit.
    UnitMismatch {
        line: usize,
        metric: String,
        first: String,
        found: String,
    },
    /// Metrics measured for only one of the two systems.
    OneSided(Vec<(String, System)>),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Empty => write!(f, "no results (the file is empty)"),
            InputError::Malformed { line, reason } => write!(f, "line {line}: {reason}"),
            InputError::UnitMismatch {
                line,
                metric,
                first,
                found,
            } => write!(
                f,
                "line {line}: metric {metric} has unit {found:?}, earlier lines say {first:?}"
            ),
            InputError::OneSided(list) => {
                write!(f, "no ratio without both systems; measured for one only:")?;
                for (i, (metric, present)) in list.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{metric} (only {})", present.as_str())?;
                }
                Ok(())
            }
        }
    }
}

fn parse_samples(text: &str) -> Result<Vec<Sample>, InputError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let malformed = |reason: String| InputError::Malformed { line, reason };
        let r: RawLine = serde_json::from_str(raw).map_err(|e| malformed(e.to_string()))?;
        let system = match r.system.as_str() {
            "tapestry" => System::Tapestry,
            "kernel" => System::Kernel,
            other => {
                return Err(malformed(format!(
                    "system {other:?} is neither \"tapestry\" nor \"kernel\""
                )))
            }
        };
        if r.metric.is_empty() {
            return Err(malformed("empty metric name".into()));
        }
        if !r.value.is_finite() || r.value < 0.0 {
            return Err(malformed(format!(
                "value {} is not a non-negative number",
                r.value
            )));
        }
        samples.push(Sample {
            line,
            system,
            metric: r.metric,
            unit: r.unit,
            value: r.value,
            rep: r.rep,
        });
    }
    if samples.is_empty() {
        return Err(InputError::Empty);
    }
    Ok(samples)
}

/// The median of `values`; for an even count, the mean of the two middle values.
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid.checked_sub(1)?)? + v.get(mid)?) / 2.0)
    }
}

/// One system's results for one metric.
#[derive(Clone, Debug, PartialEq)]
struct Stats {
    median: f64,
    /// In file order.
    values: Vec<f64>,
}

impl Stats {
    fn of(values: Vec<f64>) -> Option<Stats> {
        Some(Stats {
            median: median(&values)?,
            values,
        })
    }
}

/// Everything known about one metric.
#[derive(Clone, Debug, PartialEq)]
struct MetricReport {
    name: String,
    label: String,
    unit: String,
    kind: Kind,
    tapestry: Stats,
    kernel: Stats,
    /// tapestry median / kernel median; `None` when the kernel's median is zero.
    ratio: Option<f64>,
    target: Option<Target>,
    verdict: Verdict,
}

impl MetricReport {
    fn label_with_unit(&self) -> String {
        if self.unit.is_empty() {
            self.label.clone()
        } else {
            format!("{} ({})", self.label, self.unit)
        }
    }

    /// The ratio with enough decimals that the shown number agrees with the verdict
    /// (0.996 would show as "1.00" next to "misses ≥ 1.00" otherwise).
    fn ratio_text(&self) -> String {
        let Some(r) = self.ratio else {
            return "n/a".into();
        };
        for decimals in 2..6 {
            let s = format!("{r:.decimals$}");
            let agrees = match (self.target, s.parse::<f64>()) {
                (Some(t), Ok(shown)) => t.met_by(shown) == t.met_by(r),
                _ => true,
            };
            if agrees {
                return s;
            }
        }
        format!("{r:.6}")
    }
}

/// Groups samples by metric (known metrics first, in table order, then the rest in
/// first-seen order) and system, and computes medians, ratios and verdicts.
fn summarise(samples: &[Sample]) -> Result<Vec<MetricReport>, InputError> {
    // (metric, unit, first line) in first-seen order.
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for s in samples {
        match seen.iter().find(|(m, _)| *m == s.metric) {
            Some((_, unit)) if *unit != s.unit => {
                return Err(InputError::UnitMismatch {
                    line: s.line,
                    metric: s.metric.clone(),
                    first: (*unit).to_owned(),
                    found: s.unit.clone(),
                })
            }
            Some(_) => {}
            None => seen.push((&s.metric, &s.unit)),
        }
    }
    let known_pos = |m: &str| KNOWN.iter().position(|k| k.name == m);
    let mut order: Vec<(usize, &str, &str)> = seen
        .iter()
        .enumerate()
        .map(|(first, &(m, u))| (known_pos(m).unwrap_or(KNOWN.len() + first), m, u))
        .collect();
    order.sort_by_key(|&(key, _, _)| key);

    let mut reports = Vec::new();
    let mut one_sided = Vec::new();
    for (_, metric, unit) in order {
        let values = |sys: System| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.metric == metric && s.system == sys)
                .map(|s| s.value)
                .collect()
        };
        let (tapestry, kernel) = match (
            Stats::of(values(System::Tapestry)),
            Stats::of(values(System::Kernel)),
        ) {
            (Some(t), Some(k)) => (t, k),
            (Some(_), None) => {
                one_sided.push((metric.to_owned(), System::Tapestry));
                continue;
            }
            (None, _) => {
                one_sided.push((metric.to_owned(), System::Kernel));
                continue;
            }
        };
        let (label, kind) = match KNOWN.iter().find(|k| k.name == metric) {
            Some(k) => (k.label.to_owned(), k.kind),
            None => (metric.to_owned(), Kind::Unknown),
        };
        let ratio = (kernel.median > 0.0).then(|| tapestry.median / kernel.median);
        let target = kind.target();
        reports.push(MetricReport {
            name: metric.to_owned(),
            label,
            unit: unit.to_owned(),
            kind,
            tapestry,
            kernel,
            ratio,
            target,
            verdict: Verdict::of(target, ratio),
        });
    }
    if !one_sided.is_empty() {
        return Err(InputError::OneSided(one_sided));
    }
    Ok(reports)
}

/// The first line whose (metric, system, rep) repeats an earlier line's, if any.
/// The raw file is appended to, so a rerun without clearing it doubles the reps:
/// not wrong enough to stop, but worth saying.
fn first_repeated_rep(samples: &[Sample]) -> Option<&Sample> {
    let mut seen: Vec<(&str, System, u64)> = Vec::new();
    for s in samples {
        let Some(rep) = s.rep else { continue };
        let key = (s.metric.as_str(), s.system, rep);
        if seen.contains(&key) {
            return Some(s);
        }
        seen.push(key);
    }
    None
}

// ---------------------------------------------------------------------------------
// Output: text table, Markdown, JSON.

const HEADERS: [&str; 6] = ["Metric", "Tapestry", "Kernel", "Ratio", "Target", "Verdict"];

fn table_cells(r: &MetricReport) -> [String; 6] {
    [
        r.label_with_unit(),
        r.kind.format_value(r.tapestry.median),
        r.kind.format_value(r.kernel.median),
        r.ratio_text(),
        r.target.map_or_else(|| "—".to_owned(), |t| t.to_string()),
        r.verdict.as_str().to_owned(),
    ]
}

fn pad(s: &str, width: usize, right: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(s.chars().count()));
    if right {
        fill + s
    } else {
        s.to_owned() + &fill
    }
}

/// Fixed-width table: the metric left-aligned, numbers right-aligned.
fn text_table(reports: &[MetricReport]) -> String {
    let rows: Vec<[String; 6]> = reports.iter().map(table_cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| pad(c, w, (1..=3).contains(&i)))
            .collect();
        parts.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&HEADERS.map(str::to_owned));
    out += &line(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        out += &line(row);
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(meta: &Meta, reports: &[MetricReport]) -> String {
    let mut out = String::new();
    out += &format!("| {} |\n", HEADERS.join(" | "));
    out += "|:--|--:|--:|--:|:-:|:-:|\n";
    for r in reports {
        let cells = table_cells(r).map(|c| md_escape(&c));
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out += "\nValues are medians over the reps; ratio = tapestry median / kernel median.\n";
    match &meta.machine {
        Some(m) => out += &format!("\nMachine: {}\n", md_escape(m)),
        None => out += "\nMachine: not recorded (pass --machine).\n",
    }
    out
}

/// `benchmarks.json`: the same numbers plus every rep's value, keys in reading order.
#[derive(Serialize)]
struct JsonReport<'a> {
    title: &'a str,
    machine: Option<&'a str>,
    generated_at: &'a str,
    ratio: &'static str,
    metrics: Vec<JsonMetric<'a>>,
}

#[derive(Serialize)]
struct JsonMetric<'a> {
    metric: &'a str,
    label: &'a str,
    unit: &'a str,
    /// "higher" or "lower"; null for a metric this tool does not know.
    better: Option<&'static str>,
    tapestry: JsonStats<'a>,
    kernel: JsonStats<'a>,
    /// null when the kernel's median is zero.
    ratio: Option<f64>,
    /// null when the metric has no target.
    target: Option<JsonTarget>,
    /// "meets", "misses", "no target" or "no ratio".
    verdict: &'static str,
}

#[derive(Serialize)]
struct JsonStats<'a> {
    median: f64,
    reps: usize,
    /// In file order.
    values: &'a [f64],
}

#[derive(Serialize)]
struct JsonTarget {
    op: &'static str,
    ratio: f64,
}

impl<'a> JsonStats<'a> {
    fn of(s: &'a Stats) -> Self {
        JsonStats {
            median: s.median,
            reps: s.values.len(),
            values: &s.values,
        }
    }
}

fn json_report<'a>(meta: &'a Meta, reports: &'a [MetricReport]) -> JsonReport<'a> {
    JsonReport {
        title: &meta.title,
        machine: meta.machine.as_deref(),
        generated_at: &meta.generated_at,
        ratio: "tapestry median / kernel median",
        metrics: reports
            .iter()
            .map(|r| JsonMetric {
                metric: &r.name,
                label: &r.label,
                unit: &r.unit,
                better: r.kind.better().map(Better::as_str),
                tapestry: JsonStats::of(&r.tapestry),
                kernel: JsonStats::of(&r.kernel),
                ratio: r.ratio,
                target: r.target.map(|t| JsonTarget {
                    op: t.op(),
                    ratio: t.value(),
                }),
                verdict: r.verdict.json(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------
// Output: SVG chart.

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

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const GREY: &str = "#9e9e9e";

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

/// One bar per metric: the ratio tapestry / kernel, coloured by verdict, with the
/// kernel's 1.0 drawn as a vertical reference line and the target as a dashed tick.
fn svg_chart(meta: &Meta, reports: &[MetricReport]) -> String {
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
    let width = x1 + 80.0;
    const TOP: f64 = 118.0;
    const ROW: f64 = 42.0;
    const BAR: f64 = 18.0;

    let (axis_max, step) = axis(reports);
    let x = |ratio: f64| x0 + (x1 - x0) * (ratio / axis_max).clamp(0.0, 1.0);
    let bottom = TOP + ROW * reports.len() as f64;
    let height = bottom + 62.0;

    let mut s = String::new();
    // Writing to a String cannot fail.
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

    // Legend.
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

    // Grid and ticks.
    let mut i = 0u32;
    loop {
        let t = f64::from(i) * step;
        if t > axis_max + 1e-9 {
            break;
        }
        let tx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{bottom}" stroke="#e3e3e3"/><text x="{tx:.1}" y="{}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##,
            TOP - 6.0,
            bottom + 18.0,
            trim_tick(t)
        );
        i += 1;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}" stroke="#888"/><text x="{}" y="{}" font-size="13" fill="#333" text-anchor="middle">tapestry / kernel</text>"##,
        (x0 + x1) / 2.0,
        bottom + 40.0
    );

    // Rows. The ratio labels go last, over the reference lines, on a white backing.
    let mut values = String::new();
    let mut y = TOP;
    for r in reports {
        let bar_y = y + (ROW - BAR) / 2.0;
        let direction = match r.kind.better() {
            Some(b) => format!("{} is better", b.as_str()),
            None => "direction unknown".to_owned(),
        };
        let hint = match r.target {
            Some(t) => format!("{direction} · target {t}"),
            None => direction,
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
                let end = x(ratio);
                let tip = format!(
                    "{}: tapestry {} vs kernel {} {} (ratio {})",
                    r.name,
                    r.kind.format_value(r.tapestry.median),
                    r.kind.format_value(r.kernel.median),
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
                    r##"<rect class="label-backing" x="{}" y="{bar_y}" width="160" height="{BAR}" fill="white" fill-opacity="0.85"/><text x="{}" y="{}" font-size="12" fill="#777">n/a (kernel median is 0)</text>"##,
                    x0 + 3.0,
                    x0 + 5.0,
                    bar_y + 13.5
                );
            }
        }
        if let Some(t) = r.target {
            let tx = x(t.value());
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#333" stroke-width="2" stroke-dasharray="3,2"/>"##,
                bar_y - 4.0,
                bar_y + BAR + 4.0
            );
        }
        y += ROW;
    }

    // The kernel reference line goes over the bars.
    let kx = x(1.0);
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

fn trim_tick(t: f64) -> String {
    if t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

// ---------------------------------------------------------------------------------
// Time.

fn now_rfc3339() -> String {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => rfc3339_utc(d.as_secs()),
        Err(_) => "1970-01-01T00:00:00Z".into(),
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`, using Howard Hinnant's
/// `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>).
fn rfc3339_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"
{"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":9.71,"rep":1}
{"system":"kernel","metric":"tcp_same_node","unit":"Gbit/s","value":11.2,"rep":1}
{"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":9.5,"rep":2}
{"system":"kernel","metric":"tcp_same_node","unit":"Gbit/s","value":11.0,"rep":2}
{"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":9.9,"rep":3}
{"system":"kernel","metric":"tcp_same_node","unit":"Gbit/s","value":11.4,"rep":3}

{"system":"tapestry","metric":"latency_p50_cross_node","unit":"us","value":85.0,"rep":1}
{"system":"kernel","metric":"latency_p50_cross_node","unit":"us","value":80.0,"rep":1}
{"system":"tapestry","metric":"udp64_pps_same_node","unit":"pkt/s","value":412345,"rep":1}
{"system":"kernel","metric":"udp64_pps_same_node","unit":"pkt/s","value":380000,"rep":1}
{"system":"tapestry","metric":"cpu_s_per_gb_tcp_same_node","unit":"CPU s/GB","value":0.42,"rep":1}
{"system":"kernel","metric":"cpu_s_per_gb_tcp_same_node","unit":"CPU s/GB","value":0.35,"rep":1}
{"system":"tapestry","metric":"zz_custom","unit":"ops","value":3,"rep":1}
{"system":"kernel","metric":"zz_custom","unit":"ops","value":2,"rep":1}
"#;

    fn meta() -> Meta {
        Meta {
            title: "Fixture <&> run".into(),
            machine: Some("test box".into()),
            generated_at: "2025-01-01T00:00:00Z".into(),
        }
    }

    fn fixture() -> Vec<MetricReport> {
        let samples = parse_samples(FIXTURE).expect("fixture parses");
        summarise(&samples).expect("fixture summarises")
    }

    fn find<'a>(reports: &'a [MetricReport], name: &str) -> &'a MetricReport {
        reports
            .iter()
            .find(|r| r.name == name)
            .expect("metric present")
    }

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[10.0, 20.0]), Some(15.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn groups_in_display_order_then_first_seen() {
        let names: Vec<String> = fixture().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "tcp_same_node",
                "udp64_pps_same_node",
                "latency_p50_cross_node",
                "cpu_s_per_gb_tcp_same_node",
                "zz_custom"
            ]
        );
    }

    #[test]
    fn medians_reps_ratio_and_verdicts() {
        let reports = fixture();
        let tcp = find(&reports, "tcp_same_node");
        assert_eq!(tcp.tapestry.median, 9.71);
        assert_eq!(tcp.kernel.median, 11.2);
        assert_eq!(tcp.tapestry.values.len(), 3);
        assert_eq!(tcp.ratio, Some(9.71 / 11.2));
        assert_eq!(tcp.verdict, Verdict::Misses);

        let pps = find(&reports, "udp64_pps_same_node");
        assert_eq!(pps.verdict, Verdict::Meets);

        // Latency: lower is better; 85/80 = 1.06 is within the 1.2 allowance.
        let lat = find(&reports, "latency_p50_cross_node");
        assert_eq!(lat.kind.better(), Some(Better::Lower));
        assert_eq!(lat.verdict, Verdict::Meets);

        let cpu = find(&reports, "cpu_s_per_gb_tcp_same_node");
        assert_eq!(cpu.target, None);
        assert_eq!(cpu.verdict, Verdict::NoTarget);

        let custom = find(&reports, "zz_custom");
        assert_eq!(custom.kind, Kind::Unknown);
        assert_eq!(custom.label, "zz_custom");
        assert_eq!(custom.verdict, Verdict::NoTarget);
    }

    #[test]
    fn verdict_per_direction() {
        let at_least = Kind::Throughput.target();
        assert_eq!(Verdict::of(at_least, Some(1.0)), Verdict::Meets);
        assert_eq!(Verdict::of(at_least, Some(0.999)), Verdict::Misses);
        assert_eq!(Verdict::of(at_least, Some(3.0)), Verdict::Meets);
        assert_eq!(Kind::PacketRate.target(), at_least);

        let at_most = Kind::Latency.target();
        assert_eq!(Verdict::of(at_most, Some(0.5)), Verdict::Meets);
        assert_eq!(Verdict::of(at_most, Some(1.2)), Verdict::Meets);
        assert_eq!(Verdict::of(at_most, Some(1.21)), Verdict::Misses);
        assert_eq!(Verdict::of(at_most, None), Verdict::NoRatio);

        assert_eq!(
            Verdict::of(Kind::CpuPerGb.target(), Some(9.0)),
            Verdict::NoTarget
        );
    }

    #[test]
    fn ratio_text_agrees_with_verdict() {
        let mut r = find(&fixture(), "tcp_same_node").clone();
        r.ratio = Some(0.996);
        assert_eq!(r.ratio_text(), "0.996");
        r.ratio = Some(0.87);
        assert_eq!(r.ratio_text(), "0.87");
        r.ratio = None;
        assert_eq!(r.ratio_text(), "n/a");
    }

    #[test]
    fn malformed_line_names_the_line() {
        let text =
            "{\"system\":\"kernel\",\"metric\":\"m\",\"unit\":\"u\",\"value\":1}\n\n{not json}\n";
        let err = parse_samples(text).expect_err("line 3 is bad");
        assert!(matches!(err, InputError::Malformed { line: 3, .. }));
        assert!(err.to_string().starts_with("line 3: "), "{err}");

        let text = "{\"system\":\"linux\",\"metric\":\"m\",\"unit\":\"u\",\"value\":1}";
        let err = parse_samples(text).expect_err("bad system");
        assert!(err.to_string().contains("line 1") && err.to_string().contains("linux"));

        let text = "{\"system\":\"kernel\",\"metric\":\"m\",\"unit\":\"u\",\"value\":-1}";
        assert!(matches!(
            parse_samples(text),
            Err(InputError::Malformed { line: 1, .. })
        ));

        let text = "{\"system\":\"kernel\",\"metric\":\"m\",\"unit\":\"u\"}";
        assert!(matches!(
            parse_samples(text),
            Err(InputError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn empty_and_one_sided_inputs_are_errors() {
        assert_eq!(parse_samples("\n  \n"), Err(InputError::Empty));

        let text = "{\"system\":\"tapestry\",\"metric\":\"tcp_cross_node\",\"unit\":\"Gbit/s\",\"value\":1}\n\
                    {\"system\":\"kernel\",\"metric\":\"tcp_same_node\",\"unit\":\"Gbit/s\",\"value\":1}\n\
                    {\"system\":\"tapestry\",\"metric\":\"tcp_same_node\",\"unit\":\"Gbit/s\",\"value\":1}\n";
        let samples = parse_samples(text).expect("parses");
        let err = summarise(&samples).expect_err("one-sided");
        assert_eq!(
            err,
            InputError::OneSided(vec![("tcp_cross_node".into(), System::Tapestry)])
        );
        assert!(err.to_string().contains("tcp_cross_node (only tapestry)"));
    }

    #[test]
    fn repeated_reps_are_found() {
        let samples = parse_samples(FIXTURE).expect("parses");
        assert_eq!(first_repeated_rep(&samples), None);
        let doubled = format!("{FIXTURE}{FIXTURE}");
        let samples = parse_samples(&doubled).expect("parses");
        let first = first_repeated_rep(&samples).map(|s| s.line);
        // The fixture's results end on line 16; the copy opens with a blank line 17.
        assert_eq!(first, Some(18));
    }

    #[test]
    fn unit_mismatch_names_the_line() {
        let text = "{\"system\":\"kernel\",\"metric\":\"tcp_same_node\",\"unit\":\"Gbit/s\",\"value\":1}\n\
                    {\"system\":\"tapestry\",\"metric\":\"tcp_same_node\",\"unit\":\"Mbit/s\",\"value\":900}\n";
        let samples = parse_samples(text).expect("parses");
        let err = summarise(&samples).expect_err("units differ");
        assert!(matches!(err, InputError::UnitMismatch { line: 2, .. }));
    }

    #[test]
    fn value_formatting() {
        assert_eq!(Kind::Throughput.format_value(9.714), "9.71");
        assert_eq!(Kind::PacketRate.format_value(412_345.0), "412 k");
        assert_eq!(Kind::PacketRate.format_value(1_234_000.0), "1.23 M");
        assert_eq!(Kind::PacketRate.format_value(950.0), "950");
        assert_eq!(Kind::Latency.format_value(85.4), "85");
        assert_eq!(Kind::CpuPerGb.format_value(0.416), "0.42");
    }

    #[test]
    fn text_table_of_fixture() {
        let table = text_table(&fixture());
        let expected = "\
Metric                                                  Tapestry  Kernel  Ratio  Target  Verdict
------------------------------------------------------  --------  ------  -----  ------  -------
TCP throughput, pod to pod, same node (Gbit/s)              9.71   11.20   0.87  ≥ 1.00  misses
UDP 64-byte packet rate under flood, same node (pkt/s)     412 k   380 k   1.09  ≥ 1.00  meets
Round-trip latency p50, cross node (us)                       85      80   1.06  ≤ 1.20  meets
CPU per GB, TCP same node (CPU s/GB)                        0.42    0.35   1.20  —       —
zz_custom (ops)                                             3.00    2.00   1.50  —       —
";
        assert_eq!(table, expected);
    }

    #[test]
    fn markdown_has_pipes_and_machine() {
        let md = markdown(&meta(), &fixture());
        let mut lines = md.lines();
        assert_eq!(
            lines.next(),
            Some("| Metric | Tapestry | Kernel | Ratio | Target | Verdict |")
        );
        assert!(md.contains(
            "| TCP throughput, pod to pod, same node (Gbit/s) | 9.71 | 11.20 | 0.87 | ≥ 1.00 | misses |"
        ));
        assert!(md.contains("Machine: test box"));
    }

    #[test]
    fn json_report_shape() {
        let (meta, reports) = (meta(), fixture());
        let v = serde_json::to_value(json_report(&meta, &reports)).expect("encodes");
        let at = |ptr: &str| v.pointer(ptr).cloned().unwrap_or_default();
        assert_eq!(at("/generated_at"), "2025-01-01T00:00:00Z");
        assert_eq!(at("/metrics/0/metric"), "tcp_same_node");
        assert_eq!(at("/metrics/0/better"), "higher");
        assert_eq!(at("/metrics/0/tapestry/reps"), 3);
        assert_eq!(
            at("/metrics/0/tapestry/values"),
            serde_json::json!([9.71, 9.5, 9.9])
        );
        assert_eq!(at("/metrics/0/kernel/median"), 11.2);
        assert_eq!(at("/metrics/0/target/op"), ">=");
        assert_eq!(at("/metrics/0/verdict"), "misses");
        assert_eq!(at("/metrics/2/better"), "lower");
        assert!(v.pointer("/metrics/3/target").is_some_and(|t| t.is_null()));
        assert_eq!(at("/metrics/3/verdict"), "no target");
    }

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

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(1_735_689_600), "2025-01-01T00:00:00Z");
    }
}
