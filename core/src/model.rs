//! Domain types shared by the registry, the policy engine, the store and the edges,
//! and the syntax rules every name and value coming off the network must obey.
//!
//! The limits here are the documented ones (see `proto/lb/v1/lb.proto`); the
//! gRPC edge (`pb.rs`) calls the `check_*` functions and turns a [`FieldError`]
//! into `invalid_argument`.

use std::collections::BTreeMap;
use std::time::Duration;

/// Largest static weight an instance may register with.
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest service name, in bytes (a DNS name's limit).
pub const MAX_SERVICE_LEN: usize = 253;
/// Longest instance or client id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest zone, in bytes.
pub const MAX_ZONE_LEN: usize = 64;
/// Most labels on one instance or client.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 255;
/// Longest version string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Highest utilization (CPU or memory) accepted: 16 = sixteen times the soft limit.
pub const MAX_UTILIZATION: f64 = 16.0;
/// Highest active-request count accepted.
pub const MAX_ACTIVE_REQUESTS: u64 = 10_000_000;
/// Highest qps / eps accepted.
pub const MAX_RATE: f64 = 1e9;
/// Most named metrics in one report.
pub const MAX_NAMED_METRICS: usize = 32;
/// Shortest TTL a backend may ask for.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest TTL a backend may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Most per-instance entries in one ClientStats message.
pub const MAX_STATS_ENTRIES: usize = 10_000;
/// Longest store identity in a list's `state_id` (and a client's
/// `held_state_id`), in bytes.
pub const MAX_STATE_ID_LEN: usize = 64;
/// Longest instance token, in bytes (grpclb: "must be less than 50 bytes").
pub const MAX_TOKEN_LEN: usize = 49;
/// The token of drop entries (load shedding), in lists and in grpclb's
/// per-token drop counts.
pub const DROP_TOKEN: &str = "lb-drop";

/// A value that broke a rule: which field, and why. Becomes `invalid_argument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `register.instance.weight`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Longest field path, and longest reason, an error quotes back to a caller,
/// in bytes: both may quote the input (a label key, a rejected value), and
/// an unbounded quote turns a 1 MB label into a 1 MB error message.
pub const MAX_QUOTE: usize = 256;

/// `s` cut to at most `max` bytes (at a character boundary), marked with
/// `…` and the original length when cut.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let len = s.len();
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("… ({len} bytes)"));
    s
}

impl FieldError {
    /// Builds an error for `field`; both parts are cut to [`MAX_QUOTE`].
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: bounded(field.into(), MAX_QUOTE),
            reason: bounded(reason.into(), MAX_QUOTE),
        }
    }

    /// Prefixes the field path with `parent.` (itself cut to [`MAX_QUOTE`]:
    /// a parent path may quote input too, e.g. a method name).
    pub fn within(mut self, parent: &str) -> Self {
        let parent = bounded(parent.to_string(), MAX_QUOTE);
        self.field = if self.field.is_empty() {
            parent
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Identifies an instance: (service, instance id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    /// Service name.
    pub service: String,
    /// Instance id, unique within the service.
    pub instance_id: String,
}

/// What a backend registers: everything that persists about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Service name.
    pub service: String,
    /// Instance id, unique within the service.
    pub instance_id: String,
    /// `host:port` clients connect to.
    pub address: String,
    /// Locality; may be empty.
    pub zone: String,
    /// Static weight, `1..=MAX_WEIGHT`.
    pub weight: u32,
    /// Free labels for routing.
    pub labels: BTreeMap<String, String>,
    /// Build version.
    pub version: String,
    /// Token clients attach as `lb-token`; empty = [`derived_token`].
    pub token: String,
}

impl InstanceSpec {
    /// `instance_id` of `service` at `address`, weight 1, no zone, labels,
    /// version or token (set the fields to change them).
    pub fn new(
        service: impl Into<String>,
        instance_id: impl Into<String>,
        address: impl Into<String>,
    ) -> Self {
        InstanceSpec {
            service: service.into(),
            instance_id: instance_id.into(),
            address: address.into(),
            zone: String::new(),
            weight: 1,
            labels: BTreeMap::new(),
            version: String::new(),
            token: String::new(),
        }
    }

    /// The spec with its token filled in ([`derived_token`] when none was
    /// registered). The edges and the store call this once per registration,
    /// so plans copy the token instead of hashing for every server.
    pub fn with_token(mut self) -> Self {
        if self.token.is_empty() {
            self.token = derived_token(&self.service, &self.instance_id);
        }
        self
    }

    /// The token clients attach to calls: the registered one, or one derived
    /// from the service and instance id.
    pub fn effective_token(&self) -> String {
        if self.token.is_empty() {
            derived_token(&self.service, &self.instance_id)
        } else {
            self.token.clone()
        }
    }

    /// This instance's key.
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
        }
    }

    /// Checks every field against the documented limits.
    pub fn check(&self) -> Result<(), FieldError> {
        check_service(&self.service).map_err(|e| FieldError::new("service", e))?;
        check_id(&self.instance_id).map_err(|e| FieldError::new("instance_id", e))?;
        check_address(&self.address).map_err(|e| FieldError::new("address", e))?;
        check_zone(&self.zone).map_err(|e| FieldError::new("zone", e))?;
        check_weight(self.weight).map_err(|e| FieldError::new("weight", e))?;
        check_labels(&self.labels).map_err(|e| e.within("labels"))?;
        if self.version.len() > MAX_VERSION_LEN {
            return Err(FieldError::new(
                "version",
                format!("longer than {MAX_VERSION_LEN} bytes"),
            ));
        }
        check_token(&self.token).map_err(|e| FieldError::new("token", e))?;
        Ok(())
    }
}

