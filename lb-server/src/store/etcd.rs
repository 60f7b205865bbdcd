//! The shared store: an etcd cluster (`--store etcd://HOST:PORT,.../PREFIX`),
//! through the `etcd-client` crate, for several lb-server replicas.
//!
//! Layout under the prefix (`/lb` unless the URL names another):
//! - `PREFIX/r/KEY`: one record per key, the key's bytes as
//!   [`record::encode_key`] writes them, the value as [`record::encode`]
//!   writes it (the revision inside it is 0: etcd's `mod_revision` is the
//!   record's revision);
//! - `PREFIX/meta/layout`, `PREFIX/meta/generation`, `PREFIX/meta/probe`:
//!   the layout version, the daemons' shared generation counter, and what
//!   [`Store::recover`] writes to prove etcd takes writes again.
//!
//! Revisions are etcd's own (cluster-wide, strictly increasing), so every
//! replica numbers the same change alike. A commit is one etcd transaction
//! (a `Txn` whose compares are the writes' [`Expect`]s: `version == 0` for
//! absent, `mod_revision == r` for a revision) and is acknowledged by etcd
//! only once a majority of its members has it (etcd's API guarantees,
//! etcd.io/docs/v3.4/learning/api_guarantees). A commit larger than etcd's
//! per-transaction limit (`--max-txn-ops`, 128 by default) is cut into
//! transactions of that size, each atomic on its own; the engine follows
//! the watch, so whatever part committed reaches every replica, this one
//! included.
//!
//! Watching is etcd's watch on `PREFIX/r/` from a revision (etcd keeps the
//! history until it is compacted: a watch from a compacted revision fails
//! with [`StoreError::Compacted`], and the follower loads again). Requests
//! ask for a leader (`require_leader`), so a member cut off from its quorum
//! fails them at once instead of serving a stale view or hanging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::record::{self, LAYOUT};
use super::{
    BoxFuture, Event, EventStream, Expect, Key, Loaded, Revision, Store, StoreError, Write,
};

