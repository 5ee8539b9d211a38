//! `tapestry-bench report`: turns the raw results of `scripts/bench.sh` into a
//! report.
//!
//! `bench.sh` runs every measurement several times for two systems, `tapestry` and
//! `kernel` (the Linux bridge/VXLAN/iptables datapath), interleaved, and appends one
//! JSON object per line:
//!
//! ```text
//! {"system":"tapestry","metric":"tcp_same_node","unit":"Gbit/s","value":9.71,"rep":1}
//! ```
//!
//! The report takes the median of each (metric, system) group, the ratio
//! tapestry / kernel, and a verdict against the project's targets (throughput and
//! packet rate at least the kernel's, latency at most 1.2× the kernel's, CPU per GB
//! reported without a target). It prints a table and writes `benchmarks.json`,
//! `benchmarks-table.md` and `benchmarks.svg` into the output directory.
//!
//! Medians, not means: a rep that hit a noisy neighbour moves a mean but not a
//! median. Input problems (missing or empty file, a malformed line, a metric measured
//! for only one system) are reported before anything is written, so a stale report
//! is never half-overwritten.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::json::json_report;
use crate::samples::{
    first_repeated_rep, parse_samples, summarise, InputError, Meta, MetricReport,
};
use crate::svg::svg_chart;
use crate::table::{markdown, text_table};

pub const DEFAULT_TITLE: &str = "Tapestry vs the Linux kernel datapath";

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The raw file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The raw file's contents cannot be summarised.
    #[error("{}: {source}", path.display())]
    Input { path: PathBuf, source: InputError },
    /// The output directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The JSON report could not be encoded.
    #[error("cannot encode the JSON report: {0}")]
    Encode(#[from] serde_json::Error),
    /// An output file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReportError {
    /// Bad input (nothing written) exits 2, a failed write 1.
    pub fn is_input(&self) -> bool {
        matches!(self, ReportError::Read { .. } | ReportError::Input { .. })
    }
}

/// Reads and summarises `raw`, prints the table, and writes the report files
/// into `out_dir`.
pub fn run(raw: &Path, out_dir: &Path, meta: &Meta) -> Result<(), ReportError> {
    let text = std::fs::read_to_string(raw).map_err(|source| ReportError::Read {
        path: raw.to_path_buf(),
        source,
    })?;
    let input = |source| ReportError::Input {
        path: raw.to_path_buf(),
        source,
    };
    let samples = parse_samples(&text).map_err(input)?;
    if let Some(s) = first_repeated_rep(&samples) {
        eprintln!(
            "tapestry-bench: warning: {}: line {}: {} rep {} of {} repeats an earlier line; does the file hold more than one run?",
            raw.display(),
            s.line,
            s.system.as_str(),
            s.rep.unwrap_or_default(),
            s.metric
        );
    }
    let reports = summarise(&samples).map_err(input)?;
    print!("{}", text_table(&reports));
    if let Some(m) = &meta.machine {
        println!("Machine: {m}");
    }
    write_outputs(out_dir, meta, &reports)
}

fn write_outputs(dir: &Path, meta: &Meta, reports: &[MetricReport]) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(&json_report(meta, reports))?;
    let files = [
        ("benchmarks.json", json + "\n"),
        ("benchmarks-table.md", markdown(meta, reports)),
        ("benchmarks.svg", svg_chart(meta, reports)),
    ];
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("tapestry-bench: wrote {}", path.display());
    }
    Ok(())
}

pub fn now_rfc3339() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::fixture::{meta, FIXTURE};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(1_735_689_600), "2025-01-01T00:00:00Z");
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tapestry-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn run_writes_the_three_files() {
        let dir = temp_dir("ok");
        let raw = dir.join("raw.jsonl");
        std::fs::write(&raw, FIXTURE).expect("write raw");
        let out = dir.join("out");
        run(&raw, &out, &meta()).expect("report");
        for name in ["benchmarks.json", "benchmarks-table.md", "benchmarks.svg"] {
            let body = std::fs::read_to_string(out.join(name)).expect(name);
            assert!(!body.is_empty(), "{name} empty");
        }
    }

    #[test]
    fn bad_input_writes_nothing_and_is_an_input_error() {
        let dir = temp_dir("bad");
        let raw = dir.join("raw.jsonl");
        std::fs::write(&raw, "{not json}\n").expect("write raw");
        let out = dir.join("out");
        let err = run(&raw, &out, &meta()).expect_err("malformed");
        assert!(err.is_input(), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!out.exists());
        let err = run(&dir.join("missing.jsonl"), &out, &meta()).expect_err("missing");
        assert!(matches!(err, ReportError::Read { .. }), "{err}");
    }
}