/// A backend's live load at one moment (not persisted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Fraction of all cores busy; 1.0 = all.
    pub cpu_utilization: f64,
    /// Requests queued or in service.
    pub active_requests: u64,
    /// Requests per second, if reported.
    pub qps: Option<f64>,
    /// Errors per second, if reported.
    pub eps: Option<f64>,
    /// Memory utilization, if reported.
    pub mem_utilization: Option<f64>,
    /// Application metrics.
    pub named_metrics: BTreeMap<String, f64>,
}

impl Load {
    /// Checks every value is finite and in range (NaN, negative and absurd values refused).
    pub fn check(&self) -> Result<(), FieldError> {
        check_fraction(self.cpu_utilization, MAX_UTILIZATION)
            .map_err(|e| FieldError::new("cpu_utilization", e))?;
        if self.active_requests > MAX_ACTIVE_REQUESTS {
            return Err(FieldError::new(
                "active_requests",
                format!(
                    "{} is above the maximum {MAX_ACTIVE_REQUESTS}",
                    self.active_requests
                ),
            ));
        }
        for (name, v, max) in [
            ("qps", self.qps, MAX_RATE),
            ("eps", self.eps, MAX_RATE),
            ("mem_utilization", self.mem_utilization, MAX_UTILIZATION),
        ] {
            if let Some(v) = v {
                check_fraction(v, max).map_err(|e| FieldError::new(name, e))?;
            }
        }
        if self.named_metrics.len() > MAX_NAMED_METRICS {
            return Err(FieldError::new(
                "named_metrics",
                format!("more than {MAX_NAMED_METRICS} entries"),
            ));
        }
        for (k, v) in &self.named_metrics {
            check_label_key(k).map_err(|e| FieldError::new(format!("named_metrics[{k:?}]"), e))?;
            if !v.is_finite() {
                return Err(FieldError::new(
                    format!("named_metrics[{k:?}]"),
                    "must be a finite number",
                ));
            }
        }
        Ok(())
    }
}

/// Who is subscribing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Client id (for ordering and stats).
    pub client_id: String,
    /// The client's locality.
    pub zone: String,
    /// Labels routing rules may match.
    pub labels: BTreeMap<String, String>,
}

impl ClientIdentity {
    /// Checks every field against the documented limits.
    pub fn check(&self) -> Result<(), FieldError> {
        check_id(&self.client_id).map_err(|e| FieldError::new("client_id", e))?;
        check_zone(&self.zone).map_err(|e| FieldError::new("zone", e))?;
        check_labels(&self.labels).map_err(|e| e.within("labels"))
    }
}

