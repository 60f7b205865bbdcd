//! The embedded store: [`sled`] under `--data-dir`, the default.
//!
//! Trees: `records` holds every record under its key (see [`super::record`])
//! and the revision counter; `meta` holds the layout version and the
//! daemon's generation. A commit checks its preconditions, applies its
//! writes and the new revision as one atomic sled batch, flushes, and only
//! then tells watchers: one commit at a time, so revisions and events are in
//! order. The engine commits once per batch of commands (group commit).
//!
//! Watching: sled is opened by one process at a time (its directory lock),
//! so every change comes through [`Store::commit`] here and an in-process
//! broadcast is a complete change feed. It keeps no history: a watch can
//! start at the current revision only.

use std::path::Path;
use std::sync::Arc;

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

/// The sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    /// Held for a whole commit: revisions are assigned, written, flushed and
    /// announced in order.
    commit: Mutex<()>,
    events: broadcast::Sender<Event>,
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, migrating a directory of the
    /// first layout.
    ///
    /// If the directory's lock is held (another lb-server uses it, or a
    /// previous one in this process is still letting go), retries for up to
    /// two seconds before giving up with that error.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let mut tries = 0;
        let db = loop {
            // No background flusher: every acknowledged write is flushed
            // explicitly, and a flusher thread would hold the directory lock
            // for a moment after the store is dropped.
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(e) if tries < 40 && e.to_string().contains("could not acquire lock") => {
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
        let (events, _) = broadcast::channel(WATCH_BACKLOG);
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                records,
                meta,
                commit: Mutex::new(()),
                events,
            }),
        })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(read_u64(&self.inner.records, REVISION_KEY)?.unwrap_or(0))
    }

    /// The revision that last wrote `key`, if it holds a record (0 for one
    /// that does not decode).
    fn revision_of(&self, key: &[u8]) -> Result<Option<Revision>, StoreError> {
        Ok(self
            .inner
            .records
            .get(key)?
            .map(|v| record::revision(&v).unwrap_or(0)))
    }
}

impl Store for SledStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async move {
            let revision = self.revision()?;
            let mut records = Vec::new();
            for item in self.inner.records.iter() {
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
            let next = read_u64(&self.inner.meta, b"generation")?.unwrap_or(0) + 1;
            self.inner.meta.insert("generation", &next.to_be_bytes())?;
            self.inner.db.flush_async().await?;
            Ok(next)
        })
    }

    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            let _one_at_a_time = self.inner.commit.lock().await;
            let current = self.revision()?;
            if writes.is_empty() {
                return Ok(current);
            }
            let revision = current + 1;
            let mut batch = sled::Batch::default();
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
                    _ => self.revision_of(&key)?,
                };
                if !holds(found) {
                    return Err(StoreError::Conflict {
                        key: w.key,
                        expected: w.expect,
                        found,
                    });
                }
                match &w.value {
                    Some(r) => batch.insert(key, record::encode(r, revision)),
                    None => batch.remove(key),
                }
                events.push(Event {
                    revision,
                    key: w.key,
                    value: w.value,
                });
            }
            batch.insert(REVISION_KEY, &revision.to_be_bytes());
            self.inner.records.apply_batch(batch)?;
            self.inner.db.flush_async().await?;
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
        let current = self.revision()?;
        if after != current {
            return Err(StoreError::Compacted { after, current });
        }
        Ok(Box::pin(BroadcastStream::new(rx).map(|r| {
            r.map_err(|BroadcastStreamRecvError::Lagged(n)| StoreError::Lagged(n))
        })))
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

    fn instance(id: &str) -> Record {
        Record::Instance {
            spec: spec(id),
            lifetime: Lifetime::Stream(Duration::from_secs(3)),
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
