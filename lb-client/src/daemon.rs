//! The connection to lb daemons: how lb-client dials one (HTTP/2 keep-alive
//! and a connect timeout), the connections it shares, why a daemon could
//! not be reached ([`DaemonError`]), and the two long-lived streams it opens,
//! `Balancer/Subscribe` for a [`crate::Subscription`] and
//! `Registry/ReportLoad` for a [`crate::Reporter`]. The streams carry
//! `protocol` types; `pb` converts them, so the tasks never see generated
//! types.
//!
//! ```no_run
//! use lb_client::{subscribe, ClientOptions, DaemonError, Error};
//! # async fn demo() {
//! match subscribe("echo", ClientOptions::new("127.0.0.1:7400")).await {
//!     Ok(_sub) => {} // it shares one connection with every other subscription
//!     Err(Error::Daemon { cause: DaemonError::Refused { message, .. }, .. }) => {
//!         eprintln!("the daemon refused: {message}") // e.g. fix the token
//!     }
//!     // e.g. "cannot subscribe to \"echo\": cannot reach the lb daemon at
//!     // 127.0.0.1:7400: connection refused"
//!     Err(e) => eprintln!("{e}"),
//! }
//! # }
//! ```
//!
//! # One connection per daemon
//! Every subscription and reporter of a process that dials the same daemon
//! with the same TLS settings shares one HTTP/2 connection (a process-wide
//! pool of tonic `Channel`s keyed by the dialled URI, the connect timeout,
//! the TLS identity, i.e. CA, client certificate and server name, and the
//! Tokio runtime). Bearer tokens are per-call headers, so callers with
//! different tokens share a connection; a client certificate identifies
//! the connection itself, so it is part of the key. A connection carries
//! at most [`STREAMS_PER_CONNECTION`] long-lived streams, the least
//! `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 §6.5.2 recommends a server
//! allow; more streams open another connection.
//!
//! A pooled channel lives as long as some stream uses it: the last
//! lease of it dropped removes it, and its connection closes, so the pool
//! holds only channels in use. The channels are lazy: tonic connects on
//! the first call and, after the connection broke (a daemon restart), on
//! the next call again, for every stream sharing it. A channel's worker
//! task runs on the runtime that made it and dies with it; keying by
//! runtime means no other runtime is ever handed a dead channel.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use lb_core::status::Code;
use lb_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint as Target};
use tonic::Status;

use crate::credentials::{Authorize, Credentials, TlsIdentity};
use crate::protocol::{Directive, Identity, Outgoing, Registration, StatsReport, Update};

/// Where to dial `addr` ("host:port" or a full "http://host:port" URI), with
/// the options every connection of this crate uses, to a daemon or a backend.
/// (tonic calls it an `Endpoint`; this crate's [`crate::Endpoint`] is a list
/// entry.)
pub(crate) fn dial_target(addr: &str) -> Result<Target, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Target::from_shared(uri)?.tcp_nodelay(true))
}

/// The URI a daemon address is dialled at: a bare "host:port" is https
/// when `credentials` turn TLS on.
fn daemon_uri(addr: &str, credentials: &Credentials) -> String {
    match (addr.contains("://"), credentials.uses_tls()) {
        (true, _) => addr.to_owned(),
        (false, true) => format!("https://{addr}"),
        (false, false) => format!("http://{addr}"),
    }
}