/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// Records read per range request while loading.
const PAGE: i64 = 500;
/// Longest wait for one etcd request on one member before the next member
/// is tried; the engine's own bound (5 s) leaves room for a second try.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait, per member, for the write that proves etcd is back.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Events a watcher may have waiting before the watch stops reading etcd.
const WATCH_BUFFER: usize = 1024;
/// Longest prefix accepted in the URL.
const MAX_PREFIX_LEN: usize = 128;

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// The members' client addresses (`HOST:PORT`).
    pub endpoints: Vec<String>,
    /// The key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("etcd://").ok_or_else(|| {
            format!("{s:?} is not an etcd:// URL (etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")
        })?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "lb"));
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { "lb" } else { prefix };
        if prefix.len() > MAX_PREFIX_LEN
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(format!(
                "the key prefix {:?} must be at most {MAX_PREFIX_LEN} letters, digits, '-', '_', '.' or '/'",
                lb_core::model::bounded(prefix.to_string(), 64)
            ));
        }
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "{s:?} names no etcd member (etcd://HOST:PORT[,HOST:PORT...]/PREFIX)"
            ));
        }
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(format!("etcd member {e:?} needs a port (HOST:PORT)"));
            }
        }
        Ok(EtcdUrl {
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// The etcd-backed [`Store`].
#[derive(Clone)]
pub struct EtcdStore {
    /// [`Store::identity`]: `etcd:` and the id made with the prefix.
    id: String,
    members: Arc<Members>,
    url: EtcdUrl,
    /// `PREFIX/r/`: where records live.
    records: Vec<u8>,
}

/// One client per member, and the member requests go to: the one that
/// last answered (etcd's Go client pins one endpoint the same way). A
/// request that cannot reach its member, or reaches one without a leader,
/// moves to the next member and is tried there.
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Members {
    /// Runs `op` on the current member, moving on to the next while the
    /// failure is one that says "not here" (unreachable, no leader, no
    /// answer within `patience`), at most twice round the members.
    async fn call<T, F, Fut>(&self, patience: Duration, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut last = None;
        for _ in 0..2 * n {
            let i = self.current.load(Ordering::Relaxed) % n;
            let answer = tokio::time::timeout(patience, op(self.clients[i].clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(etcd_client::Error::GRpcStatus(
                        tonic::Status::deadline_exceeded(format!(
                            "etcd member {} did not answer within {patience:?}",
                            i + 1
                        )),
                    ))
                });
            match answer {
                Ok(v) => return Ok(v),
                Err(e) if elsewhere(&e) => {
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd member".into())))
    }

    /// The member requests go to now.
    fn current(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Member `i` failed: use the next one.
    fn failed(&self, i: usize) {
        let n = self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Whether `e` says another member may do better: the connection failed,
/// the member is unavailable (it has no leader, or is stopping), or it did
/// not answer in time (cut off from the others, or frozen). A request that
/// timed out may still have been applied; retrying a commit is safe all the
/// same because every write in it is a put or a delete of a whole value
/// (the same state if applied twice), though a precondition that held the
/// first time would then read as a conflict.
fn elsewhere(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

impl EtcdStore {
    /// Connects to the cluster at `url` and checks (or writes) the layout
    /// version. Fails if no member answers with a leader.
    pub async fn open(url: &EtcdUrl) -> Result<EtcdStore, StoreError> {
        let endpoints: Vec<String> = url
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // A member that stops answering (frozen, cut off) is noticed
            // within about three seconds even by an idle watch.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            clients.push(
                Client::connect([e], Some(options.clone()))
                    .await
                    .map_err(|e| etcd_error(url, e))?,
            );
        }
        let mut store = EtcdStore {
            id: String::new(),
            members: Arc::new(Members {
                clients,
                current: AtomicUsize::new(0),
            }),
            url: url.clone(),
            records: format!("{}/r/", url.prefix).into_bytes(),
        };
        store.check_layout().await?;
        store.id = format!("etcd:{}", store.make_id().await?);
        Ok(store)
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    fn meta(&self, name: &str) -> Vec<u8> {
        format!("{}/meta/{name}", self.url.prefix).into_bytes()
    }

    fn record_key(&self, key: &Key) -> Vec<u8> {
        let mut k = self.records.clone();
        k.extend_from_slice(&record::encode_key(key));
        k
    }

    fn fail(&self, e: etcd_client::Error) -> StoreError {
        etcd_error(&self.url, e)
    }

    /// Writes the layout version if the prefix is new; refuses a newer one.
    async fn check_layout(&self) -> Result<(), StoreError> {
        let key = self.meta("layout");
        let put = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), LAYOUT.to_string(), None)]);
        self.members
            .call(REQUEST_TIMEOUT, |c| {
                let put = put.clone();
                async move { c.kv_client().txn(put).await }
            })
            .await
            .map_err(|e| self.fail(e))?;
        let got = self.get(&key, None).await?;
        let found = got
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok())
            .and_then(|v| v.parse::<u32>().ok());
        match found {
            Some(found) if found > LAYOUT => Err(StoreError::NewerLayout {
                found,
                supported: LAYOUT,
            }),
            Some(_) => Ok(()),
            None => Err(StoreError::Shared {
                store: self.url.to_string(),
                why: "its layout key holds no version: another program writes under this prefix; choose another".into(),
            }),
        }
    }

    /// A range request on whichever member answers.
    async fn get(
        &self,
        key: &[u8],
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.members
            .call(REQUEST_TIMEOUT, |c| {
                let options = options.clone();
                async move { c.kv_client().get(key, options).await }
            })
            .await
            .map_err(|e| self.fail(e))
    }

    /// A transaction on whichever member answers.
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.members
            .call(REQUEST_TIMEOUT, |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await
            .map_err(|e| self.fail(e))
    }

    /// The prefix's identity: a random id written with it (by whichever
    /// replica came first), read back.
    async fn make_id(&self) -> Result<String, StoreError> {
        let key = self.meta("id");
        let mine = format!("{:016x}", rand::random::<u64>());
        let put = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), mine, None)]);
        self.txn(put).await?;
        let got = self.get(&key, None).await?;
        got.kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok())
            .filter(|v| !v.is_empty() && v.len() <= 32)
            .map(str::to_string)
            .ok_or_else(|| StoreError::Shared {
                store: self.url.to_string(),
                why: "its id key holds no id: another program writes under this prefix; choose another".into(),
            })
    }

    /// The cluster's current revision.
    async fn current(&self) -> Result<Revision, StoreError> {
        let got = self
            .get(
                &self.meta("layout"),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(revision_of(got.header()))
    }

    /// After a transaction whose compares failed: the first write whose
    /// precondition does not hold, as a conflict.
    async fn conflict(&self, writes: &[Write]) -> StoreError {
        for w in writes.iter().filter(|w| w.expect != Expect::Any) {
            let found = match self.get(&self.record_key(&w.key), None).await {
                Ok(got) => got
                    .kvs()
                    .first()
                    .map(|kv| u64::try_from(kv.mod_revision()).unwrap_or(0)),
                Err(e) => return e,
            };
            let holds = match w.expect {
                Expect::Any => true,
                Expect::Absent => found.is_none(),
                Expect::Revision(r) => found == Some(r),
            };
            if !holds {
                return StoreError::Conflict {
                    key: w.key.clone(),
                    expected: w.expect,
                    found,
                };
            }
        }
        // Changed back in between: report the first precondition.
        let w = writes.iter().find(|w| w.expect != Expect::Any);
        StoreError::Conflict {
            key: w.map_or(Key::Policy(String::new()), |w| w.key.clone()),
            expected: w.map_or(Expect::Any, |w| w.expect),
            found: None,
        }
    }

    /// One transaction of at most [`MAX_TXN_OPS`] writes.
    async fn commit_chunk(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        let mut compares = Vec::new();
        let mut ops = Vec::with_capacity(writes.len());
        for w in writes {
            let key = self.record_key(&w.key);
            match w.expect {
                Expect::Any => {}
                Expect::Absent => compares.push(Compare::version(key.clone(), CompareOp::Equal, 0)),
                Expect::Revision(r) => compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    i64::try_from(r).unwrap_or(i64::MAX),
                )),
            }
            ops.push(match &w.value {
                Some(r) => TxnOp::put(key, record::encode(r, 0), None),
                None => TxnOp::delete(key, None),
            });
        }
        let resp = self.txn(Txn::new().when(compares).and_then(ops)).await?;
        if !resp.succeeded() {
            return Err(self.conflict(writes).await);
        }
        Ok(revision_of(resp.header()))
    }
}

