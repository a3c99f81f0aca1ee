use super::*;
use proptest::prelude::*;

fn q(s: &str) -> Quantity {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn upstream_canonical_examples() {
    assert_eq!(q("0.5Gi").value(), 1 << 29);
    assert_eq!(q("500m").milli_value(), 500);
    assert_eq!(q("500m").value(), 1);
    assert_eq!(q("1e3").value(), 1000);
    assert_eq!(q("12E6").value(), 12_000_000);
    assert_eq!(q("100M").value(), 100_000_000);
    assert_eq!(q("1.5Ki").value(), 1536);
    assert_eq!(q("128Mi").bytes(), Ok(128 << 20));
    // The finding: a milli-suffixed memory limit is a limit, rounded up to bytes.
    assert_eq!(q("67108864500m").bytes(), Ok(67_108_865));
    assert_eq!(q("67108864000m").bytes(), Ok(67_108_864));
    assert_eq!(q("1.5").to_string(), "1500m");
    assert_eq!(q("0.9n").nanos(), 1, "finer than nano rounds up");
    assert_eq!(q("1e-100").nanos(), 1);
    assert_eq!(q("-0.9n").nanos(), -1, "away from zero");
    assert_eq!(q("8Ei").value(), i128::from(i64::MAX), "binary cap");
    assert_eq!(q("1e20").value(), 100_000_000_000_000_000_000);
    assert_eq!(q(".5").milli_value(), 500);
    assert_eq!(q("5.").value(), 5);
    assert_eq!(q("1.G").value(), 1_000_000_000);
    assert_eq!(q("+1k").value(), 1000);
    assert_eq!(q("-1.5").value(), -2);
    assert_eq!(q("1e+3").value(), 1000);
    assert_eq!(q("1000e-3").value(), 1);
    assert_eq!(
        q("0.000000000000000000000000000000000000000000001Ki").nanos(),
        1
    );
    assert_eq!(
        q("1.0000000000000000000000000000000000000000000000001").nanos(),
        1_000_000_001
    );
    // apimachinery's scanner accepts these as zero.
    for zero in ["0", "-0", "+", ".", "000", "0.0m"] {
        assert!(q(zero).is_zero(), "{zero}");
    }
}

#[test]
fn malformed_and_out_of_range() {
    // apimachinery's scanner reads a missing number as 0: "Ki" and "e5" are zero.
    assert!(q("Ki").is_zero() && q("e5").is_zero());
    for bad in [
        "", "lots", "1 ", " 1", "1KiB", "1e", "1e+", "1.2.3", "1m-5", "--1", "1k5",
    ] {
        assert!(bad.parse::<Quantity>().is_err(), "{bad:?}");
    }
    assert_eq!("1e30".parse::<Quantity>(), Err(QuantityError::OutOfRange));
    assert_eq!(
        "1e3000000000".parse::<Quantity>(),
        Err(QuantityError::Suffix)
    );
    assert_eq!(q("-1Mi").bytes(), Err(QuantityError::Negative));
    assert_eq!(q("100E").bytes(), Err(QuantityError::OutOfRange));
}

#[test]
fn division_rounds_up() {
    assert_eq!(div_ceil(1500, 1000), Some(2));
    assert_eq!(div_ceil(64 << 20, 63 << 20), Some(2));
    assert_eq!(div_ceil(3000, 1000), Some(3));
    assert_eq!(div_ceil(0, 7), Some(0));
    assert_eq!(div_ceil(-1500, 1000), Some(-1));
    assert_eq!(div_ceil(1, 0), None);
}

const SUFFIXES: [(&str, i128, i128); 16] = [
    ("n", 1, 1),
    ("u", 1_000, 1),
    ("m", 1_000_000, 1),
    ("", NANO, 1),
    ("k", NANO * 1_000, 1),
    ("M", NANO * 1_000_000, 1),
    ("G", NANO * 1_000_000_000, 1),
    ("T", NANO * 1_000_000_000_000, 1),
    ("P", NANO * 1_000_000_000_000_000, 1),
    ("E", NANO * 1_000_000_000_000_000_000, 1),
    ("Ki", NANO, 1 << 10),
    ("Mi", NANO, 1 << 20),
    ("Gi", NANO, 1 << 30),
    ("Ti", NANO, 1 << 40),
    ("Pi", NANO, 1 << 50),
    ("Ei", NANO, 1 << 60),
];

proptest! {
    #[test]
    fn never_panics(s in any::<String>()) {
        let _ = s.parse::<Quantity>();
    }

    #[test]
    fn never_panics_on_quantity_like_text(s in "[-+]?[0-9.]{0,60}[eEinumkKMGTP]{0,3}[-+]?[0-9]{0,12}") {
        if let Ok(q) = s.parse::<Quantity>() {
            let _ = (q.value(), q.milli_value(), q.bytes());
        }
    }

    /// `<mantissa>.<fraction><suffix>` is exactly mantissa.fraction × suffix, rounded
    /// up to a nano-unit, computed here with plain integer arithmetic.
    #[test]
    fn decimal_text_is_exact(
        int in 0u64..1_000_000_000,
        frac in proptest::collection::vec(0u8..10, 0..8),
        suffix in 0usize..16,
        negative in any::<bool>(),
    ) {
        let (name, nanos_per_unit, binary) = SUFFIXES[suffix];
        let frac_text: String = frac.iter().map(|d| char::from(b'0' + d)).collect();
        let sign = if negative { "-" } else { "" };
        let text = if frac.is_empty() {
            format!("{sign}{int}{name}")
        } else {
            format!("{sign}{int}.{frac_text}{name}")
        };
        let scale = 10i128.pow(u32::try_from(frac.len()).expect("small"));
        let digits = i128::from(int) * scale + frac_text.parse::<i128>().unwrap_or(0);
        let exact = digits.checked_mul(nanos_per_unit).and_then(|d| d.checked_mul(binary));
        // Beyond i128 here: out of range for a decimal suffix, capped for a binary one.
        prop_assume!(exact.is_some());
        let exact = exact.expect("checked");
        let mut magnitude = exact / scale + i128::from(exact % scale != 0);
        if binary > 1 {
            magnitude = magnitude.min(i128::from(i64::MAX) * NANO);
        }
        let expected = if negative { -magnitude } else { magnitude };
        prop_assert_eq!(q(&text).nanos(), expected, "{}", text);
    }

    /// The decimal exponent form agrees with the suffix form.
    #[test]
    fn exponents_agree_with_suffixes(m in 0u64..10_000_000_000, e in -9i32..=18) {
        let by_exponent = q(&format!("{m}e{e}"));
        let expected = i128::from(m) * 10i128.pow(u32::try_from(e + 9).expect("non-negative"));
        prop_assert_eq!(by_exponent.nanos(), expected);
    }

    /// What is formatted parses back to the same value.
    #[test]
    fn display_round_trips(nanos in -(10i128.pow(28))..10i128.pow(28)) {
        let value = Quantity { nanos };
        prop_assert_eq!(q(&value.to_string()), value);
    }

    #[test]
    fn rounding_helpers_round_away_from_zero(nanos in -(10i128.pow(28))..10i128.pow(28)) {
        let value = Quantity { nanos };
        let v = value.value();
        let milli = value.milli_value();
        prop_assert!((milli * 1_000_000 - nanos).abs() < 1_000_000);
        prop_assert!((milli * 1_000_000).abs() >= nanos.abs());
        prop_assert!((v * NANO - nanos).abs() < NANO);
        prop_assert!(nanos == 0 || v.signum() == nanos.signum());
        prop_assert!((v * NANO).abs() >= nanos.abs());
    }
}
