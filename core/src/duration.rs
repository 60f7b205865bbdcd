//! Durations as operators write them (`1.5s`, `250ms`, `100us`, `2m`,
//! `1h`): one parser and one printer for the daemon's flags, policy
//! parameters, `ctl`'s flags, the store's text records and the benchmark
//! tools.
//!
//! A unit is required: a bare `30` could mean 30 ms or 30 s, and the
//! operator who meant seconds would get a thousandth of it without a word.
//! The one exception is `0`, which is the same in every unit (Go's
//! `time.ParseDuration` makes the same exception). A decimal fraction is
//! read exactly (`1.5s` is 1,500 ms, with no float rounding), down to the
//! nanosecond.

use std::time::Duration;

/// A duration that reads and prints as [`parse`] and [`show`] do (for flags
/// whose default should print as `10s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&show(self.0))
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        parse(s).map(Span)
    }
}

/// The units [`parse`] reads (the whole text after the number), with their
/// length in nanoseconds. `µs` is accepted in both of its spellings (the
/// micro sign and the Greek mu).
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// What every refusal ends with: how to write a duration.
pub const EXPECTED: &str =
    "write a number and a unit: 1.5s, 250ms, 100us, 2m, 1h (units: ns, us, ms, s, m, h)";

/// Parses a number with a unit: `1.5s`, `250ms`, `100us`, `2m`, `1h`, `30ns`
/// (`µs` reads as `us`). A bare number is refused, except `0`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if num.is_empty() || num == "." || !digits(whole) || !digits(frac) {
        return Err(format!("{s:?} is not a duration: {EXPECTED}"));
    }
    if unit.is_empty() {
        if whole.bytes().chain(frac.bytes()).all(|b| b == b'0') {
            return Ok(Duration::ZERO);
        }
        return Err(format!("{s:?} has no unit: {EXPECTED}"));
    }
    let Some(&(_, per)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("{s:?}: unknown unit {unit:?}; {EXPECTED}"));
    };
    let too_large = || format!("{s:?} is too large");
    // Whole part, then the fraction's digits that still count (a nanosecond
    // is the finest unit: further digits are dropped).
    let mut ns: u128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse::<u128>()
            .ok()
            .and_then(|w| w.checked_mul(per))
            .ok_or_else(too_large)?
    };
    let mut scale = per;
    for b in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        ns += u128::from(b - b'0') * scale;
    }
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

/// Renders a duration the way [`parse`] reads it, exactly, in the largest
/// unit that keeps it whole up to seconds (`30s`, `1500ms`, `250us`, `0s`).
pub fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// A time since the Unix epoch as UTC `YYYY-MM-DD HH:MM:SS` (for tables
/// such as `ctl token list`; [`utc_date`] is its first ten characters).
pub fn utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let rem = secs % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}",
        utc_date(since_epoch),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A time since the Unix epoch as its UTC date, `YYYY-MM-DD`: Howard
/// Hinnant's `civil_from_days` ("chrono-Compatible Low-Level Date
/// Algorithms", howardhinnant.github.io/date_algorithms.html).
pub fn utc_date(since_epoch: Duration) -> String {
    let z = (since_epoch.as_secs() / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_take_decimals() {
        let ms = Duration::from_millis;
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse(" 0.25s "), Ok(ms(250)));
        assert_eq!(parse(".5s"), Ok(ms(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("100\u{b5}s"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("2.5ms"), Ok(Duration::from_micros(2500)));
        assert_eq!(parse("30ns"), Ok(Duration::from_nanos(30)));
        // Exact, not through a float: 0.1 s is 100 ms to the nanosecond.
        assert_eq!(parse("0.1s"), Ok(ms(100)));
        // Digits finer than a nanosecond are dropped.
        assert_eq!(parse("1.0000000009s"), Ok(Duration::from_secs(1)));
        // Zero needs no unit; anything else does.
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.0"), Ok(Duration::ZERO));
        for bare in ["30", "1.5", "40"] {
            let e = parse(bare).unwrap_err();
            assert!(e.contains("no unit"), "{e}");
            assert!(e.contains("ms, s, m, h"), "the units are listed: {e}");
        }
        for bad in [
            "",
            ".",
            "s",
            "5 parsecs",
            "1.2.3s",
            "-1s",
            "1e3ms",
            "5S",
            "1m30s",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("units: ns, us, ms, s, m, h"), "{bad:?}: {e}");
        }
        assert!(parse("99999999999999999999h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("18446744073709551616s")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn shown_durations_read_back_exactly() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(2500), "2500us"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
        ];
        for (d, text) in cases {
            assert_eq!(show(d), text);
            assert_eq!(parse(&show(d)), Ok(d));
        }
        assert_eq!(Span(Duration::from_secs(10)).to_string(), "10s");
        assert_eq!(
            "1.5s".parse::<Span>(),
            Ok(Span(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(Duration::ZERO), "1970-01-01 00:00:00");
        // 2000-02-29 (a leap day of a century year) 12:34:56.
        assert_eq!(utc(Duration::from_secs(951_827_696)), "2000-02-29 12:34:56");
        assert_eq!(utc_date(Duration::from_secs(1_796_083_200)), "2026-12-01");
    }
}