/// The revision in a response header (0 if there is none).
fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

fn etcd_error(url: &EtcdUrl, e: etcd_client::Error) -> StoreError {
    StoreError::Shared {
        store: url.to_string(),
        why: lb_core::model::bounded(e.to_string(), 512),
    }
}

/// A record read back: the key under the prefix, the value, its revision.
fn decode(
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
) -> Result<(super::Record, Revision), String> {
    let (record, _) = record::decode(key, value).map_err(|e| e.to_string())?;
    Ok((record, u64::try_from(mod_revision).unwrap_or(0)))
}

impl Store for EtcdStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async move {
            let end = prefix_end(&self.records);
            let mut from = self.records.clone();
            let mut revision = 0;
            let mut records = Vec::new();
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision > 0 {
                    // Every page as of the first page's revision.
                    options = options.with_revision(i64::try_from(revision).unwrap_or(0));
                }
                let got = self.get(&from, Some(options)).await?;
                if revision == 0 {
                    revision = revision_of(got.header());
                }
                for item in got.kvs() {
                    let key = &item.key()[self.records.len().min(item.key().len())..];
                    match decode(key, item.value(), item.mod_revision()) {
                        Ok(r) => records.push(r),
                        Err(e) => tracing::warn!(
                            key = ?String::from_utf8_lossy(key),
                            error = %e,
                            "skipping a stored record that does not read back"
                        ),
                    }
                }
                match got.kvs().last() {
                    Some(last) if got.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
            Ok(Loaded { revision, records })
        })
    }

    fn next_generation(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let key = self.meta("generation");
            loop {
                let got = self.get(&key, None).await?;
                let (current, compare) = match got.kvs().first() {
                    Some(item) => (
                        std::str::from_utf8(item.value())
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, item.mod_revision()),
                    ),
                    None => (0, Compare::version(key.clone(), CompareOp::Equal, 0)),
                };
                let next = current + 1;
                let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                    key.clone(),
                    next.to_string(),
                    None,
                )]);
                // Another replica took this one: read again.
                if self.txn(txn).await?.succeeded() {
                    return Ok(next);
                }
            }
        })
    }

    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return self.current().await;
            }
            let mut revision = 0;
            for chunk in writes.chunks(MAX_TXN_OPS) {
                revision = self.commit_chunk(chunk).await?;
            }
            Ok(revision)
        })
    }

    fn watch(&self, after: Revision) -> Result<EventStream, StoreError> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.forward(after, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.meta("probe");
            self.members
                .call(PROBE_TIMEOUT, |c| {
                    let key = key.clone();
                    async move { c.kv_client().put(key, "", None).await }
                })
                .await
                .map(|_| ())
                .map_err(|e| self.fail(e))
        })
    }

    fn identity(&self) -> String {
        self.id.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn atomic_writes(&self) -> Option<usize> {
        Some(MAX_TXN_OPS)
    }
}

