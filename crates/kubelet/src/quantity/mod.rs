//! Kubernetes resource quantities (`500m`, `1.5Gi`, `12e6`), parsed exactly with the
//! grammar and rounding of `k8s.io/apimachinery/pkg/api/resource`.
//!
//! ```text
//! quantity  ::= sign? number suffix
//! number    ::= digits | digits "." digits? | "." digits      (leading zeros allowed)
//! suffix    ::= "" | n u m k M G T P E | Ki Mi Gi Ti Pi Ei | (e|E) sign? digits
//! ```
//!
//! A quantity is held as a whole number of nano-units in an `i128`, never as a float. As
//! apimachinery does, parsing rounds a value finer than `1n` up (away from zero) to the
//! next nano-unit, and caps a binary-suffixed (`Ki`..`Ei`) magnitude at `2^63 - 1`.
//! Unlike apimachinery, a magnitude above about `1.7e29` (which no int64 accessor of
//! apimachinery can represent either) is refused as out of range instead of carried in
//! arbitrary precision.

use std::fmt;
use std::str::FromStr;

/// Nano-units per unit.
const NANO: i128 = 1_000_000_000;

/// A binary-suffixed magnitude is capped at `2^63 - 1` units, as apimachinery does.
const BINARY_CAP: u128 = (i64::MAX as u128) * 1_000_000_000;

/// Why a quantity does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<signedNumber><suffix>`.
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    /// The suffix is not one of the known suffixes or a decimal exponent.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The magnitude is beyond what krustlet represents (about `1.7e29`).
    #[error("quantity out of range")]
    OutOfRange,
    /// A negative quantity where only non-negative ones make sense.
    #[error("quantity must not be negative")]
    Negative,
}

/// An exact Kubernetes quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    /// The value times 10^9.
    nanos: i128,
}

/// `n / d` rounded away from zero, for `d > 0`.
fn div_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 { q } else { q + n.signum() }
}

impl Quantity {
    /// A whole number of units.
    #[must_use]
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
        }
    }

    /// The quantity of an API object (`limits.memory`, `sizeLimit`, ...). Surrounding
    /// white space is ignored, as the API machinery's JSON decoding does.
    ///
    /// # Errors
    /// When the text is not a quantity (see [`Quantity::from_str`]).
    pub fn from_api(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, QuantityError> {
        q.0.trim().parse()
    }

    /// The value times 10^9, exact.
    #[must_use]
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// Whether the value is below zero.
    #[must_use]
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// Whether the value is zero.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// The value rounded to a whole number away from zero: apimachinery's `Value()`
    /// (`1500m` is 2, `67108864500m` is 67108865).
    #[must_use]
    pub fn value(self) -> i128 {
        div_away(self.nanos, NANO)
    }

    /// The value in thousandths rounded away from zero: apimachinery's `MilliValue()`.
    #[must_use]
    pub fn milli_value(self) -> i128 {
        div_away(self.nanos, 1_000_000)
    }

    /// The value as a number of bytes, rounded up as the kubelet rounds memory.
    ///
    /// # Errors
    /// [`QuantityError::Negative`] below zero, [`QuantityError::OutOfRange`] above
    /// `u64::MAX` bytes.
    pub fn bytes(self) -> Result<u64, QuantityError> {
        if self.is_negative() {
            return Err(QuantityError::Negative);
        }
        u64::try_from(self.value()).map_err(|_| QuantityError::OutOfRange)
    }
}

impl From<u64> for Quantity {
    /// A whole number of units (bytes, cores).
    fn from(units: u64) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
        }
    }
}

/// `n / d` rounded up (towards positive infinity); `None` when `d` is not positive.
/// The downward API's `resourceFieldRef` divides a value by its divisor this way.
#[must_use]
pub fn div_ceil(n: i128, d: i128) -> Option<i128> {
    if d <= 0 {
        return None;
    }
    let q = n.div_euclid(d);
    Some(if n.rem_euclid(d) == 0 { q } else { q + 1 })
}

/// The parts of a quantity's text: sign, integer digits, fraction digits, suffix.
struct Parts<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    suffix: &'a str,
}

/// The scanner of apimachinery's `parseQuantityString`: `[+-]?[0-9]*(\.[0-9]*)?`, then
/// suffix letters, then an optional signed integer, to the end.
fn scan(s: &str) -> Result<Parts<'_>, QuantityError> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos = 1;
            true
        }
        Some(b'+') => {
            pos = 1;
            false
        }
        _ => false,
    };
    let digits_from = |start: usize| {
        start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
    };
    let int_end = digits_from(pos);
    let int = &s[pos..int_end];
    pos = int_end;
    let mut frac = "";
    if bytes.get(pos) == Some(&b'.') {
        let frac_end = digits_from(pos + 1);
        frac = &s[pos + 1..frac_end];
        pos = frac_end;
    }
    let suffix = &s[pos..];
    let letters = suffix
        .bytes()
        .take_while(|b| b"eEinumkKMGTP".contains(b))
        .count();
    let mut rest = &suffix[letters..];
    if let Some(r) = rest.strip_prefix(['+', '-']) {
        rest = r;
    }
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Format);
    }
    Ok(Parts {
        negative,
        int,
        frac,
        suffix,
    })
}

