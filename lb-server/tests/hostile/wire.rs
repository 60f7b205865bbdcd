//! Request bytes through the daemon's decode path: the body of a gRPC
//! request, as HTTP/2 hands it over in chunks, read by tonic's `Streaming`
//! with lb-proto's `LbCodec` decoder (what the generated servers run, with
//! the server's default limits), then each decoded message judged by
//! [`crate::judge`]. [`run`] is the fuzz target of every RPC (libFuzzer's
//! in `fuzz/`, and the proptest one in the test suite).
//!
//! An input is one control byte and a payload. Bit 0 of the control byte:
//! 0 = the payload is one message, framed here with a correct gRPC header
//! (the decoder and the conversion see it whole); 1 = the payload is the
//! raw body (frames, headers and all). Bits 1..7: the body is handed over
//! in chunks of that many bytes (0 = one chunk), or in [`MAX_CHUNKS`] if
//! that would make more (a 6 MB body in 1-byte chunks takes a second and
//! says nothing a small body does not).
//!
//! What may come out: messages, each accepted or refused by the conversion;
//! bytes that do not decode, `invalid_argument` (lb-proto's codec); and in
//! raw bodies only, the framing errors gRPC prescribes (`internal` for a
//! compressed flag without an encoding or a body that ends inside a frame,
//! as the gRPC spec and tonic have it); and `out_of_range` for a frame over
//! the size limit (4 MiB, tonic's default, which the daemon keeps). Anything
//! else, or a panic, is a bug.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;
use lb_proto::codec::LbCodec;
use tonic::codec::{Codec, Streaming};
use tonic::{Code, Status};

use crate::judge::{self, Outcome};

/// Every RPC whose request the daemon decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `lb.v1.Registry/Register`.
    Register,
    /// `lb.v1.Registry/Deregister`.
    Deregister,
    /// `lb.v1.Registry/ReportLoad` (a stream).
    ReportLoad,
    /// `lb.v1.Balancer/Subscribe` (a stream).
    Subscribe,
    /// `lb.v1.Admin/ListServices`.
    ListServices,
    /// `lb.v1.Admin/GetService`.
    GetService,
    /// `lb.v1.Admin/SetPolicy`.
    SetPolicy,
    /// `lb.v1.Admin/SetWeight`.
    SetWeight,
    /// `lb.v1.Admin/SetDrain`.
    SetDrain,
    /// `lb.v1.Admin/PutRule`.
    PutRule,
    /// `lb.v1.Admin/DeleteRule`.
    DeleteRule,
    /// `lb.v1.Admin/SetCluster`.
    SetCluster,
    /// `lb.v1.Admin/PutStatic`.
    PutStatic,
    /// `lb.v1.Admin/RemoveStatic`.
    RemoveStatic,
    /// `lb.v1.Admin/DeleteService`.
    DeleteService,
    /// `lb.v1.Admin/CreateToken`.
    CreateToken,
    /// `lb.v1.Admin/ListTokens`.
    ListTokens,
    /// `lb.v1.Admin/RevokeToken`.
    RevokeToken,
    /// `grpc.lb.v1.LoadBalancer/BalanceLoad` (a stream).
    BalanceLoad,
}

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 19] = [
        Rpc::Register,
        Rpc::Deregister,
        Rpc::ReportLoad,
        Rpc::Subscribe,
        Rpc::ListServices,
        Rpc::GetService,
        Rpc::SetPolicy,
        Rpc::SetWeight,
        Rpc::SetDrain,
        Rpc::PutRule,
        Rpc::DeleteRule,
        Rpc::SetCluster,
        Rpc::PutStatic,
        Rpc::RemoveStatic,
        Rpc::DeleteService,
        Rpc::CreateToken,
        Rpc::ListTokens,
        Rpc::RevokeToken,
        Rpc::BalanceLoad,
    ];

    /// Its method name.
    pub fn method(self) -> &'static str {
        match self {
            Rpc::Register => "Register",
            Rpc::Deregister => "Deregister",
            Rpc::ReportLoad => "ReportLoad",
            Rpc::Subscribe => "Subscribe",
            Rpc::ListServices => "ListServices",
            Rpc::GetService => "GetService",
            Rpc::SetPolicy => "SetPolicy",
            Rpc::SetWeight => "SetWeight",
            Rpc::SetDrain => "SetDrain",
            Rpc::PutRule => "PutRule",
            Rpc::DeleteRule => "DeleteRule",
            Rpc::SetCluster => "SetCluster",
            Rpc::PutStatic => "PutStatic",
            Rpc::RemoveStatic => "RemoveStatic",
            Rpc::DeleteService => "DeleteService",
            Rpc::CreateToken => "CreateToken",
            Rpc::ListTokens => "ListTokens",
            Rpc::RevokeToken => "RevokeToken",
            Rpc::BalanceLoad => "BalanceLoad",
        }
    }

    /// Its name in snake case (the fuzz target's name).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Register => "register",
            Rpc::Deregister => "deregister",
            Rpc::ReportLoad => "report_load",
            Rpc::Subscribe => "subscribe",
            Rpc::ListServices => "list_services",
            Rpc::GetService => "get_service",
            Rpc::SetPolicy => "set_policy",
            Rpc::SetWeight => "set_weight",
            Rpc::SetDrain => "set_drain",
            Rpc::PutRule => "put_rule",
            Rpc::DeleteRule => "delete_rule",
            Rpc::SetCluster => "set_cluster",
            Rpc::PutStatic => "put_static",
            Rpc::RemoveStatic => "remove_static",
            Rpc::DeleteService => "delete_service",
            Rpc::CreateToken => "create_token",
            Rpc::ListTokens => "list_tokens",
            Rpc::RevokeToken => "revoke_token",
            Rpc::BalanceLoad => "balance_load",
        }
    }
}

