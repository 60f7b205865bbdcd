//! The live status page: `GET /` and its two assets, embedded in the binary
//! (no CDN, nothing to install), fed by `GET /api/events`, a stream of
//! server-sent events (the WHATWG HTML standard's `EventSource`).
//!
//! The stream sends the whole state (every service's `ServiceStatus`, as
//! `/api/services/{name}` does) when the engine publishes a new snapshot,
//! at most one event per [`MIN_GAP`], and again every [`HEARTBEAT`] so the
//! page can tell a silent daemon from a quiet one. A browser costs one
//! connection and a few kilobytes per second, however many services: no
//! polling.
//!
//! With authentication on, the stream and the page's data need an admin
//! token (read-only suffices): `Authorization: Bearer` or a session cookie
//! from `POST /login` ([`super::session`]); a stream ends with an `end`
//! event when its token is revoked.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::session;
use super::Surface;
use crate::pb::v1 as conv;

/// Least time between two events of one stream.
pub const MIN_GAP: Duration = Duration::from_millis(500);
/// Longest time without an event (the page calls a daemon silent for three
/// of these unreachable).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// What the page's `EventSource` waits before it reconnects.
const RETRY: Duration = Duration::from_secs(1);
/// Longest token `POST /login` looks at (a token is 85 bytes).
const MAX_TOKEN_LEN: usize = 512;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The page's routes.
pub fn routes() -> Router<Surface> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/api/events", get(events))
        .route("/api/session", get(whoami))
        .route("/login", post(login))
        .route("/logout", post(logout))
}

/// An embedded file, with headers that keep the page to its own origin.
fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// What one event carries.
#[derive(Serialize)]
struct PageState {
    /// The daemon's version.
    version: &'static str,
    /// Why the store is failing, if it is.
    store_fault: Option<String>,
    /// Every service, by name.
    services: Vec<lb_proto::v1::ServiceStatus>,
}

fn page_state(s: &Surface) -> PageState {
    let default = s.engine.default_policy();
    PageState {
        version: env!("CARGO_PKG_VERSION"),
        store_fault: s.engine.hub().store.fault(),
        services: s
            .engine
            .views(None)
            .iter()
            .map(|v| conv::service_status(v, default))
            .collect(),
    }
}

async fn events(State(s): State<Surface>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refusal(&headers) {
        return r;
    }
    let token = s.token(&headers);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(feed(s, token, tx));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Sends the state to one stream until it closes, the daemon stops, or the
/// token it was opened with no longer admits it.
async fn feed(s: Surface, token: Option<String>, tx: mpsc::Sender<Result<Event, Infallible>>) {
    let mut snapshots = s.engine.snapshots();
    let mut stop = s.stop.clone();
    loop {
        if let Err(why) = s.admits(token.as_deref()) {
            let end = Event::default().event("end").data(why);
            let _ = tx.send(Ok(end)).await;
            return;
        }
        snapshots.borrow_and_update();
        let event = match Event::default()
            .event("state")
            .retry(RETRY)
            .json_data(page_state(&s))
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "status page: state not serialized");
                return;
            }
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
        let sent = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(MIN_GAP) => {}
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until((sent + HEARTBEAT).into()) => {}
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What `GET /api/session` answers a caller let in.
#[derive(Serialize)]
struct Session {
    /// Authentication is on.
    auth: bool,
    /// The caller came with a session cookie (the page offers to sign out).
    cookie: bool,
}

async fn whoami(State(s): State<Surface>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refusal(&headers) {
        return r;
    }
    let cookie = s.sessions.token(&headers, Instant::now()).is_some();
    Json(Session {
        auth: s.auth.is_enabled(),
        cookie,
    })
    .into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(s): State<Surface>, Form(form): Form<Login>) -> Response {
    let token = form.token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return (
            StatusCode::BAD_REQUEST,
            format!("token: longer than {MAX_TOKEN_LEN} bytes\n"),
        )
            .into_response();
    }
    if !s.auth.is_enabled() {
        return StatusCode::NO_CONTENT.into_response();
    }
    if let Err(why) = s.admits(Some(token)) {
        return (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
    }
    let Some(id) = s.sessions.open(token, Instant::now()) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no session: the system's random source failed\n",
        )
            .into_response();
    };
    let cookie = session::set_cookie(Some(&id), s.tls);
    match HeaderValue::from_str(&cookie) {
        Ok(v) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, v)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn logout(State(s): State<Surface>, headers: HeaderMap) -> Response {
    s.sessions.close(&headers);
    match HeaderValue::from_str(&session::set_cookie(None, s.tls)) {
        Ok(v) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, v)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
