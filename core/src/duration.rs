//! Durations as operators write them (`250ms`, `5s`, `2m`, `1h`): one parser
//! and one printer for the daemon's flags, policy parameters, the store's
//! text records and the benchmark tools.

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

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number is milliseconds).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s, m or h"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Renders a duration the way [`parse`] reads it (`1500ms`, `30s`).
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
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
    fn durations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("40"), Ok(Duration::from_millis(40)));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("").is_err());
        assert!(parse("99999999999999999999h").is_err());
        for d in [Duration::from_millis(1500), Duration::from_secs(30)] {
            assert_eq!(parse(&show(d)), Ok(d));
        }
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(Duration::ZERO), "1970-01-01 00:00:00");
        // 2000-02-29 (a leap day of a century year) 12:34:56.
        assert_eq!(utc(Duration::from_secs(951_827_696)), "2000-02-29 12:34:56");
        assert_eq!(utc_date(Duration::from_secs(1_796_083_200)), "2026-12-01");
    }
}
