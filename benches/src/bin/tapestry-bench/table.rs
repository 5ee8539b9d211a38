//! The report as a fixed-width text table (stdout) and as Markdown
//! (`benchmarks-table.md`, pasted into docs/benchmarks.md).

use crate::samples::Meta;
use crate::samples::MetricReport;

const HEADERS: [&str; 6] = ["Metric", "Tapestry", "Kernel", "Ratio", "Target", "Verdict"];

fn table_cells(r: &MetricReport) -> [String; 6] {
    [
        r.label_with_unit(),
        r.kind.format_value(r.tapestry.median),
        r.kernel
            .as_ref()
            .map_or_else(|| "n/a".to_owned(), |k| r.kind.format_value(k.median)),
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

/// One note per Tapestry-only row: why its kernel column is empty and what
/// its ratio divides by.
fn baseline_notes(reports: &[MetricReport]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| {
            let b = r.baseline.as_ref()?;
            Some(format!(
                "{}: Tapestry only (the kernel reference enforces no NetworkPolicy), so the kernel column is n/a; its ratio is to Tapestry's own \"{}\" row of the same run.",
                r.label, b.label
            ))
        })
        .collect()
}

/// Fixed-width table: the metric left-aligned, numbers right-aligned.
pub fn text_table(reports: &[MetricReport]) -> String {
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
    for note in baseline_notes(reports) {
        out += &format!("Note: {note}\n");
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(meta: &Meta, reports: &[MetricReport]) -> String {
    let mut out = String::new();
    out += &format!("| {} |\n", HEADERS.join(" | "));
    out += "|:--|--:|--:|--:|:-:|:-:|\n";
    for r in reports {
        let cells = table_cells(r).map(|c| md_escape(&c));
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out += "\nValues are medians over the reps; ratio = tapestry median / kernel median.\n";
    for note in baseline_notes(reports) {
        out += &format!("\n{}\n", md_escape(&note));
    }
    match &meta.machine {
        Some(m) => out += &format!("\nMachine: {}\n", md_escape(m)),
        None => out += "\nMachine: not recorded (pass --machine).\n",
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::fixture::{fixture, meta, policy_fixture};

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
    fn tapestry_only_rows_say_n_a_and_what_they_divide_by() {
        let table = text_table(&policy_fixture());
        let expected = "\
Metric                                                           Tapestry  Kernel  Ratio  Target  Verdict
---------------------------------------------------------------  --------  ------  -----  ------  -------
TCP throughput, pod to pod, same node (Gbit/s)                      10.00   16.00   0.62  ≥ 1.00  misses
TCP throughput, pod to pod, same node, 1,000 policies (Gbit/s)       9.60     n/a   0.96  ≥ 0.95  meets
TCP throughput, pod to pod, cross node (Gbit/s)                      6.00   10.00   0.60  ≥ 1.00  misses
TCP throughput, pod to pod, cross node, 1,000 policies (Gbit/s)      5.00     n/a   0.83  ≥ 0.95  misses
Note: TCP throughput, pod to pod, same node, 1,000 policies: Tapestry only (the kernel reference enforces no NetworkPolicy), so the kernel column is n/a; its ratio is to Tapestry's own \"TCP throughput, pod to pod, same node\" row of the same run.
Note: TCP throughput, pod to pod, cross node, 1,000 policies: Tapestry only (the kernel reference enforces no NetworkPolicy), so the kernel column is n/a; its ratio is to Tapestry's own \"TCP throughput, pod to pod, cross node\" row of the same run.
";
        assert_eq!(table, expected);
        let md = markdown(&meta(), &policy_fixture());
        assert!(md.contains(
            "| TCP throughput, pod to pod, same node, 1,000 policies (Gbit/s) | 9.60 | n/a | 0.96 | ≥ 0.95 | meets |"
        ), "{md}");
        assert!(md.contains("so the kernel column is n/a; its ratio is to Tapestry's own \"TCP throughput, pod to pod, same node\" row"));
        // A run without such rows has no note.
        assert!(!markdown(&meta(), &fixture()).contains("Tapestry only"));
    }
}