/// How a daemon is dialled: TLS if `credentials` say so, HTTP/2 keep-alive
/// (a silently vanished daemon, a partition rather than a crash, breaks
/// the streams within seconds instead of never) and the connect timeout.
pub(crate) fn daemon_target(
    addr: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Target, tonic::transport::Error> {
    let mut target = dial_target(&daemon_uri(addr, credentials))?;
    if let Some(tls) = credentials.tls_config() {
        target = target.tls_config(tls)?;
    }
    Ok(target
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Connects to a daemon, over TLS if `credentials` say so (a bare
/// "host:port" is then dialled as https), on a connection of its own (for
/// a one-off tool such as `lb-server ctl`; subscriptions and reporters
/// share theirs). [`DaemonError::classify`] says why it failed.
///
/// ```no_run
/// use std::time::Duration;
/// use lb_client::{credentials::Authorize, daemon, Credentials};
/// use lb_proto::v1::{admin_client::AdminClient, ListServicesRequest};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let token = std::env::var("LB_TOKEN").unwrap_or_default();
/// let creds = Credentials::default().with_token(token);
/// let channel = daemon::connect("127.0.0.1:7400", Duration::from_secs(5), &creds).await?;
/// let mut admin = AdminClient::with_interceptor(channel, Authorize::new(&creds));
/// for s in admin.list_services(ListServicesRequest {}).await?.into_inner().services {
///     println!("{} ({})", s.name, s.policy);
/// }
/// # Ok(()) }
/// ```
pub async fn connect(
    addr: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Channel, tonic::transport::Error> {
    daemon_target(addr, connect_timeout, credentials)?
        .connect()
        .await
}

// ------------------------------------------------------------------ the pool

/// Long-lived streams (subscriptions, reporters) one pooled connection
/// carries before another is opened: RFC 9113 §6.5.2 recommends a server
/// allow at least 100 concurrent streams (lb-server allows 256 by default,
/// `--max-concurrent-streams`); a stream beyond the server's limit would
/// wait for a free one, for ever.
///
/// ```
/// // 250 subscriptions to one daemon share 3 connections.
/// let subscriptions: usize = 250;
/// let connections = subscriptions.div_ceil(lb_client::daemon::STREAMS_PER_CONNECTION);
/// assert_eq!(connections, 3);
/// ```
pub const STREAMS_PER_CONNECTION: usize = 100;

/// What makes two dials the same connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DialKey {
    runtime: tokio::runtime::Id,
    uri: String,
    connect_timeout: Duration,
    tls: Option<TlsIdentity>,
}

/// A pooled connection and the streams using it.
struct Pooled {
    id: u64,
    channel: Channel,
    streams: usize,
}

/// Connections by dial, for the whole process. A std `Mutex`: held for a
/// lookup or an insert, never across an await.
static POOL: LazyLock<Mutex<HashMap<DialKey, Vec<Pooled>>>> = LazyLock::new(Mutex::default);
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn pool() -> std::sync::MutexGuard<'static, HashMap<DialKey, Vec<Pooled>>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One stream's share of a pooled connection; dropping it gives the share
/// back (and closes the connection when it was the last).
pub(crate) struct Lease {
    key: DialKey,
    id: u64,
    channel: Channel,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("uri", &self.key.uri)
            .field("connection", &self.id)
            .finish()
    }
}

/// A share of the process's connection to the daemon at `addr` (dialled
/// with `connect_timeout` and `credentials`'s TLS settings), opening one if
/// none has room. Lazy: nothing is dialled until the first call. Errs only
/// on an address or TLS settings that cannot make a target. Must be called
/// within a Tokio runtime.
pub(crate) fn lease(
    addr: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Lease, tonic::transport::Error> {
    let key = DialKey {
        runtime: tokio::runtime::Handle::current().id(),
        uri: daemon_uri(addr, credentials),
        connect_timeout,
        tls: credentials.tls_identity(),
    };
    let mut pool = pool();
    let conns = pool.entry(key.clone()).or_default();
    if let Some(c) = conns
        .iter_mut()
        .find(|c| c.streams < STREAMS_PER_CONNECTION)
    {
        c.streams += 1;
        return Ok(Lease {
            key,
            id: c.id,
            channel: c.channel.clone(),
        });
    }
    let target = match daemon_target(addr, connect_timeout, credentials) {
        Ok(t) => t,
        Err(e) => {
            if conns.is_empty() {
                pool.remove(&key);
            }
            return Err(e);
        }
    };
    let id = NEXT_CONNECTION.fetch_add(1, Relaxed);
    let channel = target.connect_lazy();
    conns.push(Pooled {
        id,
        channel: channel.clone(),
        streams: 1,
    });
    Ok(Lease { key, id, channel })
}

impl Lease {
    /// The shared channel (cheap to clone).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The pool's connections for this lease's dial and the streams on each
    /// (tests).
    #[cfg(test)]
    fn pooled(&self) -> Vec<(u64, usize)> {
        pool()
            .get(&self.key)
            .map(|v| v.iter().map(|c| (c.id, c.streams)).collect())
            .unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = pool();
        let Some(conns) = pool.get_mut(&self.key) else {
            return;
        };
        if let Some(i) = conns.iter().position(|c| c.id == self.id) {
            conns[i].streams -= 1;
            if conns[i].streams == 0 {
                // Dropping the last clone of the channel closes its connection.
                conns.swap_remove(i);
            }
        }
        if conns.is_empty() {
            pool.remove(&self.key);
        }
    }
}

// ------------------------------------------------------------------ errors

/// Why talking to a daemon failed, said for a person: the daemon's address
/// and the cause, classified from the error's source chain by
/// [`DaemonError::classify`].
///
/// [`crate::Subscription::last_error`], [`crate::Reporter::last_error`] and
/// the errors of [`crate::subscribe`] carry one:
///
/// ```
/// use lb_client::DaemonError;
/// let e = DaemonError::ConnectionRefused { daemon: "127.0.0.1:7400".into() };
/// assert_eq!(e.to_string(), "cannot reach the lb daemon at 127.0.0.1:7400: connection refused");
/// assert!(e.is_definite()); // subscribe fails at once rather than waiting
/// match e {
///     DaemonError::Refused { code, .. } => eprintln!("fix the credentials ({code:?})"),
///     other => eprintln!("{other}; retrying by itself"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// The TCP connection was refused: nothing listens at the address.
    /// Start the daemon, or fix the address or port.
    #[error("cannot reach the lb daemon at {daemon}: connection refused")]
    ConnectionRefused {
        /// The daemon's address as configured.
        daemon: String,
    },
    /// No TCP connection within the connect timeout: a wrong host, a
    /// firewall dropping packets, or a daemon too busy to accept.
    #[error("cannot reach the lb daemon at {daemon}: no connection within {timeout:?} (connect timeout)")]
    ConnectTimeout {
        /// The daemon's address as configured.
        daemon: String,
        /// The connect timeout that passed.
        timeout: Duration,
    },
    /// Another failure to connect: the host is unreachable, its name does
    /// not resolve, the connection was reset. Check the address and the
    /// network between here and the daemon.
    #[error("cannot reach the lb daemon at {daemon}: {cause}")]
    Network {
        /// The daemon's address as configured.
        daemon: String,
        /// The innermost error, as the OS or resolver said it.
        cause: String,
    },
    /// The TLS handshake failed: the daemon's certificate is not signed by
    /// the CA given or does not carry the name dialled, the daemon does not
    /// serve TLS, or it refused the client certificate.
    #[error("TLS handshake with the lb daemon at {daemon} failed: {cause}")]
    Tls {
        /// The daemon's address as configured.
        daemon: String,
        /// What the TLS library said.
        cause: String,
    },
    /// The daemon answered with an error status: `unauthenticated` (no
    /// token, or one it does not know), `permission_denied` (the token's
    /// role or services do not cover the call), `invalid_argument`,
    /// `resource_exhausted` (a limit), `unavailable` (it is shutting down).
    /// Its message says what to change.
    #[error("the lb daemon at {daemon} refused: {}: {message}", code_name(*code))]
    Refused {
        /// The daemon's address as configured.
        daemon: String,
        /// The status code.
        code: Code,
        /// The daemon's message.
        message: String,
    },
    /// An established connection or stream broke (the daemon was killed or
    /// restarted, a keep-alive ping went unanswered, the stream was reset).
    /// lb-client reconnects by itself.
    #[error("the connection to the lb daemon at {daemon} broke: {cause}")]
    Broken {
        /// The daemon's address as configured.
        daemon: String,
        /// What broke it, as said along the error chain.
        cause: String,
    },
}

/// A status code as its lower-case name ("unauthenticated").
fn code_name(code: Code) -> String {
    code.name().to_ascii_lowercase()
}

/// Every error of `err`'s source chain, `err` first.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| {
        let e: &'a (dyn StdError + 'static) = *e;
        e.source()
    })
}