/// What became of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages accepted.
    pub accepted: u64,
    /// Messages refused by the conversion.
    pub refused: u64,
    /// Stream messages in the wrong place.
    pub out_of_order: u64,
    /// Requests the conversion accepted and the engine refused (a conflict
    /// with the daemon's state).
    pub conflict: u64,
    /// Bodies that did not decode (`invalid_argument`).
    pub undecodable: u64,
    /// Bodies refused for their framing.
    pub framing: u64,
}

impl Tally {
    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::OutOfOrder => self.out_of_order += 1,
        }
    }

    /// Adds `o`'s counts.
    pub fn add(&mut self, o: Tally) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.out_of_order += o.out_of_order;
        self.conflict += o.conflict;
        self.undecodable += o.undecodable;
        self.framing += o.framing;
    }
}

/// Runs one input (see the module docs) through `rpc`'s decode path and
/// conversion; panics on a broken contract.
pub fn run(rpc: Rpc, data: &[u8]) -> Tally {
    let (ctrl, payload) = data.split_first().map_or((1, data), |(c, p)| (*c, p));
    let framed = ctrl & 1 == 0;
    let body = if framed {
        frame(payload)
    } else {
        payload.to_vec()
    };
    let chunk = usize::from(ctrl >> 1);
    let chunks: Vec<Bytes> = if chunk == 0 || body.is_empty() {
        vec![Bytes::from(body)]
    } else {
        let chunk = chunk.max(body.len().div_ceil(MAX_CHUNKS));
        body.chunks(chunk).map(Bytes::copy_from_slice).collect()
    };
    let mut t = Tally::default();
    match rpc {
        Rpc::Register => unary(chunks, framed, &mut t, judge::register),
        Rpc::Deregister => unary(chunks, framed, &mut t, judge::deregister),
        Rpc::ReportLoad => streaming(chunks, framed, &mut t, judge::report_load),
        Rpc::Subscribe => streaming(chunks, framed, &mut t, judge::subscribe),
        Rpc::ListServices => unary(chunks, framed, &mut t, judge::list_services),
        Rpc::GetService => unary(chunks, framed, &mut t, judge::get_service),
        Rpc::SetPolicy => unary(chunks, framed, &mut t, judge::set_policy),
        Rpc::SetWeight => unary(chunks, framed, &mut t, judge::set_weight),
        Rpc::SetDrain => unary(chunks, framed, &mut t, judge::set_drain),
        Rpc::PutRule => unary(chunks, framed, &mut t, judge::put_rule),
        Rpc::DeleteRule => unary(chunks, framed, &mut t, judge::delete_rule),
        Rpc::SetCluster => unary(chunks, framed, &mut t, judge::set_cluster),
        Rpc::PutStatic => unary(chunks, framed, &mut t, judge::put_static),
        Rpc::RemoveStatic => unary(chunks, framed, &mut t, judge::remove_static),
        Rpc::DeleteService => unary(chunks, framed, &mut t, judge::delete_service),
        Rpc::CreateToken => unary(chunks, framed, &mut t, judge::create_token),
        Rpc::ListTokens => unary(chunks, framed, &mut t, judge::list_tokens),
        Rpc::RevokeToken => unary(chunks, framed, &mut t, judge::revoke_token),
        Rpc::BalanceLoad => streaming(chunks, framed, &mut t, judge::balance_load),
    }
    t
}

