//! Daemon settings (built by `main.rs` from flags; tests build them directly),
//! and [`file`]: the flags in a TOML file (`--config`).

pub mod file;

use std::path::PathBuf;
use std::time::Duration;

use lb_core::policy::{PolicyKind, ServicePolicy, DEFAULT_MAX_LIST_LEN};
use lb_core::quota::Quotas;
use lb_core::DEFAULT_REPORT_INTERVAL;

/// Largest request message decoded, unless configured: requests are small
/// (a registration with every label is about 20 KB; client stats at most a
/// few hundred KB), so a quarter of gRPC's 4 MiB default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Concurrent streams per connection, unless configured (nginx's
/// `http2_max_concurrent_streams` is 128; a client opens one stream per
/// service it follows).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long a new stream may take to send its first message, unless
/// configured (a client's first message goes out with the stream).
pub const DEFAULT_FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--xds-ack-timeout`.
pub const DEFAULT_XDS_ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent subscriptions of one client id, unless configured.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 256;

/// Where the durable state lives (`--store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded sled store under `--data-dir` (one daemon).
    #[default]
    Sled,
    /// An etcd cluster shared by several replicas.
    Etcd(crate::store::EtcdUrl),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sled" {
            return Ok(StoreChoice::Sled);
        }
        if s.starts_with("etcd://") {
            return s.parse().map(StoreChoice::Etcd);
        }
        Err(format!(
            "{:?} is no store: `sled` (the default, under --data-dir) or etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
            lb_core::model::bounded(s.to_string(), 64)
        ))
    }
}

/// Everything `run` needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where sled keeps its files (and, with any store, the backends' last
    /// load reports and the generated admin token).
    pub data_dir: PathBuf,
    /// Where the durable state lives.
    pub store: StoreChoice,
    /// How often backends should report load.
    pub report_interval: Duration,
    /// TTL for registrations that do not ask for one (stream silence or lease).
    pub default_ttl: Duration,
    /// After a restart, how long persisted instances stay listed while their
    /// backends reconnect.
    pub restore_grace: Duration,
    /// How often clients should send call statistics.
    pub stats_interval: Duration,
    /// Policy of services nobody set one for.
    pub default_policy: PolicyKind,
    /// Default cap on a list's length for services without a policy override.
    pub max_list_len: u32,
    /// How much the daemon takes on: instances, labels, rules, list bytes.
    pub quotas: Quotas,
    /// How long a graceful shutdown waits for open streams and calls.
    pub drain_timeout: Duration,
    /// How long a new stream may take to send its first message.
    pub first_message_timeout: Duration,
    /// How long an xDS client may leave an answer unacknowledged.
    pub xds_ack_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Accept registrations at link-local addresses (169.254.0.0/16,
    /// fe80::/10), where cloud metadata services live.
    pub allow_link_local: bool,
    /// Free disk space the store keeps (commits are refused below it).
    pub store_min_free: u64,
    /// How callers authenticate.
    pub auth: AuthConfig,
    /// TLS on every listener (`None`: plaintext).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Accept-loop limits (connections, handshake deadline).
    pub conn_limits: crate::listen::ConnLimits,
    /// Largest request message decoded, in bytes.
    pub max_message_size: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Concurrent subscriptions (lb.v1 and grpclb) of one client id.
    pub max_subscriptions_per_client: usize,
    /// Listen on a non-loopback address without TLS and authentication.
    pub insecure: bool,
}

/// How callers authenticate (see [`crate::auth`]).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Turn authentication on, generating the admin token in the data
    /// directory if there is none (`--auth`).
    pub required: bool,
    /// The admin token's file (`--admin-token-file`): the file holds the
    /// token itself.
    pub admin_token_file: Option<PathBuf>,
    /// Services whose lists grpclb serves without a token
    /// (`--grpclb-anonymous`).
    pub grpclb_anonymous: Vec<lb_core::access::Pattern>,
    /// Per-token limits.
    pub limits: crate::auth::TokenLimits,
}

impl Config {
    /// The policy of services nobody set one for.
    pub fn default_service_policy(&self) -> ServicePolicy {
        ServicePolicy {
            max_list_len: self.max_list_len,
            ..ServicePolicy::with_kind(self.default_policy)
        }
    }

    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            store: StoreChoice::Sled,
            report_interval: DEFAULT_REPORT_INTERVAL,
            default_ttl: Duration::from_secs(5),
            restore_grace: Duration::from_secs(15),
            stats_interval: Duration::from_millis(1000),
            default_policy: PolicyKind::default(),
            max_list_len: DEFAULT_MAX_LIST_LEN,
            quotas: Quotas::default(),
            drain_timeout: Duration::from_secs(5),
            first_message_timeout: DEFAULT_FIRST_MESSAGE_TIMEOUT,
            xds_ack_timeout: DEFAULT_XDS_ACK_TIMEOUT,
            http_listen: None,
            allow_link_local: false,
            store_min_free: crate::store::sled::DEFAULT_MIN_FREE,
            auth: AuthConfig::default(),
            tls: None,
            conn_limits: crate::listen::ConnLimits::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_subscriptions_per_client: DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT,
            insecure: false,
        }
    }
}