/// Call outcomes a client saw for one instance over one stats interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceOutcomes {
    /// Instance the calls went to.
    pub instance_id: String,
    /// Calls started.
    pub calls_started: u64,
    /// Calls finished (successfully or not).
    pub calls_finished: u64,
    /// Of the finished calls, the failed ones.
    pub calls_failed: u64,
    /// Sum of finished calls' latencies, µs.
    pub latency_sum_us: u64,
    /// Of the failed calls, how many ended with each gRPC status code.
    pub failed_by_code: BTreeMap<u32, u64>,
    /// The client's current run of consecutive failures on this instance.
    pub consecutive_failures: u64,
}

/// One ClientStats message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Per-instance outcomes.
    pub instances: Vec<InstanceOutcomes>,
    /// Calls dropped by a drop entry.
    pub dropped: u64,
    /// Calls that found an empty list.
    pub no_backend: u64,
}

impl ClientStats {
    /// Checks sizes and internal consistency.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.instances.len() > MAX_STATS_ENTRIES {
            return Err(FieldError::new(
                "instances",
                format!("more than {MAX_STATS_ENTRIES} entries"),
            ));
        }
        for (i, s) in self.instances.iter().enumerate() {
            check_id(&s.instance_id)
                .map_err(|e| FieldError::new(format!("instances[{i}].instance_id"), e))?;
            if s.calls_failed > s.calls_finished {
                return Err(FieldError::new(
                    format!("instances[{i}].calls_failed"),
                    "greater than calls_finished",
                ));
            }
            let field = || format!("instances[{i}].failed_by_code");
            let mut by_code: u64 = 0;
            for (&code, &n) in &s.failed_by_code {
                if !(1..=16).contains(&code) {
                    return Err(FieldError::new(
                        format!("{}[{code}]", field()),
                        "not a gRPC error status code (1..=16)",
                    ));
                }
                by_code = by_code.saturating_add(n);
            }
            if by_code > s.calls_failed {
                return Err(FieldError::new(
                    field(),
                    format!(
                        "counts add up to {by_code}, more than calls_failed ({})",
                        s.calls_failed
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Most per-token drop entries in one grpclb ClientStats message.
pub const MAX_DROP_TOKENS: usize = 64;

/// One grpclb `ClientStats` message from a stock gRPC client: counts since its
/// previous report, for the whole client (grpclb does not split them by server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpclbStats {
    /// Calls started.
    pub calls_started: u64,
    /// Calls finished (drops included).
    pub calls_finished: u64,
    /// Calls that never reached a server (drops excluded).
    pub failed_to_send: u64,
    /// Calls known to have reached a server.
    pub known_received: u64,
    /// Dropped calls, by the drop entry's token.
    pub dropped_by_token: Vec<(String, u64)>,
}

impl GrpclbStats {
    /// Checks the token list's size and each token's syntax.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.dropped_by_token.len() > MAX_DROP_TOKENS {
            return Err(FieldError::new(
                "calls_finished_with_drop",
                format!(
                    "{} entries, more than {MAX_DROP_TOKENS}",
                    self.dropped_by_token.len()
                ),
            ));
        }
        for (i, (token, _)) in self.dropped_by_token.iter().enumerate() {
            let field = || format!("calls_finished_with_drop[{i}].load_balance_token");
            if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FieldError::new(
                    field(),
                    format!("not a token (up to {MAX_TOKEN_LEN} bytes of printable ASCII)"),
                ));
            }
        }
        Ok(())
    }

    /// Calls dropped, all tokens together.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_token
            .iter()
            .fold(0u64, |s, (_, n)| s.saturating_add(*n))
    }
}

fn check_name_chars(s: &str, extra: &[u8]) -> Result<(), String> {
    match s
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || b"._-/".contains(b) || extra.contains(b)))
    {
        Some(b) => Err(format!(
            "contains {:?}; allowed: letters, digits and . _ - /{}",
            b as char,
            if extra.is_empty() { "" } else { " :" }
        )),
        None => Ok(()),
    }
}

/// A service name: `1..=253` bytes of `[A-Za-z0-9._-/]`.
pub fn check_service(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_SERVICE_LEN {
        return Err(format!("{} bytes, longer than {MAX_SERVICE_LEN}", s.len()));
    }
    check_name_chars(s, b"")
}

/// An instance or client id: `1..=128` bytes of `[A-Za-z0-9._-:/]`.
pub fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_ID_LEN {
        return Err(format!("{} bytes, longer than {MAX_ID_LEN}", s.len()));
    }
    check_name_chars(s, b":")
}