/// Most chunks a body is handed over in.
pub const MAX_CHUNKS: usize = 4096;

/// `payload` as one uncompressed gRPC frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + payload.len());
    body.push(0);
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(payload);
    body
}

/// A request body handed over in chunks, as HTTP/2 DATA frames.
struct Body(VecDeque<Bytes>);

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// The request stream the generated server builds: tonic's `Streaming`
/// with lb-proto's codec and no compression, no size limit of our own.
pub fn stream<M>(chunks: Vec<Bytes>) -> Streaming<M>
where
    M: prost::Message + Default + Send + 'static,
{
    let decoder = LbCodec::<M, M>::default().decoder();
    Streaming::new_request(decoder, Body(chunks.into()), None, None)
}

/// The output of a future that is ready at once (the body is in memory).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("decoding an in-memory body is never pending"),
    }
}

/// A unary RPC's request, as tonic's `map_request_unary` reads it: the
/// first message, then the rest of the body drained (its errors count).
fn unary<M>(chunks: Vec<Bytes>, framed: bool, t: &mut Tally, judge: fn(M) -> Outcome)
where
    M: prost::Message + Default + Send + 'static,
{
    let mut s = stream::<M>(chunks);
    let first = match now(s.message()) {
        Ok(Some(m)) => m,
        Ok(None) => return refused(&Status::internal("Missing request message."), framed, t),
        Err(e) => return refused(&e, framed, t),
    };
    loop {
        match now(s.message()) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return refused(&e, framed, t),
        }
    }
    t.count(judge(first));
}

/// A streaming RPC's requests: every message is judged both as the
/// stream's first and as a later one (the handlers treat them apart), then
/// the error that ended the stream, if any.
fn streaming<M>(chunks: Vec<Bytes>, framed: bool, t: &mut Tally, judge: fn(M, bool) -> Outcome)
where
    M: prost::Message + Default + Clone + Send + 'static,
{
    let mut s = stream::<M>(chunks);
    loop {
        match now(s.message()) {
            Ok(Some(m)) => {
                t.count(judge(m.clone(), true));
                t.count(judge(m, false));
            }
            Ok(None) => return,
            Err(e) => return refused(&e, framed, t),
        }
    }
}

/// Judges a body the decode path refused.
#[track_caller]
fn refused(s: &Status, framed: bool, t: &mut Tally) {
    assert!(
        s.message().len() <= 1024 && !s.message().chars().any(char::is_control),
        "an unbounded or raw decode error: {s:?}"
    );
    if s.code() == Code::InvalidArgument && s.message().starts_with("undecodable message: ") {
        t.undecodable += 1;
        return;
    }
    let m = s.message();
    let framing = match s.code() {
        Code::Internal => {
            m.starts_with("protocol error: received message with")
                || m == "Unexpected EOF decoding stream."
                || m == "Missing request message."
        }
        Code::OutOfRange => m.starts_with("Error, decoded message length too large"),
        _ => false,
    };
    // A well-framed body breaks no framing rule, but may still be over the
    // size limit (a stats message of 10 001 entries can be).
    assert!(
        framing && (!framed || s.code() == Code::OutOfRange),
        "a {} body was refused with {s:?}",
        if framed { "well-framed" } else { "raw" }
    );
    t.framing += 1;
}

// ------------------------------------------------------------ mutations

/// A change to a message's encoding, the kinds a hostile or broken sender
/// makes. Positions and record numbers wrap around the encoding's length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// One bit flipped.
    FlipBit {
        /// Byte.
        at: usize,
        /// Bit.
        bit: u8,
    },
    /// The encoding cut short.
    Truncate {
        /// New length.
        at: usize,
    },
    /// Bytes inserted.
    Splice {
        /// Where.
        at: usize,
        /// What.
        bytes: Vec<u8>,
    },
    /// A varint longer than 64 bits where a record starts (a tag) or where
    /// a record's length is.
    LongVarint {
        /// Which record.
        record: usize,
        /// Replace the length (else insert as a tag before the record).
        length: bool,
    },
    /// A record sent again: a repeated field's element, another map entry,
    /// a singular field or a oneof set twice.
    Repeat {
        /// Which record.
        record: usize,
    },
    /// A record of a field the message does not have, any wire type (3, 4:
    /// groups; 6, 7: invalid).
    Unknown {
        /// Field number (0 and past 2^29 are invalid).
        field: u32,
        /// Wire type, 0..=7.
        wire: u8,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A length-delimited record's length made huge.
    HugeLength {
        /// Which record.
        record: usize,
        /// The length claimed.
        length: u64,
    },
    /// A mutation inside a length-delimited record (a nested message, a
    /// map entry), its length fixed up.
    Inside {
        /// Which record.
        record: usize,
        /// What to do in it.
        then: Box<Mutation>,
    },
}

