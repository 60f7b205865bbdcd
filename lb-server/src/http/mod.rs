//! The operator's HTTP surface (`--http-listen`; `--metrics-listen` is the
//! same listener under its old name): routes in axum, connections served by
//! hyper-util (HTTP/1.1 and HTTP/2), over the daemon's TLS when it has one.
//!
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics::page`]).
//! - `GET /healthz`: the process answers (always `200 ok`).
//! - `GET /readyz`: `200 ready` once the engine runs, the store is healthy
//!   and the restore grace after the start is over; `503` with the reasons
//!   otherwise (and while shutting down), so a load balancer in front of
//!   several replicas sends operators and probes elsewhere meanwhile.
//! - `GET /api/services`, `GET /api/services/{name}`: what `ctl services` and
//!   `ctl get` show, as JSON: the admin API's `ListServicesResponse` and
//!   `ServiceStatus` messages (field names as in `proto/lb/v1/lb.proto`).
//! - `GET /`: the live status page, with `GET /api/events` (its stream),
//!   `GET /api/session`, `POST /login` and `POST /logout` ([`page`],
//!   [`session`]).
//!
//! With authentication on, everything but `/healthz`, `/readyz` and the
//! page's own files needs an admin token (read-only suffices), as
//! `Authorization: Bearer` or as a session cookie made from one by
//! `POST /login`.

mod page;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use lb_core::access::Need;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::engine::EngineHandle;
use crate::pb::v1 as conv;
use crate::tls::Tls;

/// Longest TLS handshake on the HTTP listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the routes read.
#[derive(Clone)]
pub struct Surface {
    /// The engine (its snapshot and hub).
    pub engine: EngineHandle,
    /// Who may read.
    pub auth: Arc<Auth>,
    /// Started with `--insecure` (a metric says so).
    pub insecure: bool,
    /// When the restore grace ends.
    pub grace_until: Instant,
    /// True once the daemon begins to shut down.
    pub stop: watch::Receiver<bool>,
    /// The status page's browser sessions.
    pub sessions: Arc<session::Sessions>,
    /// The listener serves TLS (session cookies are then `Secure`).
    pub tls: bool,
}

impl Surface {
    /// The caller's token: `Authorization: Bearer`, else its session's.
    fn token(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string())
            .or_else(|| self.sessions.token(headers, Instant::now()))
    }

    /// Whether `token` may read (any admin token); why not otherwise.
    fn admits(&self, token: Option<&str>) -> Result<(), String> {
        self.auth
            .authenticate(token, None)
            .and_then(|c| c.allow(&Need::AdminRead))
            .map_err(|e| e.message().to_string())
    }

    /// The refusal of a caller without an admin token when authentication
    /// is on; `None` lets it in.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token(headers);
        match self
            .auth
            .authenticate(token.as_deref(), None)
            .and_then(|c| c.allow(&Need::AdminRead))
        {
            Ok(()) => None,
            Err(e) if e.code() == tonic::Code::PermissionDenied => {
                Some((StatusCode::FORBIDDEN, format!("{}\n", e.message())).into_response())
            }
            Err(e) => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                    format!("{}\n", e.message()),
                )
                    .into_response(),
            ),
        }
    }
}

/// The routes.
pub fn router(surface: Surface) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/services", get(services))
        .route("/api/services/{name}", get(service))
        .merge(page::routes())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: / (the status page), /metrics, /healthz, /readyz, /api/services, /api/services/NAME, /api/events\n",
            )
        })
        .with_state(surface)
}

async fn metrics(State(s): State<Surface>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refusal(&headers) {
        return r;
    }
    let page = crate::metrics::page(&s.engine, &s.auth, s.insecure);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        page,
    )
        .into_response()
}

async fn readyz(State(s): State<Surface>) -> Response {
    let mut not = Vec::new();
    if *s.stop.borrow() {
        not.push("shutting down".to_string());
    }
    if s.engine.snapshots().has_changed().is_err() {
        not.push("the engine has stopped".to_string());
    }
    if let Some(fault) = s.engine.hub().store.fault() {
        not.push(format!("the store is failing: {fault}"));
    }
    let now = Instant::now();
    if now < s.grace_until {
        not.push(format!(
            "restore grace: {:.1} s left for backends to reconnect",
            (s.grace_until - now).as_secs_f64()
        ));
    }
    if not.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not.join("; ")),
        )
            .into_response()
    }
}

async fn services(State(s): State<Surface>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refusal(&headers) {
        return r;
    }
    let list = lb_proto::v1::ListServicesResponse {
        services: s
            .engine
            .views(None)
            .iter()
            .map(conv::service_summary)
            .collect(),
    };
    Json(list).into_response()
}

async fn service(
    State(s): State<Surface>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.refusal(&headers) {
        return r;
    }
    if let Err(e) = conv::service(name.clone()) {
        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    }
    match s.engine.views(Some(&name)).first() {
        Some(v) => Json(conv::service_status(v, s.engine.default_policy())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no service {name:?}: nothing is registered in it and it has no policy\n"),
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` (over `tls` when given) until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((sock, _)) = accepted else { continue };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(sock), service).await;
                }
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(sock)).await
                    else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}
