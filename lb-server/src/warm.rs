//! Warm restart: the backends' last load reports, kept on disk so a
//! restarted daemon plans from what it knew instead of from nothing.
//!
//! Without it, a daemon killed and restarted re-plans load-aware services
//! from static weights: every instance is waiting for its backend, and each
//! backend's first reports start a new blackout, so for the first seconds the
//! slowest backends get equal shares (the `balancer-restart` benchmark shows
//! it). With it:
//! - every [`INTERVAL`] a task (the engine's, `engine::snapshot::write_loads`)
//!   writes each instance's latest report (its
//!   values, its age, and how long the instance had been reporting without a
//!   gap) to `loads.snapshot` in the data directory, by writing a temporary
//!   file and renaming it over the old one, so a crash leaves the previous
//!   snapshot or the new one, never half of one;
//! - at start, after the store is loaded, each restored instance whose
//!   snapshot entry is younger than the restore grace and names the same
//!   address gets that report back
//!   ([`lb_core::registry::Registry::restore_load`]): the first plans equal
//!   the last ones before the stop (as far as the snapshot is recent), and
//!   the backend's next report continues the run (no new blackout).
//!
//! The file is a cache, not state: it is not part of [`crate::store`] (not
//! replicated, not in a transaction), a missing or unreadable one only means
//! a cold start, and failing to write it (a full disk) is logged, never
//! fatal. What is read back is validated like a report off the network.
//! Timestamps are relative (ages at the time of writing) plus the writing
//! wall-clock time, so the monotonic clocks of two processes never meet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_core::model::{check_id, check_service, InstanceKey, Load};
use lb_core::policy::LoadState;
use lb_core::registry::Registry;
use prost::Message;

/// The file in the data directory.
pub const FILE: &str = "loads.snapshot";

/// How often the snapshot is written.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Largest snapshot read back (10,000 instances take about 1 MiB).
pub const MAX_BYTES: u64 = 64 << 20;

/// The file's format version.
const FORMAT: u32 = 1;

/// The whole file.
#[derive(Clone, PartialEq, prost::Message)]
struct Stored {
    #[prost(uint32, tag = "1")]
    format: u32,
    /// When it was written, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    written_unix_ms: u64,
    #[prost(message, repeated, tag = "3")]
    entries: Vec<StoredEntry>,
}

/// One instance's latest report.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEntry {
    #[prost(string, tag = "1")]
    service: String,
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(string, tag = "3")]
    address: String,
    #[prost(double, tag = "4")]
    cpu_utilization: f64,
    #[prost(uint64, tag = "5")]
    active_requests: u64,
    #[prost(double, optional, tag = "6")]
    qps: Option<f64>,
    #[prost(double, optional, tag = "7")]
    eps: Option<f64>,
    #[prost(double, optional, tag = "8")]
    mem_utilization: Option<f64>,
    #[prost(btree_map = "string, double", tag = "9")]
    named_metrics: std::collections::BTreeMap<String, f64>,
    /// How old the report was when the file was written.
    #[prost(uint64, tag = "10")]
    age_ms: u64,
    /// How long the instance had been reporting without a gap when it made it.
    #[prost(uint64, tag = "11")]
    reporting_for_ms: u64,
    /// Its full rate from its latest report with traffic.
    #[prost(double, optional, tag = "12")]
    rate: Option<f64>,
}

/// A report read back, ready to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The instance.
    pub key: InstanceKey,
    /// Where it was.
    pub address: String,
    /// What it reported.
    pub load: Load,
    /// How old the report is now.
    pub age: Duration,
    /// How long the instance had been reporting when it made it.
    pub reporting_for: Duration,
    /// Its full rate from its latest report with traffic.
    pub rate: Option<f64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The snapshot of every instance's latest report in `registry`, as of
