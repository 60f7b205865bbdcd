//! gRPC status codes by their canonical names (`UNAVAILABLE` = 14), as the
//! cluster modes' `retry_on` spells them. One table for the daemon (which
//! validates names) and the client (which turns them into codes).

/// Every error status (OK excluded), by name.
pub const NAMES: [(&str, u32); 16] = [
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The code of an error status name, case-insensitive ("unavailable" → 14).
pub fn code(name: &str) -> Option<u32> {
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, c)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_map_to_codes() {
        assert_eq!(super::code("UNAVAILABLE"), Some(14));
        assert_eq!(super::code("deadline_exceeded"), Some(4));
        assert_eq!(super::code("OK"), None);
        assert_eq!(super::code("SOMETIMES"), None);
    }
}
