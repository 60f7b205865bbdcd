//! What `/proc` says about a process.

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (`pid` may be `self`); `None` if it cannot be read.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (100 Hz ticks); `rest` starts at field 3.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let s = cpu_seconds("self").expect("/proc/self/stat");
        assert!(s >= 0.0 && s.is_finite(), "{s}");
        assert_eq!(cpu_seconds("not-a-pid"), None);
    }
}
