//! The daemon's accept loop, in front of tonic: at most `--max-connections`
//! connections at once, and each must finish its TLS handshake (when TLS is
//! on) and send the HTTP/2 connection preface within `--handshake-timeout`,
//! or it is closed. A peer that connects and sends nothing therefore costs a
//! file descriptor for a few seconds, not forever (nginx's
//! `client_header_timeout`, Envoy's `transport_socket_connect_timeout`).
//!
//! On a TLS listener, a client speaking plaintext HTTP/2 gets a gRPC
//! `unavailable` saying so (see `plaintext`) rather than a TLS alert.
//!
//! Each connection carries a [`ConnInfo`](crate::auth::ConnInfo) (an id, the peer, and the verified
//! client certificate's identity) into every request's extensions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::auth::{Auth, ConnInfo};
use crate::tls::Tls;

mod plaintext;

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u64 = 24;
/// How long the accept loop rests after an accept error (out of file
/// descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The accept loop's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time from accept to a finished TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
}

/// Connections open at once, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time a new connection has for its TLS handshake and HTTP/2 preface,
/// unless configured.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, as tonic serves it.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Bytes read so far, until the preface is complete.
    read: u64,
    /// The preface deadline, until the preface is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    auth: Arc<Auth>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        let polled = match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if me.deadline.is_some() {
                    me.read += (buf.filled().len() - before) as u64;
                    if me.read >= PREFACE_LEN {
                        me.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = me
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    me.auth.limited("handshake_timeout");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within --handshake-timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped; yields
/// connections that passed their TLS handshake (if `tls`).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    limits: ConnLimits,
    auth: Arc<Auth>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, limits, auth, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    limits: ConnLimits,
    auth: Arc<Auth>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let ids = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            auth.limited("max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (tls, auth, tx) = (tls.clone(), Arc::clone(&auth), tx.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
            let (io, identity) = match tls {
                None => (Io::Plain(tcp), None),
                Some(tls) => {
                    // A plaintext HTTP/2 client is told it needs TLS.
                    let mut first = [0u8; 7];
                    let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await;
                    if let Ok(Ok(n)) = peeked {
                        if plaintext::is_plaintext_h2(&first[..n]) {
                            auth.limited("plaintext_on_tls");
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            plaintext::refuse(tcp, left).await;
                            return;
                        }
                    }
                    match tokio::time::timeout_at(deadline, tls.acceptor().accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let identity = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(crate::tls::identity);
                            (Io::Tls(Box::new(s)), identity)
                        }
                        Ok(Err(e)) => {
                            let why = format!("TLS handshake with {remote} failed: {e}");
                            auth.limited_because("tls_handshake_failed", Some(&why));
                            return;
                        }
                        Err(_) => {
                            auth.limited("handshake_timeout");
                            return;
                        }
                    }
                }
            };
            let conn = Conn {
                io,
                info: ConnInfo {
                    id,
                    remote: Some(remote),
                    identity,
                },
                read: 0,
                deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                auth,
                _permit: permit,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}
