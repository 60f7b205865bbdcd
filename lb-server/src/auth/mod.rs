//! Who is calling, and whether they may: bearer tokens and client
//! certificates turned into a [`Caller`] with a grant (roles and scopes are
//! `lb_core::access`), the per-token limits, and the counters `/metrics`
//! shows.
//!
//! - [`token`]: the token format, digests, the generated admin token.
//! - [`layer`]: the tower layer in front of every gRPC service: it
//!   authenticates each call, refuses admin calls the caller's role does not
//!   cover, applies the per-token limits, and ends a revoked token's streams.
//!   Calls whose service is in the request (register, subscribe) are checked
//!   by their handler with [`Caller::allow`].
//!
//! Authentication is on when an admin token exists (`--admin-token-file`, or
//! the one `--auth` generates in the data directory); then every call needs
//! a token or a bound certificate. Off (a loopback daemon started without
//! either), every caller is an anonymous admin.

pub mod layer;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_core::access::{Denied, Grant, Need, Pattern, Role};
use tokio::sync::watch;
use tonic::Status;

pub use token::TokenRecord;

/// Limits on what one token (or, with authentication off, everyone
/// together for the admin write rate) may hold open or do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLimits {
    /// Connections with a call of the token in flight.
    pub connections: usize,
    /// Calls (streams included) of the token in flight.
    pub streams: usize,
    /// Admin changes per second (and the burst).
    pub admin_writes_per_sec: f64,
}

/// Connections one token may use at once, unless configured: room for a
/// fleet of backends sharing a deploy token.
pub const DEFAULT_CONNECTIONS_PER_TOKEN: usize = 4096;
/// Calls one token may have open at once, unless configured.
pub const DEFAULT_STREAMS_PER_TOKEN: usize = 65_536;
/// Admin changes per second per token, unless configured (an operator or a
/// deploy script makes a few; a runaway loop makes thousands).
pub const DEFAULT_ADMIN_WRITE_RATE: f64 = 50.0;

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits {
            connections: DEFAULT_CONNECTIONS_PER_TOKEN,
            streams: DEFAULT_STREAMS_PER_TOKEN,
            admin_writes_per_sec: DEFAULT_ADMIN_WRITE_RATE,
        }
    }
}

/// The daemon's authentication state: the tokens, the bootstrap admin
/// token, and the counters.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    table: RwLock<Table>,
    grpclb_anonymous: Vec<Pattern>,
    limits: TokenLimits,
    /// The admin write bucket of callers without a token entry.
    shared_bucket: Mutex<Bucket>,
    denied: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    limited: Mutex<BTreeMap<&'static str, u64>>,
    last_log: AtomicU64,
    started: Instant,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<String, Arc<Entry>>,
    by_identity: HashMap<String, Arc<Entry>>,
    /// The admin token from `--admin-token-file` or the data directory.
    bootstrap: Option<Arc<Entry>>,
}

/// One token, live: its record, its revocation signal and its counters.
#[derive(Debug)]
pub struct Entry {
    /// The record.
    pub record: TokenRecord,
    revoked: watch::Sender<bool>,
    last_used_ms: AtomicU64,
    streams: AtomicUsize,
    conns: Mutex<HashMap<u64, usize>>,
    bucket: Mutex<Bucket>,
}

impl Entry {
    fn new(record: TokenRecord, rate: f64) -> Arc<Entry> {
        Arc::new(Entry {
            record,
            revoked: watch::Sender::new(false),
            last_used_ms: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            bucket: Mutex::new(Bucket::full(rate)),
        })
    }

    /// When it last authenticated a call (ms since the epoch; 0: not since
    /// the daemon started).
    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Resolves once the token is revoked.
    pub fn revoked(&self) -> watch::Receiver<bool> {
        self.revoked.subscribe()
    }
}

