//! Kubernetes `resource.Quantity` in canonical DecimalSI form, as the HPA reads it.
//!
//! The value is held exactly as an integer count of nano-units, so integers of any size we
//! serve (lag counts) format exactly, and fractions (lag seconds) at Kubernetes' own
//! precision limit: finer than 1n is rounded up, as `Quantity` does.

use std::fmt;

/// Suffixes of the decimal SI exponents, from 10^-9 to 10^18.
const DECIMAL_SUFFIXES: [(i32, &str); 10] =
    [(18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""), (-3, "m"), (-6, "u"), (-9, "n")];

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// A non-negative quantity. Negative, NaN and infinite inputs become zero: the HPA must never
/// see them (it would compute nonsense replica counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("quantity {0:?}: expected a number optionally followed by a suffix (m, k, M, Ki, e3, ...)")]
    Syntax(String),
    #[error("quantity {0:?} is out of range")]
    Range(String),
}

impl Quantity {
    pub const ZERO: Self = Self { nanos: 0 };

    pub fn from_count(count: u64) -> Self {
        Self { nanos: i128::from(count) * NANOS_PER_UNIT }
    }

    /// Rounds up to the next nano-unit; clamps NaN, infinities and negatives to zero.
    pub fn from_f64(value: f64) -> Self {
        if !value.is_finite() || value <= 0.0 {
            return Self::ZERO;
        }
        let exact = value * 1e9;
        // Round up what is finer than 1n, but not the float noise of the multiplication
        // (2.000001 x 1e9 = 2000001000.0000002).
        let nearest = exact.round();
        let nanos = if (exact - nearest).abs() <= nearest.abs() * 4.0 * f64::EPSILON { nearest } else { exact.ceil() };
        if nanos >= i128::MAX as f64 { Self { nanos: i128::MAX } } else { Self { nanos: nanos as i128 } }
    }

    pub fn from_nanos(nanos: i128) -> Self {
        Self { nanos: nanos.max(0) }
    }

    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// What the HPA uses: `MilliValue()` = ceil(value x 1000).
    pub fn milli_value(self) -> i128 {
        (self.nanos + 999_999) / 1_000_000
    }

    pub fn as_f64(self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// Parses any Kubernetes quantity syntax: decimal SI (`1500m`, `2k`), binary SI (`1Ki`) and
    /// exponent (`1e3`) forms. Negative values are rejected: lag never is.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let range = || QuantityError::Range(text.to_owned());
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        if unsigned.starts_with('-') {
            return Err(range());
        }
        let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(syntax());
        }
        // mantissa x 10^-scale
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        // i128 holds up to 39 digits; the digits are all ASCII digits here, so a parse
        // failure can only be an overflow.
        if digits.len() > 39 {
            return Err(range());
        }
        let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| range())? };
        let scale = fraction.len() as i32;
        let (exp10, binary_pow): (i32, u32) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            s if s.starts_with(['e', 'E']) && s.len() > 1 => (s[1..].parse::<i32>().map_err(|_| syntax())?, 0),
            s => DECIMAL_SUFFIXES.iter().find(|(_, x)| *x == s).map(|(e, _)| (*e, 0)).ok_or_else(syntax)?,
        };
        let mut nanos = mantissa.checked_mul(1i128 << binary_pow).ok_or_else(range)?;
        let shift = exp10 - scale + 9; // power of ten that turns the mantissa into nanos
        if shift >= 0 {
            let factor = 10i128.checked_pow(u32::try_from(shift).map_err(|_| range())?).ok_or_else(range)?;
            nanos = nanos.checked_mul(factor).ok_or_else(range)?;
        } else {
            let divisor = 10i128.checked_pow(shift.unsigned_abs()).unwrap_or(i128::MAX);
            nanos = nanos / divisor + i128::from(nanos % divisor != 0);
        }
        Ok(Self { nanos })
    }
}