/// `err` and its sources as one line, "a: b: c", a level left out when the
/// one above already says it (tonic repeats its sources' messages).
///
/// ```
/// use std::sync::Arc;
/// use lb_client::daemon::error_chain;
/// let mut status = tonic::Status::unavailable("connection lost");
/// let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
/// status.set_source(Arc::new(reset));
/// assert_eq!(error_chain(&status), "connection lost: reset by peer");
/// ```
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    for e in chain(err) {
        // A status's Display adds its code and its source's Debug.
        let s = match e.downcast_ref::<Status>() {
            Some(status) => status.message().to_owned(),
            None => e.to_string(),
        };
        if s.is_empty() || out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// What hyper-util's connector calls its TCP-level failures (its own
/// `ConnectError` type is private, so its message marks the phase).
const TCP_PHASE: [&str; 2] = ["tcp connect error", "dns error"];

impl DaemonError {
    /// Classifies an error from dialling or calling the daemon at `daemon`
    /// (dialled over TLS if `tls`, with `connect_timeout`) by walking its
    /// source chain:
    /// - a `tonic::ConnectError` in the chain: connecting failed. An
    ///   `io::Error` of kind `ConnectionRefused` is
    ///   [`DaemonError::ConnectionRefused`], `TimedOut`
    ///   [`DaemonError::ConnectTimeout`]; another failure of the TCP phase
    ///   (an OS error, a resolver error) is [`DaemonError::Network`]; past
    ///   it, on a TLS dial, it is [`DaemonError::Tls`].
    /// - else a `tonic::Status` with no transport error under it: the
    ///   daemon's own answer, [`DaemonError::Refused`].
    /// - else the connection or stream broke: [`DaemonError::Broken`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::DaemonError;
    /// let timeout = Duration::from_secs(2);
    /// // What tonic returns when nothing listens at the address:
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let refused = tonic::ConnectError(Box::new(io));
    /// let e = DaemonError::classify("127.0.0.1:7400", false, timeout, &refused);
    /// assert_eq!(e, DaemonError::ConnectionRefused { daemon: "127.0.0.1:7400".into() });
    /// // The daemon's own answer:
    /// let denied = tonic::Status::unauthenticated("no token");
    /// let e = DaemonError::classify("127.0.0.1:7400", false, timeout, &denied);
    /// let text = "the lb daemon at 127.0.0.1:7400 refused: unauthenticated: no token";
    /// assert_eq!(e.to_string(), text);
    /// ```
    pub fn classify(
        daemon: &str,
        tls: bool,
        connect_timeout: Duration,
        err: &(dyn StdError + 'static),
    ) -> DaemonError {
        let daemon = daemon.to_owned();
        let connecting = chain(err).any(|e| e.is::<tonic::ConnectError>());
        let innermost = chain(err).last().unwrap_or(err).to_string();
        if connecting {
            let io = chain(err).filter_map(|e| e.downcast_ref::<std::io::Error>());
            let mut os_error = false;
            for e in io {
                match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        return DaemonError::ConnectionRefused { daemon }
                    }
                    std::io::ErrorKind::TimedOut => {
                        return DaemonError::ConnectTimeout {
                            daemon,
                            timeout: connect_timeout,
                        }
                    }
                    _ => os_error |= e.raw_os_error().is_some(),
                }
            }
            let tcp_phase =
                os_error || chain(err).any(|e| TCP_PHASE.contains(&e.to_string().as_str()));
            return if tls && !tcp_phase {
                DaemonError::Tls {
                    daemon,
                    cause: innermost,
                }
            } else {
                DaemonError::Network {
                    daemon,
                    cause: innermost,
                }
            };
        }
        let status = chain(err).find_map(|e| e.downcast_ref::<Status>());
        match status {
            Some(s) if s.source().is_none() => DaemonError::Refused {
                daemon,
                code: Code::from_number(s.code() as u32).unwrap_or(Code::Unknown),
                message: s.message().to_owned(),
            },
            _ => DaemonError::Broken {
                daemon,
                cause: error_chain(err),
            },
        }
    }

    /// A dial that could not even be set up ([`lease`] failed): with TLS
    /// on, its settings are unusable ([`DaemonError::Tls`]); else the
    /// address is ([`DaemonError::Network`]).
    pub(crate) fn undialable(daemon: &str, tls: bool, err: &tonic::transport::Error) -> Self {
        let (daemon, cause) = (daemon.to_owned(), error_chain(err));
        if tls {
            DaemonError::Tls { daemon, cause }
        } else {
            DaemonError::Network { daemon, cause }
        }
    }

    /// Whether this is a definite answer, which a caller waiting for a
    /// daemon should hear at once: a refused connection, a network or TLS
    /// failure, any refusal by the daemon (even `unavailable`: a daemon
    /// shutting down, or a plaintext dial of a TLS port, says so at once).
    /// A connect timeout or a broken stream is no answer: it may pass.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::DaemonError;
    /// let daemon = String::from("10.0.0.2:7400");
    /// assert!(DaemonError::ConnectionRefused { daemon: daemon.clone() }.is_definite());
    /// let slow = DaemonError::ConnectTimeout { daemon, timeout: Duration::from_secs(2) };
    /// assert!(!slow.is_definite()); // it may answer next time
    /// ```
    pub fn is_definite(&self) -> bool {
        match self {
            DaemonError::ConnectionRefused { .. }
            | DaemonError::Network { .. }
            | DaemonError::Tls { .. }
            | DaemonError::Refused { .. } => true,
            DaemonError::ConnectTimeout { .. } | DaemonError::Broken { .. } => false,
        }
    }

    /// Whether the daemon itself answered (the connection is fine).
    ///
    /// ```
    /// use lb_client::{Code, DaemonError};
    /// let daemon = String::from("127.0.0.1:7400");
    /// let message = "the token covers service shop only".to_string();
    /// let code = Code::PermissionDenied;
    /// let refused = DaemonError::Refused { daemon: daemon.clone(), code, message };
    /// assert!(refused.is_answer()); // the network is fine: fix the request or the token
    /// assert!(!DaemonError::ConnectionRefused { daemon }.is_answer());
    /// ```
    pub fn is_answer(&self) -> bool {
        matches!(self, DaemonError::Refused { .. })
    }

    /// The daemon's address as configured.
    ///
    /// ```
    /// use lb_client::DaemonError;
    /// let cause = "keep-alive timed out".to_string();
    /// let e = DaemonError::Broken { daemon: "10.0.0.2:7400".into(), cause };
    /// assert_eq!(e.daemon(), "10.0.0.2:7400");
    /// ```
    pub fn daemon(&self) -> &str {
        match self {
            DaemonError::ConnectionRefused { daemon }
            | DaemonError::ConnectTimeout { daemon, .. }
            | DaemonError::Network { daemon, .. }
            | DaemonError::Tls { daemon, .. }
            | DaemonError::Refused { daemon, .. }
            | DaemonError::Broken { daemon, .. } => daemon,
        }
    }
}