/// `now` (monotonic) and `wall` (the same instant on the wall clock).
pub fn encode(registry: &Registry, now: Instant, wall: SystemTime) -> Vec<u8> {
    let mut entries = Vec::new();
    for (service, svc) in registry.services() {
        for (id, inst) in &svc.instances {
            let Some(l) = &inst.load else { continue };
            entries.push(StoredEntry {
                service: service.clone(),
                instance_id: id.clone(),
                address: inst.spec.address.clone(),
                cpu_utilization: l.load.cpu_utilization,
                active_requests: l.load.active_requests,
                qps: l.load.qps,
                eps: l.load.eps,
                mem_utilization: l.load.mem_utilization,
                named_metrics: l.load.named_metrics.clone(),
                age_ms: ms(now.saturating_duration_since(l.at)),
                reporting_for_ms: ms(l.at.saturating_duration_since(l.since)),
                rate: l.rate,
            });
        }
    }
    Stored {
        format: FORMAT,
        written_unix_ms: unix_ms(wall),
        entries,
    }
    .encode_to_vec()
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_BYTES`].
    #[error("{path} is {len} bytes, more than the {MAX_BYTES} a snapshot may have")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The bytes are not a snapshot of a format this build reads.
    #[error("{0}")]
    Format(String),
}

/// Decodes a snapshot written at `written` as of `wall` (now). Entries that
/// do not validate (names, load values) are skipped; a file of another
/// format, or one that does not decode, is an error.
pub fn decode(bytes: &[u8], wall: SystemTime) -> Result<Vec<Entry>, Error> {
    let s = Stored::decode(bytes).map_err(|e| Error::Format(format!("not a snapshot: {e}")))?;
    if s.format != FORMAT {
        return Err(Error::Format(format!(
            "format {} (this build reads {FORMAT})",
            s.format
        )));
    }
    // Written in the future (a clock stepped back): count it as just written.
    let since_written = unix_ms(wall).saturating_sub(s.written_unix_ms);
    let mut out = Vec::with_capacity(s.entries.len());
    for e in s.entries {
        let load = Load {
            cpu_utilization: e.cpu_utilization,
            active_requests: e.active_requests,
            qps: e.qps,
            eps: e.eps,
            mem_utilization: e.mem_utilization,
            named_metrics: e.named_metrics,
        };
        let rate_ok = e.rate.is_none_or(|r| r.is_finite() && r > 0.0);
        if check_service(&e.service).is_err()
            || check_id(&e.instance_id).is_err()
            || load.check().is_err()
            || !rate_ok
        {
            continue;
        }
        out.push(Entry {
            key: InstanceKey {
                service: e.service,
                instance_id: e.instance_id,
            },
            address: e.address,
            load,
            age: Duration::from_millis(e.age_ms.saturating_add(since_written)),
            reporting_for: Duration::from_millis(e.reporting_for_ms),
            rate: e.rate,
        });
    }
    Ok(out)
}

/// Reads `dir`'s snapshot; `Ok(empty)` when there is none.
pub fn read(dir: &Path, wall: SystemTime) -> Result<Vec<Entry>, Error> {
    let path = dir.join(FILE);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path, source }),
    };
    if len > MAX_BYTES {
        return Err(Error::TooLarge { path, len });
    }
    let bytes = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    decode(&bytes, wall)
}

/// Gives restored instances their last reports (see the module docs):
/// entries older than `max_age` are ignored. Returns how many applied.
pub fn restore(
    registry: &mut Registry,
    entries: Vec<Entry>,
    now: Instant,
    max_age: Duration,
) -> usize {
    let mut applied = 0;
    for e in entries {
        if e.age > max_age {
            continue;
        }
        let Some(at) = now.checked_sub(e.age) else {
            continue;
        };
        let since = at.checked_sub(e.reporting_for).unwrap_or(at);
        let state = LoadState {
            load: e.load,
            at,
            since,
            rate: e.rate,
        };
        if registry.restore_load(&e.key, &e.address, state) {
            applied += 1;
        }
    }
    applied
}

/// Writes `bytes` as `dir`'s snapshot: a temporary file renamed over the old.
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::model::InstanceSpec;

    fn spec(id: &str, address: &str) -> InstanceSpec {
        InstanceSpec::new("svc", id, address)
    }

    fn load(util: f64, qps: f64) -> Load {
        Load {
            cpu_utilization: util,
            qps: Some(qps),
            ..Load::default()
        }
    }

    fn key(id: &str) -> InstanceKey {
        InstanceKey {
            service: "svc".into(),
            instance_id: id.into(),
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_continues_the_run() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut before = Registry::new();
        before.restore(spec("b1", "127.0.0.1:1"), Some(Duration::from_secs(5)), now);
        before.restore(spec("b2", "127.0.0.1:2"), Some(Duration::from_secs(5)), now);
        let state = LoadState {
            load: load(0.5, 80.0),
            at: now - Duration::from_millis(300),
            since: now - Duration::from_secs(60),
            rate: Some(160.0),
        };
        assert!(before.restore_load(&key("b1"), "127.0.0.1:1", state.clone()));
        let bytes = encode(&before, now, wall);

        // Read back 2 s later by a new process with its own clock.
        let later = wall + Duration::from_secs(2);
        let entries = decode(&bytes, later).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].age, Duration::from_millis(2300));
        assert_eq!(entries[0].reporting_for, Duration::from_millis(59_700));
        assert_eq!(entries[0].load, state.load);
        assert_eq!(entries[0].rate, Some(160.0));

        let start = Instant::now() + Duration::from_secs(3600);
        let mut after = Registry::new();
        after.restore(
            spec("b1", "127.0.0.1:1"),
            Some(Duration::from_secs(5)),
            start,
        );
        let n = restore(&mut after, entries.clone(), start, Duration::from_secs(15));
        assert_eq!(n, 1);
        let l = after.instance(&key("b1")).unwrap().load.clone().unwrap();
        assert_eq!(start - l.at, Duration::from_millis(2300));
        assert_eq!(l.at - l.since, Duration::from_millis(59_700));
        // Too old, or the instance moved: nothing restored.
        let mut moved = Registry::new();
        moved.restore(
            spec("b1", "127.0.0.1:9"),
            Some(Duration::from_secs(5)),
            start,
        );
        assert_eq!(
            restore(&mut moved, entries.clone(), start, Duration::from_secs(15)),
            0
        );
        let mut stale = Registry::new();
        stale.restore(
            spec("b1", "127.0.0.1:1"),
            Some(Duration::from_secs(5)),
            start,
        );
        assert_eq!(
            restore(&mut stale, entries, start, Duration::from_secs(2)),
            0
        );
    }

    #[test]
    fn bad_snapshots_are_refused_or_skipped_entry_by_entry() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(matches!(
            decode(b"\xff\xff\xff", wall),
            Err(Error::Format(_))
        ));
        let other = Stored {
            format: 99,
            ..Stored::default()
        };
        assert!(decode(&other.encode_to_vec(), wall).is_err());
        let good = StoredEntry {
            service: "svc".into(),
            instance_id: "b1".into(),
            address: "127.0.0.1:1".into(),
            cpu_utilization: 0.5,
            ..StoredEntry::default()
        };
        let entries = vec![
            StoredEntry {
                cpu_utilization: f64::NAN,
                ..good.clone()
            },
            StoredEntry {
                service: "bad name\n".into(),
                ..good.clone()
            },
            good,
        ];
        let s = Stored {
            format: FORMAT,
            written_unix_ms: unix_ms(wall),
            entries,
        };
        let got = decode(&s.encode_to_vec(), wall).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, key("b1"));
    }

    #[test]
    fn files_are_replaced_whole_and_missing_ones_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let wall = SystemTime::now();
        assert!(read(dir.path(), wall).unwrap().is_empty());
        let now = Instant::now();
        let mut r = Registry::new();
        r.restore(spec("b1", "127.0.0.1:1"), Some(Duration::from_secs(5)), now);
        let state = LoadState {
            load: load(0.2, 10.0),
            at: now,
            since: now,
            rate: None,
        };
        r.restore_load(&key("b1"), "127.0.0.1:1", state);
        write(dir.path(), &encode(&r, now, wall)).unwrap();
        write(dir.path(), &encode(&r, now, wall)).unwrap();
        assert_eq!(read(dir.path(), wall).unwrap().len(), 1);
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        assert!(read(dir.path(), wall).is_err());
    }
}
