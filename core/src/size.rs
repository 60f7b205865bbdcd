//! Byte sizes as operators write them (`512k`, `2MiB`, `4m`, `1g`): one
//! parser and one printer for the daemon's size flags and quotas. Units are
//! binary (`k` = 1024), as in nginx's `client_max_body_size` and Envoy's
//! byte settings; `KiB`/`MiB`/`GiB` spell the same and `B` (or none) is bytes.

/// A byte size that reads and prints as [`parse`] and [`show`] do (for
/// flags whose default should print as `4MiB`, not `4194304`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&show(self.0))
    }
}

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Bytes, String> {
        parse(s).map(Bytes)
    }
}

/// Parses `4096`, `512k`, `2MiB`, `1g` (case-insensitive; binary units).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{:?}: expected a number followed by k, m or g", short(t)))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "{:?}: unknown unit {:?} (use k, m or g)",
                short(t),
                short(unit)
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{:?}: too large", short(t)))
}

/// Renders a size the way [`parse`] reads it, in the largest exact unit
/// (`2MiB`, `1536KiB`, `100B`).
pub fn show(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Renders a size for people, rounded to one decimal (`1.4 MiB`).
pub fn approx(bytes: u64) -> String {
    let b = bytes as f64;
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let scale = (1u64 << shift) as f64;
        if b >= scale {
            return format!("{:.1} {unit}", b / scale);
        }
    }
    format!("{bytes} B")
}

fn short(s: &str) -> String {
    crate::model::bounded(s.to_string(), 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_units_operators_write() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("512k"), Ok(512 * 1024));
        assert_eq!(parse("2MiB"), Ok(2 << 20));
        assert_eq!(parse(" 4m "), Ok(4 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("7b"), Ok(7));
    }

    #[test]
    fn refuses_what_it_cannot_read_and_says_why() {
        assert!(parse("").unwrap_err().contains("expected a number"));
        assert!(parse("k").unwrap_err().contains("expected a number"));
        assert!(parse("3 furlongs").unwrap_err().contains("unknown unit"));
        assert!(parse("-1k").is_err());
        assert!(parse("99999999999999999999g").is_err());
        assert!(parse("17179869184g").unwrap_err().contains("too large"));
    }

    #[test]
    fn prints_what_it_reads() {
        for n in [0, 1, 100, 1024, 1536 * 1024, 2 << 20, 3 << 30, 12_345] {
            assert_eq!(parse(&show(n)), Ok(n), "{}", show(n));
        }
        assert_eq!(show(2 << 20), "2MiB");
        assert_eq!(approx(1_468_006), "1.4 MiB");
        assert_eq!(approx(512), "512 B");
    }
}
