//! A request body kept for replay, so that [`crate::LbChannel`] can retry or
//! hedge a call made by a generated tonic client, whose request it only sees
//! as an HTTP body.
//!
//! The idea is linkerd2-proxy's `ReplayBody` (`linkerd/http/retry/src/replay.rs`):
//! the body streams to the first attempt while a copy of every chunk is
//! kept, up to a bound; a later attempt replays the copy. The rules here
//! follow gRFC A6 (*gRPC Retry Design*), which buffers "the messages of a
//! call" for the same purpose, with a per-call limit:
//!
//! 1. When the call starts, whatever the body has ready is read at once,
//!    without waiting ([`Replay::read_ready`]): a unary request (one encoded
//!    message, then the end) is whole before the first attempt is sent.
//! 2. The first attempt's body yields the copy, then reads on from the
//!    original, copying as it goes.
//! 3. Another attempt (a retry or a hedge) may start only if the body has
//!    ended, without error, and fit within the bound by then
//!    ([`Replay::replayable`]). A body still open (client streaming, bidi) or
//!    larger than the bound keeps its one attempt.
//! 4. Past the bound the copy is dropped (no attempt will need it) and the
//!    attempt that reads the original goes on unhindered.
//!
//! Unlike linkerd's, several replays may run at once (hedging): a replay of
//! an ended body only reads the shared, immutable chunks. Only one body at a
//! time may read the original; one that is dropped half-way hands it back
//! (an attempt refused before its body was read leaves the body whole for
//! the next).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The error of a [`ReplayBody`]: the original body's, or why a replay
/// could not go on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body and the copy kept of it. Cheap to clone (shared state).
pub(crate) struct Replay<B> {
    shared: Arc<Mutex<State<B>>>,
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct State<B> {
    /// The original body, while it has not ended and no [`ReplayBody`] is
    /// reading it.
    rest: Option<B>,
    /// Chunks read so far, in order: every one while `whole`.
    chunks: Vec<Bytes>,
    /// `chunks` holds every byte read so far, so a body that replays them
    /// may go on with the original.
    whole: bool,
    /// Bytes read from the original so far.
    len: usize,
    /// The bound on `len` for a replay.
    limit: usize,
    /// The original's trailers, if it sent any.
    trailers: Option<HeaderMap>,
    /// The original reached its end without error.
    ended: bool,
    /// More than `limit` bytes were read: no replay.
    overflow: bool,
    /// The original failed: no replay.
    failed: bool,
    /// The original's error, read ahead, for the first body that asks.
    error: Option<BoxError>,
}

impl<B> State<B> {
    /// Counts a chunk read from the original. `ahead`: read before any
    /// attempt saw it, so it is kept even past the bound (the first attempt
    /// still has to send it); otherwise the reader has it, and past the
    /// bound the copy is dropped, since no other attempt will need it.
    fn record(&mut self, data: &Bytes, ahead: bool) {
        self.len = self.len.saturating_add(data.len());
        if self.len > self.limit {
            self.overflow = true;
        }
        if ahead || !self.overflow {
            self.chunks.push(data.clone());
        } else if self.whole {
            self.chunks = Vec::new();
            self.whole = false;
        }
    }
}

impl<B> Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Keeps a copy of `body` of at most `limit` bytes.
    pub(crate) fn new(body: B, limit: usize) -> Self {
        Replay {
            shared: Arc::new(Mutex::new(State {
                rest: Some(body),
                chunks: Vec::new(),
                whole: true,
                len: 0,
                limit,
                trailers: None,
                ended: false,
                overflow: false,
                failed: false,
                error: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads whatever the original has ready, without waiting, until its end
    /// or the bound; nothing when a [`ReplayBody`] is reading it.
    pub(crate) fn read_ready(&self) {
        let mut st = self.lock();
        let Some(mut rest) = st.rest.take() else {
            return;
        };
        // A waker that does nothing: this read never waits. The body that
        // reads the original next polls it again with its own task's waker.
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if st.overflow {
                break;
            }
            match Pin::new(&mut rest).poll_frame(&mut cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    st.ended = true;
                    return;
                }
                Poll::Ready(Some(Err(e))) => {
                    // The first attempt sends what was read, then this.
                    st.failed = true;
                    st.error = Some(e.into());
                    return;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => st.record(&data, true),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            st.trailers = Some(t);
                        }
                    }
                },
            }
        }
        st.rest = Some(rest);
    }

    /// Whether another attempt may send this body: after reading what is
    /// ready, the body has ended without error within the bound.
    pub(crate) fn replayable(&self) -> bool {
        self.read_ready();
        let st = self.lock();
        st.ended && !st.overflow && !st.failed
    }

    /// A body for one attempt: the copy, then (for the first attempt) the
    /// rest of the original.
    pub(crate) fn body(&self) -> ReplayBody<B> {
        ReplayBody {
            shared: Arc::clone(&self.shared),
            pos: 0,
            rest: None,
            trailers_sent: false,
            done: false,
        }
    }
}

/// One attempt's request body (see [`Replay::body`]).
pub(crate) struct ReplayBody<B> {
    shared: Arc<Mutex<State<B>>>,
    /// The next chunk of the copy to yield.
    pos: usize,
    /// The original, while this body reads it.
    rest: Option<B>,
    trailers_sent: bool,
    done: bool,
}

impl<B> ReplayBody<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the original back, for an attempt that may still need it.
        if let Some(rest) = self.rest.take() {
            let mut st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            st.rest = Some(rest);
        }
    }
}

