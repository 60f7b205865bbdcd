//! Durable state behind one trait, [`Store`]: what the daemon must not lose
//! (registrations, static instances, policies, operator overrides, routing
//! rules and cluster modes) and its generation counter.
//!
//! The trait is shaped for replication by watching, as etcd offers it, not
//! only for get and put:
//! - every [`Store::commit`] is atomic and durable when it returns, and gets
//!   the next [`Revision`]; each record remembers the revision that last
//!   wrote it;
//! - a [`Write`] may carry a precondition ([`Expect`]: absent, or last
//!   written at a given revision), checked atomically with the commit
//!   (compare-and-set; etcd's transaction compare);
//! - [`Store::watch`] yields every committed change after a revision, in
//!   revision order ([`Event`]), so a replica can follow changes made
//!   elsewhere; [`Store::load`] gives the state at a revision to start from.
//!
//! A sled store belongs to one daemon (its directory lock sees to it); an
//! etcd store is shared by replicas ([`Store::shared`]), and each replica's
//! engine follows its watch to apply the others' changes (`engine::follow`).
//! The engine writes unconditionally (the last write to a record wins) and
//! applies its own changes directly.
//!
//! Records are this module's own types ([`Record`], domain values), encoded
//! by [`record`] in a versioned storage format that no wire type appears in.
//!
//! # Layout
//! - [`record`]: the storage format (schema 2) and its conversions.
//! - [`sled`]: the embedded implementation, the default.
//! - [`etcd`]: the shared implementation, for several replicas.
//! - `migrate`: opens data directories of the first layout (schema 1).

pub mod etcd;
pub mod record;
pub mod sled;

mod migrate;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use lb_core::cluster::ClusterConfig;
use lb_core::model::{InstanceKey, InstanceSpec};
use lb_core::policy::ServicePolicy;
use lb_core::registry::Override;
use lb_core::routing::Rule;
use tokio_stream::Stream;

pub use self::etcd::{EtcdStore, EtcdUrl};
pub use self::sled::SledStore;

/// A position in the store's history: each commit gets the next one.
pub type Revision = u64;

/// A future a store returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of changes a store yields.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Why the store could not do what was asked. Changes that depended on it
/// are refused with `unavailable`; check the disk under `--data-dir`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (an I/O error, corruption, or the directory
    /// is locked by another lb-server).
    #[error("storage error: {0}")]
    Sled(#[from] ::sled::Error),
    /// A write's precondition did not hold: someone else changed the record
    /// first. Read it again and retry.
    #[error("{key:?} changed concurrently (expected {expected:?}, found revision {found:?})")]
    Conflict {
        /// The record.
        key: Key,
        /// What the write expected.
        expected: Expect,
        /// The revision that last wrote it (`None`: absent).
        found: Option<Revision>,
    },
    /// The shared store (etcd) failed or cannot be reached with a quorum:
    /// changes are refused until it answers again; what this replica knows
    /// is still served.
    #[error("the shared store {store} is unavailable (is a majority of its members up and reachable?): {why}")]
    Shared {
        /// The store's URL.
        store: String,
        /// What failed.
        why: String,
    },
    /// A watch asked for changes the store no longer keeps (or never kept):
    /// load the state again and watch from its revision.
    #[error(
        "changes after revision {after} are not available (the store is at {current}); load again"
    )]
    Compacted {
        /// The revision asked for.
        after: Revision,
        /// The store's revision.
        current: Revision,
    },
    /// A watcher fell too far behind and missed changes: load again.
    #[error("the watch fell behind by {0} changes; load again")]
    Lagged(u64),
    /// The files of the store failed (a full disk, an I/O error): changes
    /// are refused until writes succeed again.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The store is being reopened after a failure: retry shortly.
    #[error("the store is being reopened after a failure")]
    Reopening,
    /// The disk is (nearly) full: commits are refused before they write, and
    /// accepted again once space is freed.
    #[error(
        "only {} free on the disk of {dir:?}, below the {} kept free (--store-min-free): free some space",
        lb_core::size::approx(*available),
        lb_core::size::show(*floor)
    )]
    NoSpace {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Bytes free.
        available: u64,
        /// Bytes kept free.
        floor: u64,
    },
    /// After a failed write the store's files are still held by the failed
    /// opening (sled cannot let go of them): only a restart reopens them.
    /// Everything acknowledged is on disk.
    #[error("the store under {dir:?} failed and its files are still held by the failed opening: restart lb-server to reopen them (every acknowledged change is on disk)")]
    Stuck {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// The store's files do not hold what was committed to them (truncated,
    /// replaced by an older copy): it is refused rather than served in part.
    /// Restore the directory from a backup; to accept what it holds, remove
    /// the file named in the message and start again.
    #[error("the store under {dir:?} is damaged: {why}")]
    Damaged {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another process (another lb-server, as a rule) holds the data
    /// directory's lock: stop it, or give this daemon another `--data-dir`.
    #[error("the data directory {} is in use by {}: stop it, or give this daemon another --data-dir", dir.display(), holder.as_ref().map_or_else(|| "another process".to_string(), |h| h.to_string()))]
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The process holding it, when it can be found.
        holder: Option<sled::Holder>,
    },
    /// The directory was written by a newer lb-server, in a layout this one
    /// cannot read: run that version, or point `--data-dir` elsewhere.
    #[error("the store is in layout version {found}, newer than this lb-server reads ({supported}); run the lb-server that wrote it, or use another --data-dir")]
    NewerLayout {
        /// The directory's layout version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
}

/// What is stored, by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An instance's registration (or a static instance).
    Instance(InstanceKey),
    /// A service's policy.
    Policy(String),
    /// An operator's override of an instance.
    Override(InstanceKey),
    /// A service's routing rules and cluster modes.
    Routing(String),
    /// An access token, by its id.
    Token(String),
}

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A registration, and what keeps it alive.
    Instance {
        /// What registered.
        spec: InstanceSpec,
        /// How it stays registered.
        lifetime: Lifetime,
        /// The name of the token that registered it (`None`: registered
        /// without authentication, or by an admin): another token cannot
        /// take it over.
        owner: Option<String>,
    },
    /// A service's policy.
    Policy {
        /// The service.
        service: String,
        /// Its policy (boxed: by far the largest record).
        policy: Box<ServicePolicy>,
    },
    /// An operator's settings for an instance (never the default, which is
    /// stored as no record).
    Override {
        /// The instance.
        key: InstanceKey,
        /// The settings.
        over: Override,
    },
    /// A service's routing settings (never both empty and default, which is
    /// stored as no record).
    Routing {
        /// The service.
        service: String,
        /// Rules, in order.
        rules: Vec<Rule>,
        /// Cluster modes.
        cluster: ClusterConfig,
    },
    /// An access token (its digest, never its secret).
    Token(crate::auth::TokenRecord),
}

