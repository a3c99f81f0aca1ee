//! Go durations (`1m30s`, `10s`, `500ms`, `1h`), as the kubelet's flags, its
//! configuration file and krustlet's pod annotations write them.

use std::time::Duration;

/// A duration that does not parse, or that no `Duration` holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (e.g. 1m, 30s, 1m30s, 500ms)")]
pub struct InvalidDuration(pub String);

/// Parses a Go duration: numbers (decimals allowed) each followed by a unit (`h`, `m`,
/// `s`, `ms`, `us`, `µs`, `ns`), or a bare `0`.
///
/// # Errors
/// [`InvalidDuration`] for anything else: no unit, an unknown unit, a negative value, or
/// a value too large for a `Duration` (never a panic, whatever the text).
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration(text.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(total);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(number * seconds).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "1x", "s", "-1s", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn huge_values_are_refused_not_a_panic() {
        for huge in [
            "1e300h",
            "99999999999999999999999999999999h",
            "18446744073709551616s",
            "9223372036854775807h9223372036854775807h",
        ] {
            assert_eq!(parse(huge), Err(InvalidDuration(huge.to_owned())), "{huge}");
        }
    }
}