impl EtcdStore {
    /// Sends every change after `after` to `tx` until etcd fails or the
    /// receiver is gone.
    async fn forward(
        &self,
        after: Revision,
        tx: &mpsc::Sender<Result<Event, StoreError>>,
    ) -> Result<(), StoreError> {
        let start = i64::try_from(after.saturating_add(1)).unwrap_or(i64::MAX);
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let (member, client) = self.members.current();
        let fail = |e| {
            self.members.failed(member);
            self.fail(e)
        };
        let mut stream = client
            .watch_client()
            .watch(self.records.clone(), Some(options))
            .await
            .map_err(fail)?;
        loop {
            let Some(resp) = stream.message().await.map_err(fail)? else {
                self.members.failed(member);
                return Err(StoreError::Shared {
                    store: self.url.to_string(),
                    why: "the watch ended".into(),
                });
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    after,
                    current: u64::try_from(resp.compact_revision()).unwrap_or(0),
                });
            }
            if resp.canceled() {
                return Err(StoreError::Shared {
                    store: self.url.to_string(),
                    why: format!(
                        "the watch was cancelled: {}",
                        lb_core::model::bounded(resp.cancel_reason().to_string(), 256)
                    ),
                });
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = &kv.key()[self.records.len().min(kv.key().len())..];
                let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
                // A delete carries the key alone (version 0); a put, the
                // record (its version counts puts since creation, from 1).
                let event = if kv.version() == 0 {
                    record::decode_key(key).map(|key| Event {
                        revision,
                        key,
                        value: None,
                    })
                } else {
                    match decode(key, kv.value(), kv.mod_revision()) {
                        Ok((record, _)) => Some(Event {
                            revision,
                            key: record.key(),
                            value: Some(record),
                        }),
                        Err(e) => {
                            tracing::warn!(
                                key = ?String::from_utf8_lossy(key),
                                error = %e,
                                "ignoring a change to a record that does not read back"
                            );
                            None
                        }
                    }
                };
                if let Some(event) = event {
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The smallest key after every key starting with `prefix` (etcd's range
/// end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_a_prefix() {
        let u: EtcdUrl = "etcd://127.0.0.1:2379,127.0.0.1:22379/lb/prod"
            .parse()
            .unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert_eq!(u.prefix, "/lb/prod");
        assert_eq!(
            u.to_string(),
            "etcd://127.0.0.1:2379,127.0.0.1:22379/lb/prod"
        );
        let u: EtcdUrl = "etcd://[::1]:2379".parse().unwrap();
        assert_eq!((u.endpoints.len(), u.prefix.as_str()), (1, "/lb"));
        for (bad, why) in [
            ("http://127.0.0.1:2379/lb", "not an etcd:// URL"),
            ("etcd:///lb", "names no etcd member"),
            ("etcd://127.0.0.1/lb", "needs a port"),
            ("etcd://127.0.0.1:2379/l b", "must be at most"),
        ] {
            let e = bad.parse::<EtcdUrl>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("etcd://h:1/{}", "p".repeat(10_000));
        assert!(
            long.parse::<EtcdUrl>().unwrap_err().len() < 300,
            "quotes a bounded prefix"
        );
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/lb/r/"), b"/lb/r0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
    }
}
