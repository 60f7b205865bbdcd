//! Browser sessions for the status page: a browser cannot put a bearer
//! token on an `EventSource`, so `POST /login` trades a token for a session
//! cookie (OWASP's Session Management Cheat Sheet: a random 256-bit id,
//! `HttpOnly`, `SameSite=Strict`, `Secure` over TLS, an absolute lifetime,
//! ended by `POST /logout`).
//!
//! The daemon keeps the token a session was made from and checks it again
//! on every request, so revoking the token ends its sessions at once. Only
//! [`MAX_SESSIONS`] live at a time: a new one replaces the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use ring::rand::{SecureRandom, SystemRandom};

/// The cookie's name.
pub const COOKIE: &str = "lb_session";
/// How long a session lasts from its login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 256;
/// Hex digits of a session id (256 bits).
const ID_HEX: usize = 64;

struct Session {
    token: String,
    expires: Instant,
}

/// The live sessions.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for `token` (already checked); its id, or `None` if
    /// the system's random source fails.
    pub fn open(&self, token: &str, now: Instant) -> Option<String> {
        let mut bytes = [0u8; ID_HEX / 2];
        SystemRandom::new().fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| s.expires > now);
        if live.len() >= MAX_SESSIONS {
            let oldest = live
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                live.remove(&k);
            }
        }
        live.insert(
            id.clone(),
            Session {
                token: token.to_string(),
                expires: now + LIFETIME,
            },
        );
        Some(id)
    }

    /// The token behind the session the request's cookie names, if it is
    /// live.
    pub fn token(&self, headers: &HeaderMap, now: Instant) -> Option<String> {
        let id = cookie(headers)?;
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(id)
            .filter(|s| s.expires > now)
            .map(|s| s.token.clone())
    }

    /// Ends the request's session, if any.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.remove(id);
        }
    }
}

/// The session id in the request's `Cookie` headers (well-formed ids only).
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id)
        .filter(|id| id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for session `id` (`None`: the one that ends it).
pub fn set_cookie(id: Option<&str>, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_session_names_its_token_until_it_ends_or_expires() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let id = s.open("lbt_x", t0).unwrap();
        assert_eq!(id.len(), ID_HEX);
        let h = with_cookie(&format!("theme=dark; {COOKIE}={id}"));
        assert_eq!(s.token(&h, t0).as_deref(), Some("lbt_x"));
        assert_eq!(s.token(&h, t0 + LIFETIME), None, "expired");
        s.close(&h);
        assert_eq!(s.token(&h, t0), None, "closed");
        assert_eq!(s.token(&with_cookie(&format!("{COOKIE}=zz")), t0), None);
    }

    #[test]
    fn the_oldest_session_makes_room() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let first = s.open("first", t0).unwrap();
        for i in 1..MAX_SESSIONS {
            s.open("other", t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        let h = with_cookie(&format!("{COOKIE}={first}"));
        assert_eq!(s.token(&h, t0).as_deref(), Some("first"));
        s.open("last", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.token(&h, t0), None);
        assert_eq!(s.live.lock().unwrap().len(), MAX_SESSIONS);
    }
}