/// Why a replay cannot go on (a misuse: [`Replay::replayable`] guards
/// every replay).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    /// Another attempt is reading the original body.
    #[error("the request body is being sent by another attempt")]
    Busy,
    /// The original body failed, or outgrew the bound while another attempt
    /// sent it, so this attempt has no copy to send.
    #[error("the request body cannot be replayed")]
    Lost,
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.rest.is_none() {
            let shared = Arc::clone(&this.shared);
            let mut st = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if !st.whole {
                this.done = true;
                return Poll::Ready(Some(Err(ReplayError::Lost.into())));
            }
            if let Some(chunk) = st.chunks.get(this.pos) {
                let chunk = chunk.clone();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if st.ended {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = st.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                this.done = true;
                return Poll::Ready(None);
            }
            if st.failed {
                this.done = true;
                let e = st.error.take().unwrap_or_else(|| ReplayError::Lost.into());
                return Poll::Ready(Some(Err(e)));
            }
            match st.rest.take() {
                Some(rest) => this.rest = Some(rest),
                None => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ReplayError::Busy.into())));
                }
            }
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        // Polled without the lock: the original may run the caller's code
        // (a request stream).
        let polled = Pin::new(rest).poll_frame(cx);
        let mut st = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                drop(st);
                this.rest = None;
                this.trailers_sent = true;
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.failed = true;
                drop(st);
                this.rest = None;
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    st.record(data, false);
                    this.pos = st.chunks.len();
                } else if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        if self.rest.is_some() {
            return false;
        }
        let st = self.lock();
        st.ended && self.pos >= st.chunks.len() && (self.trailers_sent || st.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown, as the original tonic body's: an exact hint would make
        // hyper add a content-length that gRPC requests do not carry.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::sync::mpsc;

    /// A body fed through a channel: open until the sender is dropped.
    struct ChannelBody(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    fn open() -> (Tx, ChannelBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ChannelBody(rx))
    }

    fn data(tx: &Tx, s: &str) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes()))))
            .unwrap();
    }

    /// A body with `chunks` and `trailers`, ended.
    fn whole(chunks: &[&str], trailers: Option<(&'static str, &'static str)>) -> ChannelBody {
        let (tx, body) = open();
        for c in chunks {
            data(&tx, c);
        }
        if let Some((k, v)) = trailers {
            let mut t = HeaderMap::new();
            t.insert(k, v.parse().unwrap());
            tx.send(Ok(Frame::trailers(t))).unwrap();
        }
        body
    }

    /// Everything `body` yields: its bytes, its trailers' `x` value, and
    /// its error, if any.
    async fn drain<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
    ) -> (String, Option<String>, Option<String>) {
        let (mut bytes, mut trailer, mut error) = (String::new(), None, None);
        while let Some(f) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            match f {
                Ok(f) => match f.into_data() {
                    Ok(d) => bytes.push_str(std::str::from_utf8(&d).unwrap()),
                    Err(f) => {
                        let t = f.into_trailers().unwrap();
                        trailer = Some(t["x"].to_str().unwrap().to_owned());
                    }
                },
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        (bytes, trailer, error)
    }

    #[tokio::test]
    async fn an_ended_body_replays_to_every_attempt() {
        let r = Replay::new(whole(&["ab", "cd", "e"], Some(("x", "t"))), 10);
        // A unary request is whole before the first attempt starts.
        assert!(r.replayable());
        let mut first = r.body();
        assert!(!first.is_end_stream());
        let want = ("abcde".to_string(), Some("t".to_string()), None);
        assert_eq!(drain(&mut first).await, want);
        assert!(first.is_end_stream());
        // Hedges at once: each replay reads the shared copy.
        let (mut a, mut b) = (r.body(), r.body());
        assert_eq!(drain(&mut a).await, want);
        assert_eq!(drain(&mut b).await, want);
        assert!(r.replayable());
    }

    #[tokio::test]
    async fn the_first_attempt_streams_and_copies() {
        let (tx, body) = open();
        data(&tx, "ab");
        let r = Replay::new(body, 10);
        // Still open: no second attempt yet.
        assert!(!r.replayable());
        let mut first = r.body();
        let reader = tokio::spawn(async move { drain(&mut first).await });
        data(&tx, "cd");
        drop(tx);
        assert_eq!(reader.await.unwrap(), ("abcd".into(), None, None));
        // Ended within the bound by now: a retry may replay it.
        assert!(r.replayable());
        assert_eq!(drain(&mut r.body()).await, ("abcd".into(), None, None));
    }

    #[tokio::test]
    async fn an_open_body_is_not_replayed() {
        let (tx, body) = open();
        data(&tx, "ab");
        let r = Replay::new(body, 10);
        assert!(!r.replayable());
        // The first attempt has the original; a second one cannot read it.
        let mut first = r.body();
        let got = poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(got.unwrap().unwrap().into_data().unwrap(), "ab");
        assert!(
            poll_fn(|cx| Poll::Ready(Pin::new(&mut first).poll_frame(cx)))
                .await
                .is_pending()
        );
        assert!(!r.replayable());
        let (_, _, error) = drain(&mut r.body()).await;
        assert_eq!(
            error.as_deref(),
            Some("the request body is being sent by another attempt")
        );
        drop(tx);
    }

    #[tokio::test]
    async fn an_overflowing_body_is_sent_whole_once_and_not_replayed() {
        let (tx, body) = open();
        data(&tx, "abcdef");
        data(&tx, "ghijkl");
        let r = Replay::new(body, 8);
        // Read ahead past the bound: no replay, but the first attempt
        // still gets every byte, then the rest.
        assert!(!r.replayable());
        data(&tx, "mn");
        drop(tx);
        assert_eq!(
            drain(&mut r.body()).await,
            ("abcdefghijklmn".into(), None, None)
        );
        assert!(!r.replayable());
        assert_eq!(
            drain(&mut r.body()).await.2.as_deref(),
            Some("the request body cannot be replayed")
        );
    }

    #[tokio::test]
    async fn overflow_while_streaming_drops_the_copy() {
        let (tx, body) = open();
        let r = Replay::new(body, 4);
        let mut first = r.body();
        let reader = tokio::spawn(async move { drain(&mut first).await });
        data(&tx, "abc");
        data(&tx, "def");
        data(&tx, "g");
        drop(tx);
        assert_eq!(reader.await.unwrap(), ("abcdefg".into(), None, None));
        assert!(!r.replayable());
        assert!(r.lock().chunks.is_empty(), "the copy was dropped");
    }

    #[tokio::test]
    async fn a_body_no_attempt_read_stays_whole_for_the_next() {
        let (tx, body) = open();
        let r = Replay::new(body, 10);
        assert!(!r.replayable());
        // The first attempt was refused before its body was read.
        drop(r.body());
        data(&tx, "xy");
        drop(tx);
        assert!(r.replayable());
        assert_eq!(drain(&mut r.body()).await, ("xy".into(), None, None));
    }

    #[tokio::test]
    async fn a_body_handed_back_half_way_goes_on_from_the_copy() {
        let (tx, body) = open();
        let r = Replay::new(body, 10);
        let mut first = r.body();
        data(&tx, "ab");
        let got = poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(got.unwrap().unwrap().into_data().unwrap(), "ab");
        drop(first);
        data(&tx, "cd");
        drop(tx);
        assert!(r.replayable());
        assert_eq!(drain(&mut r.body()).await, ("abcd".into(), None, None));
    }

    #[tokio::test]
    async fn a_failed_body_is_not_replayed() {
        let (tx, body) = open();
        data(&tx, "ab");
        tx.send(Err("broken pipe".into())).unwrap();
        let r = Replay::new(body, 10);
        assert!(!r.replayable());
        // The first attempt sends what there was, then fails as the
        // original did; no other attempt gets a copy.
        let (bytes, _, error) = drain(&mut r.body()).await;
        assert_eq!(
            (bytes.as_str(), error.as_deref()),
            ("ab", Some("broken pipe"))
        );
        let (_, _, error) = drain(&mut r.body()).await;
        assert_eq!(
            error.as_deref(),
            Some("the request body cannot be replayed")
        );
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable_and_ends_at_once() {
        let r = Replay::new(whole(&[], None), 0);
        assert!(r.replayable());
        let b = r.body();
        assert!(b.is_end_stream());
    }
}
