//! gRPC status codes, by number and by canonical name (`UNAVAILABLE` = 14):
//! the table of gRPC's "Status codes and their use in gRPC"
//! (`doc/statuscodes.md` in the grpc repository), which is `google.rpc.Code`.
//!
//! One definition for the daemon (cluster modes' `retry_on` names, outcome
//! counts by code) and the client (retries, outcomes), so neither spells a
//! code as a bare number.

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Code {
    /// Not an error.
    #[default]
    Ok = 0,
    /// The caller cancelled.
    Cancelled = 1,
    /// An error with no better code (also: a failure reported with no code).
    Unknown = 2,
    /// The request is malformed.
    InvalidArgument = 3,
    /// The deadline passed first.
    DeadlineExceeded = 4,
    /// Something asked for does not exist.
    NotFound = 5,
    /// Something to create exists already.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A quota or limit ran out.
    ResourceExhausted = 8,
    /// The system is not in the state the operation needs.
    FailedPrecondition = 9,
    /// Aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// Past the valid range.
    OutOfRange = 11,
    /// Not implemented or not supported.
    Unimplemented = 12,
    /// An internal invariant broke.
    Internal = 13,
    /// Transient: retrying (elsewhere) may succeed.
    Unavailable = 14,
    /// Unrecoverable data loss.
    DataLoss = 15,
    /// No valid credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, by number.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The canonical name ("UNAVAILABLE").
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code's number (0..=16).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The code numbered `n`, if it is one (0..=16).
    pub fn from_number(n: u32) -> Option<Code> {
        Code::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The error code named `name`, case-insensitive ("unavailable" →
    /// `Unavailable`); `None` for an unknown name and for OK, which is not
    /// an error.
    pub fn error_named(name: &str) -> Option<Code> {
        Code::ALL[1..]
            .iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .copied()
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn names_and_numbers() {
        assert_eq!(Code::error_named("UNAVAILABLE"), Some(Code::Unavailable));
        assert_eq!(
            Code::error_named("deadline_exceeded"),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(Code::error_named("OK"), None);
        assert_eq!(Code::error_named("SOMETIMES"), None);
        assert_eq!(Code::Unavailable.number(), 14);
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(Code::from_number(i as u32), Some(*c));
        }
        assert_eq!(Code::from_number(17), None);
    }
}
