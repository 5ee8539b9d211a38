//! `tapestry-bench`: the arithmetic of `scripts/bench.sh`, which measures
//! Tapestry beside the Linux kernel's data plane in a lab.
//!
//! - `report`: medians, ratios, verdicts, and the table, JSON, Markdown and
//!   SVG chart of a run (see [`report`]).
//! - `percentile`: nearest-rank percentiles of the numbers on standard input
//!   (latency from `ping`'s round-trip times).
//! - `lossfree`: the next step of the RFC 2544 throughput search by bisection,
//!   given the trials so far.
//! - `policies`: the NetworkPolicies of the policy rows (see [`policies`]).
#![forbid(unsafe_code)]

mod json;
mod lossfree;
mod metrics;
mod percentile;
mod policies;
mod report;
mod samples;
mod svg;
mod table;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The arithmetic of scripts/bench.sh: the report, percentiles, and the RFC 2544 search.
#[derive(Parser, Debug)]
#[command(name = "tapestry-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Summarise raw results: medians, tapestry/kernel ratios, verdicts; writes
    /// benchmarks.json, benchmarks-table.md and benchmarks.svg. Exits 2 on bad input.
    Report {
        /// Raw results, one JSON object per line (as appended by scripts/bench.sh).
        #[arg(long, value_name = "FILE.jsonl")]
        raw: PathBuf,
        /// Where benchmarks.json, benchmarks-table.md and benchmarks.svg are written.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Title for the chart and the JSON report.
        #[arg(long, value_name = "TEXT", default_value = report::DEFAULT_TITLE)]
        title: String,
        /// The machine the numbers came from (CPU, kernel, NIC…), shown with the results.
        #[arg(long, value_name = "TEXT")]
        machine: Option<String>,
        /// Timestamp to record instead of the current UTC time (keeps outputs reproducible).
        #[arg(long, value_name = "TEXT")]
        date: Option<String>,
    },
    /// Print percentiles (nearest rank) of the numbers on standard input, one
    /// per line, on one line separated by spaces.
    Percentile {
        /// Multiply each result by this (1000: milliseconds to microseconds).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Decimals printed.
        #[arg(long, default_value_t = 1)]
        decimals: usize,
        /// The percentiles, 0 to 100 (e.g. 50 99).
        #[arg(required = true)]
        percentiles: Vec<f64>,
    },
    /// Print the next step of the RFC 2544 throughput search, `next RATE` or
    /// `done PPS`, given the trials so far on standard input (one per line,
    /// OFFERED_PPS LOSS_PERCENT RECEIVED_PPS; the flood first).
    Lossfree {
        /// Bisection trials after the flood.
        #[arg(long, default_value_t = 6)]
        steps: usize,
        /// Most loss a passing trial may have, in percent.
        #[arg(long, default_value_t = 1.0)]
        max_loss: f64,
    },
    /// Print COUNT NetworkPolicies (YAML) that all select the server pods of
    /// NAMESPACE: COUNT - 1 that allow other peers and ports, then one that
    /// allows the client pods on TCP PORT.
    Policies {
        /// How many policies, the client's allow included.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The namespace of the policies and their pods.
        #[arg(long, default_value = "bench-policy")]
        namespace: String,
        /// The server's TCP port the client is allowed on.
        #[arg(long, default_value_t = 5201)]
        port: u16,
        /// The label that picks the server pods.
        #[arg(long, value_name = "KEY=VALUE", default_value = "role=server")]
        server: String,
        /// The label that picks the client pods.
        #[arg(long, value_name = "KEY=VALUE", default_value = "role=client")]
        client: String,
    },
}

fn stdin_text() -> Result<String, std::io::Error> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text)
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("tapestry-bench: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Report {
            raw,
            out_dir,
            title,
            machine,
            date,
        } => {
            let meta = samples::Meta {
                title,
                machine,
                generated_at: date.unwrap_or_else(report::now_rfc3339),
            };
            match report::run(&raw, &out_dir, &meta) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_input() => fail(e, 2),
                Err(e) => fail(e, 1),
            }
        }
        Cmd::Percentile {
            scale,
            decimals,
            percentiles,
        } => {
            let text = match stdin_text() {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read standard input: {e}"), 2),
            };
            match percentile::run(&text, &percentiles, scale, decimals) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 2),
            }
        }
        Cmd::Lossfree { steps, max_loss } => {
            let text = match stdin_text() {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read standard input: {e}"), 2),
            };
            let step = lossfree::parse_trials(&text)
                .and_then(|trials| lossfree::next_step(&trials, steps, max_loss));
            match step {
                Ok(step) => {
                    println!("{step}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 2),
            }
        }
        Cmd::Policies {
            count,
            namespace,
            port,
            server,
            client,
        } => {
            let set = policies::Label::parse("--server", &server).and_then(|server| {
                Ok(policies::PolicySet {
                    namespace,
                    count,
                    port,
                    server,
                    client: policies::Label::parse("--client", &client)?,
                })
            });
            match set.and_then(|s| policies::generate(&s)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 2),
            }
        }
    }
}