/// A token bucket (RFC 2697's single-rate meter, without colours).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn full(rate: f64) -> Bucket {
        Bucket {
            tokens: rate.max(1.0),
            rate,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate.max(1.0));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Auth {
    /// Authentication off: every caller is an anonymous admin.
    pub fn open(limits: TokenLimits) -> Auth {
        Auth::new(false, Vec::new(), limits)
    }

    /// Authentication on, with `bootstrap` as an admin token (its whole
    /// text) if given, and anonymous grpclb reads of `grpclb_anonymous`.
    pub fn enabled(
        bootstrap: Option<&str>,
        grpclb_anonymous: Vec<Pattern>,
        limits: TokenLimits,
    ) -> Auth {
        let auth = Auth::new(true, grpclb_anonymous, limits);
        if let Some(text) = bootstrap {
            let record = TokenRecord {
                id: "bootstrap".into(),
                name: "admin".into(),
                grant: Grant::admin(),
                hash: token::hash(text),
                identity: None,
                created_ms: 0,
            };
            auth.write().bootstrap = Some(Entry::new(record, limits.admin_writes_per_sec));
        }
        auth
    }

    fn new(enabled: bool, grpclb_anonymous: Vec<Pattern>, limits: TokenLimits) -> Auth {
        Auth {
            enabled,
            table: RwLock::new(Table::default()),
            grpclb_anonymous,
            limits,
            shared_bucket: Mutex::new(Bucket::full(limits.admin_writes_per_sec)),
            denied: Mutex::new(BTreeMap::new()),
            limited: Mutex::new(BTreeMap::new()),
            last_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Whether some services' grpclb lists are served without a token
    /// (`--grpclb-anonymous`).
    pub fn grpclb_is_public(&self) -> bool {
        !self.grpclb_anonymous.is_empty()
    }

    /// Whether callers must authenticate.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The per-token limits.
    pub fn limits(&self) -> TokenLimits {
        self.limits
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `records` the tokens: new ones start, kept ones keep their
    /// counters, and the streams of removed ones are ended (revoked).
    pub fn replace(&self, records: impl IntoIterator<Item = TokenRecord>) {
        let rate = self.limits.admin_writes_per_sec;
        let mut t = self.write();
        let mut by_id = HashMap::new();
        for record in records {
            let entry = match t.by_id.get(&record.id) {
                Some(e) if e.record == record => Arc::clone(e),
                _ => Entry::new(record, rate),
            };
            by_id.insert(entry.record.id.clone(), entry);
        }
        for (id, old) in &t.by_id {
            if by_id.get(id).is_none_or(|e| !Arc::ptr_eq(e, old)) {
                old.revoked.send_replace(true);
            }
        }
        t.by_identity = by_id
            .values()
            .filter_map(|e| e.record.identity.clone().map(|i| (i, Arc::clone(e))))
            .collect();
        t.by_id = by_id;
    }

    /// The live tokens (not the bootstrap admin token), for `token list`.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<_> = self.read().by_id.values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// Who presents `bearer` (a token) or `identity` (a verified client
    /// certificate's identity). With authentication off, an anonymous admin.
    pub fn authenticate(
        self: &Arc<Self>,
        bearer: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Caller, Status> {
        if !self.enabled {
            return Ok(Caller {
                auth: Arc::clone(self),
                name: "anonymous".into(),
                grant: Grant::admin(),
                entry: None,
                anonymous: true,
            });
        }
        let entry = match (bearer, identity) {
            (Some(text), _) => self.find_token(text).ok_or_else(|| {
                self.deny("unknown", "bad_token");
                Status::unauthenticated(
                    "the bearer token is not valid (revoked, mistyped, or from another daemon)",
                )
            })?,
            (None, Some(id)) => match self.read().by_identity.get(id).cloned() {
                Some(e) => e,
                None => {
                    self.deny("unknown", "unknown_identity");
                    return Err(Status::unauthenticated(format!(
                        "the client certificate's identity {:?} is bound to no role (bind it with `ctl token create --identity`)",
                        lb_core::model::bounded(id.to_string(), 128)
                    )));
                }
            },
            (None, None) => {
                return Ok(Caller {
                    auth: Arc::clone(self),
                    name: "anonymous".into(),
                    grant: Grant {
                        role: Role::Client,
                        services: self.grpclb_anonymous.clone(),
                    },
                    entry: None,
                    anonymous: true,
                })
            }
        };
        entry.last_used_ms.store(unix_ms(), Ordering::Relaxed);
        Ok(Caller {
            auth: Arc::clone(self),
            name: entry.record.name.clone(),
            grant: entry.record.grant.clone(),
            entry: Some(entry),
            anonymous: false,
        })
    }

    fn find_token(&self, text: &str) -> Option<Arc<Entry>> {
        let t = self.read();
        if let Some((id, secret)) = token::split(text) {
            if let Some(e) = t.by_id.get(id).filter(|e| e.record.verifies(secret)) {
                return Some(Arc::clone(e));
            }
        }
        t.bootstrap
            .as_ref()
            .filter(|b| b.record.verifies(text))
            .cloned()
    }

    /// Counts a refusal (`lb_auth_denied_total{role,reason}`) and logs it,
    /// at most once a second.
    fn deny(&self, role: &'static str, reason: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((role, reason))
            .or_default() += 1;
        if self.log_allowed() {
            tracing::warn!(role, reason, "call refused (authentication or authorization); further refusals this second are counted, not logged");
        }
    }

    /// Counts a limit that bit (`lb_limit_refused_total{limit}`).
    pub fn limited(&self, limit: &'static str) {
        self.limited_because(limit, None);
    }

    /// [`Auth::limited`], logging `why` (the peer and the error) too.
    pub fn limited_because(&self, limit: &'static str, why: Option<&str>) {
        *self
            .limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(limit)
            .or_default() += 1;
        if self.log_allowed() {
            tracing::warn!(
                limit,
                why = why.unwrap_or(""),
                "limit reached; further refusals this second are counted, not logged"
            );
        }
    }

    fn log_allowed(&self) -> bool {
        let second = self.started.elapsed().as_secs() + 1;
        self.last_log.swap(second, Ordering::Relaxed) != second
    }

    /// `(role, reason) → count` of refused calls.
    pub fn denied_counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `limit → count` of calls and connections refused by a limit.
    pub fn limited_counts(&self) -> BTreeMap<&'static str, u64> {
        self.limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether an admin change may go ahead now (the token's bucket, or
    /// the shared one).
    fn take_admin_write(&self, entry: Option<&Entry>, now: Instant) -> bool {
        let bucket = match entry {
            Some(e) => &e.bucket,
            // Without authentication there is nobody to limit apart from
            // everyone: the open loopback mode is not rate-limited.
            None if !self.enabled => return true,
            None => &self.shared_bucket,
        };
        bucket.lock().unwrap_or_else(|e| e.into_inner()).take(now)
    }
}

/// An authenticated caller, in every request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    auth: Arc<Auth>,
    /// The token's name (or `anonymous`), for audit logs.
    pub name: String,
    /// What it may do.
    pub grant: Grant,
    entry: Option<Arc<Entry>>,
    anonymous: bool,
}

impl Caller {
    /// Refuses `need` if the grant does not cover it: `permission_denied`
    /// naming the missing role or scope (never the token), or, for an
    /// anonymous caller, `unauthenticated`.
    pub fn allow(&self, need: &Need) -> Result<(), Status> {
        match self.grant.allows(need) {
            Ok(()) => Ok(()),
            Err(_) if self.anonymous => {
                self.auth.deny("anonymous", "no_token");
                Err(Status::unauthenticated(NEEDS_TOKEN))
            }
            Err(d) => {
                self.auth.deny(self.grant.role.name(), d.reason());
                Err(denied(&d))
            }
        }
    }

    /// The token's revocation signal, if it is a token.
    pub fn revoked(&self) -> Option<watch::Receiver<bool>> {
        self.entry.as_ref().map(|e| e.revoked())
    }

    /// Who, for audit log lines.
    pub fn who(&self) -> &str {
        &self.name
    }

    /// The name an instance this caller registers is owned by: its
    /// token's, unless it is an admin (or nobody authenticates).
    pub fn owner(&self) -> Option<String> {
        (self.entry.is_some() && self.grant.role != Role::Admin).then(|| self.name.clone())
    }

    /// Whom client statistics from this caller count as
    /// ([`lb_core::evidence`]): its credential — the token, or the
    /// certificate identity bound to one — when the daemon authenticates, so
    /// that one credential is one witness however many `client_id`s it
    /// claims. `None` when nobody authenticates (the declared `client_id`
    /// counts then).
    pub fn witness(&self) -> Option<String> {
        self.entry
            .as_ref()
            .map(|e| format!("token:{}", e.record.name))
    }

    /// Counts a limit that bit for this caller's call.
    pub fn limited(&self, limit: &'static str) {
        self.auth.limited(limit);
    }

    /// A caller with every right and no token, for in-process use.
    pub fn internal(auth: Arc<Auth>) -> Caller {
        Caller {
            auth,
            name: "internal".into(),
            grant: Grant::admin(),
            entry: None,
            anonymous: false,
        }
    }
}

/// What every request knows of its connection (the accept loop in
/// [`crate::listen`] puts it in each request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique within the daemon's life.
    pub id: u64,
    /// The peer.
    pub remote: Option<std::net::SocketAddr>,
    /// The verified client certificate's identity (mTLS), if any.
    pub identity: Option<String>,
}

/// What an anonymous caller is told where a token is needed.
pub(crate) const NEEDS_TOKEN: &str = "this call needs a token: send `authorization: Bearer <token>` (or a client certificate bound to a role)";

/// The status for a refused grant.
fn denied(d: &Denied) -> Status {
    Status::permission_denied(d.to_string())
}

/// The caller of `req`, as the auth layer put it there; without the layer
/// (in-process use), an internal admin.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<&Caller> {
    req.extensions().get::<Caller>()
}

/// Refuses `need` for the caller of `req` (no caller: no layer in front,
/// everything allowed).
pub fn require<T>(req: &tonic::Request<T>, need: &Need) -> Result<(), Status> {
    match caller(req) {
        Some(c) => c.allow(need),
        None => Ok(()),
    }
}

/// How long a refused-call log line silences the next ones.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, role: Role, services: &[&str]) -> (String, TokenRecord) {
        let pats = services
            .iter()
            .map(|s| Pattern::parse(s, "s").unwrap())
            .collect();
        token::mint(name, Grant::new(role, pats).unwrap(), 1).unwrap()
    }

    #[test]
    fn tokens_authenticate_to_their_grant_and_revocation_ends_them() {
        let auth = Arc::new(Auth::enabled(None, vec![], TokenLimits::default()));
        let (text, r) = rec("shop-deploy", Role::Backend, &["shop-*"]);
        auth.replace([r.clone()]);
        let c = auth.authenticate(Some(&text), None).unwrap();
        assert_eq!(c.name, "shop-deploy");
        assert!(c.allow(&Need::Backend("shop-a".into())).is_ok());
        let e = c.allow(&Need::Backend("billing".into())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(!e.message().contains(&text), "never quotes the token");
        let revoked = c.revoked().unwrap();
        auth.replace([]);
        assert!(*revoked.borrow());
        let e = auth.authenticate(Some(&text), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.denied_counts().get(&("backend", "scope")), Some(&1));
        assert_eq!(
            auth.denied_counts().get(&("unknown", "bad_token")),
            Some(&1)
        );
    }

    #[test]
    fn anonymous_callers_get_what_is_public_and_nothing_else() {
        let public = vec![Pattern::parse("pub-*", "s").unwrap()];
        let auth = Arc::new(Auth::enabled(
            Some("s3cret-admin-token"),
            public,
            TokenLimits::default(),
        ));
        let anon = auth.authenticate(None, None).unwrap();
        assert!(anon.allow(&Need::Client("pub-x".into())).is_ok());
        let e = anon.allow(&Need::Client("shop".into())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let admin = auth.authenticate(Some("s3cret-admin-token"), None).unwrap();
        assert!(admin.allow(&Need::AdminWrite).is_ok());
        assert!(auth.authenticate(Some("s3cret-admin-tokeN"), None).is_err());
    }

    #[test]
    fn kept_tokens_keep_their_counters_across_a_replace() {
        let auth = Arc::new(Auth::enabled(None, vec![], TokenLimits::default()));
        let (a, ra) = rec("a", Role::Client, &["*"]);
        let (_, rb) = rec("b", Role::Client, &["*"]);
        auth.replace([ra.clone()]);
        let ca = auth.authenticate(Some(&a), None).unwrap();
        let revoked = ca.revoked().unwrap();
        auth.replace([ra, rb]);
        assert!(!*revoked.borrow(), "a kept token is not revoked");
        assert_eq!(auth.entries().len(), 2);
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut b = Bucket::full(2.0);
        let t0 = Instant::now();
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
    }
}