impl fmt::Display for Quantity {
    /// Canonical form: the largest SI exponent (multiple of 3) that leaves an integer mantissa.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        for (exp, suffix) in DECIMAL_SUFFIXES {
            let unit = 10i128.pow((exp + 9) as u32);
            if self.nanos % unit == 0 {
                return write!(f, "{}{suffix}", self.nanos / unit);
            }
        }
        write!(f, "{}n", self.nanos)
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_prints_parses_back_even_at_39_digits() {
        // Found by the quantity fuzz target: a value near i128's limit printed in nanos (39
        // digits) and was then refused.
        let q = Quantity::parse("00000000000000000000000000000000000000000000000000000000000000000001000000000051230130991796132 94.2666666".replace(' ', "").as_str()).expect("parses");
        assert_eq!(Quantity::parse(&q.to_string()).map(|p| p.milli_value()), Ok(q.milli_value()));
        assert_eq!(Quantity::parse(&"9".repeat(40)), Err(QuantityError::Range("9".repeat(40))));
        assert!(matches!(Quantity::parse("170141183460469231731687303715884105728n"), Err(QuantityError::Range(_))));
    }

    #[test]
    fn canonical_forms_match_kubernetes() {
        let cases: [(Quantity, &str); 14] = [
            (Quantity::from_f64(1.5), "1500m"),
            (Quantity::from_count(1500), "1500"),
            (Quantity::from_count(1_500_000), "1500k"),
            (Quantity::from_count(2_000_000), "2M"),
            (Quantity::from_count(0), "0"),
            (Quantity::from_count(1), "1"),
            (Quantity::from_count(1000), "1k"),
            (Quantity::from_count(1001), "1001"),
            (Quantity::from_f64(0.001), "1m"),
            (Quantity::from_f64(0.25), "250m"),
            (Quantity::from_f64(1e-9), "1n"),
            (Quantity::from_count(u64::MAX), "18446744073709551615"),
            (Quantity::from_count(5_000_000_000_000_000_000), "5E"),
            (Quantity::from_f64(2.000_001), "2000001u"),
        ];
        for (q, want) in cases {
            assert_eq!(q.to_string(), want, "{q:?}");
        }
    }

    #[test]
    fn bad_floats_are_zero_and_sub_nano_rounds_up() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0, 0.0] {
            assert_eq!(Quantity::from_f64(v).to_string(), "0", "{v}");
        }
        assert_eq!(Quantity::from_f64(1e-12).to_string(), "1n");
        assert_eq!(Quantity::from_f64(1e300).nanos(), i128::MAX);
    }

    #[test]
    fn milli_value_is_ceil_as_the_hpa_reads_it() {
        assert_eq!(Quantity::from_count(7).milli_value(), 7000);
        assert_eq!(Quantity::from_f64(1.5).milli_value(), 1500);
        assert_eq!(Quantity::from_nanos(1).milli_value(), 1);
        assert_eq!(Quantity::from_nanos(1_000_001).milli_value(), 2);
    }

    #[test]
    fn parses_every_syntax() {
        let cases = [
            ("1500m", 1_500_000_000i128),
            ("1.5", 1_500_000_000),
            ("2k", 2_000_000_000_000),
            ("1Ki", 1024 * 1_000_000_000),
            ("1e3", 1_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000_000_000_000),
            ("+5", 5_000_000_000),
            ("0.5m", 500_000),
            ("1n", 1),
            ("0.1n", 1), // rounded up to the precision limit
            (".5", 500_000_000),
            ("007", 7_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(Quantity::parse(text).map(Quantity::nanos), Ok(nanos), "{text}");
        }
        for bad in ["", "m", "1.2.3", "1x", "-1", "1e", "1ee3", "abc", "1 k", "1e99999999999"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} rejected");
        }
    }

    #[test]
    fn format_parse_round_trip() {
        for nanos in [0i128, 1, 999, 1000, 1_000_000, 1_500_000_000, 123_456_789_000, i128::from(u64::MAX) * 1000] {
            let q = Quantity::from_nanos(nanos);
            assert_eq!(Quantity::parse(&q.to_string()), Ok(q), "{q}");
        }
    }
}