impl Record {
    /// The record's key.
    pub fn key(&self) -> Key {
        match self {
            Record::Instance { spec, .. } => Key::Instance(spec.key()),
            Record::Policy { service, .. } => Key::Policy(service.clone()),
            Record::Override { key, .. } => Key::Override(key.clone()),
            Record::Routing { service, .. } => Key::Routing(service.clone()),
            Record::Token(t) => Key::Token(t.id.clone()),
        }
    }
}

/// How a stored instance stays registered, which decides how long it is
/// kept after a restart before its backend must renew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// A `ReportLoad` stream with this TTL: after a restart, kept for the
    /// restore grace (every stream broke; a live backend reconnects at once).
    Stream(Duration),
    /// A `Register` lease with this TTL: after a restart, kept for the
    /// larger of the grace and the TTL (the lease may have just been renewed).
    Lease(Duration),
    /// An operator's static instance: never expires.
    Static,
}

/// A write's precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// None: write whatever is there.
    #[default]
    Any,
    /// The key holds nothing.
    Absent,
    /// The key was last written at this revision.
    Revision(Revision),
}

/// One change in a commit: put `value` at `key`, or delete it (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// What changes.
    pub key: Key,
    /// The new value; `None` deletes.
    pub value: Option<Record>,
    /// What must hold first.
    pub expect: Expect,
}

impl Write {
    /// Puts `record`, whatever was there.
    pub fn put(record: Record) -> Write {
        Write {
            key: record.key(),
            value: Some(record),
            expect: Expect::Any,
        }
    }

    /// Deletes `key`, if it is there.
    pub fn delete(key: Key) -> Write {
        Write {
            key,
            value: None,
            expect: Expect::Any,
        }
    }

    /// The same write, only if `expect` holds.
    pub fn expecting(mut self, expect: Expect) -> Write {
        self.expect = expect;
        self
    }
}

/// A committed change, as watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The commit it was part of.
    pub revision: Revision,
    /// What changed.
    pub key: Key,
    /// The new value; `None`: deleted.
    pub value: Option<Record>,
}

/// Everything stored, as of one revision.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The revision the records are as of.
    pub revision: Revision,
    /// Every record that decodes and validates, with the revision that last
    /// wrote it. (Records that do not are skipped with a warning: written by
    /// a broken or newer build, they must not be served.)
    pub records: Vec<(Record, Revision)>,
}

/// Durable storage for the engine.
pub trait Store: Send + Sync {
    /// Everything stored, and the revision it is as of.
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>>;

    /// Increments and durably records the daemon's generation (plan
    /// versions start above every version of earlier generations).
    fn next_generation(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Applies `writes` atomically, all or none, if every precondition holds,
    /// and makes them durable before returning the commit's revision. An
    /// empty commit changes nothing and returns the current revision.
    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Revision, StoreError>>;

    /// Every change committed after revision `after`, in order. A store that
    /// no longer has them fails with [`StoreError::Compacted`]; a watcher
    /// that falls behind gets [`StoreError::Lagged`] and should load again.
    fn watch(&self, after: Revision) -> Result<EventStream, StoreError>;

    /// After a failed commit: whatever it takes to write again (sled: reopen
    /// the directory), then a write that proves it. `Ok` means commits can
    /// succeed again; what failed before was never acknowledged.
    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The store's identity, fixed when it was created (a random id kept
    /// in it): replicas sharing a store see the same one, and revisions of
    /// one identity are comparable (`ServerList.state_id`).
    fn identity(&self) -> String;

    /// Whether other daemons write this store too (etcd): the engine then
    /// follows [`Store::watch`] and applies their changes. A store only one
    /// daemon opens (sled) sees nothing but its own commits.
    fn shared(&self) -> bool {
        false
    }

    /// The most writes one commit lands in one transaction (one revision);
    /// a larger commit is split into several, each atomic. `None`: any
    /// commit is one transaction.
    fn atomic_writes(&self) -> Option<usize> {
        None
    }
}
