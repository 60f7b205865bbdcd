//! A plaintext HTTP/2 client on a TLS listener gets a gRPC answer it can
//! show, instead of a TLS alert its HTTP/2 parser reports as
//! `FRAME_SIZE_ERROR`: the first request is answered with `unavailable`
//! saying the daemon serves TLS, then the connection ends with GOAWAY.
//!
//! Frames are written by hand (RFC 9113 §4.1, §6.2, §6.5, §6.8) with an
//! HPACK block of literal fields (RFC 7541 §5.1, §5.2, §6.2.2), since no
//! HTTP/2 server runs on a connection that failed to become TLS.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a plaintext caller is told.
pub const MESSAGE: &str = "this lb-server serves TLS: dial it with https and trust its CA \
     (lb-client: Credentials::with_ca_file; lb-server ctl: --ca FILE)";

/// The HTTP/2 client preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
/// Client frames read before giving up on finding a request.
const MAX_FRAMES: usize = 16;
/// Largest client frame payload read (the default SETTINGS_MAX_FRAME_SIZE).
const MAX_PAYLOAD: usize = 16_384;

/// Whether the first bytes on a TLS listener are an HTTP/2 preface (a TLS
/// record starts with 0x16, a handshake).
pub fn is_plaintext_h2(first: &[u8]) -> bool {
    !first.is_empty() && PREFACE.starts_with(first)
}

/// Answers the first request of a plaintext HTTP/2 connection with
/// `unavailable` and [`MESSAGE`], within `limit`.
pub async fn refuse(mut tcp: TcpStream, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let mut preface = [0u8; 24];
        tcp.read_exact(&mut preface).await.ok()?;
        if &preface != PREFACE {
            return None;
        }
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.ok()?;
        let stream = first_request(&mut tcp).await?;
        let mut out = frame(HEADERS, 0x5, stream, &trailers_only());
        // GOAWAY: last stream `stream`, NO_ERROR.
        let mut goaway = stream.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        out.extend(frame(GOAWAY, 0, 0, &goaway));
        tcp.write_all(&out).await.ok()?;
        tcp.shutdown().await.ok()
    })
    .await;
}

/// Reads client frames until a HEADERS frame; its stream id.
async fn first_request(tcp: &mut TcpStream) -> Option<u32> {
    for _ in 0..MAX_FRAMES {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        if len > MAX_PAYLOAD {
            return None;
        }
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.ok()?;
        if head[3] == HEADERS {
            return Some(u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff);
        }
    }
    None
}

/// One frame: a 9-byte header and the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A gRPC trailers-only response: `:status 200`, `content-type`,
/// `grpc-status 14` (unavailable) and `grpc-message`.
fn trailers_only() -> Vec<u8> {
    let mut b = vec![0x88]; // :status 200 (static table index 8)
    literal(&mut b, "content-type", "application/grpc");
    literal(&mut b, "grpc-status", "14");
    literal(&mut b, "grpc-message", &percent_encode(MESSAGE));
    b
}

/// A literal field without indexing, with a new name (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for s in [name, value] {
        integer(out, s.len(), 7, 0x00);
        out.extend_from_slice(s.as_bytes());
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, mut v: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// gRPC's `grpc-message` encoding: bytes outside 0x20..=0x7e, and `%`,
/// as `%XX` (gRPC over HTTP/2, "Responses").
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc_7541_c_1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut b = Vec::new();
        integer(&mut b, 10, 5, 0);
        assert_eq!(b, [0x0a]);
        b.clear();
        integer(&mut b, 1337, 5, 0);
        assert_eq!(b, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn only_a_preface_prefix_counts_as_plaintext() {
        assert!(is_plaintext_h2(b"PRI * H"));
        assert!(!is_plaintext_h2(&[0x16, 0x03, 0x01]));
        assert!(!is_plaintext_h2(b""));
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
