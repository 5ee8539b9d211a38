//! The metrics the report knows: how each is labelled, formatted and judged
//! against the project's targets.

use std::fmt;

/// Which way is better for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// How a metric's values are formatted and judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
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

/// What a metric's ratio divides by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Against {
    /// The kernel's median of the same metric; the target is the kind's.
    Kernel,
    /// Tapestry's own median of another metric, with a target of its own: a
    /// measurement the kernel reference has no counterpart of (it enforces no
    /// NetworkPolicy), judged against Tapestry's row without the feature.
    Tapestry {
        baseline: &'static str,
        target: Target,
    },
}

pub struct KnownMetric {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub against: Against,
}

const fn known(name: &'static str, label: &'static str, kind: Kind) -> KnownMetric {
    KnownMetric {
        name,
        label,
        kind,
        against: Against::Kernel,
    }
}

/// A Tapestry-only metric whose ratio is to Tapestry's `baseline` metric.
const fn against_tapestry(
    name: &'static str,
    label: &'static str,
    kind: Kind,
    baseline: &'static str,
    target: Target,
) -> KnownMetric {
    KnownMetric {
        name,
        label,
        kind,
        against: Against::Tapestry { baseline, target },
    }
}

/// Issue 10: pod-to-pod TCP with 1,000 NetworkPolicies selecting the server
/// must stay within 5% of the same path without policies.
const POLICY_TARGET: Target = Target::AtLeast(0.95);

/// The known metric called `name`, if any.
pub fn known_metric(name: &str) -> Option<&'static KnownMetric> {
    KNOWN.iter().find(|k| k.name == name)
}

/// Known metrics in display order.
pub const KNOWN: &[KnownMetric] = &[
    known(
        "tcp_same_node",
        "TCP throughput, pod to pod, same node",
        Kind::Throughput,
    ),
    against_tapestry(
        "tcp_same_node_policy1000",
        "TCP throughput, pod to pod, same node, 1,000 policies",
        Kind::Throughput,
        "tcp_same_node",
        POLICY_TARGET,
    ),
    known(
        "tcp_cross_node",
        "TCP throughput, pod to pod, cross node",
        Kind::Throughput,
    ),
    against_tapestry(
        "tcp_cross_node_policy1000",
        "TCP throughput, pod to pod, cross node, 1,000 policies",
        Kind::Throughput,
        "tcp_cross_node",
        POLICY_TARGET,
    ),
    known(
        "tcp_cluster_ip",
        "TCP throughput, pod to ClusterIP service",
        Kind::Throughput,
    ),
    known(
        "udp64_pps_same_node",
        "UDP 64-byte packet rate under flood, same node",
        Kind::PacketRate,
    ),
    known(
        "udp64_lossfree_same_node",
        "UDP 64-byte packet rate at ≤ 1% loss, same node",
        Kind::PacketRate,
    ),
    known(
        "udp64_pps_cross_node",
        "UDP 64-byte packet rate under flood, cross node",
        Kind::PacketRate,
    ),
    known(
        "udp64_lossfree_cross_node",
        "UDP 64-byte packet rate at ≤ 1% loss, cross node",
        Kind::PacketRate,
    ),
    known(
        "latency_p50_same_node",
        "Round-trip latency p50, same node",
        Kind::Latency,
    ),
    known(
        "latency_p99_same_node",
        "Round-trip latency p99, same node",
        Kind::Latency,
    ),
    known(
        "latency_p50_cross_node",
        "Round-trip latency p50, cross node",
        Kind::Latency,
    ),
    known(
        "latency_p99_cross_node",
        "Round-trip latency p99, cross node",
        Kind::Latency,
    ),
    known(
        "cpu_s_per_gb_tcp_same_node",
        "CPU per GB, TCP same node",
        Kind::CpuPerGb,
    ),
    known(
        "cpu_s_per_gb_tcp_cross_node",
        "CPU per GB, TCP cross node",
        Kind::CpuPerGb,
    ),
];

impl Kind {
    pub fn better(self) -> Option<Better> {
        match self {
            Kind::Throughput | Kind::PacketRate => Some(Better::Higher),
            Kind::Latency | Kind::CpuPerGb => Some(Better::Lower),
            Kind::Unknown => None,
        }
    }

    pub fn target(self) -> Option<Target> {
        match self {
            Kind::Throughput | Kind::PacketRate => Some(Target::AtLeast(1.0)),
            Kind::Latency => Some(Target::AtMost(1.2)),
            Kind::CpuPerGb | Kind::Unknown => None,
        }
    }

    pub fn format_value(self, v: f64) -> String {
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
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met_by(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Target::AtLeast(t) | Target::AtMost(t) => t,
        }
    }

    pub fn op(self) -> &'static str {
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
pub enum Verdict {
    Meets,
    Misses,
    /// The metric has no target (CPU per GB, unknown metrics).
    NoTarget,
    /// There is a target but no ratio (the kernel's median is zero).
    NoRatio,
}

impl Verdict {
    pub fn of(target: Option<Target>, ratio: Option<f64>) -> Verdict {
        match (target, ratio) {
            (None, _) => Verdict::NoTarget,
            (Some(_), None) => Verdict::NoRatio,
            (Some(t), Some(r)) if t.met_by(r) => Verdict::Meets,
            (Some(_), Some(_)) => Verdict::Misses,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "misses",
            Verdict::NoTarget => "—",
            Verdict::NoRatio => "n/a",
        }
    }

    pub fn json(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "misses",
            Verdict::NoTarget => "no target",
            Verdict::NoRatio => "no ratio",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn value_formatting() {
        assert_eq!(Kind::Throughput.format_value(9.714), "9.71");
        assert_eq!(Kind::PacketRate.format_value(412_345.0), "412 k");
        assert_eq!(Kind::PacketRate.format_value(1_234_000.0), "1.23 M");
        assert_eq!(Kind::PacketRate.format_value(950.0), "950");
        assert_eq!(Kind::Latency.format_value(85.4), "85");
        assert_eq!(Kind::CpuPerGb.format_value(0.416), "0.42");
    }
}
