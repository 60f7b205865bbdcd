//! The embedded store: [`sled`] under `--data-dir`, the default.
//!
//! Trees: `records` holds every record under its key (see [`super::record`])
//! and the revision counter; `meta` holds the layout version and the
//! daemon's generation. A commit checks its preconditions, applies its
//! writes and the new revision as one atomic sled batch, flushes, and only
//! then tells watchers: one commit at a time, so revisions and events are in
//! order. The engine commits once per batch of commands (group commit).
//!
//! Faults: a commit is refused before it writes when the disk has less than
//! `min_free` bytes left (the way Elasticsearch's flood-stage watermark turns
//! an index read-only before the disk is full): sled is never handed a full
//! disk, and writes resume as soon as space is freed. A write that fails all
//! the same (another process filled the disk, an I/O error) leaves sled
//! refusing every write; [`Store::recover`] then lets that opening go and
//! reads the directory again. sled's own files are checked against a
//! `committed-revision` marker at start, so a truncated or replaced store is
//! refused instead of restored in part.
//!
//! Watching: sled is opened by one process at a time (its directory lock),
//! so every change comes through [`Store::commit`] here and an in-process
//! broadcast is a complete change feed. It keeps no history: a watch can
//! start at the current revision only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, Mutex};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use super::record::{self, LAYOUT, META, REVISION_KEY};
use super::{
    migrate, BoxFuture, Event, EventStream, Expect, Loaded, Revision, Store, StoreError, Write,
};

/// Changes a watcher may fall behind by before it must load again.
const WATCH_BACKLOG: usize = 4096;

/// Free disk space below which commits are refused, unless configured: more
/// than sled writes for any one commit the quotas allow (its log segments
/// are 512 KiB).
pub const DEFAULT_MIN_FREE: u64 = 4 << 20;

/// The sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// [`Store::identity`]: `sled:` and the id made with the directory.
    id: String,
    dir: PathBuf,
    /// The open database; replaced by [`Store::recover`] (sled refuses every
    /// write after an I/O error until it is reopened), `None` while that
    /// happens.
    open: RwLock<Option<Arc<Open>>>,
    /// Held for a whole commit: revisions are assigned, written, flushed and
    /// announced in order.
    commit: Mutex<()>,
    events: broadcast::Sender<Event>,
    /// Commits are refused while the disk has less free space than this.
    min_free: u64,
    /// A sled operation failed: the opening must be replaced before the next
    /// write.
    failed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A failed opening can wait for good when dropped (see
        // `SledStore::reopen`): never on the caller's thread.
        if *self.failed.get_mut() {
            let open = self
                .open
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(open) = open {
                let _ = release(open);
            }
        }
    }
}

/// Drops a failed opening on a thread of its own.
fn release(open: Arc<Open>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("lb-store-release".into())
        .spawn(move || drop(open))
        .map(|_| ())
        .map_err(StoreError::Io)
}

/// One opening of the database.
struct Open {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

impl Open {
    /// Opens `dir`, migrating a directory of the first layout.
    ///
    /// If the directory's lock is held (another lb-server uses it, or a
    /// previous opening in this process is still letting go), retries for up
    /// to two seconds before giving up with that error.
    fn at(dir: &Path) -> Result<Open, StoreError> {
        let mut tries = 0;
        let db = loop {
            // No background flusher: every acknowledged write is flushed
            // explicitly, and a flusher thread would hold the directory lock
            // for a moment after the store is dropped.
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if tries == 40 {
                        return Err(StoreError::Locked {
                            dir: dir.to_path_buf(),
                            holder: Holder::of(&dir.join(SLED_DB_FILE)),
                        });
                    }
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        match read_u64(&meta, b"layout")? {
            Some(l) if l > u64::from(LAYOUT) => {
                return Err(StoreError::NewerLayout {
                    found: u32::try_from(l).unwrap_or(u32::MAX),
                    supported: LAYOUT,
                })
            }
            Some(_) => {}
            None => {
                migrate::from_layout_1(&db, &records)?;
                meta.insert("layout", &u64::from(LAYOUT).to_be_bytes())?;
                db.flush()?;
            }
        }
        // A migration interrupted after the layout was recorded leaves the
        // old trees behind; they are dropped only once the new ones are durable.
        migrate::drop_layout_1(&db)?;
        if read_u64(&meta, b"id")?.is_none() {
            meta.insert("id", &rand::random::<u64>().to_be_bytes())?;
            db.flush()?;
        }
        Ok(Open { db, records, meta })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(read_u64(&self.records, REVISION_KEY)?.unwrap_or(0))
    }

    /// The revision that last wrote `key`, if it holds a record (0 for one
    /// that does not decode).
    fn revision_of(&self, key: &[u8]) -> Result<Option<Revision>, StoreError> {
        Ok(self
            .records
            .get(key)?
            .map(|v| record::revision(&v).unwrap_or(0)))
    }
}

/// The file of sled's that carries its directory lock (an exclusive
/// `flock`, taken by sled when it opens the directory).
const SLED_DB_FILE: &str = "db";

/// A process holding a file lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), if readable.
    pub name: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "another process ({n}, pid {})", self.pid),
            None => write!(f, "another process (pid {})", self.pid),
        }
    }
}