// ------------------------------------------------------------------ streams

/// Opens `Balancer/Subscribe`: sends the subscription first (with the
/// state of the list it `held`), then every [`StatsReport`] from `stats`;
/// yields the daemon's updates.
pub(crate) async fn subscribe(
    channel: Channel,
    credentials: &Credentials,
    service: &str,
    client: Identity<'_>,
    held: &crate::list::ListState,
    stats: mpsc::Receiver<StatsReport>,
) -> Result<impl Stream<Item = Result<Update, Status>> + Unpin + Send + 'static, Status> {
    let first = v1::SubscribeRequest {
        msg: Some(v1::subscribe_request::Msg::Subscribe(v1::Subscription {
            service: service.to_owned(),
            client: Some(client.into()),
            held_state_id: held.id.clone(),
            held_state_revision: held.revision,
        })),
    };
    let requests =
        tokio_stream::once(first).chain(ReceiverStream::new(stats).map(|s| v1::SubscribeRequest {
            msg: Some(v1::subscribe_request::Msg::Stats(s.into())),
        }));
    let response =
        v1::balancer_client::BalancerClient::with_interceptor(channel, Authorize::new(credentials))
            .subscribe(requests)
            .await?;
    Ok(response.into_inner().map(|r| r.map(Update::from)))
}