/// One top-level record of an encoding.
struct Record {
    start: usize,
    /// Where the tag ends.
    tag_end: usize,
    /// Where the payload starts (after a length, for wire type 2).
    payload: usize,
    end: usize,
    wire: u8,
}

fn varint(b: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(i)?;
        i += 1;
        if shift < 64 {
            v |= u64::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            return Some((v, i));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The well-formed top-level records of `b`, up to the first bad one.
fn records(b: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some((tag, tag_end)) = varint(b, i) else {
            break;
        };
        let wire = (tag & 7) as u8;
        let (payload, end) = match wire {
            0 => match varint(b, tag_end) {
                Some((_, e)) => (tag_end, e),
                None => break,
            },
            1 => (tag_end, tag_end + 8),
            5 => (tag_end, tag_end + 4),
            2 => match varint(b, tag_end) {
                Some((len, p)) => match usize::try_from(len).ok().and_then(|l| p.checked_add(l)) {
                    Some(e) => (p, e),
                    None => break,
                },
                None => break,
            },
            _ => break,
        };
        if end > b.len() {
            break;
        }
        out.push(Record {
            start: i,
            tag_end,
            payload,
            end,
            wire,
        });
        i = end;
    }
    out
}

/// Applies `m` to the encoding `b`.
pub fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let len = b.len();
    let recs = records(b);
    let pick = |n: usize| (!recs.is_empty()).then(|| &recs[n % recs.len()]);
    let long = [
        0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    match m {
        Mutation::FlipBit { at, bit } if len > 0 => b[at % len] ^= 1 << (bit % 8),
        Mutation::Truncate { at } => b.truncate(at % (len + 1)),
        Mutation::Splice { at, bytes } => {
            let at = at % (len + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::LongVarint { record, length } => match pick(*record) {
            Some(r) if *length && r.wire == 2 => {
                b.splice(r.tag_end..r.payload, long);
            }
            Some(r) => {
                b.splice(r.start..r.start, long);
            }
            None => b.extend_from_slice(&long),
        },
        Mutation::Repeat { record } => {
            if let Some(r) = pick(*record) {
                let copy = b[r.start..r.end].to_vec();
                b.extend_from_slice(&copy);
            }
        }
        Mutation::Unknown {
            field,
            wire,
            payload,
        } => {
            put_varint(b, (u64::from(*field) << 3) | u64::from(wire & 7));
            match wire & 7 {
                2 => {
                    put_varint(b, payload.len() as u64);
                    b.extend_from_slice(payload);
                }
                1 => b.extend((0..8).map(|i| payload.get(i).copied().unwrap_or(0))),
                5 => b.extend((0..4).map(|i| payload.get(i).copied().unwrap_or(0))),
                0 => put_varint(
                    b,
                    payload.iter().fold(0u64, |v, x| (v << 8) | u64::from(*x)),
                ),
                _ => b.extend_from_slice(payload),
            }
        }
        Mutation::HugeLength { record, length } => {
            if let Some(r) = pick(*record).filter(|r| r.wire == 2) {
                let mut v = Vec::new();
                put_varint(&mut v, *length);
                b.splice(r.tag_end..r.payload, v);
            }
        }
        Mutation::Inside { record, then } => {
            let lens: Vec<&Record> = recs.iter().filter(|r| r.wire == 2).collect();
            if let Some(r) = (!lens.is_empty()).then(|| lens[record % lens.len()]) {
                let mut inner = b[r.payload..r.end].to_vec();
                apply(&mut inner, then);
                let mut v = b[r.start..r.tag_end].to_vec();
                put_varint(&mut v, inner.len() as u64);
                v.extend_from_slice(&inner);
                b.splice(r.start..r.end, v);
            }
        }
        Mutation::FlipBit { .. } => {}
    }
}