impl Holder {
    /// The process that holds a lock on `file`, found in `/proc/locks` by
    /// the file's device and inode (Linux; `None` elsewhere, or when no
    /// other process shows up there, e.g. one in another pid namespace).
    pub fn of(file: &Path) -> Option<Holder> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(file).ok()?;
            let locks = std::fs::read_to_string("/proc/locks").ok()?;
            let pid = holder_in(&locks, meta.dev(), meta.ino(), std::process::id())?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty());
            Some(Holder { pid, name })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }
}

/// The pid (not `own`) of a lock in `locks` (the text of `/proc/locks`) on
/// the file with device `dev` and inode `ino`. A line reads
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`: the pid, then the
/// device's major and minor numbers in hex and the inode in decimal (lines
/// of blocked waiters carry `->` and are skipped).
fn holder_in(locks: &str, dev: u64, ino: u64, own: u32) -> Option<u32> {
    // Linux's `new_encode_dev` split of a `dev_t`.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks
        .lines()
        .filter(|l| !l.contains("->"))
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (pid, file) = (fields.get(4)?, fields.get(5)?);
            let mut parts = file.split(':');
            let (maj, min, inode) = (parts.next()?, parts.next()?, parts.next()?);
            let same = u64::from_str_radix(maj, 16).ok()? == major
                && u64::from_str_radix(min, 16).ok()? == minor
                && inode.parse::<u64>().ok()? == ino;
            let pid: u32 = pid.parse().ok()?;
            (same && pid != own).then_some(pid)
        })
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with [`DEFAULT_MIN_FREE`]; see
    /// [`SledStore::open_with`].
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, DEFAULT_MIN_FREE)
    }

    /// Opens (or creates) the store in `dir`, migrating a directory of the
    /// first layout (see [`Open::at`]); commits are refused while its disk
    /// has less than `min_free` bytes free.
    pub fn open_with(dir: &Path, min_free: u64) -> Result<SledStore, StoreError> {
        let open = Open::at(dir)?;
        let id = format!("sled:{:016x}", read_u64(&open.meta, b"id")?.unwrap_or(0));
        let (events, _) = broadcast::channel(WATCH_BACKLOG);
        Ok(SledStore {
            inner: Arc::new(Inner {
                id,
                dir: dir.to_path_buf(),
                open: RwLock::new(Some(Arc::new(open))),
                commit: Mutex::new(()),
                events,
                min_free,
                failed: AtomicBool::new(false),
            }),
        })
    }

    /// The database as now open.
    fn db(&self) -> Result<Arc<Open>, StoreError> {
        self.inner
            .open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }
}

/// The file next to sled's own that holds the last committed revision, as a
/// decimal number: a store that comes back with an older revision lost
/// commits (its files were truncated or replaced) and is refused at start.
const COMMITTED_FILE: &str = "committed-revision";

impl SledStore {
    fn committed_path(&self) -> PathBuf {
        self.inner.dir.join(COMMITTED_FILE)
    }

    /// Records `revision` as committed (write and rename: never a torn file).
    fn mark_committed(&self, revision: Revision) -> Result<(), StoreError> {
        let tmp = self.inner.dir.join(format!("{COMMITTED_FILE}.tmp"));
        std::fs::write(&tmp, revision.to_string())?;
        std::fs::rename(&tmp, self.committed_path())?;
        Ok(())
    }

    /// The revision the marker says was committed, if there is a marker.
    fn marked_revision(&self) -> Result<Option<Revision>, StoreError> {
        match std::fs::read_to_string(self.committed_path()) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Damaged {
                    dir: self.inner.dir.clone(),
                    why: format!("{COMMITTED_FILE} holds {:?}, not a revision", bounded(text)),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs `op` on the database and flushes, on the blocking pool: sled's
/// flush waits on the disk, and after an I/O error it can wait for good, so
/// the caller's timeout must stay able to fire.
async fn write_through(
    open: &Arc<Open>,
    op: impl FnOnce(&Open) -> Result<(), StoreError> + Send + 'static,
) -> Result<(), StoreError> {
    let open = Arc::clone(open);
    tokio::task::spawn_blocking(move || {
        op(&open)?;
        open.db.flush()?;
        Ok(())
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

fn bounded(s: String) -> String {
    lb_core::model::bounded(s, 32)
}

impl Store for SledStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async move {
            let open = self.db()?;
            let revision = open.revision()?;
            if let Some(marked) = self.marked_revision()? {
                if marked > revision {
                    return Err(StoreError::Damaged {
                        dir: self.inner.dir.clone(),
                        why: format!(
                            "it holds revision {revision}, but revision {marked} was committed ({COMMITTED_FILE}): its files lost commits"
                        ),
                    });
                }
            }
            let mut records = Vec::new();
            for item in open.records.iter() {
                let (k, v) = item?;
                if k.first() == Some(&META) {
                    continue;
                }
                match record::decode(&k, &v) {
                    Ok(r) => records.push(r),
                    Err(e) => tracing::warn!(
                        key = ?String::from_utf8_lossy(&k),
                        error = %e,
                        "skipping a stored record that does not read back"
                    ),
                }
            }
            Ok(Loaded { revision, records })
        })
    }

    fn next_generation(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let open = self.db()?;
            let next = read_u64(&open.meta, b"generation")?.unwrap_or(0) + 1;
            self.checked(write_through(&open, move |o| {
                o.meta.insert("generation", &next.to_be_bytes())?;
                Ok(())
            }))
            .await?;
            Ok(next)
        })
    }

    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            let _one_at_a_time = self.inner.commit.lock().await;
            let open = self.db()?;
            let current = open.revision()?;
            if writes.is_empty() {
                return Ok(current);
            }
            let revision = current + 1;
            let mut batch = sled::Batch::default();
            let mut bytes = 0;
            let mut events = Vec::with_capacity(writes.len());
            for w in writes {
                let key = record::encode_key(&w.key);
                let holds = |found: Option<Revision>| match w.expect {
                    Expect::Any => true,
                    Expect::Absent => found.is_none(),
                    Expect::Revision(r) => found == Some(r),
                };
                let found = match w.expect {
                    Expect::Any => None,
                    _ => open.revision_of(&key)?,
                };
                if !holds(found) {
                    return Err(StoreError::Conflict {
                        key: w.key,
                        expected: w.expect,
                        found,
                    });
                }
                bytes += key.len();
                match &w.value {
                    Some(r) => {
                        let value = record::encode(r, revision);
                        bytes += value.len();
                        batch.insert(key, value);
                    }
                    None => batch.remove(key),
                }
                events.push(Event {
                    revision,
                    key: w.key,
                    value: w.value,
                });
            }
            batch.insert(REVISION_KEY, &revision.to_be_bytes());
            self.check_space(bytes as u64)?;
            self.checked(write_through(&open, move |o| {
                o.records.apply_batch(batch)?;
                Ok(())
            }))
            .await?;
            // The commit is durable: a marker that cannot be written only
            // weakens the damage check at the next start.
            if let Err(e) = self.mark_committed(revision) {
                tracing::warn!(error = %e, "could not record the committed revision");
            }
            for e in events {
                // No watcher is not an error.
                let _ = self.inner.events.send(e);
            }
            Ok(revision)
        })
    }

    fn watch(&self, after: Revision) -> Result<EventStream, StoreError> {
        // Subscribe before reading the revision: a commit in between is then
        // both newer than `current` and in the stream.
        let rx = self.inner.events.subscribe();
        let current = self.db()?.revision()?;
        if after != current {
            return Err(StoreError::Compacted { after, current });
        }
        Ok(Box::pin(BroadcastStream::new(rx).map(|r| {
            r.map_err(|BroadcastStreamRecvError::Lagged(n)| StoreError::Lagged(n))
        })))
    }

    fn identity(&self) -> String {
        self.inner.id.clone()
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _one_at_a_time = self.inner.commit.lock().await;
            if self.inner.failed.load(Ordering::Acquire) {
                self.reopen().await?;
            }
            // Prove a write goes through, if there is room for one.
            self.check_space(0)?;
            let open = self.db()?;
            let revision = open.revision()?;
            self.checked(write_through(&open, move |o| {
                o.meta.insert("probe", &revision.to_be_bytes())?;
                Ok(())
            }))
            .await
        })
    }
}

impl SledStore {
    /// Refuses a commit of about `bytes` when it would leave the disk with
    /// less than `min_free` bytes (an unknown amount of free space is not a
    /// reason to refuse).
    fn check_space(&self, bytes: u64) -> Result<(), StoreError> {
        let floor = self.inner.min_free;
        if floor == 0 {
            return Ok(());
        }
        match fs2::available_space(&self.inner.dir) {
            Ok(available) if available < floor.saturating_add(bytes) => Err(StoreError::NoSpace {
                dir: self.inner.dir.clone(),
                available,
                floor,
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell the free disk space");
                Ok(())
            }
        }
    }

    /// `op`, remembering a failure: sled refuses every write after one, so
    /// the next [`Store::recover`] reopens the directory. A write whose
    /// caller gave up waiting (its future dropped) counts as failed too.
    async fn checked(
        &self,
        op: impl std::future::Future<Output = Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let was_failed = self.inner.failed.swap(true, Ordering::AcqRel);
        let result = op.await;
        if result.is_ok() && !was_failed {
            self.inner.failed.store(false, Ordering::Release);
        }
        result
    }

    /// Lets the failed opening go and reads the directory again. What the
    /// failed opening held unflushed was never acknowledged. Dropping a sled
    /// database flushes it, which after an I/O error can wait for good: it
    /// is dropped on a thread of its own, and if it keeps the directory's
    /// lock, the store stays failed with what to do.
    async fn reopen(&self) -> Result<(), StoreError> {
        let old = self
            .inner
            .open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            release(old)?;
        }
        let dir = self.inner.dir.clone();
        let open = tokio::task::spawn_blocking(move || Open::at(&dir))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(|e| match e {
                // The failed opening in this process still holds the lock
                // (another process would have had to take it meanwhile).
                StoreError::Locked { .. } => StoreError::Stuck {
                    dir: self.inner.dir.clone(),
                },
                e => e,
            })?;
        *self.inner.open.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(open));
        self.inner.failed.store(false, Ordering::Release);
        tracing::info!(dir = %self.inner.dir.display(), "store reopened after a failure");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Key, Lifetime, Record};
    use lb_core::model::InstanceSpec;
    use std::time::Duration;

    fn spec(id: &str) -> InstanceSpec {
        InstanceSpec::new("svc", id, "127.0.0.1:9").with_token()
    }

    #[test]
    fn the_lock_holder_is_found_by_device_and_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 08:02:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 5151 fd:01:1234 0 EOF\n";
        // Device fd:01 (major 253, minor 1) as a `dev_t`.
        let dev = (0xfd << 8) | 0x01;
        assert_eq!(holder_in(locks, dev, 1234, 1), Some(4242));
        assert_eq!(holder_in(locks, dev, 1234, 4242), None, "not ourselves");
        assert_eq!(holder_in(locks, dev, 99, 1), None, "another device");
        assert_eq!(holder_in(locks, (8 << 8) | 2, 99, 1), Some(77));
        assert_eq!(holder_in("garbage\n\n", dev, 1234, 1), None);
    }

    #[test]
    fn a_directory_another_opening_holds_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        // The same process holds it here: the holder is not ourselves, so
        // it is "another process" without a pid.
        match SledStore::open(dir.path()) {
            Err(e @ StoreError::Locked { .. }) => {
                let text = e.to_string();
                assert!(text.contains("is in use by another process"), "{text}");
                assert!(text.contains(&dir.path().display().to_string()), "{text}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    fn instance(id: &str) -> Record {
        Record::Instance {
            spec: spec(id),
            lifetime: Lifetime::Stream(Duration::from_secs(3)),
            owner: None,
        }
    }

    #[tokio::test]
    async fn commits_are_durable_and_numbered_and_generations_grow() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.next_generation().await.unwrap(), 1);
            let r1 = s
                .commit(vec![Write::put(instance("a")), Write::put(instance("b"))])
                .await
                .unwrap();
            let policy = Record::Policy {
                service: "svc".into(),
                policy: Box::default(),
            };
            let r2 = s
                .commit(vec![
                    Write::delete(Key::Instance(spec("b").key())),
                    Write::put(policy),
                ])
                .await
                .unwrap();
            assert_eq!((r1, r2), (1, 2));
            assert_eq!(s.commit(vec![]).await.unwrap(), 2, "nothing to commit");
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.next_generation().await.unwrap(), 2);
        let loaded = s.load().await.unwrap();
        assert_eq!(loaded.revision, 2);
        let got: Vec<(Key, Revision)> = loaded
            .records
            .iter()
            .map(|(r, rev)| (r.key(), *rev))
            .collect();
        assert_eq!(
            got,
            [
                (Key::Instance(spec("a").key()), 1),
                (Key::Policy("svc".into()), 2)
            ]
        );
    }

    #[tokio::test]
    async fn preconditions_are_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let key = Key::Instance(spec("a").key());
        let r1 = s
            .commit(vec![Write::put(instance("a")).expecting(Expect::Absent)])
            .await
            .unwrap();
        // Absent no longer holds; a stale revision does not either; and a
        // failed commit writes nothing of its batch.
        let again = s
            .commit(vec![
                Write::put(instance("b")),
                Write::put(instance("a")).expecting(Expect::Absent),
            ])
            .await;
        assert!(
            matches!(again, Err(StoreError::Conflict { found: Some(1), .. })),
            "{again:?}"
        );
        assert_eq!(s.load().await.unwrap().records.len(), 1);
        let r2 = s
            .commit(vec![
                Write::delete(key.clone()).expecting(Expect::Revision(r1))
            ])
            .await
            .unwrap();
        let stale = s
            .commit(vec![
                Write::put(instance("a")).expecting(Expect::Revision(r1))
            ])
            .await;
        assert!(matches!(
            stale,
            Err(StoreError::Conflict { found: None, .. })
        ));
        assert_eq!(r2, 2);
        assert!(s.load().await.unwrap().records.is_empty());
    }

    #[tokio::test]
    async fn watchers_see_every_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(vec![Write::put(instance("a"))]).await.unwrap();
        assert!(matches!(
            s.watch(0),
            Err(StoreError::Compacted {
                after: 0,
                current: 1
            })
        ));
        let mut w = s.watch(1).unwrap();
        s.commit(vec![Write::put(instance("b")), Write::put(instance("c"))])
            .await
            .unwrap();
        s.commit(vec![Write::delete(Key::Instance(spec("a").key()))])
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let e = w.next().await.unwrap().unwrap();
            seen.push((e.revision, e.key, e.value.is_some()));
        }
        assert_eq!(
            seen,
            [
                (2, Key::Instance(spec("b").key()), true),
                (2, Key::Instance(spec("c").key()), true),
                (3, Key::Instance(spec("a").key()), false),
            ]
        );
    }

    #[tokio::test]
    async fn a_truncated_store_is_refused_not_restored_in_part() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for batch in 0..100 {
                let writes = (0..8)
                    .map(|i| Write::put(instance(&format!("i{batch}-{i}"))))
                    .collect();
                s.commit(writes).await.unwrap();
            }
            assert_eq!(s.load().await.unwrap().records.len(), 800);
        }
        // Cut the log in half and remove sled's snapshots, as a bad copy or
        // a damaged disk would.
        let db = dir.path().join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
            {
                std::fs::remove_file(p).unwrap();
            }
        }
        let refused = match SledStore::open(dir.path()) {
            Err(e) => e,
            Ok(s) => match s.load().await {
                Ok(l) => panic!("a damaged store restored {} records", l.records.len()),
                Err(e) => e,
            },
        };
        let msg = refused.to_string();
        assert!(msg.contains("damaged") || msg.contains("corrupt"), "{msg}");
    }

    #[test]
    fn a_newer_layout_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert("layout", &99u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let e = SledStore::open(dir.path()).err().expect("refused");
        assert!(matches!(e, StoreError::NewerLayout { found: 99, .. }));
        assert!(e.to_string().contains("--data-dir"), "{e}");
    }
}