/// Opens `Registry/ReportLoad`: sends the registration first, then every
/// [`Outgoing`] message; yields the daemon's directives.
pub(crate) async fn report_load(
    channel: Channel,
    credentials: &Credentials,
    registration: &Registration,
    outgoing: mpsc::Receiver<Outgoing>,
) -> Result<impl Stream<Item = Result<Directive, Status>> + Unpin + Send + 'static, Status> {
    use v1::report_load_request::Msg;
    let first = v1::ReportLoadRequest {
        msg: Some(Msg::Register(registration.into())),
    };
    let requests = tokio_stream::once(first).chain(ReceiverStream::new(outgoing).map(|m| {
        v1::ReportLoadRequest {
            msg: Some(match m {
                Outgoing::Report(s) => Msg::Report(crate::pb::load_report(s)),
                Outgoing::Drain => Msg::Drain(v1::Drain {}),
            }),
        }
    }));
    let response =
        v1::registry_client::RegistryClient::with_interceptor(channel, Authorize::new(credentials))
            .report_load(requests)
            .await?;
    Ok(response.into_inner().map(|r| r.map(Directive::from)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const D: &str = "127.0.0.1:7400";
    const T: Duration = Duration::from_secs(2);

    /// An error from a dial, as tonic's client hands it over: a `Status`
    /// made from the transport error, which stays its source.
    fn status_from(e: impl StdError + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(e))
    }

    /// An error with a message and an optional source.
    #[derive(Debug)]
    struct Msg(&'static str, Option<io::Error>);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Msg {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    fn connect_error(e: impl StdError + Send + Sync + 'static) -> Status {
        status_from(tonic::ConnectError(Box::new(e)))
    }

    #[test]
    fn connect_failures_are_told_apart_by_their_source_chain() {
        let refused = connect_error(Msg(
            "tcp connect error",
            Some(io::Error::from(io::ErrorKind::ConnectionRefused)),
        ));
        let e = DaemonError::classify(D, false, T, &refused);
        assert_eq!(
            e,
            DaemonError::ConnectionRefused { daemon: D.into() },
            "{refused:?}"
        );
        assert_eq!(
            e.to_string(),
            "cannot reach the lb daemon at 127.0.0.1:7400: connection refused"
        );
        assert!(e.is_definite() && !e.is_answer());

        let timeout = connect_error(Msg(
            "tcp connect error",
            Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "deadline has elapsed",
            )),
        ));
        let e = DaemonError::classify(D, true, T, &timeout);
        assert!(matches!(e, DaemonError::ConnectTimeout { timeout, .. } if timeout == T));
        assert!(e.to_string().contains("no connection within 2s"), "{e}");
        assert!(!e.is_definite());

        let dns = connect_error(Msg(
            "dns error",
            Some(io::Error::other("failed to lookup address information")),
        ));
        // A resolver failure is the network's, even on a TLS dial.
        let e = DaemonError::classify(D, true, T, &dns);
        assert_eq!(
            e,
            DaemonError::Network {
                daemon: D.into(),
                cause: "failed to lookup address information".into()
            }
        );

        // rustls reports through io::Error(InvalidData), after the TCP phase.
        let tls = connect_error(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        let e = DaemonError::classify(D, true, T, &tls);
        assert_eq!(
            e.to_string(),
            "TLS handshake with the lb daemon at 127.0.0.1:7400 failed: invalid peer certificate: UnknownIssuer"
        );
        assert!(e.is_definite());
        // The same on a plaintext dial is no TLS failure.
        assert!(matches!(
            DaemonError::classify(D, false, T, &tls),
            DaemonError::Network { .. }
        ));
    }

    #[test]
    fn the_daemons_answers_and_broken_streams() {
        let s = Status::unauthenticated("needs a token: send `authorization: Bearer <token>`");
        let e = DaemonError::classify(D, false, T, &s);
        assert_eq!(
            e.to_string(),
            "the lb daemon at 127.0.0.1:7400 refused: unauthenticated: needs a token: send `authorization: Bearer <token>`"
        );
        assert!(e.is_definite() && e.is_answer());
        let e = DaemonError::classify(D, false, T, &Status::permission_denied("scope"));
        assert!(matches!(
            e,
            DaemonError::Refused {
                code: Code::PermissionDenied,
                ..
            }
        ));
        let e = DaemonError::classify(D, false, T, &Status::unavailable("shutting down"));
        assert!(e.is_answer() && e.is_definite());

        // A transport error under a status: the stream broke.
        let reset = status_from(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        let e = DaemonError::classify(D, false, T, &reset);
        assert!(matches!(e, DaemonError::Broken { .. }), "{e:?}");
        assert!(e.to_string().contains("connection reset by peer"), "{e}");
        assert!(!e.is_definite() && !e.is_answer());
        assert_eq!(e.daemon(), D);
    }

    #[test]
    fn error_chains_read_as_one_line_without_repeats() {
        let e = Msg(
            "tcp connect error",
            Some(io::Error::from(io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(error_chain(&e), "tcp connect error: connection refused");
        let s = status_from(e);
        // tonic's status repeats its source's message; said once.
        assert_eq!(
            error_chain(&s).matches("tcp connect error").count(),
            1,
            "{}",
            error_chain(&s)
        );
    }

    /// A port on loopback that refuses connections: bound, noted, closed.
    fn refusing_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_real_refused_dial_is_classified_so() {
        let addr = refusing_port();
        let creds = Credentials::default();
        // The eager dial of `connect` (lb-server ctl's).
        let err = connect(&addr, T, &creds).await.unwrap_err();
        let e = DaemonError::classify(&addr, false, T, &err);
        assert_eq!(
            e,
            DaemonError::ConnectionRefused {
                daemon: addr.clone()
            },
            "{err:?}"
        );
        // A call on a pooled, lazy channel.
        let lease = lease(&addr, T, &creds).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let client = Identity {
            client_id: "c",
            zone: "",
            labels: &Default::default(),
        };
        let status = match subscribe(
            lease.channel(),
            &creds,
            "svc",
            client,
            &Default::default(),
            rx,
        )
        .await
        {
            Ok(_) => panic!("nothing listens at {addr}"),
            Err(s) => s,
        };
        let e = DaemonError::classify(&addr, false, T, &status);
        assert_eq!(
            e,
            DaemonError::ConnectionRefused {
                daemon: addr.clone()
            },
            "{status:?}"
        );
        assert!(e.to_string().contains(&addr) && e.to_string().contains("connection refused"));
    }

    #[tokio::test]
    async fn leases_share_one_connection_per_dial_up_to_the_stream_limit() {
        // Lazy channels: nothing is dialled, so any name will do; unique
        // names keep this test's pool entries its own.
        let addr = "pool-test.invalid:7400";
        let plain = Credentials::default();
        let a = lease(addr, T, &plain).unwrap();
        // Another token is another header on the same connection.
        let b = lease(addr, T, &plain.clone().with_token("lbt_other")).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.pooled(), [(a.id, 2)]);
        // Another connect timeout is another dial.
        let c = lease(addr, Duration::from_secs(9), &plain).unwrap();
        assert_ne!(c.id, a.id);

        // a and b hold two shares; fill the connection.
        let more: Vec<Lease> = (3..=STREAMS_PER_CONNECTION)
            .map(|_| lease(addr, T, &plain).unwrap())
            .collect();
        assert!(more.iter().all(|l| l.id == a.id));
        let spill = lease(addr, T, &plain).unwrap();
        assert_ne!(spill.id, a.id, "a full connection opens another");
        assert_eq!(a.pooled().len(), 2);

        // The last lease of a connection closes it.
        drop(spill);
        assert_eq!(a.pooled(), [(a.id, STREAMS_PER_CONNECTION)]);
        drop(more);
        drop(b);
        assert_eq!(a.pooled(), [(a.id, 1)]);
        let id = a.id;
        drop(a);
        let fresh = lease(addr, T, &plain).unwrap();
        assert_ne!(fresh.id, id, "a closed connection is not handed out again");
        drop(fresh);
        drop(c);
        assert!(pool().keys().all(|k| !k.uri.contains("pool-test")));
    }

    #[test]
    fn runtimes_do_not_share_connections() {
        // A channel's worker dies with its runtime: another runtime must
        // never be handed it.
        let addr = "pool-runtimes.invalid:7400";
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let (one, two) = (rt(), rt());
        let creds = Credentials::default();
        let a = one.block_on(async { lease(addr, T, &creds).unwrap() });
        let b = two.block_on(async { lease(addr, T, &creds).unwrap() });
        assert_ne!(a.id, b.id);
        drop(one);
        let c = two.block_on(async { lease(addr, T, &creds).unwrap() });
        assert_eq!(c.id, b.id);
    }
}