/// A suffix as a power of ten and a power of two.
fn interpret(suffix: &str) -> Result<(i64, u32), QuantityError> {
    Ok(match suffix {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or(QuantityError::Suffix)?;
            // apimachinery takes the exponent as an int32 (it wraps beyond that);
            // anything outside is refused here.
            let e: i32 = exponent.parse().map_err(|_| QuantityError::Suffix)?;
            (i64::from(e), 0)
        }
    })
}

/// Appends decimal `digits` to `acc`; `None` on overflow.
fn accumulate(mut acc: u128, digits: &[u8]) -> Option<u128> {
    for d in digits {
        acc = acc.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    Some(acc)
}

/// `ceil(0.F × 2^pow2)` for the fraction digits `F`: long multiplication from the last
/// digit, one pass, exact whatever the number of digits.
fn ceil_fraction(fraction: &[u8], pow2: u32) -> u128 {
    let factor = 1u128 << pow2;
    let mut carry = 0u128;
    let mut inexact = false;
    for d in fraction.iter().rev() {
        let t = u128::from(d - b'0') * factor + carry;
        inexact |= !t.is_multiple_of(10);
        carry = t / 10;
    }
    carry + u128::from(inexact)
}

/// The magnitude in nano-units, rounded up: `digits × 10^shift × 2^pow2`, where
/// `shift` already includes the 10^9 of nano-units.
fn magnitude(digits: &[u8], shift: i64, pow2: u32) -> Option<u128> {
    let split = i64::try_from(digits.len()).ok()?.saturating_add(shift);
    let (int, frac) = if split <= 0 {
        (&digits[..0], digits)
    } else {
        let split = usize::try_from(split).ok()?.min(digits.len());
        digits.split_at(split)
    };
    let mut whole = accumulate(0, int)?;
    if shift > 0 && whole != 0 {
        whole = whole.checked_mul(10u128.checked_pow(u32::try_from(shift).ok()?)?)?;
    }
    let whole = whole.checked_mul(1u128 << pow2)?;
    let up = if frac.iter().all(|d| *d == b'0') {
        0
    } else if pow2 == 0 {
        1
    } else {
        // Binary suffixes carry no exponent, so the fraction is made only of written
        // digits: one linear pass.
        ceil_fraction(frac, pow2)
    };
    whole.checked_add(up)
}

impl FromStr for Quantity {
    type Err = QuantityError;

    /// Parses a quantity exactly as apimachinery's `ParseQuantity` does (no surrounding
    /// white space).
    ///
    /// # Errors
    /// [`QuantityError::Format`] or [`QuantityError::Suffix`] for text that is not a
    /// quantity, [`QuantityError::OutOfRange`] for a magnitude above about `1.7e29`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(QuantityError::Format);
        }
        let parts = scan(s)?;
        let (pow10, pow2) = interpret(parts.suffix)?;
        // Every written digit is kept (leading zeros too): the fraction's position
        // depends on them.
        let digits: Vec<u8> = parts.int.bytes().chain(parts.frac.bytes()).collect();
        let frac_len = i64::try_from(parts.frac.len()).map_err(|_| QuantityError::OutOfRange)?;
        let shift = pow10 - frac_len + 9;
        let magnitude = magnitude(&digits, shift, pow2);
        let magnitude = match magnitude {
            Some(m) if pow2 > 0 => m.min(BINARY_CAP),
            Some(m) => m,
            None if pow2 > 0 => BINARY_CAP,
            None => return Err(QuantityError::OutOfRange),
        };
        let magnitude = i128::try_from(magnitude).map_err(|_| QuantityError::OutOfRange)?;
        Ok(Self {
            nanos: if parts.negative {
                -magnitude
            } else {
                magnitude
            },
        })
    }
}

impl fmt::Display for Quantity {
    /// A decimal form that parses back to the same value: the largest of the suffixes
    /// `n u m "" k M G T P E` that leaves a whole mantissa (`1500m`, `64M`, `0`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let suffixes = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
        let mut mantissa = self.nanos;
        let mut index = 0;
        while index + 1 < suffixes.len() && mantissa % 1000 == 0 {
            mantissa /= 1000;
            index += 1;
        }
        write!(f, "{mantissa}{}", suffixes[index])
    }
}

#[cfg(test)]
mod tests;
