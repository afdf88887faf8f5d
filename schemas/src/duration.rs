//! Human-readable durations (`"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"1d"`).
//!
//! Window sizes, slides, gaps and lateness are all whole milliseconds, so the
//! window arithmetic in [`crate::window`] is exact integer arithmetic on epoch
//! milliseconds, identical in the speed and the batch layer.

use std::fmt;
use std::str::FromStr;

/// A non-negative duration in whole milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(pub u64);

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration: {reason}; write a number with a unit, e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\", \"1d\""
)]
pub struct ParseDurationError {
    /// The text that was parsed.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl DurationMs {
    /// The duration in milliseconds as a signed number, for epoch arithmetic.
    ///
    /// Durations are parsed from at most a few dozen digits of days, far below
    /// `i64::MAX` milliseconds; saturate rather than wrap if one ever is not.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Milliseconds.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl FromStr for DurationMs {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseDurationError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let (number, tail) = rest.split_at(digits);
            let number: u64 = number.parse().map_err(|_| err("the number is too large"))?;
            let unit_len = tail.chars().take_while(char::is_ascii_alphabetic).count();
            if unit_len == 0 {
                return Err(err("the number has no unit"));
            }
            let (unit, tail) = tail.split_at(unit_len);
            let factor = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| err(&format!("unknown unit {unit:?} (use ms, s, m, h or d)")))?;
            total = number
                .checked_mul(factor)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(|| err("it is too long"))?;
            rest = tail;
        }
        Ok(DurationMs(total))
    }
}

impl fmt::Display for DurationMs {
    /// Prints the shortest exact form: 300000 → `5m`, 90000 → `90s`,
    /// 5400000 → `90m`, 0 → `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        for (name, factor) in UNITS {
            if self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        unreachable!("every integer is a multiple of the 1 ms unit")
    }
}

impl serde::Serialize for DurationMs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!("500ms".parse::<DurationMs>().unwrap(), DurationMs(500));
        assert_eq!("30s".parse::<DurationMs>().unwrap(), DurationMs(30_000));
        assert_eq!("5m".parse::<DurationMs>().unwrap(), DurationMs(300_000));
        assert_eq!(
            "1h30m".parse::<DurationMs>().unwrap(),
            DurationMs(5_400_000)
        );
        assert_eq!("1d".parse::<DurationMs>().unwrap(), DurationMs(86_400_000));
    }

    #[test]
    fn refuses_with_reason() {
        let e = "5".parse::<DurationMs>().unwrap_err();
        assert!(e.to_string().contains("has no unit"), "{e}");
        let e = "5y".parse::<DurationMs>().unwrap_err();
        assert!(e.to_string().contains("unknown unit \"y\""), "{e}");
        assert!("".parse::<DurationMs>().is_err());
        assert!("m5".parse::<DurationMs>().is_err());
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(DurationMs(300_000).to_string(), "5m");
        assert_eq!(DurationMs(90_000).to_string(), "90s");
        assert_eq!(DurationMs(1_500).to_string(), "1500ms");
        assert_eq!(DurationMs(0).to_string(), "0s");
    }
}