/// A zone: up to 64 bytes of `[A-Za-z0-9._-/]`, may be empty.
pub fn check_zone(s: &str) -> Result<(), String> {
    if s.len() > MAX_ZONE_LEN {
        return Err(format!("{} bytes, longer than {MAX_ZONE_LEN}", s.len()));
    }
    check_name_chars(s, b"")
}

/// An instance token: up to 49 bytes of printable ASCII without spaces
/// (it travels as gRPC metadata), not the drop entries' token; may be empty.
pub fn check_token(s: &str) -> Result<(), String> {
    if s.len() > MAX_TOKEN_LEN {
        return Err(format!("{} bytes, longer than {MAX_TOKEN_LEN}", s.len()));
    }
    if let Some(b) = s.bytes().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "byte 0x{b:02x} is not printable ASCII (spaces are not allowed either)"
        ));
    }
    if s == DROP_TOKEN {
        return Err(format!("{DROP_TOKEN:?} is reserved for drop entries"));
    }
    Ok(())
}

/// The token of an instance that registered none: `t` and 16 hex digits of
/// lb's key hash (`crate::keyhash`, a fixed function) of
/// `service NUL instance_id`, so it is the same across restarts and
/// re-registrations and for every daemon.
pub fn derived_token(service: &str, instance_id: &str) -> String {
    let mut key = Vec::with_capacity(service.len() + 1 + instance_id.len());
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    key.extend_from_slice(instance_id.as_bytes());
    format!("t{:016x}", crate::keyhash::hash(&key))
}

/// A static weight: `1..=MAX_WEIGHT`.
pub fn check_weight(w: u32) -> Result<(), String> {
    if w == 0 || w > MAX_WEIGHT {
        return Err(format!("{w} is outside 1..={MAX_WEIGHT}"));
    }
    Ok(())
}

fn check_label_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("key must not be empty".into());
    }
    if k.len() > MAX_LABEL_KEY_LEN {
        return Err(format!("key longer than {MAX_LABEL_KEY_LEN} bytes"));
    }
    check_name_chars(k, b"")
}

