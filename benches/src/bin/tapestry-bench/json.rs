//! `benchmarks.json`: the same numbers as the table plus every rep's value,
//! keys in reading order.

use serde::Serialize;

use crate::metrics::Better;
use crate::samples::Meta;
use crate::samples::{MetricReport, Stats};

#[derive(Serialize)]
pub struct JsonReport<'a> {
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
    /// null for a Tapestry-only metric.
    kernel: Option<JsonStats<'a>>,
    /// What the ratio divides by: "kernel", or "tapestry:METRIC" for a
    /// Tapestry-only metric compared with Tapestry's METRIC.
    ratio_to: String,
    /// null when the divisor's median is zero.
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

pub fn json_report<'a>(meta: &'a Meta, reports: &'a [MetricReport]) -> JsonReport<'a> {
    JsonReport {
        title: &meta.title,
        machine: meta.machine.as_deref(),
        generated_at: &meta.generated_at,
        ratio: "tapestry median / kernel median, or / tapestry's median of the metric in ratio_to",
        metrics: reports
            .iter()
            .map(|r| JsonMetric {
                metric: &r.name,
                label: &r.label,
                unit: &r.unit,
                better: r.kind.better().map(Better::as_str),
                tapestry: JsonStats::of(&r.tapestry),
                kernel: r.kernel.as_ref().map(JsonStats::of),
                ratio_to: r
                    .baseline
                    .as_ref()
                    .map_or_else(|| "kernel".to_owned(), |b| format!("tapestry:{}", b.metric)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::fixture::{fixture, meta, policy_fixture};

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
        assert_eq!(at("/metrics/0/ratio_to"), "kernel");
    }

    #[test]
    fn tapestry_only_metric_has_null_kernel() {
        let (meta, reports) = (meta(), policy_fixture());
        let v = serde_json::to_value(json_report(&meta, &reports)).expect("encodes");
        let at = |ptr: &str| v.pointer(ptr).cloned().unwrap_or_default();
        assert_eq!(at("/metrics/1/metric"), "tcp_same_node_policy1000");
        assert!(v.pointer("/metrics/1/kernel").is_some_and(|k| k.is_null()));
        assert_eq!(at("/metrics/1/ratio_to"), "tapestry:tcp_same_node");
        assert_eq!(at("/metrics/1/tapestry/median"), 9.6);
        assert_eq!(at("/metrics/1/target/ratio"), 0.95);
        assert_eq!(at("/metrics/1/verdict"), "meets");
    }
}
