//! Durations as operators write them (`250ms`, `5s`, `2m`, `1h`): one parser
//! and one printer for the daemon's flags, policy parameters, the store's
//! text records and the benchmark tools.

use std::time::Duration;

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
}
