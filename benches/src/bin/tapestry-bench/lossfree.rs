//! `tapestry-bench lossfree`: the next step of RFC 2544's throughput search
//! (section 26.1: the highest offered rate with no more than the allowed
//! loss), done by bisection over trials the caller runs.
//!
//! The tool keeps no state: the caller (`scripts/bench.sh`) passes every trial
//! so far on standard input, one per line, `OFFERED_PPS LOSS_PERCENT
//! RECEIVED_PPS`, the first being the flood (offered = the rate the sender
//! reached). The answer is `next RATE` (run a trial at RATE and ask again) or
//! `done PPS` (record PPS: the received rate of the best passing trial).
//!
//! If the flood lost at most the allowance, the sender itself is the limit
//! and its received rate is the answer. Otherwise the offered rate is bisected
//! between 0 and the flood's rate: a passing trial raises the floor (and may
//! be the best), a failing one lowers the ceiling, for `steps` trials.

use std::fmt;

/// One trial: what was offered and what came of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    /// Packets per second offered (for the flood: the rate the sender reached).
    pub offered: u64,
    /// Percent of the datagrams lost.
    pub loss_percent: f64,
    /// Packets per second received.
    pub received: f64,
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Run a trial at this many packets per second.
    Next(u64),
    /// The search is over: record this received rate.
    Done(f64),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Next(rate) => write!(f, "next {rate}"),
            Step::Done(pps) => write!(f, "done {pps}"),
        }
    }
}

/// Why the trials cannot be bisected.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LossfreeError {
    /// No trial, not even the flood.
    #[error("no trials on standard input: the first line is the flood (OFFERED_PPS LOSS_PERCENT RECEIVED_PPS)")]
    NoFlood,
    /// A line is not three numbers.
    #[error("line {line}: {reason} (expected OFFERED_PPS LOSS_PERCENT RECEIVED_PPS)")]
    Malformed { line: usize, reason: String },
    /// More bisection trials than `steps`.
    #[error("{trials} bisection trials given, but the search has only {steps} steps")]
    TooManyTrials { trials: usize, steps: usize },
}

/// The trials of `text`, one per non-blank line.
pub fn parse_trials(text: &str) -> Result<Vec<Trial>, LossfreeError> {
    let mut trials = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let malformed = |reason: String| LossfreeError::Malformed { line, reason };
        let [offered, loss, received] = fields.as_slice() else {
            if fields.is_empty() {
                continue;
            }
            return Err(malformed(format!("{} fields", fields.len())));
        };
        let offered = offered
            .parse::<u64>()
            .map_err(|_| malformed(format!("offered rate {offered:?} is not a whole number")))?;
        let number = |what: &str, text: &str| match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(malformed(format!(
                "{what} {text:?} is not a non-negative number"
            ))),
        };
        trials.push(Trial {
            offered,
            loss_percent: number("loss", loss)?,
            received: number("received rate", received)?,
        });
    }
    Ok(trials)
}

/// The next step after `trials` (the flood first), for a search of `steps`
/// bisection trials accepting at most `max_loss` percent loss.
pub fn next_step(trials: &[Trial], steps: usize, max_loss: f64) -> Result<Step, LossfreeError> {
    let (flood, bisection) = trials.split_first().ok_or(LossfreeError::NoFlood)?;
    if flood.loss_percent <= max_loss {
        return Ok(Step::Done(flood.received));
    }
    if bisection.len() > steps {
        return Err(LossfreeError::TooManyTrials {
            trials: bisection.len(),
            steps,
        });
    }
    let (mut lo, mut hi, mut best) = (0u64, flood.offered, 0.0f64);
    for t in bisection {
        if t.loss_percent <= max_loss {
            lo = t.offered;
            best = best.max(t.received);
        } else {
            hi = t.offered;
        }
    }
    if bisection.len() == steps {
        Ok(Step::Done(best))
    } else {
        Ok(Step::Next(lo + (hi.saturating_sub(lo)) / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(offered: u64, loss_percent: f64, received: f64) -> Trial {
        Trial {
            offered,
            loss_percent,
            received,
        }
    }

    /// Runs the whole search against a device that passes any rate up to
    /// `capacity` and loses the excess above it.
    fn search(flood_rate: u64, capacity: u64, steps: usize) -> (Vec<u64>, Step) {
        let outcome = |rate: u64| {
            let got = rate.min(capacity) as f64;
            trial(rate, 100.0 * (rate as f64 - got) / rate.max(1) as f64, got)
        };
        let mut trials = vec![outcome(flood_rate)];
        let mut offered = Vec::new();
        loop {
            match next_step(&trials, steps, 1.0).expect("valid trials") {
                Step::Next(rate) => {
                    offered.push(rate);
                    trials.push(outcome(rate));
                }
                done => return (offered, done),
            }
        }
    }

    #[test]
    fn a_flood_within_the_allowance_stands() {
        let trials = [trial(500_000, 0.4, 498_000.0)];
        assert_eq!(next_step(&trials, 6, 1.0), Ok(Step::Done(498_000.0)));
        // Exactly the allowance passes, as `loss <= 1.0` did.
        let trials = [trial(500_000, 1.0, 495_000.0)];
        assert_eq!(next_step(&trials, 6, 1.0), Ok(Step::Done(495_000.0)));
    }

    #[test]
    fn bisection_halves_between_zero_and_the_flood() {
        // A device that carries 300 k pps, flooded at 1 M.
        let (offered, done) = search(1_000_000, 300_000, 6);
        assert_eq!(
            offered,
            [500_000, 250_000, 375_000, 312_500, 281_250, 296_875]
        );
        // The best passing trial's received rate.
        assert_eq!(done, Step::Done(296_875.0));
    }

    #[test]
    fn no_passing_trial_records_zero() {
        let (offered, done) = search(1_000, 0, 3);
        assert_eq!(offered, [500, 250, 125]);
        assert_eq!(done, Step::Done(0.0));
    }

    #[test]
    fn the_best_received_rate_wins_not_the_last() {
        let trials = [
            trial(1_000, 50.0, 500.0),
            trial(500, 0.5, 497.0),
            trial(750, 0.9, 490.0),
        ];
        assert_eq!(next_step(&trials, 2, 1.0), Ok(Step::Done(497.0)));
    }

    #[test]
    fn trials_parse_and_errors_name_the_line() {
        let text = "1000 12.5 875.2\n\n500 0 500\n";
        assert_eq!(
            parse_trials(text),
            Ok(vec![trial(1000, 12.5, 875.2), trial(500, 0.0, 500.0)])
        );
        assert!(matches!(
            parse_trials("1000 1\n"),
            Err(LossfreeError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_trials("1000 1 1\n1.5 0 0\n"),
            Err(LossfreeError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse_trials("1000 nan 1\n"),
            Err(LossfreeError::Malformed { line: 1, .. })
        ));
        assert_eq!(next_step(&[], 6, 1.0), Err(LossfreeError::NoFlood));
        let too_many = [trial(10, 50.0, 5.0), trial(5, 0.0, 5.0), trial(7, 0.0, 7.0)];
        assert_eq!(
            next_step(&too_many, 1, 1.0),
            Err(LossfreeError::TooManyTrials {
                trials: 2,
                steps: 1
            })
        );
    }

    #[test]
    fn steps_print_as_the_script_reads_them() {
        assert_eq!(Step::Next(250_000).to_string(), "next 250000");
        assert_eq!(Step::Done(412_345.5).to_string(), "done 412345.5");
        assert_eq!(Step::Done(0.0).to_string(), "done 0");
    }
}
