//! Reading `scripts/bench.sh`'s raw results and summarising them: the median
//! of each (metric, system) group, the ratio tapestry / kernel, the verdict.

use serde::Deserialize;

use crate::metrics::{known_metric, Against, Kind, Target, Verdict, KNOWN};

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
    /// A Tapestry-only metric whose baseline has no Tapestry results.
    #[error("{metric} is compared with Tapestry's {baseline}, which has no tapestry results")]
    MissingBaseline { metric: String, baseline: String },
    /// Kernel results for a metric only Tapestry has.
    #[error("{metric} is measured for Tapestry only, but has kernel results")]
    KernelOfTapestryOnly { metric: String },
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

/// The Tapestry metric a Tapestry-only metric's ratio divides by.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub metric: String,
    pub label: String,
    pub median: f64,
}

/// Everything known about one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricReport {
    pub name: String,
    pub label: String,
    pub unit: String,
    pub kind: Kind,
    pub tapestry: Stats,
    /// `None` for a Tapestry-only metric (one with a `baseline`).
    pub kernel: Option<Stats>,
    /// For a Tapestry-only metric, the Tapestry metric its ratio is to.
    pub baseline: Option<Baseline>,
    /// tapestry median / kernel median (or / the baseline's median); `None`
    /// when the divisor is zero.
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

fn values_of(samples: &[Sample], metric: &str, system: System) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.metric == metric && s.system == system)
        .map(|s| s.value)
        .collect()
}

/// `tapestry / divisor`, `None` if the divisor is zero.
fn ratio_of(tapestry: f64, divisor: f64) -> Option<f64> {
    (divisor > 0.0).then(|| tapestry / divisor)
}

