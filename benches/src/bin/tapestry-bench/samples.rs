//! Reading `scripts/bench.sh`'s raw results and summarising them: the median
//! of each (metric, system) group, the ratio tapestry / kernel, the verdict.

use serde::Deserialize;

use crate::metrics::{Kind, Target, Verdict, KNOWN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Tapestry,
    Kernel,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Tapestry => "tapestry",
            System::Kernel => "kernel",
        }
    }
}

/// One raw measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// 1-based line in the raw file.
    pub line: usize,
    pub system: System,
    pub metric: String,
    pub unit: String,
    pub value: f64,
    pub rep: Option<u64>,
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
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InputError {
    /// No non-blank lines.
    #[error("no results (the file is empty)")]
    Empty,
    /// A line is not a well-formed result object.
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    /// A metric's lines disagree on its unit.
    #[error("line {line}: metric {metric} has unit {found:?}, earlier lines say {first:?}")]
    UnitMismatch {
        line: usize,
        metric: String,
        first: String,
        found: String,
    },
    /// Metrics measured for only one of the two systems.
    #[error("no ratio without both systems; measured for one only: {}", one_sided(.0))]
    OneSided(Vec<(String, System)>),
}

fn one_sided(list: &[(String, System)]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|(metric, present)| format!("{metric} (only {})", present.as_str()))
        .collect();
    parts.join(", ")
}

pub fn parse_samples(text: &str) -> Result<Vec<Sample>, InputError> {
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
pub fn median(values: &[f64]) -> Option<f64> {
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
pub struct Stats {
    pub median: f64,
    /// In file order.
    pub values: Vec<f64>,
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
pub struct MetricReport {
    pub name: String,
    pub label: String,
    pub unit: String,
    pub kind: Kind,
    pub tapestry: Stats,
    pub kernel: Stats,
    /// tapestry median / kernel median; `None` when the kernel's median is zero.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    pub verdict: Verdict,
}

impl MetricReport {
    pub fn label_with_unit(&self) -> String {
        if self.unit.is_empty() {
            self.label.clone()
        } else {
            format!("{} ({})", self.label, self.unit)
        }
    }

    /// The ratio with enough decimals that the shown number agrees with the verdict
    /// (0.996 would show as "1.00" next to "misses ≥ 1.00" otherwise).
    pub fn ratio_text(&self) -> String {
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

/// Each metric once with its unit, known metrics first in table order, then the
/// rest in first-seen order; a unit that changes between lines is an error.
fn metrics_in_order(samples: &[Sample]) -> Result<Vec<(&str, &str)>, InputError> {
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
    Ok(order.into_iter().map(|(_, m, u)| (m, u)).collect())
}

/// Groups samples by metric and system, and computes medians, ratios and
/// verdicts.
pub fn summarise(samples: &[Sample]) -> Result<Vec<MetricReport>, InputError> {
    let mut reports = Vec::new();
    let mut one_sided = Vec::new();
    for (metric, unit) in metrics_in_order(samples)? {
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
pub fn first_repeated_rep(samples: &[Sample]) -> Option<&Sample> {
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

/// What the report is about, beyond the numbers.
pub struct Meta {
    pub title: String,
    pub machine: Option<String>,
    pub generated_at: String,
}

/// Raw results and their summary, shared by the tests of every output.
#[cfg(test)]
pub mod fixture {
    use super::*;

    pub const FIXTURE: &str = r#"
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

    pub fn meta() -> Meta {
        Meta {
            title: "Fixture <&> run".into(),
            machine: Some("test box".into()),
            generated_at: "2025-01-01T00:00:00Z".into(),
        }
    }

    pub fn fixture() -> Vec<MetricReport> {
        let samples = parse_samples(FIXTURE).expect("fixture parses");
        summarise(&samples).expect("fixture summarises")
    }

    pub fn find<'a>(reports: &'a [MetricReport], name: &str) -> &'a MetricReport {
        reports
            .iter()
            .find(|r| r.name == name)
            .expect("metric present")
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{find, fixture, FIXTURE};
    use super::*;
    use crate::metrics::Better;

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
}