/// A label map: at most 64 entries, keys like names, values up to 255 bytes.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(
            "",
            format!("{} entries, more than {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        check_label_key(k).map_err(|e| FieldError::new(format!("[{k:?}]"), e))?;
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(FieldError::new(
                format!("[{k:?}]"),
                format!("value longer than {MAX_LABEL_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// An address clients can dial: `host:port` where host is an IPv4 address
/// (canonical dotted quad), a bracketed IPv6 address or a DNS name, and port
/// is `1..=65535`. Refused: the unspecified, broadcast and multicast
/// addresses (nothing can be dialled there), and numeric hosts that are not
/// a canonical IPv4 address (`0`, `127.1`, `0x7f.1`, `2130706433`: resolvers
/// read them as addresses, which hides where the traffic goes). Link-local
/// addresses are valid here; the daemon refuses them for registrations
/// unless told otherwise ([`is_link_local`]).
pub fn check_address(s: &str) -> Result<(), String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0 is not dialable".into());
        }
        let ip = sa.ip();
        let why = match ip {
            _ if ip.is_unspecified() => Some("unspecified address"),
            _ if ip.is_multicast() => Some("multicast address"),
            std::net::IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast address"),
            _ => None,
        };
        return match why {
            Some(why) => Err(format!("{ip} is not dialable ({why})")),
            None => Ok(()),
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("port {port:?} is not in 1..=65535")),
        Ok(_) => {}
    }
    if host.is_empty() || host.len() > 253 {
        return Err(format!("host {host:?} must be 1..=253 bytes"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!("{s:?} is not a valid [ipv6]:port"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("host {host:?} is not an IP address or DNS name"));
        }
    }
    // A DNS name's last label is never all digits (RFC 3696 §2), and a
    // `0x` label is a hexadecimal number to inet_aton: both are numeric
    // addresses in disguise.
    let numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        || host.split('.').any(|l| {
            l.len() > 1
                && l[..2].eq_ignore_ascii_case("0x")
                && l[2..].bytes().all(|b| b.is_ascii_hexdigit())
        });
    if numeric {
        return Err(format!(
            "host {host:?} is a numeric address but not a canonical IPv4 address (write it as a.b.c.d)"
        ));
    }
    Ok(())
}

/// Whether `address` (`host:port`) is an IP literal in the link-local
/// ranges (169.254.0.0/16, fe80::/10): reachable only on one link, and the
/// home of cloud metadata services (169.254.169.254).
pub fn is_link_local(address: &str) -> bool {
    match address.parse::<std::net::SocketAddr>() {
        Ok(sa) => match sa.ip() {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
        },
        Err(_) => false,
    }
}

fn check_fraction(v: f64, max: f64) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    if !(0.0..=max).contains(&v) {
        return Err(format!("{v} is outside 0..={max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:7400",
            "backend-1.example.internal:443",
            "localhost:1",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "0.0.0.0:80",
            "::1:80",
            "host:",
            ":80",
            "bad_host:80",
            "-x.example:80",
            "a b:80",
            "0:80",
            "127.1:80",
            "0x7f.1:80",
            "0x7f000001:80",
            "2130706433:80",
            "127.000.000.001:80",
            "255.255.255.255:80",
            "224.0.0.1:80",
            "[ff02::1]:80",
            "[::]:80",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        // Valid, but the daemon refuses them for registrations by default.
        for link_local in ["169.254.169.254:80", "[fe80::1]:80"] {
            assert_eq!(check_address(link_local), Ok(()), "{link_local}");
            assert!(is_link_local(link_local), "{link_local}");
        }
        assert!(!is_link_local("10.0.0.1:80"));
        assert!(!is_link_local("host.example:80"));
        // Digits are fine inside a name, just not as its last label.
        assert_eq!(check_address("10x.example:80"), Ok(()));
        assert_eq!(check_address("k8s-node-1.internal:443"), Ok(()));
    }

    #[test]
    fn names() {
        assert!(check_service("").is_err());
        assert!(check_service(&"a".repeat(254)).is_err());
        assert!(check_service(&"a".repeat(253)).is_ok());
        assert!(check_service("svc with space").is_err());
        assert!(check_service("echo.v1/Echo").is_ok());
        assert!(check_id("host:1234").is_ok());
        assert!(check_service("host:1234").is_err());
    }

    #[test]
    fn loads() {
        let ok = Load {
            cpu_utilization: 0.5,
            ..Load::default()
        };
        assert!(ok.check().is_ok());
        for bad in [f64::NAN, -0.1, f64::INFINITY, 17.0] {
            let l = Load {
                cpu_utilization: bad,
                ..Load::default()
            };
            assert_eq!(l.check().unwrap_err().field, "cpu_utilization");
        }
        let l = Load {
            qps: Some(-1.0),
            ..Load::default()
        };
        assert_eq!(l.check().unwrap_err().field, "qps");
    }

    #[test]
    fn errors_quote_at_most_a_bounded_prefix_of_the_input() {
        let key = "k".repeat(1 << 20);
        let mut labels = BTreeMap::new();
        labels.insert(key.clone(), "v".into());
        let e = check_labels(&labels)
            .unwrap_err()
            .within("register.instance.labels");
        assert!(e.to_string().len() < 2 * MAX_QUOTE + 64, "{e}");
        assert!(e.field.starts_with("register.instance.labels[\"kkk"));
        // The cut says how long the quoted part was: the key, quoted, in [].
        assert!(
            e.field.ends_with(&format!("… ({} bytes)", key.len() + 4)),
            "{e}"
        );
        let deep = e.within(&"m".repeat(1 << 20));
        assert!(deep.field.len() < 3 * MAX_QUOTE, "{}", deep.field.len());
        let e = FieldError::new(
            "address",
            format!("{:?} is not host:port", "é".repeat(1000)),
        );
        assert!(e.reason.len() <= MAX_QUOTE + 20);
        assert!(e.reason.is_char_boundary(e.reason.len()));
    }

    #[test]
    fn label_limits() {
        let mut m = BTreeMap::new();
        for i in 0..=MAX_LABELS {
            m.insert(format!("k{i}"), "v".into());
        }
        assert!(check_labels(&m).is_err());
        let mut m = BTreeMap::new();
        m.insert("ok".into(), "x".repeat(256));
        assert_eq!(check_labels(&m).unwrap_err().field, "[\"ok\"]");
    }
}