/// Groups samples by metric and system, and computes medians, ratios and
/// verdicts. A metric is compared with the kernel's measurement of it, except
/// a Tapestry-only one ([`Against::Tapestry`]), which is compared with
/// Tapestry's baseline metric and must have no kernel samples.
pub fn summarise(samples: &[Sample]) -> Result<Vec<MetricReport>, InputError> {
    let mut reports = Vec::new();
    let mut one_sided = Vec::new();
    for (metric, unit) in metrics_in_order(samples)? {
        let known = known_metric(metric);
        let against = known.map_or(Against::Kernel, |k| k.against);
        let (label, kind) = match known {
            Some(k) => (k.label.to_owned(), k.kind),
            None => (metric.to_owned(), Kind::Unknown),
        };
        let tapestry = Stats::of(values_of(samples, metric, System::Tapestry));
        let kernel = Stats::of(values_of(samples, metric, System::Kernel));
        let (tapestry, kernel, baseline, ratio, target) =
            match (against, tapestry, kernel) {
                (Against::Kernel, Some(t), Some(k)) => {
                    let ratio = ratio_of(t.median, k.median);
                    (t, Some(k), None, ratio, kind.target())
                }
                (Against::Tapestry { baseline, target }, Some(t), None) => {
                    let base = Stats::of(values_of(samples, baseline, System::Tapestry))
                        .ok_or_else(|| InputError::MissingBaseline {
                            metric: metric.to_owned(),
                            baseline: baseline.to_owned(),
                        })?;
                    let ratio = ratio_of(t.median, base.median);
                    let base = Baseline {
                        metric: baseline.to_owned(),
                        label: known_metric(baseline)
                            .map_or(baseline, |k| k.label)
                            .to_owned(),
                        median: base.median,
                    };
                    (t, None, Some(base), ratio, Some(target))
                }
                (Against::Tapestry { .. }, _, Some(_)) => {
                    return Err(InputError::KernelOfTapestryOnly {
                        metric: metric.to_owned(),
                    })
                }
                (_, Some(_), None) => {
                    one_sided.push((metric.to_owned(), System::Tapestry));
                    continue;
                }
                (_, None, _) => {
                    one_sided.push((metric.to_owned(), System::Kernel));
                    continue;
                }
            };
        reports.push(MetricReport {
            name: metric.to_owned(),
            label,
            unit: unit.to_owned(),
            kind,
            tapestry,
            kernel,
            baseline,
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

    /// A run with Tapestry-only policy rows beside their baselines: same node
    /// 9.6 / 10.0 = 0.96 (meets ≥ 0.95), cross node 5.0 / 6.0 = 0.83 (misses).
    pub const POLICY_FIXTURE: &str = r#"
{"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":10.0,"rep":1}
{"system":"tapestry","metric":"tcp_same_node_policy1000","unit":"Gbit/s","value":9.6,"rep":1}
{"system":"kernel","metric":"tcp_same_node","unit":"Gbit/s","value":16.0,"rep":1}
{"system":"tapestry","metric":"tcp_cross_node_policy1000","unit":"Gbit/s","value":5.0,"rep":1}
{"system":"tapestry","metric":"tcp_cross_node","unit":"Gbit/s","value":6.0,"rep":1}
{"system":"kernel","metric":"tcp_cross_node","unit":"Gbit/s","value":10.0,"rep":1}
"#;

    pub fn policy_fixture() -> Vec<MetricReport> {
        let samples = parse_samples(POLICY_FIXTURE).expect("policy fixture parses");
        summarise(&samples).expect("policy fixture summarises")
    }

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
    use super::fixture::{find, fixture, policy_fixture, FIXTURE};
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
        assert_eq!(tcp.kernel.as_ref().map(|k| k.median), Some(11.2));
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
    fn tapestry_only_metrics_divide_by_their_baseline() {
        let reports = policy_fixture();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tcp_same_node",
                "tcp_same_node_policy1000",
                "tcp_cross_node",
                "tcp_cross_node_policy1000"
            ]
        );
        let same = find(&reports, "tcp_same_node_policy1000");
        assert_eq!(same.kernel, None);
        assert_eq!(
            same.baseline
                .as_ref()
                .map(|b| (b.metric.as_str(), b.median)),
            Some(("tcp_same_node", 10.0))
        );
        assert_eq!(same.ratio, Some(9.6 / 10.0));
        assert_eq!(same.target, Some(Target::AtLeast(0.95)));
        assert_eq!(same.verdict, Verdict::Meets);
        let cross = find(&reports, "tcp_cross_node_policy1000");
        assert_eq!(cross.ratio, Some(5.0 / 6.0));
        assert_eq!(cross.verdict, Verdict::Misses);
        // The baseline rows keep their kernel comparison.
        let base = find(&reports, "tcp_same_node");
        assert_eq!(base.baseline, None);
        assert_eq!(base.kernel.as_ref().map(|k| k.median), Some(16.0));
        assert_eq!(base.ratio, Some(10.0 / 16.0));
    }

    #[test]
    fn tapestry_only_metric_errors() {
        let line = |system: &str, metric: &str, value: f64| {
            format!("{{\"system\":\"{system}\",\"metric\":\"{metric}\",\"unit\":\"Gbit/s\",\"value\":{value}}}\n")
        };
        // No baseline: no ratio to compute, said by name.
        let text = line("tapestry", "tcp_same_node_policy1000", 9.0);
        let err = summarise(&parse_samples(&text).expect("parses")).expect_err("no baseline");
        assert_eq!(
            err,
            InputError::MissingBaseline {
                metric: "tcp_same_node_policy1000".into(),
                baseline: "tcp_same_node".into()
            }
        );
        // A kernel result for it is a mistake in the run, not a second column.
        let text = line("tapestry", "tcp_same_node", 10.0)
            + &line("kernel", "tcp_same_node", 12.0)
            + &line("tapestry", "tcp_same_node_policy1000", 9.0)
            + &line("kernel", "tcp_same_node_policy1000", 9.0);
        let err = summarise(&parse_samples(&text).expect("parses")).expect_err("kernel row");
        assert!(
            matches!(err, InputError::KernelOfTapestryOnly { .. }),
            "{err}"
        );
        // Kernel-only results of it are that too.
        let text = line("tapestry", "tcp_same_node", 10.0)
            + &line("kernel", "tcp_same_node", 12.0)
            + &line("kernel", "tcp_same_node_policy1000", 9.0);
        let err = summarise(&parse_samples(&text).expect("parses")).expect_err("kernel only");
        assert!(
            matches!(err, InputError::KernelOfTapestryOnly { .. }),
            "{err}"
        );
        // A zero baseline gives no ratio, and the verdict says so.
        let text = line("tapestry", "tcp_same_node", 0.0)
            + &line("kernel", "tcp_same_node", 12.0)
            + &line("tapestry", "tcp_same_node_policy1000", 9.0);
        let reports = summarise(&parse_samples(&text).expect("parses")).expect("summarises");
        let r = find(&reports, "tcp_same_node_policy1000");
        assert_eq!((r.ratio, r.verdict), (None, Verdict::NoRatio));
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
