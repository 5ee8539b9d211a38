//! `tapestry-bench percentile`: percentiles of the numbers on standard input,
//! one per line (the round-trip times `ping` printed), by the nearest-rank
//! method: the value at rank ⌊n·p/100 + ½⌋ (at least 1) of the sorted list.

/// Why no percentile could be computed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PercentileError {
    /// No numbers at all (every probe was lost?).
    #[error("no values on standard input")]
    Empty,
    /// A line is not a finite number.
    #[error("line {line}: {text:?} is not a number")]
    NotANumber { line: usize, text: String },
    /// A percentile outside 0 to 100.
    #[error("percentile {0} is outside 0 to 100")]
    OutOfRange(f64),
}

/// The numbers of `text`, one per non-blank line, sorted.
pub fn parse_values(text: &str) -> Result<Vec<f64>, PercentileError> {
    let mut values = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => values.push(v),
            _ => {
                return Err(PercentileError::NotANumber {
                    line: i + 1,
                    text: raw.to_owned(),
                })
            }
        }
    }
    if values.is_empty() {
        return Err(PercentileError::Empty);
    }
    values.sort_by(f64::total_cmp);
    Ok(values)
}

/// The `p`th percentile (0 to 100) of `sorted` by nearest rank.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Result<f64, PercentileError> {
    if !(0.0..=100.0).contains(&p) {
        return Err(PercentileError::OutOfRange(p));
    }
    let n = sorted.len();
    let rank = (n as f64 * p / 100.0 + 0.5)
        .floor()
        .clamp(1.0, n.max(1) as f64);
    // `rank` is a whole number in 1..=n, so the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = rank as usize - 1;
    sorted.get(index).copied().ok_or(PercentileError::Empty)
}

/// Each of `percentiles` of `text`'s numbers, times `scale`, with `decimals`
/// decimals, separated by spaces.
pub fn run(
    text: &str,
    percentiles: &[f64],
    scale: f64,
    decimals: usize,
) -> Result<String, PercentileError> {
    let sorted = parse_values(text)?;
    let shown: Result<Vec<String>, _> = percentiles
        .iter()
        .map(|&p| nearest_rank(&sorted, p).map(|v| format!("{:.decimals$}", v * scale)))
        .collect();
    Ok(shown?.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_definition() {
        let v: Vec<f64> = (1..=300).map(f64::from).collect();
        // ⌊300·0.5 + ½⌋ = 150, ⌊300·0.99 + ½⌋ = 297.
        assert_eq!(nearest_rank(&v, 50.0), Ok(150.0));
        assert_eq!(nearest_rank(&v, 99.0), Ok(297.0));
        assert_eq!(nearest_rank(&v, 100.0), Ok(300.0));
        assert_eq!(nearest_rank(&v, 0.0), Ok(1.0));
        // Few values: ⌊3·0.5 + ½⌋ = 2, ⌊3·0.99 + ½⌋ = 3, ⌊1·0.5 + ½⌋ = 1.
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 50.0), Ok(2.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 99.0), Ok(3.0));
        assert_eq!(nearest_rank(&[7.0], 50.0), Ok(7.0));
        assert_eq!(
            nearest_rank(&[7.0], 101.0),
            Err(PercentileError::OutOfRange(101.0))
        );
        assert_eq!(nearest_rank(&[], 50.0), Err(PercentileError::Empty));
    }

    #[test]
    fn run_sorts_scales_and_formats() {
        // ping's times in ms, unsorted; reported in µs with one decimal.
        let text = "0.120\n0.080\n\n0.100\n0.300\n";
        assert_eq!(
            run(text, &[50.0, 99.0], 1000.0, 1),
            Ok("100.0 300.0".into())
        );
        assert_eq!(run(text, &[50.0], 1.0, 3), Ok("0.100".into()));
    }

    #[test]
    fn bad_input_is_an_error_naming_the_line() {
        assert_eq!(run("\n \n", &[50.0], 1.0, 1), Err(PercentileError::Empty));
        let err = run("0.1\nrtt\n", &[50.0], 1.0, 1).expect_err("not a number");
        assert_eq!(
            err,
            PercentileError::NotANumber {
                line: 2,
                text: "rtt".into()
            }
        );
        assert!(run("inf\n", &[50.0], 1.0, 1).is_err());
    }
}
